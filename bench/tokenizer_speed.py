#!/usr/bin/env python3
"""Tokenizer encode throughput, single-threaded, in one run: SentencePiece (the
C++ library through its Python package) against grok1-tokenizer, on the same
corpus and machine. Both must produce exactly the same ids (checked by count,
sum and an FNV hash of every id in order).

    python3 bench/tokenizer_speed.py CORPUS ENCODE_BENCH_BINARY [--repeat R]

Run by bench/tokenizer.sh, which builds the binary and the corpus.
"""
import argparse
import json
import platform
import statistics
import subprocess
import time

import sentencepiece as spm


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus")
    ap.add_argument("binary")
    ap.add_argument("--model", default="tests/fixtures/tokenizer/tokenizer.model")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    with open(args.corpus, encoding="utf-8") as f:
        lines = f.read().split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    nbytes = sum(len(l.encode("utf-8")) for l in lines)
    sp = spm.SentencePieceProcessor(model_file=args.model)
    # One batch call with one thread: the C++ loop, no per-line Python overhead.
    ids = sp.encode(lines, num_threads=1)
    count = sum(len(x) for x in ids)
    total = sum(sum(x) for x in ids)
    h = 0xCBF29CE484222325
    for x in ids:
        for i in x:
            h = ((h ^ i) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    rates = []
    for _ in range(args.repeat):
        start = time.perf_counter()
        sp.encode(lines, num_threads=1)
        rates.append(nbytes / 1e6 / (time.perf_counter() - start))
    spm_best, spm_median = max(rates), statistics.median(rates)

    out = subprocess.run([args.binary, args.corpus, "--repeat", str(args.repeat), "--model", args.model],
                         check=True, capture_output=True, text=True).stdout
    ours = json.loads(out.strip().splitlines()[-1])
    same = (ours["ids"], ours["id_sum"], ours["id_hash"]) == (count, total, h)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {platform.platform()}")
    print(f"corpus: {args.corpus}: {nbytes / 1e6:.1f} MB, {len(lines)} lines, {count} ids")
    print(f"identical ids: {'yes' if same else 'NO'}")
    print("| tokenizer | MB/s best | MB/s median |")
    print("| --- | --- | --- |")
    print(f"| sentencepiece {spm.__version__} (C++, 1 thread) | {spm_best:.2f} | {spm_median:.2f} |")
    print(f"| grok1-tokenizer (Rust, 1 thread) | {ours['mb_per_s_best']:.2f} | {ours['mb_per_s_median']:.2f} |")
    print(f"ratio grok1/sentencepiece (median): {ours['mb_per_s_median'] / spm_median:.2f}x")
    if not same:
        raise SystemExit("the two tokenizers produced different ids")


main()
