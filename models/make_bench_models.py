#!/usr/bin/env python3
"""Generate the two synthetic benchmark models (issue 5) and their ONNX Runtime reference fixtures.

Deterministic (seeded numpy, onnx.helper, single-threaded ORT) and rerunnable. Writes:
  models/bench/mlp.onnx             matmul-heavy MLP 512-1024-1024-10 (Gemm + Relu), input [1, 512]
  models/bench/cnn.onnx             conv-heavy CNN, input [1, 1, 28, 28]:
                                    Conv 3x3 (32) + Relu + MaxPool 2 -> Conv 3x3 (64) + Relu + MaxPool 2
                                    -> Flatten -> Gemm (3136 -> 10)
  models/bench/<name>.reference.json  same format as models/fixtures/*.reference.json (3 cases)

Weights are He-initialised random numbers, not trained: the models exist to be timed. They use
only ops tract-onnx 0.23.9 supports (Gemm, Relu, Conv, MaxPool, Flatten).

Usage: python3 models/make_bench_models.py
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_util import REPO_ROOT, describe_model, ort_session, rel, run_case, write_json  # noqa: E402

BENCH_DIR = os.path.join(REPO_ROOT, "models", "bench")
OPSET = 17
IR_VERSION = 8
N_CASES = 3


def he(rng, shape, fan_in):
    return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)


def bias(rng, n):
    return (0.01 * rng.standard_normal(n)).astype(np.float32)


def finish(graph, name):
    model = helper.make_model(graph, producer_name="warden make_bench_models.py",
                              opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    model.doc_string = f"Warden benchmark model {name} (random weights, not trained)"
    onnx.checker.check_model(model, full_check=True)
    return model


def make_mlp(rng):
    sizes = [512, 1024, 1024, 10]
    inits, nodes = [], []
    x = "input"
    for i, (fan_in, fan_out) in enumerate(zip(sizes, sizes[1:])):
        w, b = f"w{i}", f"b{i}"
        # Gemm with transB=1: W stored [out, in] like PyTorch's Linear exports.
        inits.append(numpy_helper.from_array(he(rng, (fan_out, fan_in), fan_in), w))
        inits.append(numpy_helper.from_array(bias(rng, fan_out), b))
        last = i == len(sizes) - 2
        y = "logits" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [x, w, b], [y if last else f"g{i}"], name=f"fc{i}", transB=1))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [y], name=f"relu{i}"))
        x = y
    graph = helper.make_graph(
        nodes, "bench_mlp",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 512])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits)
    return finish(graph, "mlp")


def make_cnn(rng):
    inits = [
        numpy_helper.from_array(he(rng, (32, 1, 3, 3), 9), "conv1_w"),
        numpy_helper.from_array(bias(rng, 32), "conv1_b"),
        numpy_helper.from_array(he(rng, (64, 32, 3, 3), 32 * 9), "conv2_w"),
        numpy_helper.from_array(bias(rng, 64), "conv2_b"),
        numpy_helper.from_array(he(rng, (10, 64 * 7 * 7), 64 * 7 * 7), "fc_w"),
        numpy_helper.from_array(bias(rng, 10), "fc_b"),
    ]
    conv = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 1])
    pool = dict(kernel_shape=[2, 2], strides=[2, 2])
    nodes = [
        helper.make_node("Conv", ["input", "conv1_w", "conv1_b"], ["c1"], name="conv1", **conv),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="pool1", **pool),   # [1, 32, 14, 14]
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], name="conv2", **conv),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool2", **pool),   # [1, 64, 7, 7]
        helper.make_node("Flatten", ["p2"], ["flat"], name="flatten", axis=1),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "bench_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 1, 28, 28])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        initializer=inits)
    return finish(graph, "cnn")


def cases(rng, shape):
    # Inputs in [0, 1), like normalised pixels or features.
    return [[("input", rng.random(shape, dtype=np.float32))] for _ in range(N_CASES)]


def write(name, model, inputs):
    path = os.path.join(BENCH_DIR, f"{name}.onnx")
    os.makedirs(BENCH_DIR, exist_ok=True)
    onnx.save(model, path)
    print(f"== {name}: {rel(path)} ({os.path.getsize(path)} bytes)")
    describe_model(model)
    sess = ort_session(path)
    out = []
    for feeds in inputs:
        case, outs = run_case(sess, feeds)
        out.append(case)
        print(f"  case {len(out) - 1}: argmax {int(np.argmax(outs[0]))}, logits[:3] {outs[0][0, :3].tolist()}")
    write_json(os.path.join(BENCH_DIR, f"{name}.reference.json"),
               {"model": f"bench_{name}", "onnx": rel(path), "cases": out})


def main():
    write("mlp", make_mlp(np.random.default_rng(512)), cases(np.random.default_rng(5120), (1, 512)))
    write("cnn", make_cnn(np.random.default_rng(28)), cases(np.random.default_rng(280), (1, 1, 28, 28)))


if __name__ == "__main__":
    main()
