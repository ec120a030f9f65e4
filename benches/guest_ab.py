#!/usr/bin/env python3
"""Compare guest builds (or engine settings) side by side: interleaved `warden bench` runs.

Each variant is NAME=ARGS, where ARGS are extra global `warden` flags, typically the hidden
`--guest-wasm PATH` (a guest module built some other way) and `--relaxed-simd`; an argument
`@PATH` runs the `warden` binary at PATH instead (two builds of the host side by side). Every
round runs every model under every variant, one fresh process (so one fresh load) each, the
variants in an order that rotates from round to round, and the table gives the median over
rounds of `warden bench`'s per-inference median, with each variant's ratio to the first. The
models are the sample models, the generated MLP and CNN, and the public ones (silero VAD,
PP-OCR) where `models/fetch_public_models.py` fetched them; `--models` picks.

  python3 benches/guest_ab.py "base=,lto=--guest-wasm /tmp/lto.wasm" --rounds 5
  python3 benches/guest_ab.py "base=,relaxed=--relaxed-simd --guest-wasm /tmp/relaxed.wasm"
  python3 benches/guest_ab.py "base=@/tmp/warden-main,new=@target/release/warden" --models cnn,ppocr_cls

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
    ap.add_argument("--models", help="comma-separated model names (default: every one available)")
    ap.add_argument("--warden", default=os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "warden"))
    args = ap.parse_args()
    variants = {}
    for spec in args.variants.split(","):
        name, _, extra = spec.partition("=")
        extra = extra.split()
        binary = [a[1:] for a in extra if a.startswith("@")]
        variants[name] = ((binary or [args.warden])[-1], [a for a in extra if not a.startswith("@")])

    work = tempfile.mkdtemp(prefix="guest-ab-")
    env = dict(os.environ, WARDEN_STATE_DIR=os.path.join(work, "state"),
               WARDEN_CACHE_DIR=os.path.join(work, "cache"))
    run = lambda binary, *a: subprocess.run([binary, *a], env=env, check=True, capture_output=True,
                                            text=True).stdout
    setup = lambda *a: run(args.warden, *a)
    setup("keygen", "--out", os.path.join(work, "key"))
    os.makedirs(os.path.join(work, "trust"))
    os.rename(os.path.join(work, "key.pub"), os.path.join(work, "trust", "key.pub"))
    dev = os.path.join(ROOT, "models/dev-trust")
    models = {name: (dev, os.path.join(ROOT, f"models/repo/{name}/1"),
                     os.path.join(ROOT, f"models/requests/{name}.json"), 3000)
              for name in ("digits", "breast_cancer", "motion")}
    generated = [(name, os.path.join(ROOT, "models/bench"), iters) for name, iters in (("mlp", 300), ("cnn", 300))]
    public = [(name, os.path.join(ROOT, "models/public"), iters)
              for name, iters in (("silero_vad", 1000), ("ppocr_cls", 100), ("ppocr_rec", 20))]
    wanted = set(args.models.split(",")) if args.models else None
    for name, folder, iters in generated + public:
        if not os.path.exists(os.path.join(folder, f"{name}.onnx")) or (wanted and name not in wanted):
            continue
        bundle = os.path.join(work, "repo", name, "1")
        setup("model", "init", "--model", os.path.join(folder, f"{name}.onnx"),
              "--name", name, "--version", "1", "--out", bundle)
        fixture = json.load(open(os.path.join(folder, f"{name}.reference.json")))
        inputs = fixture["cases"][0]["inputs"]
        # The drafted manifest leaves symbolic dimensions; tract needs the fixture's sizes.
        manifest = os.path.join(bundle, "manifest.toml")
        lines, name_of = open(manifest).read().splitlines(), None
        shapes = {t["name"]: t["shape"] for t in inputs}
        for i, line in enumerate(lines):
            if line.startswith("name = "):
                name_of = json.loads(line[len("name = "):])
            elif line.startswith("shape = ") and name_of in shapes:
                lines[i] = f"shape = {json.dumps(shapes.pop(name_of))}"
        open(manifest, "w").write("\n".join(lines) + "\n")
        setup("model", "sign", "--key", os.path.join(work, "key.key"), "--model-dir", bundle)
        request = os.path.join(work, f"{name}.json")
        json.dump({"inputs": inputs}, open(request, "w"))
        models[name] = (os.path.join(work, "trust"), bundle, request, iters)
    if wanted:
        models = {m: v for m, v in models.items() if m in wanted}

    results = {(m, v): [] for m in models for v in variants}
    order = list(variants)
    for r in range(args.rounds):
        for m, (trust, bundle, request, n) in models.items():
            # The order rotates from round to round: run first, the same guest read 2-4% faster
            # on the small models (a variant against itself, 7 rounds, on the AMD EPYC machine).
            for v in order[r % len(order):] + order[:r % len(order)]:
                binary, extra = variants[v]
                out = run(binary, *extra, "bench", "--trust", trust, bundle, "--input", request, "-n", str(n), "--json")
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
