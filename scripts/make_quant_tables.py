#!/usr/bin/env python3
"""Writes crates/grok1/src/quant/tables.rs: the lookup tables that define the
i-quant, ternary and FP4 block formats (grids, sign patterns, non-linear
levels), taken from llama.cpp's `gguf` Python package so that they are the
format's own data, not a transcription. Run from the repository root after
`pip install gguf==0.19.0 numpy`:

    python3 scripts/make_quant_tables.py

The output is committed; rerunning it must leave the file unchanged.
"""
import os
from importlib.metadata import version

import numpy as np
from gguf import quants

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "crates", "grok1", "src", "quant", "tables.rs")


def grid_rows(cls):
    """The grid of `cls` as one integer per row: element j in byte j (little-endian)."""
    cls.init_grid()
    n, width = cls.grid_shape
    values = cls.grid.reshape(n, width).astype(np.int64)
    assert values.min() >= -128 and values.max() < 256, cls.__name__
    as_bytes = (values & 0xFF).astype(np.uint64)
    rows = np.zeros(n, dtype=np.uint64)
    for j in range(width):
        rows |= as_bytes[:, j] << np.uint64(8 * j)
    return [int(r) for r in rows]


def table(name, rust_type, values, fmt, per_line, doc):
    lines = [f"/// {doc}", f"pub(crate) static {name}: [{rust_type}; {len(values)}] = ["]
    for i in range(0, len(values), per_line):
        lines.append("    " + " ".join(fmt(v) + "," for v in values[i:i + per_line]))
    lines.append("];")
    return "\n".join(lines)


def main():
    hex64 = lambda v: f"0x{v:016x}"
    hex32 = lambda v: f"0x{v:08x}"
    dec = lambda v: str(v)
    parts = [
        "//! Lookup tables of ggml's i-quant and FP4 block formats, generated from\n"
        f"//! gguf-py {version('gguf')} "
        "by scripts/make_quant_tables.py: do not edit.",
        table("KSIGNS", "u8", list(np.frombuffer(quants.IQ2_XXS.ksigns, dtype=np.uint8)), dec, 16,
              "Sign patterns of the 2- and 3-bit i-quants: 7 stored bits, the eighth makes the count of minus signs even."),
        table("KVALUES_IQ4NL", "i8", list(quants.IQ4_NL.kvalues), dec, 16,
              "The 16 non-linear levels of IQ4_NL and IQ4_XS."),
        table("KVALUES_MXFP4", "i8", list(quants.MXFP4.kvalues), dec, 16,
              "E2M1 values, doubled (the block scale is halved to match), of MXFP4 and NVFP4."),
        table("IQ2XXS_GRID", "u64", grid_rows(quants.IQ2_XXS), hex64, 4,
              "IQ2_XXS: 256 rows of 8 magnitudes, one per byte."),
        table("IQ2XS_GRID", "u64", grid_rows(quants.IQ2_XS), hex64, 4,
              "IQ2_XS: 512 rows of 8 magnitudes, one per byte."),
        table("IQ2S_GRID", "u64", grid_rows(quants.IQ2_S), hex64, 4,
              "IQ2_S: 1024 rows of 8 magnitudes, one per byte."),
        table("IQ3XXS_GRID", "u32", grid_rows(quants.IQ3_XXS), hex32, 8,
              "IQ3_XXS: 256 rows of 4 magnitudes, one per byte."),
        table("IQ3S_GRID", "u32", grid_rows(quants.IQ3_S), hex32, 8,
              "IQ3_S: 512 rows of 4 magnitudes, one per byte."),
        table("IQ1S_GRID", "u64", grid_rows(quants.IQ1_S), hex64, 4,
              "IQ1_S and IQ1_M: 2048 rows of 8 values in {-1, 0, 1}, one i8 per byte."),
    ]
    with open(OUT, "w") as f:
        f.write("\n\n".join(parts) + "\n")
    print("wrote", OUT)


if __name__ == "__main__":
    main()
