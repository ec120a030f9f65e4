#!/usr/bin/env python3
"""Make the `motion` sample model: a signal-processing graph for accelerometer readings.

Unlike digits and breast_cancer it is not trained: it is a hand-written DSP graph (no data set of
accelerometer windows ships with scikit-learn), kept as a real ONNX model so signed sensor
readings have a model to feed. Input `accel` FP32 [1, 8, 3]: 8 three-axis samples in milli-g, as
the firmware's LIS3DH readings carry them. Outputs:
  activity      FP32 [1, 1]  RMS deviation from the window's mean acceleration, in milli-g
  probabilities FP32 [1, 2]  softmax over (still, moving): moving when activity > 50 mg
Writes models/repo/motion/1/model.onnx, models/fixtures/motion.reference.json and
models/requests/motion.json. Deterministic. Usage: python3 models/make_motion_model.py
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_util import REPO_ROOT, ort_session, rel, run_case, write_json  # noqa: E402

THRESHOLD_MG = 50.0
SHARPNESS_MG = 10.0


def build():
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.float32), name)  # noqa: E731
    nodes = [
        helper.make_node("ReduceMean", ["accel"], ["mean"], axes=[1], keepdims=1),     # [1,1,3]
        helper.make_node("Sub", ["accel", "mean"], ["dev"]),                           # [1,8,3]
        helper.make_node("Mul", ["dev", "dev"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[1], keepdims=0),         # [1,3]
        helper.make_node("ReduceSum", ["var", "axis1"], ["total"], keepdims=1),        # [1,1]
        helper.make_node("Sqrt", ["total"], ["activity"]),
        helper.make_node("Sub", ["activity", "threshold"], ["margin"]),
        helper.make_node("Div", ["margin", "sharpness"], ["z"]),
        helper.make_node("Neg", ["z"], ["neg_z"]),
        helper.make_node("Concat", ["neg_z", "z"], ["logits"], axis=1),                # [1,2]
        helper.make_node("Softmax", ["logits"], ["probabilities"], axis=1),
    ]
    inits = [c("threshold", [THRESHOLD_MG]), c("sharpness", [SHARPNESS_MG]),
             numpy_helper.from_array(np.array([1], np.int64), "axis1")]
    graph = helper.make_graph(
        nodes, "motion",
        [helper.make_tensor_value_info("accel", TensorProto.FLOAT, [1, 8, 3])],
        [helper.make_tensor_value_info("activity", TensorProto.FLOAT, [1, 1]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, [1, 2])],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)],
                              producer_name="warden-make-motion-model")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def windows():
    rng = np.random.default_rng(2026)
    still = np.array([[0, 0, 1000]], np.float32) + rng.normal(0, 4, (8, 3))
    walking = np.array([[0, 0, 1000]], np.float32) + rng.normal(0, 180, (8, 3))
    tilted = np.array([[707, 0, 707]], np.float32) + rng.normal(0, 20, (8, 3))
    return [w.astype(np.float32)[None] for w in (still, walking, tilted)]


def main():
    out = os.path.join(REPO_ROOT, "models", "repo", "motion", "1", "model.onnx")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    onnx.save(build(), out)
    print(f"wrote {rel(out)}")
    sess = ort_session(out)
    cases = [run_case(sess, [("accel", w)])[0] for w in windows()]
    for case in cases:
        print("  activity", round(case["outputs"][0]["data"][0], 2), "p(moving)", round(case["outputs"][1]["data"][1], 4))
    write_json(os.path.join(REPO_ROOT, "models", "fixtures", "motion.reference.json"),
               {"model": "motion", "onnx": rel(out), "cases": cases})
    write_json(os.path.join(REPO_ROOT, "models", "requests", "motion.json"),
               {"id": "example", "inputs": cases[1]["inputs"]})


if __name__ == "__main__":
    main()
