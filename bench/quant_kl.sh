#!/usr/bin/env bash
# KL divergence to f32 of our quantised GGUFs beside llama-quantize's, on one
# random Grok-shaped model, all scored by the same forward pass (grok1 logits,
# f32 activations): for each type, ours, ours with our imatrix, llama-quantize,
# llama-quantize with our imatrix (which also shows llama-quantize reads the
# imatrix files we write).
#
# Usage: bench/quant_kl.sh LLAMA_CPP_BIN [TYPES]
#   LLAMA_CPP_BIN: a folder holding llama-quantize (bench/compare_llamacpp.sh
#   builds one under target/llamacpp-bench/.../build/bin)
#   TYPES: space-separated, default "q2_k q3_k q4_k q5_k q6_k q4_0 iq4_xs
#   q2_k_s q3_k_m q4_k_m q5_k_m" (single types are llama-quantize --pure)
# Environment: GROK1 (default target/release/grok1), QUANT_KL_DIR (default
# target/quant-kl) for the model and the files; PYTHON with numpy.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:?usage: bench/quant_kl.sh LLAMA_CPP_BIN [TYPES]}
types=${2:-"q2_k q3_k q4_k q5_k q6_k q4_0 iq4_xs q2_k_s q3_k_m q4_k_m q5_k_m"}
grok1=${GROK1:-target/release/grok1}
dir=${QUANT_KL_DIR:-target/quant-kl}
python=${PYTHON:-python3}
mkdir -p "$dir"

# bench/grok-shape-d256.json: d 256, 8 experts of 512, 8 query heads over 2
# key/value heads, 4 layers and the real vocabulary (so llama.cpp finds the
# tokenizer in the GGUF).
cp bench/grok-shape-d256.json "$dir/config.json"
[ -d "$dir/ckpt" ] || "$grok1" init --config "$dir/config.json" --seed 7 --out "$dir/ckpt"
[ -f "$dir/f32.gguf" ] || "$grok1" convert --model "$dir/ckpt" --format gguf --type f32 --out "$dir/f32.gguf"
# Calibration (README.md) and evaluation (the paragraph below) texts differ.
[ -f "$dir/ours.imatrix.gguf" ] || "$grok1" imatrix --model "$dir/f32.gguf" --data README.md \
    --out "$dir/ours.imatrix.gguf" --chunk-size 256 --chunks 24 --precision f32
prompt="Grok-1 is a mixture-of-experts language model with 314 billion parameters. \
Each token is routed to two of eight experts in every one of its 64 layers, so about a quarter \
of the weights are active for a given token. The released weights are stored as 8-bit integers \
with a scale per column, and most people who run the model locally read a GGUF file instead, \
quantised to between two and six bits per weight, which fits a machine with 128 to 256 GB of \
memory. How much such a file loses is measured here as the divergence of its next-token \
distribution from the full-precision one, averaged over every position of this paragraph."

logits() { "$grok1" logits --model "$1" --prompt "$prompt" --precision f32 --out "$2" 2>/dev/null; }
[ -f "$dir/f32.npy" ] || logits "$dir/f32.gguf" "$dir/f32.npy"
kl() {
    logits "$1" "$dir/q.npy"
    "$python" - "$dir/f32.npy" "$dir/q.npy" <<'EOF'
import sys
import numpy as np
p, q = (np.load(f).astype(np.float64) for f in sys.argv[1:3])
lp = p - p.max(1, keepdims=True); lp -= np.log(np.exp(lp).sum(1, keepdims=True))
lq = q - q.max(1, keepdims=True); lq -= np.log(np.exp(lq).sum(1, keepdims=True))
print(f"{(np.exp(lp) * (lp - lq)).sum(1).mean():.3e}")
EOF
}
llama_name() { echo "$1" | tr a-z A-Z; }

printf "%-8s %12s %12s %14s %14s\n" type ours ours+imatrix llama-quantize llama+imatrix
for t in $types; do
    pure=--pure
    case $t in *_s|*_m) pure= ;; esac
    "$grok1" convert --model "$dir/f32.gguf" --format gguf --type "$t" --out "$dir/ours-$t.gguf" --force 2>/dev/null
    "$grok1" convert --model "$dir/f32.gguf" --format gguf --type "$t" --imatrix "$dir/ours.imatrix.gguf" \
        --out "$dir/ours-im-$t.gguf" --force 2>/dev/null
    ours=$(kl "$dir/ours-$t.gguf")
    ours_im=$(kl "$dir/ours-im-$t.gguf")
    # llama-quantize refuses Q2_K_S without an imatrix.
    llama=-
    if "$bin/llama-quantize" $pure "$dir/f32.gguf" "$dir/llama-$t.gguf" "$(llama_name "$t")" > "$dir/llama-$t.log" 2>&1; then
        llama=$(kl "$dir/llama-$t.gguf")
    fi
    "$bin/llama-quantize" $pure --imatrix "$dir/ours.imatrix.gguf" "$dir/f32.gguf" "$dir/llama-im-$t.gguf" \
        "$(llama_name "$t")" > "$dir/llama-im-$t.log" 2>&1
    llama_im=$(kl "$dir/llama-im-$t.gguf")
    printf "%-8s %12s %12s %14s %14s\n" "$t" "$ours" "$ours_im" "$llama" "$llama_im"
done
rm -f "$dir/q.npy"
