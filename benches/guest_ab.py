#!/usr/bin/env python3
"""Compare guest builds (or engine settings) side by side: interleaved `warden bench` runs.

Each variant is NAME=ARGS, where ARGS are extra global `warden` flags, typically the hidden
`--guest-wasm PATH` (a guest module built some other way) and `--relaxed-simd`. Every round runs
every model under every variant, one fresh process (so one fresh load) each, and the table gives
the median over rounds of `warden bench`'s per-inference median, with each variant's ratio to
the first.

  python3 benches/guest_ab.py "base=,lto=--guest-wasm /tmp/lto.wasm" --rounds 5
  python3 benches/guest_ab.py "base=,relaxed=--relaxed-simd --guest-wasm /tmp/relaxed.wasm"

A guest variant is built like runtime/build.rs builds the real one (its GUEST_RUSTFLAGS, joined
by the 0x1f separator), with other flags, e.g.:

  CARGO_ENCODED_RUSTFLAGS="-Ctarget-feature=+simd128,+relaxed-simd" cargo build \\
      --package warden-guest-wasm --lib --target wasm32-wasip1 --profile guest --target-dir /tmp/g
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("variants", help="NAME=ARGS,NAME=ARGS,... (the first is the baseline)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warden", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "warden"))
    args = ap.parse_args()
    variants = {}
    for spec in args.variants.split(","):
        name, _, extra = spec.partition("=")
        variants[name] = extra.split()

    work = tempfile.mkdtemp(prefix="guest-ab-")
    env = dict(os.environ, WARDEN_STATE_DIR=os.path.join(work, "state"),
               WARDEN_CACHE_DIR=os.path.join(work, "cache"))
    run = lambda *a: subprocess.run([args.warden, *a], env=env, check=True, capture_output=True, text=True).stdout
    run("keygen", "--out", os.path.join(work, "key"))
    os.makedirs(os.path.join(work, "trust"))
    os.rename(os.path.join(work, "key.pub"), os.path.join(work, "trust", "key.pub"))
    models = {"digits": (os.path.join(ROOT, "models/dev-trust"), os.path.join(ROOT, "models/repo/digits/1"),
                         os.path.join(ROOT, "models/requests/digits.json"), 3000)}
    for name, iters in (("mlp", 300), ("cnn", 300)):
        bundle = os.path.join(work, "repo", name, "1")
        run("model", "init", "--model", os.path.join(ROOT, "models/bench", f"{name}.onnx"),
            "--name", name, "--version", "1", "--out", bundle)
        run("model", "sign", "--key", os.path.join(work, "key.key"), "--model-dir", bundle)
        fixture = json.load(open(os.path.join(ROOT, "models/bench", f"{name}.reference.json")))
        request = os.path.join(work, f"{name}.json")
        json.dump({"inputs": fixture["cases"][0]["inputs"]}, open(request, "w"))
        models[f"bench_{name}"] = (os.path.join(work, "trust"), bundle, request, iters)

    results = {(m, v): [] for m in models for v in variants}
    for r in range(args.rounds):
        for m, (trust, bundle, request, n) in models.items():
            for v, extra in variants.items():
                out = run(*extra, "bench", "--trust", trust, bundle, "--input", request, "-n", str(n), "--json")
                results[(m, v)].append(json.loads(out)["median_us"])
        print(f"round {r + 1}/{args.rounds}", file=sys.stderr)
    names = list(variants)
    print("| model | " + " | ".join(f"{v} (us)" for v in names) + " | "
          + " | ".join(f"{v} / {names[0]}" for v in names[1:]) + " |")
    print("| --- |" + " ---: |" * (2 * len(names) - 1))
    for m in models:
        meds = [statistics.median(results[(m, v)]) for v in names]
        print(f"| {m} | " + " | ".join(f"{x:.1f}" for x in meds) + " | "
              + " | ".join(f"{x / meds[0]:.3f}" for x in meds[1:]) + " |")


if __name__ == "__main__":
    main()
