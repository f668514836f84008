// Greedy continuation of given token ids with llama.cpp, for
// bench/greedy_vs_llamacpp.py: the same ids go into both engines, so the
// comparison is not blurred by two tokenizers. Prints the generated ids
// (comma-separated) on one line and, on the next, llama.cpp's top-2 margin at
// each step as a fraction of that row's largest |logit|.
//
// usage: llama_greedy MODEL.gguf N KV_TYPE THREADS ID,ID,... [LOGITS.f32]
//   KV_TYPE: f16 (llama.cpp's default), f32 or q8_0 (flash attention on, which
//   a quantised V cache needs and the CPU backend chooses anyway)
//   LOGITS.f32: the first step's logits (after the prompt), raw float32
// Build against a llama.cpp tree L (include/, ggml/include/, build/bin):
//   gcc -O2 bench/llama_greedy.c -I$L/include -I$L/ggml/include -L$L/build/bin
//       -lllama -lggml-base -lggml -Wl,-rpath,$L/build/bin -o llama_greedy
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "llama.h"

static void quiet(enum ggml_log_level level, const char *text, void *data) {
    (void)data;
    if (level == GGML_LOG_LEVEL_ERROR) {
        fputs(text, stderr);
    }
}

int main(int argc, char **argv) {
    if (argc != 6 && argc != 7) {
        fprintf(stderr, "usage: %s MODEL.gguf N KV_TYPE THREADS ID,ID,... [LOGITS.f32]\n", argv[0]);
        return 2;
    }
    const int n_gen = atoi(argv[2]);
    enum ggml_type kv;
    if (strcmp(argv[3], "f16") == 0) {
        kv = GGML_TYPE_F16;
    } else if (strcmp(argv[3], "f32") == 0) {
        kv = GGML_TYPE_F32;
    } else if (strcmp(argv[3], "q8_0") == 0) {
        kv = GGML_TYPE_Q8_0;
    } else {
        fprintf(stderr, "unknown KV type %s (f16, f32, q8_0)\n", argv[3]);
        return 2;
    }
    const int threads = atoi(argv[4]);
    int cap = 1, n_prompt = 0;
    for (const char *p = argv[5]; *p; p++) {
        cap += *p == ',';
    }
    llama_token *ids = malloc(sizeof(llama_token) * (size_t)(cap + n_gen));
    for (char *tok = strtok(argv[5], ","); tok; tok = strtok(NULL, ",")) {
        ids[n_prompt++] = (llama_token)atoi(tok);
    }
    if (n_prompt == 0 || n_gen <= 0) {
        fprintf(stderr, "need at least one prompt id and N > 0\n");
        return 2;
    }

    llama_log_set(quiet, NULL);
    llama_backend_init();
    struct llama_model *model = llama_model_load_from_file(argv[1], llama_model_default_params());
    if (!model) {
        fprintf(stderr, "cannot load %s\n", argv[1]);
        return 1;
    }
    struct llama_context_params cp = llama_context_default_params();
    cp.n_ctx = (uint32_t)(n_prompt + n_gen + 16);
    cp.n_batch = cp.n_ubatch = (uint32_t)(n_prompt + 16);
    cp.n_threads = cp.n_threads_batch = threads;
    cp.type_k = cp.type_v = kv;
    cp.flash_attn_type = LLAMA_FLASH_ATTN_TYPE_ENABLED;
    struct llama_context *ctx = llama_init_from_model(model, cp);
    if (!ctx) {
        fprintf(stderr, "cannot create a context\n");
        return 1;
    }
    const int vocab = llama_vocab_n_tokens(llama_model_get_vocab(model));
    float *margins = malloc(sizeof(float) * (size_t)n_gen);
    struct llama_batch batch = llama_batch_get_one(ids, n_prompt);
    for (int i = 0; i < n_gen; i++) {
        if (llama_decode(ctx, batch) != 0) {
            fprintf(stderr, "llama_decode failed at step %d\n", i);
            return 1;
        }
        const float *row = llama_get_logits_ith(ctx, -1);
        if (i == 0 && argc == 7) {
            FILE *f = fopen(argv[6], "wb");
            if (!f || fwrite(row, sizeof(float), (size_t)vocab, f) != (size_t)vocab || fclose(f) != 0) {
                fprintf(stderr, "cannot write %s\n", argv[6]);
                return 1;
            }
        }
        int best = 0, second = -1;
        float largest = 0.0f;
        for (int t = 0; t < vocab; t++) {
            largest = fmaxf(largest, fabsf(row[t]));
            if (t == 0) {
                continue;
            }
            if (row[t] > row[best]) {
                second = best;
                best = t;
            } else if (second < 0 || row[t] > row[second]) {
                second = t;
            }
        }
        margins[i] = (row[best] - row[second]) / largest;
        ids[n_prompt + i] = best;
        batch = llama_batch_get_one(&ids[n_prompt + i], 1);
    }
    for (int i = 0; i < n_gen; i++) {
        printf(i ? ",%d" : "%d", ids[n_prompt + i]);
    }
    printf("\n");
    for (int i = 0; i < n_gen; i++) {
        printf(i ? ",%.5f" : "%.5f", margins[i]);
    }
    printf("\n");
    llama_free(ctx);
    llama_model_free(model);
    return 0;
}
