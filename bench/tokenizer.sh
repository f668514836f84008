#!/usr/bin/env bash
# Tokenizer speed against SentencePiece, same corpus, same run (issue: tokenizer).
# Needs python3; installs the sentencepiece package into bench/cache/venv.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p bench/data bench/cache
[ -s bench/data/corpus.txt ] || python3 bench/make_tokenizer_corpus.py bench/data/corpus.txt --mb 12
if [ ! -x bench/cache/venv/bin/python ]; then
    python3 -m venv bench/cache/venv
    bench/cache/venv/bin/pip install -q sentencepiece==0.2.0
fi
cargo build --release -q -p grok1-tokenizer --example encode_bench
bench/cache/venv/bin/python bench/tokenizer_speed.py bench/data/corpus.txt target/release/examples/encode_bench "$@"
