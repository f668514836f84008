#!/usr/bin/env bash
# grok1 beside llama.cpp on the same Grok-shaped model, in the same run.
#
# Obtains llama.cpp's source from PyPI (the llama-cpp-python 0.3.36 source
# distribution vendors the whole llama.cpp tree, `grok` architecture and
# tools/llama-bench included), builds llama-bench once into a cache folder,
# writes a random-weight model of the shape in CONFIG with `grok1 init` (the
# official int8 ckpt-0 format) and converts it to a Q8_0 GGUF with
# `grok1 convert`, then runs, alternately, R rounds of:
#   llama-bench on the GGUF,
#   for each precision asked for (default: fast, the default mode, and int8,
#   which quantises activations to int8 as llama.cpp does for Q8_0):
#     grok1 bench on the int8 checkpoint (int8 with bf16 scales: fewer bytes
#     than Q8_0's 8.5 bits per weight),
#     grok1 bench on the same GGUF file,
# and prints the medians and the ratios. Nothing of llama.cpp is committed.
#
# With --types, the files are llama.cpp's own instead: the model is converted
# once to a BF16 GGUF with `grok1 convert`, llama-quantize makes one file of
# each type from it (with --imatrix FILE when given, which the i-quants
# below 4 bits need), and each round runs llama-bench and grok1 bench on each
# file (pp and tg, and their ratios, per type).
#
# Usage: bench/compare_llamacpp.sh [--threads N] [--repeat R] [--prompt-tokens P]
#        [--gen-tokens G] [--depth D] [--config FILE] [--precision LIST]
#        [--types TYPES] [--imatrix FILE] [--kv-types KV]
#   D: tokens of context cached before each test (llama-bench's -d; default 0)
#   KV: comma-separated KV-cache types, each run on both sides: f16 (llama.cpp's
#       default; grok1's bf16, the same 2 bytes a value), q8_0 (grok1's keys and
#       values; llama.cpp's keys, its values f16: it cannot quantise Grok's V
#       cache), f32 (grok1's; llama-bench takes no f32 cache, so its f16 beside
#       it). Default: each engine's default cache.
#   LIST: comma-separated precisions (fast, int8, f32, bf16; default fast,int8;
#         with --types, default fast)
#   TYPES: comma-separated llama-quantize types, e.g. q8_0,q6_k,q5_k_m,q4_k_m,
#         q4_0,q3_k_m,q2_k,iq4_xs
# Environment: GROK1_BENCH_CACHE (default target/llamacpp-bench) holds the
# llama.cpp build and the models; LLAMA_CPP_DIR uses an existing llama.cpp
# tree (with build/bin/llama-bench or buildable) instead of downloading one.
set -euo pipefail
cd "$(dirname "$0")/.."

threads=$(nproc)
repeat=3
prompt=128
gen=64
depth=0
config=bench/grok-shape-d1024.json
precisions=
types=
imatrix=
kv_types=
while [ $# -gt 0 ]; do
    case "$1" in
        --threads) threads=$2; shift 2 ;;
        --repeat) repeat=$2; shift 2 ;;
        --prompt-tokens) prompt=$2; shift 2 ;;
        --gen-tokens) gen=$2; shift 2 ;;
        --depth) depth=$2; shift 2 ;;
        --config) config=$2; shift 2 ;;
        --precision) precisions=$2; shift 2 ;;
        --types) types=$2; shift 2 ;;
        --imatrix) imatrix=$2; shift 2 ;;
        --kv-types) kv_types=$2; shift 2 ;;
        *) echo "compare_llamacpp: unknown argument $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
[ -f "$config" ] || { echo "compare_llamacpp: no config file $config" >&2; exit 2; }
[ -z "$imatrix" ] || [ -f "$imatrix" ] || { echo "compare_llamacpp: no imatrix file $imatrix" >&2; exit 2; }
if [ -z "$precisions" ]; then
    precisions=fast,int8
    [ -n "$types" ] && precisions=fast
fi

cache=${GROK1_BENCH_CACHE:-target/llamacpp-bench}
mkdir -p "$cache"
cache=$(cd "$cache" && pwd)

# 1. llama.cpp, once.
if [ -n "${LLAMA_CPP_DIR:-}" ]; then
    src=$LLAMA_CPP_DIR
else
    src=$cache/llama_cpp_python-0.3.36/vendor/llama.cpp
fi
venv=$cache/venv
if [ ! -x "$venv/bin/python" ]; then
    echo "== a Python environment with cmake and scikit-build-core ($venv)"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q scikit-build-core cmake
fi
if [ ! -d "$src" ]; then
    echo "== llama.cpp's source from PyPI (llama-cpp-python 0.3.36 source distribution)"
    "$venv/bin/pip" download -q --no-deps --no-binary :all: --no-build-isolation \
        llama-cpp-python==0.3.36 -d "$cache/sdist"
    tar xzf "$cache"/sdist/llama_cpp_python-0.3.36.tar.gz -C "$cache"
fi
# On a CPU with AMX, llama.cpp's native build uses its AMX kernels, which
# crash in this version (SIGSEGV at ldtilecfg in a worker thread, as in
# llama.cpp issue 20824: the tile permission is asked on the main thread only),
# so they are compiled out there (its MoE products do not use them anyway) and
# the build goes to its own folder.
build=build
cflags=
if grep -qw amx_int8 /proc/cpuinfo 2>/dev/null; then
    build=build-noamx
    cflags="-mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
fi
llama_bench=$src/$build/bin/llama-bench
llama_quantize=$src/$build/bin/llama-quantize
if [ ! -x "$llama_bench" ] || { [ -n "$types" ] && [ ! -x "$llama_quantize" ]; }; then
    echo "== building llama-bench and llama-quantize (once; a few minutes)${cflags:+; without AMX}"
    PATH=$venv/bin:$PATH cmake -S "$src" -B "$src/$build" -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
        -DGGML_NATIVE=ON "-DCMAKE_C_FLAGS=$cflags" "-DCMAKE_CXX_FLAGS=$cflags" \
        > "$cache/cmake-configure.log" 2>&1
    PATH=$venv/bin:$PATH cmake --build "$src/$build" -j "$(nproc)" --target llama-bench llama-quantize \
        > "$cache/cmake-build.log" 2>&1
fi
llama_commit=$(cd "$src" && (git rev-parse --short HEAD 2>/dev/null || echo "0.3.36 sdist"))

# 2. grok1 and the model, in both formats.
echo "== building grok1"
cargo build --release --locked -q -p grok1-cli
grok1=target/release/grok1
name=$(basename "$config" .json)
model=$cache/models/$name
if [ ! -f "$model/ckpt/config.json" ]; then
    echo "== writing $name (random weights, official int8 format)"
    rm -rf "$model" && mkdir -p "$model"
    $grok1 init --config "$config" --seed 1 --out "$model/ckpt"
fi
if [ ! -f "$model/$name-q8_0.gguf" ]; then
    echo "== converting it to a Q8_0 GGUF"
    $grok1 convert --model "$model/ckpt" --format gguf --type q8_0 --out "$model/$name-q8_0.gguf" --force
fi
gguf=$model/$name-q8_0.gguf
# llama-quantize's files, from one BF16 GGUF.
files=()
if [ -n "$types" ]; then
    if [ ! -f "$model/$name-bf16.gguf" ]; then
        echo "== converting it to a BF16 GGUF"
        $grok1 convert --model "$model/ckpt" --format gguf --type bf16 --out "$model/$name-bf16.gguf" --force
    fi
    tag=
    [ -n "$imatrix" ] && tag=-imatrix
    for t in ${types//,/ }; do
        upper=$(echo "$t" | tr '[:lower:]' '[:upper:]')
        f=$model/$name-llama-$t$tag.gguf
        if [ ! -f "$f" ]; then
            echo "== llama-quantize $upper${imatrix:+ (imatrix $imatrix)}"
            "$llama_quantize" ${imatrix:+--imatrix "$imatrix"} "$model/$name-bf16.gguf" "$f" "$upper" \
                > "$cache/llama-quantize-$t.log" 2>&1 \
                || { echo "compare_llamacpp: llama-quantize $upper failed; see $cache/llama-quantize-$t.log" >&2; exit 1; }
        fi
        files+=("$upper=$f")
    done
fi

# 3. Alternate rounds, one repetition each, so drifts of the machine hit both.
results=$cache/results-$(date +%Y%m%d-%H%M%S).jsonl
echo "== $repeat rounds, $threads threads, pp$prompt / tg$gen at depth $depth; raw results in $results"
# llama-bench on FILE, its rows labelled LABEL and the cache it ran.
# With KV, its cache holds that type; for q8_0 the keys only: llama.cpp turns
# flash attention off for Grok ("flash_attn is not compatible with Grok -
# forcing off") and a quantised V cache needs it, so its closest cache to
# grok1's q8_0 is q8_0 keys with f16 values.
llama_row() {
    local file=$1 label=$2 kv=${3:-} lb kv_flags=()
    case "$kv" in
        "") ;;
        q8_0) kv_flags=(-ctk q8_0 -ctv f16) label+=", kv q8_0 keys, f16 values" ;;
        f32) kv_flags=(-ctk f16 -ctv f16) label+=", kv f16 (llama-bench takes no f32 cache)" ;;
        *) kv_flags=(-ctk "$kv" -ctv "$kv") label+=", kv $kv" ;;
    esac
    if ! lb=$("$llama_bench" -m "$file" -t "$threads" -p "$prompt" -n "$gen" -d "$depth" -r 1 -o json \
        "${kv_flags[@]}" 2>"$cache/llama-bench.err"); then
        echo "compare_llamacpp: llama-bench failed on $file; its messages: $cache/llama-bench.err" >&2
        exit 1
    fi
    echo "$lb" | LABEL=$label python3 -c 'import json,os,sys
for row in json.load(sys.stdin):
    kind = "pp" if row["n_gen"] == 0 else "tg"
    print(json.dumps({"engine": os.environ["LABEL"], "kind": kind, "tps": row["avg_ts"]}))' >> "$results"
}
# grok1 bench on FILE at PRECISION, its rows labelled LABEL.
# With KV (llama.cpp's name), grok1's cache of the same size a value.
grok1_row() {
    local file=$1 precision=$2 label=$3 kv=${4:-} kv_flags=()
    case "$kv" in
        "") ;;
        f16) kv_flags=(--kv-type bf16) ;;
        *) kv_flags=(--kv-type "$kv") ;;
    esac
    $grok1 bench --model "$file" --precision "$precision" --threads "$threads" "${kv_flags[@]}" \
        --prompt-tokens "$prompt" --gen-tokens "$gen" --depth "$depth" --repeat 1 --json 2>/dev/null | tail -1 \
        | LABEL=$label python3 -c 'import json,os,sys
o = json.load(sys.stdin)
for kind, key in (("pp", "prompt_tokens_per_s"), ("tg", "gen_tokens_per_s")):
    print(json.dumps({"engine": os.environ["LABEL"], "kind": kind, "tps": o[key],
                      "bytes_per_token": o["weight_bytes_per_token"], "bw": o["mem_bandwidth_gbs"],
                      "roofline": o["roofline_fraction"]}))' >> "$results"
}
for r in $(seq 1 "$repeat"); do
    echo "-- round $r/$repeat"
    for kv in ${kv_types//,/ } ""; do
        # "" alone when no --kv-types: each engine's default cache.
        [ -z "$kv" ] && [ -n "$kv_types" ] && continue
        on=${kv:+, kv $kv}
        if [ -n "$types" ]; then
            for entry in "${files[@]}"; do
                t=${entry%%=*} f=${entry#*=}
                llama_row "$f" "llama.cpp $t" "$kv"
                for precision in ${precisions//,/ }; do
                    grok1_row "$f" "$precision" "grok1 $t, $precision$on" "$kv"
                done
            done
            continue
        fi
        llama_row "$gguf" "llama.cpp Q8_0" "$kv"
        for precision in ${precisions//,/ }; do
            grok1_row "$model/ckpt" "$precision" "grok1 int8 ckpt, $precision$on" "$kv"
            grok1_row "$gguf" "$precision" "grok1 Q8_0 GGUF, $precision$on" "$kv"
        done
    done
done

# 4. Medians and ratios.
RESULTS=$results PROMPT=$prompt GEN=$gen DEPTH=$depth THREADS=$threads COMMIT=$llama_commit \
    CONFIG=$config python3 - <<'EOF'
import json, os, statistics
rows = [json.loads(l) for l in open(os.environ["RESULTS"])]
engines = list(dict.fromkeys(r["engine"] for r in rows))
med = {}
for e in engines:
    for k in ("pp", "tg"):
        v = [r["tps"] for r in rows if r["engine"] == e and r["kind"] == k]
        med[e, k] = (statistics.median(v), min(v), max(v)) if v else None
p, g = os.environ["PROMPT"], os.environ["GEN"]
if os.environ["DEPTH"] != "0":
    p, g = p + " @ d" + os.environ["DEPTH"], g + " @ d" + os.environ["DEPTH"]
print(f"\nmodel {os.environ['CONFIG']}, {os.environ['THREADS']} threads, llama.cpp {os.environ['COMMIT']}")
print(f"| engine | pp{p} tok/s | tg{g} tok/s | pp ratio | tg ratio |")
print("| --- | --- | --- | --- | --- |")
# Each engine against llama.cpp on the same file: the llama.cpp row printed
# last before it (with --types, one per type; else the Q8_0 one).
base = None
for e in engines:
    pp, tg = med[e, "pp"], med[e, "tg"]
    if e.startswith("llama.cpp"):
        base = pp[0], tg[0]
    print(f"| {e} | {pp[0]:.1f} ({pp[1]:.1f} - {pp[2]:.1f}) | {tg[0]:.1f} ({tg[1]:.1f} - {tg[2]:.1f}) "
          f"| {pp[0] / base[0]:.2f}x | {tg[0] / base[1]:.2f}x |")
for e in engines:
    if e.startswith("llama.cpp"):
        continue
    r = [x for x in rows if x["engine"] == e and x["kind"] == "tg"]
    print(f"{e}: {r[-1]['bytes_per_token'] / 1e6:.0f} MB of weights per token, "
          f"{statistics.median(x['roofline'] for x in r):.0%} of the {statistics.median(x['bw'] for x in r):.1f} GB/s roofline")
EOF
