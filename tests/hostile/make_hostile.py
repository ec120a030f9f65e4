#!/usr/bin/env python3
"""Generate small hostile ONNX files into tests/fixtures/hostile/ (committed; each < 100 KB).

Every file attacks the loader/optimizer/executor in a specific way; the expected outcome for
all of them is a typed error (or deadline/limit error) returned within the request deadline,
with the host continuing to serve other requests. onnx.checker is deliberately NOT run on the
outputs (several are intentionally invalid). Deterministic; rerunnable.

Usage: python3 tests/hostile/make_hostile.py
"""
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT_DIR = os.path.join(REPO_ROOT, "tests", "fixtures", "hostile")
OPSET = 13
SIZE = 2048     # side of the square matrices in the slow chains
CHAIN = 200     # number of MatMuls in the slow chains (each 2048^3 MAC = ~17 GFLOP)


def make_model(nodes, inputs, outputs, initializers, name):
    graph = helper.make_graph(nodes, name, inputs, outputs, initializer=initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                              producer_name="warden-make-hostile")
    model.ir_version = 8
    return model


def matmul_chain(start, n, size, prefix):
    """y_{i+1} = Sigmoid(MatMul(y_i, y_i) * (1/size)). Values stay in (0.5, 0.74): finite, no
    denormals, and every step depends on the previous one (no shortcut, no NaN short-circuit)."""
    nodes = []
    inits = [numpy_helper.from_array(np.array(1.0 / size, np.float32), f"{prefix}scale")]
    cur = start
    for i in range(n):
        mm, scaled, out = f"{prefix}mm{i}", f"{prefix}scaled{i}", f"{prefix}y{i}"
        nodes += [
            helper.make_node("MatMul", [cur, cur], [mm]),
            helper.make_node("Mul", [mm, f"{prefix}scale"], [scaled]),
            helper.make_node("Sigmoid", [scaled], [out]),
        ]
        cur = out
    return nodes, inits, cur


def x_input(shape):
    return helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)


def slow_matmul_chain(size=SIZE, chain=CHAIN):
    # ATTACK: CPU exhaustion at *run* time. x [1,1] is expanded to [2048,2048] and squared 200
    # times (~3.4 TFLOP). Everything depends on the runtime input, so nothing can be folded at
    # load time; the executor must be stopped by the deadline (wasmtime epoch/fuel interruption).
    shape = numpy_helper.from_array(np.array([size, size], np.int64), "expand_shape")
    nodes = [helper.make_node("Expand", ["x", "expand_shape"], ["y_start"])]
    chain_nodes, inits, last = matmul_chain("y_start", chain, size, "c_")
    nodes += chain_nodes
    nodes.append(helper.make_node("ReduceSum", [last], ["y"], keepdims=1))  # -> [1,1]
    return make_model(nodes, [x_input([1, 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                      [shape] + inits, "slow_matmul_chain")


def slow_constant_fold(size=SIZE, chain=CHAIN):
    # ATTACK: CPU exhaustion at *load* time. The same 200-MatMul chain is fed only from
    # ConstantOfShape, so an optimizer that constant-folds while loading (tract's
    # into_optimized / declutter, ORT's constant folding) spends minutes before the first
    # request. Only the final Add touches the real input x [1,1]. Model loading must also be
    # bounded by a deadline.
    shape = numpy_helper.from_array(np.array([size, size], np.int64), "const_shape")
    nodes = [helper.make_node("ConstantOfShape", ["const_shape"], ["y_start"],
                              value=numpy_helper.from_array(np.array([0.5], np.float32)))]
    chain_nodes, inits, last = matmul_chain("y_start", chain, size, "c_")
    nodes += chain_nodes
    nodes += [helper.make_node("ReduceSum", [last], ["reduced"], keepdims=1),  # -> [1,1]
              helper.make_node("Add", ["reduced", "x"], ["y"])]
    return make_model(nodes, [x_input([1, 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                      [shape] + inits, "slow_constant_fold")


def constant_of_shape_terabytes():
    # ATTACK: memory exhaustion. ConstantOfShape with constant shape [1e6, 1e6] float32 = 4 TB
    # (and the broadcast Add with x makes a second one). Must fail with a typed out-of-memory /
    # resource-limit error (wasm linear memory is capped at 4 GiB anyway), never abort the host.
    shape = numpy_helper.from_array(np.array([1_000_000, 1_000_000], np.int64), "huge_shape")
    nodes = [helper.make_node("ConstantOfShape", ["huge_shape"], ["huge"],
                              value=numpy_helper.from_array(np.array([1.0], np.float32))),
             helper.make_node("Add", ["huge", "x"], ["y"])]
    return make_model(nodes, [x_input([1, 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1_000_000, 1_000_000])],
                      [shape], "constant_of_shape_terabytes")


def memory_bomb(side, from_input, name):
    # ATTACK: memory exhaustion within what the data type allows. A [side, side] float32 tensor
    # (side 16384: 1 GiB) made either from a constant (ConstantOfShape: allocated while the
    # optimizer folds it at load time) or from the input (Expand of x: allocated at run time),
    # then reduced to [1,1]. Must stop at the sandbox's memory cap with a typed error.
    shape = numpy_helper.from_array(np.array([side, side], np.int64), "bomb_shape")
    if from_input:
        nodes = [helper.make_node("Expand", ["x", "bomb_shape"], ["big"]),
                 helper.make_node("ReduceSum", ["big"], ["y"], keepdims=1)]
    else:
        nodes = [helper.make_node("ConstantOfShape", ["bomb_shape"], ["big"],
                                  value=numpy_helper.from_array(np.array([1.0], np.float32))),
                 helper.make_node("ReduceSum", ["big"], ["reduced"], keepdims=1),
                 helper.make_node("Add", ["reduced", "x"], ["y"])]
    return make_model(nodes, [x_input([1, 1])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1])],
                      [shape], name)


def external_data(location, name):
    # ATTACK: file disclosure / path traversal. Initializer "w" [1,16] float has
    # data_location=EXTERNAL pointing at `location` (offset 0, length 64). A loader that resolves
    # external data against the filesystem would read host files (/etc/passwd) or escape the
    # model directory (../x). Warden must reject external data (typed error), never open the file.
    w = TensorProto()
    w.name = "w"
    w.data_type = TensorProto.FLOAT
    w.dims.extend([1, 16])
    w.data_location = TensorProto.EXTERNAL
    for k, v in (("location", location), ("offset", "0"), ("length", "64")):
        entry = w.external_data.add()
        entry.key, entry.value = k, v
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    return make_model(nodes, [x_input([1, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                      [w], name)


def small_valid_model():
    """A small well-formed model (x [1,16] -> MatMul 16x16 -> Add -> Relu), ~1.2 KB."""
    rng = np.random.default_rng(7)
    w = numpy_helper.from_array(rng.standard_normal((16, 16)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((1, 16)).astype(np.float32), "b")
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["hb"]),
             helper.make_node("Relu", ["hb"], ["y"])]
    return make_model(nodes, [x_input([1, 16])],
                      [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16])],
                      [w, b], "small_valid")


def write(name, data, attack):
    path = os.path.join(OUT_DIR, name)
    with open(path, "wb") as f:
        f.write(data)
    size = len(data)
    assert size < 100 * 1024, (name, size)
    print(f"{os.path.relpath(path, REPO_ROOT)}: {size} bytes  -- {attack}")


def main():
    os.makedirs(OUT_DIR, exist_ok=True)
    # Serialize with SerializeToString (not onnx.save) so nothing tries to resolve external data.
    write("slow_matmul_chain.onnx", slow_matmul_chain().SerializeToString(),
          "input-dependent 200x MatMul 2048x2048 chain: run-time CPU exhaustion")
    write("slow_constant_fold.onnx", slow_constant_fold().SerializeToString(),
          "constant-only 200x MatMul 2048x2048 chain: load-time constant-folding CPU exhaustion")
    write("constant_of_shape_terabytes.onnx", constant_of_shape_terabytes().SerializeToString(),
          "ConstantOfShape [1e6,1e6] f32 = 4 TB: memory exhaustion")
    write("memory_bomb_load.onnx", memory_bomb(16384, False, "memory_bomb_load").SerializeToString(),
          "ConstantOfShape [16384,16384] f32 (1 GiB) folded at load: memory cap at load")
    write("memory_bomb_run.onnx", memory_bomb(16384, True, "memory_bomb_run").SerializeToString(),
          "Expand x to [16384,16384] f32 (1 GiB) at run time: memory cap at run")
    write("external_data_passwd.onnx", external_data("/etc/passwd", "external_data_passwd").SerializeToString(),
          "external initializer data at absolute path /etc/passwd: host file disclosure")
    write("external_data_parent.onnx", external_data("../x", "external_data_parent").SerializeToString(),
          "external initializer data at ../x: path traversal out of the model directory")
    # ATTACK: parser robustness on garbage input (not a protobuf ModelProto at all, or one that
    # decodes to nonsense). Expect a typed parse error.
    write("random_bytes.onnx", np.random.default_rng(0xBAD).bytes(4096),
          "4096 seeded random bytes: protobuf parser robustness")
    # ATTACK: parser robustness on a truncated protobuf (cut inside a tensor's raw data).
    valid = small_valid_model().SerializeToString()
    write("truncated.onnx", valid[: len(valid) // 2],
          f"first half ({len(valid) // 2} of {len(valid)} bytes) of a valid model: truncated protobuf")


if __name__ == "__main__":
    main()
