#!/usr/bin/env python3
"""Digests of the tensors llama-quantize wrote in bench/quant_kl.sh's run
(its `llama-<type>.gguf` files, no imatrix), for tests/convert.rs's check that
our encoders write the same bytes:

    bench/quant_kl.sh LLAMA_CPP_BIN
    python3 tests/convert/llama_quantize_digests.py target/quant-kl \\
        > tests/fixtures/gguf/llama_quantize_digests.json

FNV-1a (64-bit) of the data of each tensor of layer 0, by type and tensor
name, with the ggml type llama-quantize chose for it; and under "types", the
type of every tensor of the q2_k_s (made with the imatrix, which
llama-quantize requires for it) and q3_k_m files, whose bytes differ from
ours in a few places.
"""
import json
import os
import sys

import numpy as np
from gguf import GGUFReader

TYPES = ["q2_k", "q4_k", "q5_k", "q6_k", "iq4_xs", "q4_k_m", "q5_k_m"]


def fnv1a64(data: bytes) -> str:
    h = 0xCBF29CE484222325
    for b in data:
        h ^= b
        h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return f"{h:016x}"


def main():
    folder = sys.argv[1]
    out = {}
    for t in TYPES:
        reader = GGUFReader(os.path.join(folder, f"llama-{t}.gguf"))
        out[t] = {
            tensor.name: [tensor.tensor_type.name, fnv1a64(np.asarray(tensor.data).tobytes())]
            for tensor in reader.tensors
            if tensor.name.startswith("blk.0.")
        }
    out["types"] = {
        mix: {t.name: t.tensor_type.name for t in GGUFReader(os.path.join(folder, f)).tensors}
        for mix, f in [("q2_k_s", "llama-im-q2_k_s.gguf"), ("q3_k_m", "llama-q3_k_m.gguf")]
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    print()


if __name__ == "__main__":
    main()
