#!/usr/bin/env python3
"""Predicted batch-1 decode speed of the full Grok-1 split over N machines
(tensor parallel over MPI, issue 25), from the per-rank read roofline and the
cost of the collectives a token makes.

A decoded token reads every weight a token uses once (decode is bound by
memory reads: bench/RESULTS.md) and makes, per layer, one all-reduce after
attention and one after the MoE, one for the vocabulary-split embedding, and
one gather of the logits. grok1's all-reduce gathers every rank's whole row
and adds the parts in rank order (so every rank holds the same bits), so each
rank receives (N - 1) rows per all-reduce.

Time of one collective over a link of bandwidth L with per-message latency a,
recursive doubling (OpenMPI's choice for these sizes):
    ceil(log2 N) * a + (received bytes) / L

usage: bench/predict_scaleout.py [--fraction-int8 F] [--fraction-q4k F]
                                 [--shm-allreduce-us T] [--markdown]
Every input has a default stated in --help; the defaults are the figures
measured in bench/RESULTS.md.
"""

import argparse
import math

# Grok-1 (shared/docs/grok1-model.md).
LAYERS = 64
HIDDEN = 6144
Q_HEADS, KV_HEADS, HEAD_DIM = 48, 8, 128
FFN = 32768
ACTIVE_EXPERTS = 2
VOCAB = 131072


def weights_read_per_token(bits_per_weight: float) -> float:
    """Bytes of weights one decoded token reads (two experts per layer)."""
    attention = HIDDEN * (Q_HEADS * HEAD_DIM) * 2 + HIDDEN * (KV_HEADS * HEAD_DIM) * 2
    experts = ACTIVE_EXPERTS * 3 * HIDDEN * FFN
    output = VOCAB * HIDDEN  # the output projection; the embedding reads one row
    params = LAYERS * (attention + experts) + output
    return params * bits_per_weight / 8


def weights_held(bits_per_weight: float) -> float:
    """Bytes of the whole model (all eight experts; the embedding is tied)."""
    attention = HIDDEN * (Q_HEADS * HEAD_DIM) * 2 + HIDDEN * (KV_HEADS * HEAD_DIM) * 2
    experts = 8 * 3 * HIDDEN * FFN
    return (LAYERS * (attention + experts) + VOCAB * HIDDEN) * bits_per_weight / 8


def comm_seconds(n: int, link_gbit: float, latency_us: float) -> tuple[float, float]:
    """Seconds of collectives per token at n ranks: (latency part, bandwidth part)."""
    if n == 1:
        return 0.0, 0.0
    row = HIDDEN * 4
    all_reduces = 2 * LAYERS + 1
    received = all_reduces * (n - 1) * row + (n - 1) * (VOCAB // n) * 4
    steps = math.ceil(math.log2(n))
    latency = (all_reduces + 1) * steps * latency_us * 1e-6
    bandwidth = received / (link_gbit * 1e9 / 8)
    return latency, bandwidth


def predict(n, bw_gbs, fraction, bits, link_gbit, latency_us):
    compute = weights_read_per_token(bits) / n / (bw_gbs * 1e9 * fraction)
    lat, band = comm_seconds(n, link_gbit, latency_us)
    comm = lat + band
    return 1.0 / (compute + comm), comm / (compute + comm), compute, lat, band


def link_for_ten_percent(n, compute, latency_us):
    """Link speed (Gb/s) at which the collectives are 10% of a token, or None
    when the latency alone exceeds that."""
    budget = compute / 9.0  # comm / (compute + comm) = 0.1
    lat, band = comm_seconds(n, 1.0, latency_us)  # band at 1 Gb/s
    if lat >= budget:
        return None
    return band / (budget - lat)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bandwidth", type=float, nargs="+", default=[30.0, 100.0],
                    help="memory read bandwidth of one machine, GB/s (default: 30 for a 16-vCPU cloud "
                         "machine, 100 for one socket of an 8-channel DDR4 server)")
    ap.add_argument("--fraction-int8", type=float, default=0.80,
                    help="fraction of the read roofline batch-1 decode reaches on int8 weights "
                         "(measured: 0.76-0.85 on two full-width layers, bench/RESULTS.md)")
    ap.add_argument("--fraction-q4k", type=float, default=0.72,
                    help="same on Q4_K (measured: 0.72 on Q4_K_M of the d1024 shape)")
    ap.add_argument("--latency-us", type=float, nargs=3, default=[30.0, 20.0, 8.0],
                    metavar=("A10", "A25", "A100"),
                    help="per-message latency of 10, 25 and 100 Gb/s links, microseconds "
                         "(TCP over Ethernet; the 2-rank shared-memory all-reduce of one row "
                         "measured 9.1 us here)")
    args = ap.parse_args()

    links = [(10.0, args.latency_us[0]), (25.0, args.latency_us[1]), (100.0, args.latency_us[2])]
    kinds = [("int8 (official checkpoint)", 8.0, args.fraction_int8),
             ("Q4_K", 4.5, args.fraction_q4k)]
    print(f"weights read per token: int8 {weights_read_per_token(8.0) / 1e9:.1f} GB, "
          f"Q4_K {weights_read_per_token(4.5) / 1e9:.1f} GB")
    print(f"whole model: int8 {weights_held(8.0) / 1e9:.0f} GB, Q4_K {weights_held(4.5) / 1e9:.0f} GB")
    print()
    print("| weights | machines | weights per machine | GB/s each | link (latency) | tokens/s | "
          "communication share | link for 10% communication |")
    print("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
    for name, bits, fraction in kinds:
        for bw in args.bandwidth:
            for n in (1, 2, 4, 8):
                for link, lat in (links if n > 1 else links[:1]):
                    tps, share, compute, _, _ = predict(n, bw, fraction, bits, link, lat)
                    need = link_for_ten_percent(n, compute, lat) if n > 1 else None
                    need_s = "-" if n == 1 else (f"{need:.1f} Gb/s" if need else "latency-bound")
                    link_s = "-" if n == 1 else f"{link:.0f} Gb/s ({lat:.0f} us)"
                    held = weights_held(bits) / n / 1e9
                    print(f"| {name} | {n} | {held:.0f} GB | {bw:.0f} | {link_s} | {tps:.2f} | {100 * share:.1f}% | {need_s} |")


if __name__ == "__main__":
    main()
