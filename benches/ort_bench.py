#!/usr/bin/env python3
"""Per-inference latency of ONNX Runtime from Python, for the sandbox comparison (issue 5).

ONNX Runtime (the installed `onnxruntime`, CPUExecutionProvider, one intra-op and one inter-op
thread), timed in Python's own loop with time.perf_counter_ns around each `sess.run`, so the
per-call overhead of the Python binding counts, as it would for a Python user.

  python3 benches/ort_bench.py MODEL.onnx INPUTS.json --iters N --warmup W
      prints {"median_us": ..., "p99_us": ..., "iters": N}

INPUTS.json is a reference fixture (models/fixtures/*.reference.json: the first case's inputs)
or a KServe v2 request (models/requests/*.json: its "inputs").

  python3 benches/ort_bench.py MODEL.onnx INPUTS.json --rounds --warmup W
      for `benches/src/bin/compare.rs`, which interleaves engines: loads the session once, runs
      the warm-up, prints {"ready": true}, then for every stdin line "BUDGET_US MIN_ITERS" runs
      until both are reached and prints one JSON line {"median_us", "p99_us", "iters",
      "samples_us": [...]}. Ends at end of input.
"""
import argparse
import json
import sys
import time

import numpy as np
import onnxruntime as ort

DTYPES = {
    "BOOL": np.bool_, "UINT8": np.uint8, "INT8": np.int8, "UINT16": np.uint16, "INT16": np.int16,
    "UINT32": np.uint32, "INT32": np.int32, "UINT64": np.uint64, "INT64": np.int64,
    "FP32": np.float32, "FP64": np.float64,
}


def load_feeds(path):
    with open(path) as f:
        doc = json.load(f)
    tensors = doc["cases"][0]["inputs"] if "cases" in doc else doc["inputs"]
    return {t["name"]: np.asarray(t["data"], dtype=DTYPES[t["datatype"]]).reshape(t["shape"]) for t in tensors}


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def summary(samples_ns):
    us = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"median_us": float(np.median(us)), "p99_us": float(np.percentile(us, 99)), "iters": len(us)}


def run(sess, feeds, budget_ns, min_iters):
    """Runs until `min_iters` calls and `budget_ns` nanoseconds are both reached."""
    run_fn = sess.run
    clock = time.perf_counter_ns
    samples = []
    start = clock()
    while len(samples) < min_iters or clock() - start < budget_ns:
        t0 = clock()
        run_fn(None, feeds)
        samples.append(clock() - t0)
    return samples


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model")
    p.add_argument("inputs")
    p.add_argument("--iters", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--rounds", action="store_true", help="serve timing rounds requested on stdin")
    args = p.parse_args()

    sess = session(args.model)
    feeds = load_feeds(args.inputs)
    run(sess, feeds, 0, args.warmup)
    if not args.rounds:
        print(json.dumps(summary(run(sess, feeds, 0, args.iters))))
        return
    print(json.dumps({"ready": True, "onnxruntime": ort.__version__}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            continue
        budget_us, min_iters = (int(x) for x in line.split())
        samples = run(sess, feeds, budget_us * 1000, min_iters)
        out = summary(samples)
        out["samples_us"] = [s / 1e3 for s in samples]
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
