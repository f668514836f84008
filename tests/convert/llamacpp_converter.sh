#!/usr/bin/env bash
# Checks that a GGUF written by llama.cpp's own converter (convert_hf_to_gguf.py,
# GrokModel) loads in grok1 and reproduces the official reference's logits.
# Not part of CI: the converter needs torch and transformers.
#
#   tests/convert/llamacpp_converter.sh PYTHON LLAMA_CPP_DIR [GROK1_BINARY]
#
# PYTHON: an interpreter with torch, transformers, sentencepiece, numpy and
# llama.cpp's gguf-py installed; LLAMA_CPP_DIR: a llama.cpp source tree (e.g.
# the one vendored in PyPI's llama-cpp-python sdist, vendor/llama.cpp).
#
# Steps: the tiny-vocab fixture model (official ckpt-0) -> `grok1 convert
# --format safetensors` (keyfan/grok-1-hf layout, what the converter expects)
# plus the official tokenizer.model -> convert_hf_to_gguf.py --outtype f32 ->
# `grok1 logits` and `grok1 generate` on that GGUF against the reference's
# prefill logits (tolerance 1e-5, the fixture's) and greedy ids.
set -euo pipefail
PY=${1:?python interpreter}
LLAMA=${2:?llama.cpp source directory}
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
BIN=${3:-$ROOT/target/release/grok1}
FIX="$ROOT/tests/fixtures/models/tiny-vocab"
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

"$BIN" convert --model "$FIX" --format safetensors --type f32 --out "$WORK/hf"
cp "$ROOT/crates/grok1-tokenizer/assets/tokenizer.model" "$WORK/hf/"
"$PY" "$LLAMA/convert_hf_to_gguf.py" "$WORK/hf" --outtype f32 --outfile "$WORK/tiny-vocab.gguf" 2>&1 | tail -3
"$BIN" inspect --model "$WORK/tiny-vocab.gguf" | grep -E "general.architecture|grok.expert|tokenizer.ggml.model|tensors,"

status=0
for s in 0 1 2; do
    ids=$("$PY" -c "import numpy as np; print(','.join(map(str, np.load('$FIX/prefill_seq${s}_tokens.npy'))))")
    "$BIN" logits --model "$WORK/tiny-vocab.gguf" --tokens "$ids" --out "$WORK/logits$s.npy" 2>/dev/null
    "$PY" - "$FIX" "$WORK/logits$s.npy" "$s" <<'PY' || status=1
import sys
import numpy as np
fix, got, s = sys.argv[1], np.load(sys.argv[2]), sys.argv[3]
cols = np.load(f"{fix}/logit_cols.npy")
want = np.load(f"{fix}/prefill_seq{s}_logits_f32.npy")
err = float(np.abs(got[:, cols] - want).max())
print(f"prefill seq{s}: max abs error {err:.3e} against the reference (tolerance 1e-5)")
sys.exit(0 if err <= 1e-5 else 1)
PY
done
for j in 0 1; do
    ids=$("$PY" -c "import numpy as np; print(','.join(map(str, np.load('$FIX/decode_prompt${j}_tokens.npy'))))")
    want=$("$PY" -c "import numpy as np; print(','.join(map(str, np.load('$FIX/decode_prompt${j}_ids_f32.npy'))))")
    got=$("$BIN" generate --model "$WORK/tiny-vocab.gguf" --tokens "$ids" --max-tokens 16 --print-ids 2>/dev/null | tail -1)
    if [ "$got" = "$want" ]; then echo "prompt $j: 16 greedy ids equal the reference's"; else echo "prompt $j: greedy ids differ: $got vs $want"; status=1; fi
done
# Text through the vocabulary llama.cpp's converter stored in the file.
"$BIN" generate --model "$WORK/tiny-vocab.gguf" --prompt "The answer to life the universe and everything is of course" --max-tokens 16 2>/dev/null
exit $status
