// llama.cpp's own batch-1 product kernel for one GGML type, timed the way
// `kernel_bench` times grok1's in cache: one thread, rows of K values
// filling KIB KiB (in L2 by default), the best pass of many over SECS
// seconds, printed as GB/s of weights. The rows are quantised from random
// floats by ggml_quantize_chunk (with an importance matrix for the types
// that need one), the activations by the type's vec_dot_type from_float,
// and each row is one vec_dot call, as llama.cpp's mul_mat makes for one
// token. Built by bench/kernels_llamacpp.sh against a llama.cpp build.
//
// Usage: llamacpp_vec_dot TYPE K [KIB [SECS]]   (TYPE as ggml names it,
// any case: q4_k, iq2_xs, ...)
#include "ggml-cpu.h"
#include "ggml.h"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s TYPE K [KIB [SECS]]\n", argv[0]);
        return 2;
    }
    const char *name = argv[1];
    const int k = atoi(argv[2]);
    const int kib = argc > 3 ? atoi(argv[3]) : 256;
    const double secs = argc > 4 ? atof(argv[4]) : 0.5;
    ggml_cpu_init();
    int type = -1;
    for (int i = 0; i < GGML_TYPE_COUNT; i++) {
        const char *n = ggml_type_name((enum ggml_type)i);
        if (n && strcasecmp(n, name) == 0) {
            type = i;
            break;
        }
    }
    if (type < 0) {
        fprintf(stderr, "llamacpp_vec_dot: no GGML type named %s\n", name);
        return 2;
    }
    const enum ggml_type t = (enum ggml_type)type;
    if (k <= 0 || k % ggml_blck_size(t) != 0) {
        fprintf(stderr, "llamacpp_vec_dot: K=%d is not a positive multiple of %s's block of %ld\n", k,
                name, (long)ggml_blck_size(t));
        return 2;
    }
    const size_t row_bytes = ggml_row_size(t, k);
    int n = (int)(((size_t)kib << 10) / row_bytes) / 8 * 8;
    if (n < 8) n = 8;
    float *w = malloc(sizeof(float) * (size_t)k * n);
    float *imatrix = malloc(sizeof(float) * k);
    void *q = malloc(row_bytes * n);
    float *x = malloc(sizeof(float) * k);
    float *s = malloc(sizeof(float) * n);
    if (!w || !imatrix || !q || !x || !s) {
        fprintf(stderr, "llamacpp_vec_dot: out of memory\n");
        return 1;
    }
    srand(1);
    for (size_t i = 0; i < (size_t)k * n; i++) w[i] = ((rand() % 2001) - 1000) * 0.001f;
    for (int i = 0; i < k; i++) imatrix[i] = 1.0f + (float)(i % 7);
    ggml_quantize_chunk(t, w, q, 0, n, k, imatrix);
    const struct ggml_type_traits_cpu *traits = ggml_get_type_traits_cpu(t);
    if (!traits->vec_dot) {
        fprintf(stderr, "llamacpp_vec_dot: %s has no vec_dot on this CPU\n", name);
        return 2;
    }
    for (int i = 0; i < k; i++) x[i] = (float)((i * 37 % 101) - 50) * 0.01f;
    const enum ggml_type xt = traits->vec_dot_type;
    void *xq = malloc(ggml_row_size(xt, k));
    const struct ggml_type_traits_cpu *xtraits = ggml_get_type_traits_cpu(xt);
    if (xtraits->from_float) {
        xtraits->from_float(x, xq, k);
    } else {
        memcpy(xq, x, ggml_row_size(xt, k));
    }
    double best = 1e30;
    const double start = now();
    for (int passes = 0; passes < 200 || now() - start < secs; passes++) {
        const double t0 = now();
        for (int r = 0; r < n; r++) {
            traits->vec_dot(k, &s[r], 0, (const char *)q + (size_t)r * row_bytes, 0, xq, 0, 1);
        }
        const double d = now() - t0;
        if (d < best) best = d;
    }
    printf("llama.cpp %s vec_dot in cache [%d x %d] m=1: %.2f GB/s of weights (%.1f us) on one thread, "
           "activations %s\n",
           ggml_type_name(t), n, k, row_bytes * n / best / 1e9, best * 1e6, ggml_type_name(xt));
    return 0;
}
