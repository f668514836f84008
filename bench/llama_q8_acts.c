// Prints llama.cpp's quantisation of the activation test vector of
// crates/grok1/tests/block_kernels.rs (`activations_quantised_as_llama_cpp`)
// in q8_K (blocks of 256) and q8_0 (blocks of 32) through ggml-cpu's own
// `from_float`: per block, the scale's f32 bits and sum((i + 1) * q[i]), as
// the test's table. Build against a llama.cpp build (ggml include/ and the
// libggml*.so of build/bin):
//   gcc -O2 -ffp-contract=off bench/llama_q8_acts.c -I$L/ggml/include \
//       -L$L/build/bin -lggml-base -lggml-cpu -lggml -Wl,-rpath,$L/build/bin
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include "ggml.h"
#include "ggml-cpu.h"

#define N 1024

// The test vector: four blocks of 256 (the formulas are exact in f32 and
// the same in Rust).
static void test_vector(float *x) {
    for (int i = 0; i < 256; i++) x[i] = (float)((i * 7919) % 2001 - 1000) / 997.0f;
    for (int i = 0; i < 256; i++) x[256 + i] = (float)(i % 254 - 127) + 0.5f;
    x[256 + 10] = -127.0f;
    x[256 + 200] = 127.0f;
    for (int i = 0; i < 256; i++) x[512 + i] = (float)(i * i % 97) * 0.013f - 0.6f;
    for (int i = 0; i < 256; i++) x[768 + i] = 0.0f;
}

int main(void) {
    float x[N];
    test_vector(x);
    ggml_cpu_init();
    static uint8_t buf[N * 2];
    // q8_K: float d, int8 qs[256], int16 bsums[16].
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_K)->from_float(x, buf, N);
    for (int b = 0; b < N / 256; b++) {
        const uint8_t *blk = buf + b * 292;
        uint32_t d;
        memcpy(&d, blk, 4);
        int64_t sum = 0;
        for (int i = 0; i < 256; i++) sum += (int64_t)(i + 1) * (int8_t)blk[4 + i];
        printf("q8_K %d 0x%08x %lld\n", b, d, (long long)sum);
    }
    // q8_0: fp16 d, int8 qs[32].
    ggml_get_type_traits_cpu(GGML_TYPE_Q8_0)->from_float(x, buf, N);
    for (int b = 0; b < N / 32; b++) {
        const uint8_t *blk = buf + b * 34;
        ggml_fp16_t h;
        memcpy(&h, blk, 2);
        float df = ggml_fp16_to_fp32(h);
        uint32_t d;
        memcpy(&d, &df, 4);
        int64_t sum = 0;
        for (int i = 0; i < 32; i++) sum += (int64_t)(i + 1) * (int8_t)blk[2 + i];
        printf("q8_0 %d 0x%08x %lld\n", b, d, (long long)sum);
    }
    return 0;
}
