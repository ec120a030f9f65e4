#!/usr/bin/env bash
# Two `warden` daemons side by side under the same load, interleaved: for each round and each
# connection count, `loadgen --readings` against BIN_A, then against BIN_B (each run starts its
# own daemon on a fresh state directory). Prints one JSON line per run.
#
#   bash benches/daemon_ab.sh /tmp/warden-before /tmp/warden-after [ROUNDS] [N] [CONNECTIONS...]
#   LOADGEN_ARGS="--model digits" bash benches/daemon_ab.sh ...   # KServe inference instead
#
# Build the binaries with `cargo build --release -p warden --bin warden` at each commit (copy
# each one away), and loadgen with `cargo build --release -p warden-benches --bin loadgen`.
set -euo pipefail
a=${1:?usage: daemon_ab.sh BIN_A BIN_B [ROUNDS] [N] [CONNECTIONS...]}
b=${2:?usage: daemon_ab.sh BIN_A BIN_B [ROUNDS] [N] [CONNECTIONS...]}
rounds=${3:-3}
n=${4:-40000}
shift $(( $# < 4 ? $# : 4 ))
conns=("${@:-16 32}")
read -r -a extra <<< "${LOADGEN_ARGS---readings}"
loadgen="${CARGO_TARGET_DIR:-target}/release/loadgen"
for round in $(seq 1 "$rounds"); do
  for c in ${conns[@]}; do
    for bin in "$a" "$b"; do
      echo "{\"round\":$round,\"connections\":$c,\"warden\":\"$bin\",\"run\":$("$loadgen" --warden "$bin" "${extra[@]}" -n "$n" -c "$c" --json)}"
    done
  done
done
