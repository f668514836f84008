#!/usr/bin/env bash
# Latency and bandwidth of the tensor-parallel collectives (all-reduce of
# Grok-1's hidden rows, gather of its logits) through grok1's own MPI
# collective, for each rank count given (default 2 4 8), on this machine or on
# the hosts of a hostfile.
#
# usage: bench/allreduce.sh [--hostfile FILE] [N ...]
#   extra mpirun flags: MPIRUN_ARGS="--oversubscribe --allow-run-as-root" bench/allreduce.sh 2
set -euo pipefail
cd "$(dirname "$0")/.."

hostfile=()
if [ "${1:-}" = "--hostfile" ]; then
    hostfile=(--hostfile "$2")
    shift 2
fi
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(2 4 8)

cargo build --release --locked -p grok1 --features mpi --example allreduce >&2
for n in "${sizes[@]}"; do
    echo "== $n ranks"
    # shellcheck disable=SC2086
    mpirun -np "$n" "${hostfile[@]}" ${MPIRUN_ARGS:-} target/release/examples/allreduce
done
