#!/usr/bin/env python3
"""Per-turn time to first token of a `grok1 chat` conversation, with the
prefix cache (each turn computes only its new message) and without it (each
turn recomputes the whole conversation).

    python3 bench/chat_turns.py target/release/grok1 [--turns 10] [--max-tokens 60] [-- extra chat flags]

Pipes `--turns` messages of about 20 tokens into `grok1 chat --timings
--temperature 0` (the demo model unless a --model is passed after `--`),
reads the line `--timings` prints after each reply (prompt tokens, tokens from
the cache, time to first token) and prints one row per turn for both runs,
then the range of turns 2 to N (the first turn has only its own message)
and the last turn's TTFT over the second's. Uses only the Python
standard library.
"""
import argparse
import re
import subprocess
import sys

LINE = re.compile(r"\[prompt (\d+) tokens, (\d+) from the cache; first token after ([0-9.]+) ms")


def run(binary, turns, max_tokens, extra):
    messages = "".join(f"Tell me about the number {i} and why it matters to sailors and bakers.\n"
                       for i in range(1, turns + 1))
    cmd = [binary, "chat", "--timings", "--temperature", "0", "--max-tokens", str(max_tokens)] + extra
    out = subprocess.run(cmd, input=messages.encode(), capture_output=True, timeout=3600)
    err = out.stderr.decode(errors="replace")
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{err}")
    rows = [(int(p), int(c), float(t)) for p, c, t in LINE.findall(err)]
    if len(rows) != turns:
        sys.exit(f"expected {turns} timing lines, got {len(rows)}:\n{err}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("binary")
    ap.add_argument("--turns", type=int, default=10)
    ap.add_argument("--max-tokens", type=int, default=60)
    ap.add_argument("extra", nargs="*", help="more chat flags (after --)")
    args = ap.parse_args()
    cached = run(args.binary, args.turns, args.max_tokens, args.extra)
    plain = run(args.binary, args.turns, args.max_tokens, args.extra + ["--no-prefix-cache"])
    print("turn  prompt  cached  TTFT cached (ms)  TTFT --no-prefix-cache (ms)")
    for i, ((p, c, t), (p2, _, t2)) in enumerate(zip(cached, plain), 1):
        print(f"{i:4}  {p:6}  {c:6}  {t:16.1f}  {t2:27.1f}" + ("" if p == p2 else f"  (prompt {p2})"))
    span = lambda rows: f"{min(r[2] for r in rows[1:]):.1f} to {max(r[2] for r in rows[1:]):.1f} ms"
    print(f"turns 2-{args.turns}: TTFT {span(cached)} with the cache, {span(plain)} without; "
          f"last turn / second turn: {cached[-1][2] / cached[1][2]:.2f}x with, {plain[-1][2] / plain[1][2]:.2f}x without")


if __name__ == "__main__":
    main()
