#!/usr/bin/env python3
"""Reads GGUF files written by `grok1 convert` with llama.cpp's own gguf-py and
checks them against a reference GGUF written by gguf-py itself:

    python3 tests/convert/check_gguf.py REFERENCE.gguf CONVERTED.gguf [...]

For every converted file: the metadata llama.cpp's `grok` loader reads are
present with the reference's values, the tensor names, shapes (ggml order) and
count equal the reference's, and every tensor dequantised by gguf-py is within
its type's error of the reference tensor (exactly equal for F32). Exit 1 with
the reason on the first difference.
"""
import sys

import numpy as np
from gguf import GGUFReader, GGMLQuantizationType as T
from gguf.quants import dequantize

KEYS = ["general.architecture", "grok.embedding_length", "grok.feed_forward_length", "grok.block_count",
        "grok.attention.head_count", "grok.attention.head_count_kv", "grok.expert_count",
        "grok.expert_used_count", "grok.context_length", "grok.rope.freq_base",
        "grok.attention.layer_norm_rms_epsilon", "grok.attn_logit_softcapping",
        "grok.attention.output_scale", "grok.embedding_scale", "grok.logit_scale"]
# Relative RMS error allowed per type (of the tensor's RMS).
TOL = {T.F32: 0.0, T.F16: 1e-3, T.BF16: 5e-3, T.Q8_0: 0.02, T.Q6_K: 0.06, T.Q5_K: 0.1, T.Q4_K: 0.2,
       T.Q3_K: 0.4, T.Q2_K: 0.8, T.Q5_0: 0.12, T.Q5_1: 0.12, T.Q4_0: 0.25, T.IQ4_NL: 0.25,
       T.IQ4_XS: 0.25}


def field(reader, key):
    f = reader.get_field(key)
    if f is None:
        return None
    v = f.contents()
    return v


def tensors(reader):
    out = {}
    for t in reader.tensors:
        values = dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        out[t.name] = (list(int(n) for n in t.shape), t.tensor_type, values)
    return out


def main():
    ref_path, converted = sys.argv[1], sys.argv[2:]
    ref = GGUFReader(ref_path)
    ref_tensors = tensors(ref)
    for path in converted:
        r = GGUFReader(path)
        for k in KEYS:
            a, b = field(ref, k), field(r, k)
            ok = a == b if isinstance(a, str) else b is not None and np.isclose(a, b, rtol=1e-6)
            if not ok:
                sys.exit(f"{path}: metadata {k} = {b!r}, reference {a!r}")
        got = tensors(r)
        if sorted(got) != sorted(ref_tensors):
            sys.exit(f"{path}: tensor names differ: {sorted(set(got) ^ set(ref_tensors))}")
        worst = {}
        for name, (shape, ttype, values) in got.items():
            rshape, _, rvalues = ref_tensors[name]
            if shape != rshape:
                sys.exit(f"{path}: {name}: shape {shape}, reference {rshape}")
            rms = float(np.sqrt(np.mean(rvalues.astype(np.float64) ** 2))) or 1.0
            err = float(np.sqrt(np.mean((values.astype(np.float64) - rvalues) ** 2))) / rms
            if err > TOL[T(ttype)]:
                sys.exit(f"{path}: {name} ({T(ttype).name}): relative RMS error {err:.3e} > {TOL[T(ttype)]}")
            worst[T(ttype).name] = max(worst.get(T(ttype).name, 0.0), err)
        summary = ", ".join(f"{k} {v:.2e}" for k, v in sorted(worst.items()))
        print(f"{path}: {len(got)} tensors read by gguf-py match {ref_path} (worst relative RMS error: {summary})")


if __name__ == "__main__":
    main()
