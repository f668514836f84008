#!/usr/bin/env bash
# grok1's batch-1 product kernels beside llama.cpp's own, per GGML type, on
# one thread with the weight rows in cache: `kernel_bench`'s "in cache m=1"
# line against llama.cpp's vec_dot for the type (bench/llamacpp_vec_dot.c,
# built against the llama.cpp tree of bench/compare_llamacpp.sh), alternating
# R rounds, each side the best pass over SECS seconds; prints each side's
# best and median GB/s of weights and the ratio of the medians. The
# arithmetic alone, where the whole-process comparison also holds threads,
# memory and the rest of the model; a ratio under 1 names a kernel to work on.
#
# Usage: bench/kernels_llamacpp.sh [--repeat R] [--k K] [--kib KIB] [--secs SECS] [TYPES]
#   TYPES: comma-separated (default every K-quant, legacy and i-quant type
#          both engines run: q8_0,q6_k,q5_k,q4_k,q3_k,q2_k,q4_0,q4_1,q5_0,q5_1,
#          iq4_nl,iq4_xs,iq3_s,iq3_xxs,iq2_s,iq2_xs,iq2_xxs,iq1_s,iq1_m)
#   K: values a row (default 1024, the d1024 shape's), KIB: KiB of rows
#   (default 256: inside a 512 KiB L2), SECS: seconds a side a round (0.5)
# Environment: GROK1_BENCH_CACHE / LLAMA_CPP_DIR as in compare_llamacpp.sh
# (run it once first: it builds llama.cpp).
set -euo pipefail
cd "$(dirname "$0")/.."

repeat=3
k=1024
kib=256
secs=0.5
types=q8_0,q6_k,q5_k,q4_k,q3_k,q2_k,q4_0,q4_1,q5_0,q5_1,iq4_nl,iq4_xs,iq3_s,iq3_xxs,iq2_s,iq2_xs,iq2_xxs,iq1_s,iq1_m
while [ $# -gt 0 ]; do
    case "$1" in
        --repeat) repeat=$2; shift 2 ;;
        --k) k=$2; shift 2 ;;
        --kib) kib=$2; shift 2 ;;
        --secs) secs=$2; shift 2 ;;
        -*) echo "kernels_llamacpp: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
        *) types=$1; shift ;;
    esac
done

cache=${GROK1_BENCH_CACHE:-target/llamacpp-bench}
src=${LLAMA_CPP_DIR:-$cache/llama_cpp_python-0.3.36/vendor/llama.cpp}
lib=
for b in build build-noamx; do
    [ -f "$src/$b/bin/libggml-cpu.so" ] && lib=$src/$b/bin
done
if [ -z "$lib" ]; then
    echo "kernels_llamacpp: no llama.cpp build under $src (run bench/compare_llamacpp.sh once)" >&2
    exit 2
fi
out=target/kernels-llamacpp
mkdir -p "$out"
gcc -O2 bench/llamacpp_vec_dot.c -I"$src/ggml/include" -L"$lib" -lggml-cpu -lggml-base \
    -Wl,-rpath,"$lib" -o "$out/llamacpp_vec_dot"
cargo build --release -q -p grok1 --example kernel_bench
ours=target/release/examples/kernel_bench
echo "one thread, rows of $k values in $kib KiB, best pass over ${secs}s a side, $repeat alternating rounds"
echo "type: grok1 best/median GB/s, llama.cpp best/median, grok1/llama.cpp (medians)"
for t in ${types//,/ }; do
    g=() l=()
    for _ in $(seq "$repeat"); do
        run=$(KERNEL_BENCH_CACHE_SECS=$secs KERNEL_BENCH_MIB=4 KERNEL_BENCH_CACHE_KIB=$kib \
            KERNEL_BENCH_FORMAT=$t RAYON_NUM_THREADS=1 "$ours" "$k" 256 1 1)
        g+=("$(echo "$run" | grep 'in cache.*m=1:' | head -1 | grep -oE '[0-9.]+ GB/s' | cut -d' ' -f1)")
        l+=("$("$out/llamacpp_vec_dot" "$t" "$k" "$kib" "$secs" | grep -oE '[0-9.]+ GB/s' | cut -d' ' -f1)")
    done
    python3 - "$t" "${g[*]}" "${l[*]}" <<'P'
import statistics, sys
t, g, l = sys.argv[1], [float(v) for v in sys.argv[2].split()], [float(v) for v in sys.argv[3].split()]
mg, ml = statistics.median(g), statistics.median(l)
print(f"{t:8s} grok1 {max(g):6.2f}/{mg:6.2f}  llama.cpp {max(l):6.2f}/{ml:6.2f}  {mg / ml:.2f}x")
P
done
