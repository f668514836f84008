#!/usr/bin/env python3
"""Greedy continuations of llama.cpp and grok1 on the same GGUF, from the
same token ids, and where they part.

For each prompt (tokenised once, with the official tokenizer.model), llama.cpp
(`bench/llama_greedy.c`, built here against the llama.cpp tree given; f16 KV
cache, its default) and `grok1 generate --llama-cpp-gates --temperature 0`
(llama.cpp's renormalised gates; the default fast mode, whose K-quant and
legacy products quantise activations per block exactly as llama.cpp's CPU
backend does; `--kv-type f32`) continue the same ids. Two engines that round
differently (llama.cpp's flash attention multiplies in f16, its GELU reads an
f16 table; summation orders differ) can only be expected to agree where the
top-2 margin exceeds their rounding difference, so at the first differing
step the margin of both engines is read: the divergence is "allowed" when
either margin is below --margin (a fraction of that row's largest |logit|).
The text of the identical ids is printed once, decoded as grok1 does, and
how far the two engines' logits after the prompt lie apart (largest
difference as a fraction of the largest |logit|), which is what a margin
must exceed for agreement to be expected.

usage: bench/greedy_vs_llamacpp.py GROK1 LLAMA_CPP_DIR MODEL.gguf
           [--tokens N] [--margin F] [--threads T] [--prompt TEXT ...]
LLAMA_CPP_DIR holds include/, ggml/include/ and build/bin (libllama.so).
Needs numpy and sentencepiece. Exits 1 when a divergence happens where both
margins are above --margin.
"""

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np
import sentencepiece

PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):",
    "Once upon a time",
    "In 1969, the first humans",
    "import numpy as np\n",
    "Le chat est",
    "The quick brown fox",
    "Question: what is 2 + 2?\nAnswer:",
]

HERE = os.path.dirname(os.path.abspath(__file__))


def build_llama_greedy(llama_dir, out):
    subprocess.run(["gcc", "-O2", os.path.join(HERE, "llama_greedy.c"),
                    "-I" + os.path.join(llama_dir, "include"),
                    "-I" + os.path.join(llama_dir, "ggml", "include"),
                    "-L" + os.path.join(llama_dir, "build", "bin"),
                    "-lllama", "-lggml-base", "-lggml", "-lm",
                    "-Wl,-rpath," + os.path.join(llama_dir, "build", "bin"), "-o", out], check=True)


def grok1_row(grok1, model, ids):
    """grok1's logits after `ids`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "l.npy")
        subprocess.run([grok1, "logits", "--model", model, "--llama-cpp-gates", "--precision", "fast",
                        "--kv-type", "f32", "--tokens", ",".join(map(str, ids)), "--out", out],
                       capture_output=True, check=True)
        logits = np.load(out)
    return logits.reshape(-1, logits.shape[-1])[-1]


def margin(row):
    """Top-2 margin as a fraction of the row's largest |logit|."""
    top = np.sort(row)[::-1]
    return float(top[0] - top[1]) / float(np.abs(row).max())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("grok1")
    ap.add_argument("llama_dir")
    ap.add_argument("model")
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--margin", type=float, default=0.05,
                    help="top-2 margin, as a fraction of the row's largest |logit|, under which a "
                         "divergence is allowed (default 0.05)")
    ap.add_argument("--prompt", nargs="+", default=PROMPTS)
    args = ap.parse_args()
    sp = sentencepiece.SentencePieceProcessor(
        model_file=os.path.join(HERE, "..", "tests", "fixtures", "tokenizer", "tokenizer.model"))

    bad = agreed_total = steps_total = 0
    gaps = []
    with tempfile.TemporaryDirectory() as tmp:
        llama_greedy = os.path.join(tmp, "llama_greedy")
        build_llama_greedy(args.llama_dir, llama_greedy)
        for prompt in args.prompt:
            prompt_ids = sp.encode(prompt)
            joined = ",".join(map(str, prompt_ids))
            first = os.path.join(tmp, "first.f32")
            out = subprocess.run([llama_greedy, args.model, str(args.tokens), "f16", str(args.threads), joined,
                                  first], capture_output=True, text=True, check=True).stdout.splitlines()
            # The engines' logits after the same prompt ids: how far apart they round.
            theirs_row = np.fromfile(first, dtype=np.float32)
            ours_row = grok1_row(args.grok1, args.model, prompt_ids)
            gap = float(np.abs(theirs_row - ours_row).max() / np.abs(ours_row).max())
            gaps.append(gap)
            llama_ids = [int(t) for t in out[0].split(",")]
            llama_margins = [float(t) for t in out[1].split(",")]
            run = subprocess.run([args.grok1, "generate", "--model", args.model, "--llama-cpp-gates",
                                  "--kv-type", "f32", "--temperature", "0", "--ignore-eos",
                                  "--threads", str(args.threads), "--max-tokens", str(args.tokens),
                                  "--print-ids", "--tokens", joined],
                                 capture_output=True, text=True, check=True).stdout.splitlines()
            ids = [int(t) for t in run[-1].split(",")]
            agreed = next((i for i, (a, b) in enumerate(zip(ids, llama_ids)) if a != b), len(ids))
            agreed_total += agreed
            steps_total += len(ids)
            text = sp.decode(prompt_ids + ids[:agreed])[len(sp.decode(prompt_ids)):]
            if agreed == len(ids):
                print(f"{prompt!r}: all {agreed} ids identical: {text!r}; first-step logits differ by "
                      f"{gap:.4f} of the largest")
                continue
            ours = margin(grok1_row(args.grok1, args.model, prompt_ids + ids[:agreed]))
            theirs = llama_margins[agreed]
            allowed = min(ours, theirs) < args.margin
            bad += not allowed
            print(f"{prompt!r}: {agreed} of {len(ids)} ids identical ({text!r}); then grok1 {ids[agreed]}, "
                  f"llama.cpp {llama_ids[agreed]}; top-2 margins grok1 {ours:.4f}, llama.cpp {theirs:.4f} "
                  f"({'allowed' if allowed else 'BOTH ABOVE --margin'}); first-step logits differ by {gap:.4f} "
                  f"of the largest")
    print(f"summary: {agreed_total} of {steps_total} greedy ids identical over {len(args.prompt)} prompts; "
          f"{bad} divergence(s) where both margins exceed {args.margin}; first-step logits differ by "
          f"{min(gaps):.4f}-{max(gaps):.4f} of the largest (median {float(np.median(gaps)):.4f})")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
