#!/usr/bin/env bash
# Open-loop latency against offered rate: for each round and each rate, `loadgen --readings
# --rate R` for SECONDS against BIN (a fresh daemon each run), once with the daemon's state
# directory (and so its audit log) under each of STATE_DIRS. With the default, the audit log is on
# the disk (`/tmp` here) and then on tmpfs (`/dev/shm`, where a sync costs nothing), so the two
# show what the audit log's fsync adds to the latency. Prints one JSON line per run.
#
#   bash benches/rate_sweep.sh BIN [ROUNDS] [SECONDS] [CONNECTIONS] [RATES...]
#   STATE_DIRS=/tmp bash benches/rate_sweep.sh ...   # the disk only
#
# Build the binaries with `cargo build --release -p warden --bin warden -p warden-benches --bin loadgen`.
set -euo pipefail
bin=${1:?usage: rate_sweep.sh BIN [ROUNDS] [SECONDS] [CONNECTIONS] [RATES...]}
rounds=${2:-3}
seconds=${3:-5}
conns=${4:-128}
shift $(( $# < 4 ? $# : 4 ))
rates=("${@:-2000 4000 6000 8000 10000}")
read -r -a dirs <<< "${STATE_DIRS-/tmp /dev/shm}"
loadgen="${CARGO_TARGET_DIR:-target}/release/loadgen"
for round in $(seq 1 "$rounds"); do
  for rate in ${rates[@]}; do
    for dir in "${dirs[@]}"; do
      # A run with answers other than 200 exits 1; its line (with the statuses) is kept.
      run=$(TMPDIR="$dir" "$loadgen" --warden "$bin" --readings -c "$conns" --rate "$rate" -n $(( rate * seconds )) --json) || true
      [ -n "$run" ] || run=null   # loadgen stopped before its report (its error went to stderr)
      echo "{\"round\":$round,\"rate\":$rate,\"state_dir\":\"$dir\",\"run\":$run}"
    done
  done
done
