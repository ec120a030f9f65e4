#!/usr/bin/env python3
"""Time from process start to `warden serve`'s serving line (benches/README.md, "Cold start").

Starts `warden serve` with the sample models (its defaults, from the repository's root) on a
loopback port with a fresh state directory, N times, and prints each time and the median. Run it
once first so the compiled guest is in the cache; the first start of a new build compiles it.

    python3 benches/serve_ready.py [WARDEN_BIN] [N]   # defaults: target/release/warden 7
"""
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(target, "release", "warden")
    runs = int(sys.argv[2]) if len(sys.argv) > 2 else 7
    times, line = [], b""
    for _ in range(runs):
        state = tempfile.mkdtemp(prefix="serve_ready.")
        start = time.perf_counter()
        daemon = subprocess.Popen(
            [binary, "--state-dir", state, "serve", "--listen", "127.0.0.1:0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            cwd=ROOT,
        )
        line = daemon.stdout.readline()
        times.append(time.perf_counter() - start)
        daemon.terminate()
        daemon.wait()
        shutil.rmtree(state, ignore_errors=True)
        if not line.startswith(b"warden: serving"):
            sys.exit(f"no serving line from {binary}: {line!r}")
    print(line.decode().strip())
    print("starts (s):", " ".join(f"{t:.3f}" for t in times))
    print(f"median {statistics.median(times):.3f} s of {runs}")


if __name__ == "__main__":
    main()
