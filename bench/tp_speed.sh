#!/usr/bin/env bash
# Tensor parallel against one process on the same machine, in the same run:
# alternates R rounds of
#   grok1 bench --threads N*T                   (one process)
#   mpirun -np N grok1 bench --threads T        (N ranks of T threads)
# on MODEL with the same binary, and prints the medians of prompt processing
# and decode, their ratios, and the split's communication share and bytes
# sent per generated token (rank 0's figures).
#
# usage: bench/tp_speed.sh GROK1 MODEL [N] [T] [R]
#   GROK1: a binary built with `--features mpi` (it runs without mpirun too)
#   N ranks (default 2), T threads per rank (default 1), R rounds (default 3)
# environment: BENCH_ARGS (default "--prompt-tokens 128 --gen-tokens 32
#   --repeat 2 --bandwidth-mib 256"), MPIRUN_ARGS (extra mpirun flags, e.g.
#   "--allow-run-as-root")
set -euo pipefail
[ $# -ge 2 ] || { sed -n '2,16p' "$0" >&2; exit 2; }
grok1=$1 model=$2 n=${3:-2} t=${4:-1} rounds=${5:-3}
[ -x "$grok1" ] || { echo "tp_speed: $grok1 is not an executable" >&2; exit 2; }
[ -e "$model" ] || { echo "tp_speed: no model at $model" >&2; exit 2; }
command -v mpirun >/dev/null || { echo "tp_speed: mpirun is not installed" >&2; exit 2; }
read -r -a args <<< "${BENCH_ARGS:---prompt-tokens 128 --gen-tokens 32 --repeat 2 --bandwidth-mib 256}"
read -r -a mpi_args <<< "${MPIRUN_ARGS:-}"
results=$(mktemp)
trap 'rm -f "$results"' EXIT
for r in $(seq 1 "$rounds"); do
    echo "-- round $r/$rounds ($(uptime | sed 's/.*load average/load average/'))" >&2
    "$grok1" bench --model "$model" --threads $((n * t)) "${args[@]}" --json 2>/dev/null \
        | tail -1 | sed 's/^/one /' >> "$results"
    mpirun -np "$n" "${mpi_args[@]}" "$grok1" bench --model "$model" --threads "$t" "${args[@]}" --json \
        2>/dev/null | tail -1 | sed 's/^/split /' >> "$results"
done
RESULTS=$results N=$n T=$t python3 - <<'EOF'
import json, os, statistics
rows = {"one": [], "split": []}
for line in open(os.environ["RESULTS"]):
    kind, _, js = line.partition(" ")
    rows[kind].append(json.loads(js))
n, t = int(os.environ["N"]), int(os.environ["T"])
med = lambda k, key: statistics.median(r[key] for r in rows[k])
span = lambda k, key: f"{min(r[key] for r in rows[k]):.2f} - {max(r[key] for r in rows[k]):.2f}"
print(f"| run | pp t/s | tg t/s | communication (prompt / decode) | bytes sent per token |")
print("| --- | --- | --- | --- | --- |")
print(f"| one process, {n * t} threads | {med('one', 'prompt_tokens_per_s'):.2f} ({span('one', 'prompt_tokens_per_s')}) "
      f"| {med('one', 'gen_tokens_per_s'):.2f} ({span('one', 'gen_tokens_per_s')}) | | |")
pp = med("split", "prompt_tokens_per_s") / med("one", "prompt_tokens_per_s")
tg = med("split", "gen_tokens_per_s") / med("one", "gen_tokens_per_s")
print(f"| mpirun -np {n}, {t} thread(s) each | {med('split', 'prompt_tokens_per_s'):.2f} ({span('split', 'prompt_tokens_per_s')}) "
      f"| {med('split', 'gen_tokens_per_s'):.2f} ({span('split', 'gen_tokens_per_s')}) "
      f"| {med('split', 'prompt_comm_fraction'):.1%} / {med('split', 'gen_comm_fraction'):.1%} "
      f"| {med('split', 'gen_comm_bytes_per_token'):,.0f} |")
print(f"split / one process: pp {pp:.2f}x, tg {tg:.2f}x")
EOF
