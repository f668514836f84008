#!/usr/bin/env bash
# Checks `grok1 bench`'s memory read probe against a STREAM-style read loop in
# C (bench/stream_read.c, built with -O3 -march=native, OpenMP), on the same
# buffer size and thread count, alternating R rounds, and prints both and
# their ratio. The probe should read within a few percent of the C loop: the
# roofline fractions `grok1 bench` prints divide by it.
#
# Usage: bench/stream_read.sh [--threads N] [--mib M] [--repeat R]
# Needs gcc with OpenMP; builds grok1 in release mode.
set -euo pipefail
cd "$(dirname "$0")/.."
threads=$(nproc)
mib=1024
repeat=3
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --mib) mib=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
done
out=target/stream-read
mkdir -p "$out"
gcc -O3 -march=native -fopenmp bench/stream_read.c -o "$out/stream_read"
cargo build --release -q -p grok1-cli
c=() g=()
for _ in $(seq "$repeat"); do
    c+=("$(OMP_NUM_THREADS=$threads OMP_PROC_BIND=spread "$out/stream_read" $((mib << 20)) | cut -d' ' -f1)")
    # The demo model, a token of decode: the run is the probe (read 5 times
    # before and after the test, best kept).
    g+=("$(target/release/grok1 bench --threads "$threads" --bandwidth-mib "$mib" \
        --prompt-tokens 0 --gen-tokens 1 --repeat 1 --json 2>/dev/null |
        python3 -c 'import json,sys; print(json.loads(sys.stdin.readlines()[-1])["mem_bandwidth_gbs"])')")
done
python3 - "${c[*]}" "${g[*]}" "$threads" "$mib" <<'PY'
import statistics, sys
c = [float(v) for v in sys.argv[1].split()]
g = [float(v) for v in sys.argv[2].split()]
mc, mg = statistics.median(c), statistics.median(g)
print(f"threads {sys.argv[3]}, buffer {sys.argv[4]} MiB, {len(c)} alternating rounds (median, min-max)")
print(f"C STREAM-style read (-O3 -march=native): {mc:.1f} GB/s ({min(c):.1f}-{max(c):.1f})")
print(f"grok1 bench probe:                        {mg:.1f} GB/s ({min(g):.1f}-{max(g):.1f})")
print(f"probe / C: {mg / mc:.3f}")
PY
