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



# ---------------------------------------------------------------------------------------------
# Structural attacks on the parser and the analyser. Every graph takes `x` and answers `y` (the
# shapes the test's manifest declares), so a load gets past Warden's input checks and into tract.
# ---------------------------------------------------------------------------------------------

INT64_MAX = 2**63 - 1


def y_output(shape):
    return helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)


def raw_initializer(name, data_type, dims, raw):
    """A TensorProto built by hand, so dims and raw_data may disagree."""
    t = TensorProto()
    t.name = name
    t.data_type = data_type
    t.dims.extend(dims)
    t.raw_data = raw
    return t


def endless_loop():
    # ATTACK: a Loop whose trip count is INT64_MAX and whose condition stays true: an executor
    # that supports Loop runs until someone stops it. tract 0.23.9 has no Loop operator, so the
    # expected end is a model error at load; the run deadline covers the general case
    # (slow_matmul_chain.onnx).
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "one"], ["v_out"])],
        "endless_body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_in", TensorProto.FLOAT, [1, 1])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_out", TensorProto.FLOAT, [1, 1])])
    inits = [numpy_helper.from_array(np.array(INT64_MAX, np.int64), "trip_count"),
             numpy_helper.from_array(np.array(True), "keep_going"), one]
    nodes = [helper.make_node("Loop", ["trip_count", "keep_going", "x"], ["y"], body=body)]
    return make_model(nodes, [x_input([1, 1])], [y_output([1, 1])], inits, "endless_loop")


def concat_doubling(steps=40):
    # ATTACK: exponential blow-up at run time. y_{k+1} = Concat(y_k, y_k) along alternating axes,
    # 40 times: 2^40 elements (4 TiB of f32; more than a wasm32 usize can count) from a [1,1]
    # input. Nothing is constant, so the executor allocates step by step until the memory cap.
    nodes, cur = [], "x"
    for k in range(steps):
        out = f"d{k}"
        nodes.append(helper.make_node("Concat", [cur, cur], [out], axis=k % 2))
        cur = out
    nodes.append(helper.make_node("ReduceSum", [cur], ["y"], keepdims=1))
    return make_model(nodes, [x_input([1, 1])], [y_output([1, 1])], [], "expand_exponential")


def constant_of_shape_squared(squarings, name):
    # ATTACK: exponential blow-up at load time. A constant shape [3, 3] is squared elementwise
    # `squarings` times (3 -> 9 -> 81 -> 6561 -> 43046721 -> 1.85e15 -> int64 wrap-around) and fed
    # to ConstantOfShape; the optimizer folds constants while loading.
    inits = [numpy_helper.from_array(np.array([3, 3], np.int64), "s0")]
    nodes, cur = [], "s0"
    for k in range(squarings):
        out = f"s{k + 1}"
        nodes.append(helper.make_node("Mul", [cur, cur], [out]))
        cur = out
    nodes += [helper.make_node("ConstantOfShape", [cur], ["big"],
                               value=numpy_helper.from_array(np.array([1.0], np.float32))),
              helper.make_node("ReduceSum", ["big"], ["reduced"], keepdims=1),
              helper.make_node("Add", ["reduced", "x"], ["y"])]
    return make_model(nodes, [x_input([1, 1])], [y_output([1, 1])], inits, name)


def add_initializer(w, name):
    """y = x + w: the initializer is loaded while the graph is parsed."""
    nodes = [helper.make_node("Add", ["x", "w"], ["y"])]
    return make_model(nodes, [x_input([1, 1])], [y_output([1, 1])], [w], name)


def missing_graph():
    # ATTACK: a ModelProto without its graph (sonos/tract#499: tract used to panic on it).
    model = onnx.ModelProto()
    model.ir_version = 8
    model.producer_name = "warden-make-hostile"
    model.opset_import.add().version = OPSET
    return model


def single_node(op, inputs, attrs=None, name=None, extra_attrs=()):
    node = helper.make_node(op, inputs, ["y"], **(attrs or {}))
    node.attribute.extend(extra_attrs)
    return make_model([node], [x_input([1, 4])], [y_output([1, 4])], [], name or op)


def attribute_without_value(name, attr_type):
    """An AttributeProto that declares a type but carries no value of it."""
    a = onnx.AttributeProto()
    a.name = name
    a.type = attr_type
    return a


def constant_without_tensor():
    # ATTACK (sonos/tract#2372): a Constant whose `value` attribute says TENSOR but has no `t`;
    # tract used to unwrap() the missing tensor and abort the process.
    node = helper.make_node("Constant", [], ["c"])
    node.attribute.append(attribute_without_value("value", onnx.AttributeProto.TENSOR))
    nodes = [node, helper.make_node("Add", ["x", "c"], ["y"])]
    return make_model(nodes, [x_input([1, 4])], [y_output([1, 4])], [], "constant_without_tensor")


def if_without_graph():
    # ATTACK (sonos/tract#2372, its sibling in the fix): an If whose branch attributes say GRAPH
    # but hold no graph.
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    node = helper.make_node("If", ["c"], ["y"])
    node.attribute.extend([attribute_without_value("then_branch", onnx.AttributeProto.GRAPH),
                           attribute_without_value("else_branch", onnx.AttributeProto.GRAPH)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]), node]
    return make_model(nodes, [x_input([1, 4])], [y_output([1, 4])], [zero], "if_without_graph")


def graph_attribute(name, graph_bytes):
    """An AttributeProto of type GRAPH around already-serialized graph bytes. Deep nesting is
    assembled as bytes: the Python protobuf runtime refuses to build messages nested this deep."""
    head = onnx.AttributeProto(name=name, type=onnx.AttributeProto.GRAPH).SerializeToString()
    return head + length_delimited(6, graph_bytes)


def node_with_graphs(node, graphs):
    """`node` serialized, plus GRAPH attributes given as (name, graph bytes)."""
    return node.SerializeToString() + b"".join(length_delimited(5, graph_attribute(n, g)) for n, g in graphs)


def graph_with_node(graph, node_bytes):
    """`graph` serialized with one more node (appended last) given as bytes."""
    return graph.SerializeToString() + length_delimited(1, node_bytes)


def model_with_graph(model, graph_bytes):
    model = onnx.ModelProto.FromString(model.SerializeToString())
    model.ClearField("graph")
    return model.SerializeToString() + length_delimited(7, graph_bytes)


def nested_if(depth, name):
    # ATTACK: deep recursion. `depth` If nodes, each in the then-branch of the one above; every
    # level adds three protobuf message levels (Graph > Node > Attribute > Graph), so a few
    # hundred levels exhaust a recursive decoder's or analyser's stack.
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")

    def out(tag):
        return helper.make_tensor_value_info(tag, TensorProto.FLOAT, [1, 1])

    def leaf(tag, op):
        return helper.make_graph([helper.make_node(op, ["x"], [tag])], f"g_{tag}", [], [out(tag)])

    inner = leaf(f"then_{depth}", "Identity").SerializeToString()
    for level in range(depth, 0, -1):
        node = helper.make_node("If", ["c"], [f"out_{level}"])
        node_bytes = node_with_graphs(node, [("then_branch", inner),
                                             ("else_branch", leaf(f"else_{level}", "Neg").SerializeToString())])
        inner = graph_with_node(helper.make_graph([], f"level_{level}", [], [out(f"out_{level}")]), node_bytes)
    top = node_with_graphs(helper.make_node("If", ["c"], ["y"]),
                           [("then_branch", inner), ("else_branch", leaf("else_0", "Neg").SerializeToString())])
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"])]
    model = make_model(nodes, [x_input([1, 1])], [y_output([1, 1])], [zero], name)
    return model_with_graph(model, graph_with_node(model.graph, top))


def nested_loop(depth, name):
    # ATTACK: deep recursion through Loop bodies (each body holds the next Loop).
    def body(level):
        return helper.make_graph(
            [helper.make_node("Identity", ["cond_in"], [f"cond_out_{level}"])], f"body_{level}",
            [helper.make_tensor_value_info("i", TensorProto.INT64, []),
             helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
             helper.make_tensor_value_info(f"v_in_{level}", TensorProto.FLOAT, [1, 1])],
            [helper.make_tensor_value_info(f"cond_out_{level}", TensorProto.BOOL, []),
             helper.make_tensor_value_info(f"v_out_{level}", TensorProto.FLOAT, [1, 1])])

    innermost = body(depth)
    innermost.node.append(helper.make_node("Identity", [f"v_in_{depth}"], [f"v_out_{depth}"]))
    inner = innermost.SerializeToString()
    for level in range(depth - 1, 0, -1):
        loop = helper.make_node("Loop", ["one_trip", "cond_in", f"v_in_{level}"], [f"v_out_{level}"])
        inner = graph_with_node(body(level), node_with_graphs(loop, [("body", inner)]))
    inits = [numpy_helper.from_array(np.array(1, np.int64), "one_trip"),
             numpy_helper.from_array(np.array(True), "go")]
    model = make_model([], [x_input([1, 1])], [y_output([1, 1])], inits, name)
    top = node_with_graphs(helper.make_node("Loop", ["one_trip", "go", "x"], ["y"]), [("body", inner)])
    return model_with_graph(model, graph_with_node(model.graph, top))


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def field(number, wire_type, payload):
    return varint((number << 3) | wire_type) + payload


def length_delimited(number, payload, claimed=None):
    return field(number, 2, varint(len(payload) if claimed is None else claimed) + payload)


def raw_data_length_2gib():
    # ATTACK: a 2 GiB initializer declared in the protobuf framing itself: raw_data's length
    # prefix (and those of the tensor, graph and model fields around it) claim 2^31 bytes, the
    # file holds 16. A decoder that trusts the prefix allocates 2 GiB before reading. Written by
    # hand (protobuf libraries will not write a lie).
    claim = 2**31
    tensor_head = (field(1, 0, varint(1 << 29))            # dims: [536870912]
                   + field(2, 0, varint(TensorProto.FLOAT))  # data_type
                   + length_delimited(8, b"w"))              # name
    tensor = tensor_head + field(9, 2, varint(claim)) + b"\x00" * 16      # raw_data, cut short
    tensor_claim = len(tensor_head) + len(field(9, 2, varint(claim))) + claim
    valid = add_initializer(numpy_helper.from_array(np.zeros((1, 1), np.float32), "w"), "raw_data_length_2gib")
    graph = valid.graph
    graph.ClearField("initializer")
    graph_head = graph.SerializeToString()
    graph_bytes = graph_head + field(5, 2, varint(tensor_claim)) + tensor  # initializer, last
    graph_claim = len(graph_head) + len(field(5, 2, varint(tensor_claim))) + tensor_claim
    valid.ClearField("graph")
    model_head = valid.SerializeToString()
    return model_head + field(7, 2, varint(graph_claim)) + graph_bytes


# Rebuilt replays of published tract crash inputs. The original files are not available offline
# (issue attachments and a personal web page); each is rebuilt from the description to
# the smallest model with the same trigger. See tests/ADVERSARIAL.md.

def tract_163_reshape_minus_one():
    # sonos/tract#163 ('attempt to multiply with overflow' while optimizing): Conv -> MaxPool ->
    # Reshape to [-1, N] -> Gemm; tract carried the -1 into a shape product as usize::MAX.
    rng = np.random.default_rng(163)
    w = numpy_helper.from_array(rng.standard_normal((2, 3, 3, 3)).astype(np.float32), "conv_w")
    shape = numpy_helper.from_array(np.array([-1, 18], np.int64), "flat_shape")
    fc = numpy_helper.from_array(rng.standard_normal((4, 18)).astype(np.float32), "fc_w")
    nodes = [helper.make_node("Conv", ["x", "conv_w"], ["c"]),
             helper.make_node("MaxPool", ["c"], ["p"], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Reshape", ["p", "flat_shape"], ["f"]),
             helper.make_node("Gemm", ["f", "fc_w"], ["y"], transB=1)]
    return make_model(nodes, [x_input([1, 3, 8, 8])], [y_output([1, 4])], [w, shape, fc],
                      "tract_163_reshape_minus_one")


def tract_1177_einsum_scalar():
    # sonos/tract#1177 (index out of bounds in MatMul shape inference, reached from an Einsum):
    # an Einsum contracting everything to a rank-0 result, the shape the MatMul rules indexed.
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32), "w")
    nodes = [helper.make_node("Reshape", ["x", "flat"], ["v"]),
             helper.make_node("Einsum", ["v", "w"], ["dot"], equation="i,i->"),
             helper.make_node("Reshape", ["dot", "one_one"], ["y"])]
    inits = [w, numpy_helper.from_array(np.array([4], np.int64), "flat"),
             numpy_helper.from_array(np.array([1, 1], np.int64), "one_one")]
    return make_model(nodes, [x_input([1, 4])], [y_output([1, 1])], inits, "tract_1177_einsum_scalar")


def tract_1177_matmul_scalar():
    # sonos/tract#1177, second form: MatMul with a rank-0 operand (invalid ONNX; the MatMul
    # rules must not index an empty shape).
    s = numpy_helper.from_array(np.array(2.0, np.float32), "s")
    nodes = [helper.make_node("MatMul", ["x", "s"], ["y"])]
    return make_model(nodes, [x_input([1, 4])], [y_output([1, 4])], [s], "tract_1177_matmul_scalar")


def tract_2391_lstm_without_outputs():
    # sonos/tract#2391, RNN case: an LSTM node with no outputs at all (the rules indexed
    # outputs[0]); y = Identity(x) keeps the graph well-formed otherwise.
    rng = np.random.default_rng(2391)
    hidden = 8
    w = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, 4)).astype(np.float32), "W")
    r = numpy_helper.from_array(rng.standard_normal((1, 4 * hidden, hidden)).astype(np.float32), "R")
    nodes = [helper.make_node("Reshape", ["x", "seq_shape"], ["seq"]),
             helper.make_node("LSTM", ["seq", "W", "R"], [], hidden_size=hidden),
             helper.make_node("Identity", ["x"], ["y"])]
    inits = [w, r, numpy_helper.from_array(np.array([1, 1, 4], np.int64), "seq_shape")]
    return make_model(nodes, [x_input([1, 4])], [y_output([1, 4])], inits, "tract_2391_lstm_without_outputs")


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

    # Structural attacks (parser, analyser, optimizer).
    write("endless_loop.onnx", endless_loop().SerializeToString(),
          "Loop with trip count INT64_MAX and a condition that stays true: endless iteration")
    write("expand_exponential.onnx", concat_doubling().SerializeToString(),
          "40 x Concat(y, y) from x [1,1]: 2^40 elements at run time (exponential blow-up)")
    write("constant_of_shape_squared.onnx",
          constant_of_shape_squared(4, "constant_of_shape_squared").SerializeToString(),
          "shape [3,3] squared 4 times -> ConstantOfShape [43046721, 43046721] folded at load")
    write("constant_of_shape_squared_wrap.onnx",
          constant_of_shape_squared(6, "constant_of_shape_squared_wrap").SerializeToString(),
          "shape [3,3] squared 6 times: int64 wraps around before ConstantOfShape")
    write("dims_product_overflow.onnx",
          add_initializer(raw_initializer("w", TensorProto.FLOAT, [2**32, 2**32, 16], b"\0" * 4),
                          "dims_product_overflow").SerializeToString(),
          "initializer dims [2^32, 2^32, 16] (product 2^68) with 4 bytes of raw_data")
    write("dims_wrap_usize32.onnx",
          add_initializer(raw_initializer("w", TensorProto.FLOAT, [2**32 + 1], b"\0" * 4),
                          "dims_wrap_usize32").SerializeToString(),
          "initializer dims [2^32 + 1] with 4 bytes: 1 element if a 32-bit usize truncates the dim")
    write("dims_negative.onnx",
          add_initializer(raw_initializer("w", TensorProto.FLOAT, [-1, 4], b"\0" * 16),
                          "dims_negative").SerializeToString(),
          "initializer dims [-1, 4]")
    write("raw_data_too_long.onnx",
          add_initializer(raw_initializer("w", TensorProto.FLOAT, [2], b"\0" * 64),
                          "raw_data_too_long").SerializeToString(),
          "initializer dims [2] f32 (8 bytes) with 64 bytes of raw_data")
    write("unknown_dtype_initializer.onnx",
          add_initializer(raw_initializer("w", 9999, [1], b"\0" * 4),
                          "unknown_dtype_initializer").SerializeToString(),
          "initializer data_type 9999")
    unknown_input = make_model([helper.make_node("Identity", ["x"], ["y"])],
                               [helper.make_tensor_value_info("x", 9999, [1, 1])],
                               [y_output([1, 1])], [], "unknown_dtype_input")
    write("unknown_dtype_input.onnx", unknown_input.SerializeToString(), "graph input elem_type 9999")
    write("string_raw_data.onnx",
          add_initializer(raw_initializer("w", TensorProto.STRING, [1], b"abcd"),
                          "string_raw_data").SerializeToString(),
          "STRING initializer given as raw_data (a path tract leaves unimplemented!)")
    write("missing_graph.onnx", missing_graph().SerializeToString(),
          "ModelProto without a graph (replays sonos/tract#499)")
    write("concat_without_axis.onnx", single_node("Concat", ["x", "x"], name="concat_without_axis")
          .SerializeToString(), "Concat without its required axis attribute")
    write("cast_without_to.onnx", single_node("Cast", ["x"], name="cast_without_to").SerializeToString(),
          "Cast without its required `to` attribute")
    write("constant_without_value.onnx",
          make_model([helper.make_node("Constant", [], ["c"]), helper.make_node("Add", ["x", "c"], ["y"])],
                     [x_input([1, 4])], [y_output([1, 4])], [], "constant_without_value").SerializeToString(),
          "Constant with no attribute at all")
    write("nested_if_300.onnx", nested_if(300, "nested_if_300"),
          "If nested 300 deep (900 protobuf message levels)")
    write("nested_if_30.onnx", nested_if(30, "nested_if_30"),
          "If nested 30 deep (just under a 100-level protobuf recursion limit)")
    write("nested_loop_300.onnx", nested_loop(300, "nested_loop_300"),
          "Loop bodies nested 300 deep")
    write("initializer_2gib_declared.onnx",
          add_initializer(raw_initializer("w", TensorProto.FLOAT, [1 << 29], b"\0" * 16),
                          "initializer_2gib_declared").SerializeToString(),
          "initializer dims [2^29] f32 (2 GiB) with 16 bytes of raw_data")
    no_data = TensorProto()
    no_data.name, no_data.data_type = "w", TensorProto.FLOAT
    no_data.dims.extend([1 << 29])
    write("initializer_2gib_no_data.onnx",
          add_initializer(no_data, "initializer_2gib_no_data").SerializeToString(),
          "initializer dims [2^29] f32 (2 GiB) with no data at all")
    write("raw_data_length_2gib.onnx", raw_data_length_2gib(),
          "raw_data length prefix claims 2 GiB, the file holds 16 bytes")
    # Replays of published tract crash inputs (rebuilt; see tests/ADVERSARIAL.md).
    write("tract_163_reshape_minus_one.onnx", tract_163_reshape_minus_one().SerializeToString(),
          "sonos/tract#163: Conv -> MaxPool -> Reshape [-1, 18] -> Gemm")
    write("tract_1177_einsum_scalar.onnx", tract_1177_einsum_scalar().SerializeToString(),
          "sonos/tract#1177: Einsum i,i-> (rank-0 result)")
    write("tract_1177_matmul_scalar.onnx", tract_1177_matmul_scalar().SerializeToString(),
          "sonos/tract#1177: MatMul with a rank-0 operand")
    write("tract_2372_constant_without_tensor.onnx", constant_without_tensor().SerializeToString(),
          "sonos/tract#2372: Constant TENSOR attribute without its tensor")
    write("tract_2372_if_without_graph.onnx", if_without_graph().SerializeToString(),
          "sonos/tract#2372 (sibling): If GRAPH attributes without their graphs")
    write("tract_2390_raw_data_short.onnx",
          add_initializer(raw_initializer("w", TensorProto.FLOAT, [10, 11], b"\0" * 12),
                          "tract_2390_raw_data_short").SerializeToString(),
          "sonos/tract#2390: initializer [10, 11] f32 (440 bytes) with 12 bytes of raw_data")
    write("tract_2391_concat_no_inputs.onnx",
          single_node("Concat", [], {"axis": 1}, "tract_2391_concat_no_inputs").SerializeToString(),
          "sonos/tract#2391: Concat with no inputs")
    write("tract_2391_squeeze_no_inputs.onnx",
          single_node("Squeeze", [], name="tract_2391_squeeze_no_inputs").SerializeToString(),
          "sonos/tract#2391: Squeeze with no inputs")
    write("tract_2391_gemm_one_input.onnx",
          single_node("Gemm", ["x"], name="tract_2391_gemm_one_input").SerializeToString(),
          "sonos/tract#2391: Gemm with one input")
    write("tract_2391_reshape_one_input.onnx",
          single_node("Reshape", ["x"], name="tract_2391_reshape_one_input").SerializeToString(),
          "sonos/tract#2391: Reshape with one input")
    write("tract_2391_lstm_without_outputs.onnx", tract_2391_lstm_without_outputs().SerializeToString(),
          "sonos/tract#2391: LSTM with no outputs")


if __name__ == "__main__":
    main()
