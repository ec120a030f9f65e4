#!/usr/bin/env bash
# Builds the fuzz targets and runs each one for a bounded time, then writes a summary (target,
# executions, crashes) to stdout and to fuzz/last-run.txt.
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]      # default: 60 s each, all four targets
#
# - cargo-fuzz needs nightly-only flags (-Zsanitizer=address, sancov passes). The pinned toolchain
#   is stable 1.95, so this script sets RUSTC_BOOTSTRAP=1 rather than requiring a nightly.
# - All four targets share one build with AddressSanitizer, debug assertions and overflow checks
#   (`--codegen-units 16` keeps the build of wasmtime and Cranelift to about half an hour on two
#   busy cores). onnx_sandbox runs under ASan as well: wasmtime's trap handling works with it
#   (ASAN_OPTIONS below), tract runs as Cranelift-compiled wasm (not instrumented) and the host
#   side is instrumented, so no target needs `--sanitizer none`.
# - The guest (tract for wasm32-wasip1) is built by runtime/build.rs into fuzz/target; set
#   WARDEN_GUEST_WASM=/path/to/warden_guest_wasm.wasm to use a prebuilt one instead.
# - Seeds come from the repository (fuzz/seeds.py -> fuzz/target/seeds/<target>); what the fuzzer
#   finds goes to fuzz/corpus/<target> and crashes to fuzz/artifacts/<target> (all git-ignored).
#   A crash is minimized with `cargo fuzz tmin`, saved under fuzz/regressions/<target>/ and replayed
#   by runtime/tests/fuzz_regressions.rs.
# - The compiled guest is cached in $WARDEN_FUZZ_CACHE_DIR, by default Warden's own cache
#   ($XDG_CACHE_HOME/warden). Whenever the guest changes, the first onnx_sandbox run compiles it
#   again with the fuzz build's Cranelift, which carries the coverage and compare-tracing
#   instrumentation: about 7.5 minutes on two busy cores instead of 9 s. That happens in the
#   target's `init` (before libFuzzer starts its clock), so it is not counted in the run time.
set -euo pipefail

secs=${1:-60}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(wire_frame manifest kserve_request onnx_sandbox)

cd "$(dirname "$0")"
fuzz_dir=$(pwd)
export RUSTC_BOOTSTRAP=1
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-2}
# The harness's scratch directories (trust store, bundles: rewritten for every input) go to a
# tmpfs when there is one, removed at the end.
TMPDIR=$(mktemp -d /dev/shm/warden-fuzz.XXXXXX 2>/dev/null || { mkdir -p target && mktemp -d "$fuzz_dir/target/tmp.XXXXXX"; })
export TMPDIR
trap 'rm -rf "$TMPDIR"' EXIT
export WARDEN_FUZZ_STATS=1
# wasmtime handles SIGSEGV/SIGILL/SIGFPE for wasm traps itself; ASan must let it.
export ASAN_OPTIONS=${ASAN_OPTIONS:-allow_user_segv_handler=1:handle_segv=1:handle_sigill=0:handle_sigfpe=0:detect_leaks=0}

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

build_flags=(--codegen-units 16 --sanitizer address --debug-assertions)

echo "== seeds"
python3 seeds.py "$fuzz_dir/target/seeds"

echo "== build (all targets)"
build_start=$(date +%s)
mkdir -p "$fuzz_dir/target/logs"
if ! cargo fuzz build "${build_flags[@]}" >"$fuzz_dir/target/logs/build.log" 2>&1; then
    tail -40 "$fuzz_dir/target/logs/build.log"
    echo "build failed (log: fuzz/target/logs/build.log)"
    exit 1
fi
grep -E '^(warning|error)' "$fuzz_dir/target/logs/build.log" || true
build_secs=$(( $(date +%s) - build_start ))

max_len() {
    case $1 in
        wire_frame) echo 1024 ;;
        kserve_request) echo 16384 ;;
        *) echo 65536 ;;
    esac
}

summary="$fuzz_dir/target/run-summary.txt"
{
    echo "fuzz run $(date -u +%Y-%m-%dT%H:%M:%SZ), ${secs} s per target, commit $(git -C "$fuzz_dir" rev-parse --short HEAD 2>/dev/null || echo '?')"
    echo "build: ${build_secs} s (cargo fuzz build ${build_flags[*]}; incremental if nothing changed)"
    printf '%-16s %12s %8s %8s %s\n' target executions exec/s crashes artifacts
} > "$summary"

status=0
mkdir -p "$fuzz_dir/target/logs"
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t" "artifacts/$t"
    before=$(ls "artifacts/$t" | wc -l)
    log="$fuzz_dir/target/logs/$t.log"
    echo "== $t: ${secs} s (log: $log)"
    set +e
    dict=()
    [ ! -f "dicts/$t.dict" ] || dict=(-dict="dicts/$t.dict")
    cargo fuzz run "${build_flags[@]}" "$t" "corpus/$t" "$fuzz_dir/target/seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -max_len="$(max_len "$t")" \
        "${dict[@]}" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    runs=$(grep -oE 'stat::number_of_executed_units:[[:space:]]+[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || true)
    [ -n "$runs" ] || runs=$(grep -oE '^Done [0-9]+ runs' "$log" | tail -1 | grep -oE '[0-9]+' || echo '?')
    rate=$(grep -oE 'stat::average_exec_per_sec:[[:space:]]+[0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$' || echo '?')
    after=$(ls "artifacts/$t" | wc -l)
    crashes=$(( after - before ))
    new=$(ls -t "artifacts/$t" | head -n "$crashes" | tr '\n' ' ')
    if [ "$rc" -ne 0 ] && [ "$crashes" -eq 0 ]; then
        new="(exit $rc, no artifact: see the log)"
        crashes=1
    fi
    [ "$crashes" -eq 0 ] || status=1
    printf '%-16s %12s %8s %8s %s\n' "$t" "$runs" "$rate" "$crashes" "${new:--}" >> "$summary"
    grep -E '^onnx_sandbox outcomes' "$log" | tail -1 | sed 's/^/  /' >> "$summary" || true
    grep -E '^(==[0-9]+==ERROR|thread .* panicked|SUMMARY)' "$log" | head -3 | sed 's/^/  /' >> "$summary" || true
done

cp "$summary" "$fuzz_dir/last-run.txt"
echo "== summary (also in fuzz/last-run.txt)"
cat "$fuzz_dir/last-run.txt"
exit $status
