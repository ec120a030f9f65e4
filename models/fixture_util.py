"""Shared helpers for writing Warden reference fixtures (KServe v2 tensor shape)."""
import json
import os

import numpy as np
import onnx
import onnxruntime as ort

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# numpy dtype -> KServe v2 datatype name
KSERVE_DTYPES = {
    np.dtype(np.bool_): "BOOL",
    np.dtype(np.uint8): "UINT8",
    np.dtype(np.int8): "INT8",
    np.dtype(np.int32): "INT32",
    np.dtype(np.int64): "INT64",
    np.dtype(np.float32): "FP32",
    np.dtype(np.float64): "FP64",
}


def tensor_json(name, arr):
    arr = np.asarray(arr)
    dt = KSERVE_DTYPES[arr.dtype]
    flat = arr.reshape(-1)
    if dt in ("FP32", "FP64"):
        data = [float(v) for v in flat]
    elif dt == "BOOL":
        data = [bool(v) for v in flat]
    else:
        data = [int(v) for v in flat]
    return {"name": name, "datatype": dt, "shape": [int(d) for d in arr.shape], "data": data}


def ort_session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    return ort.InferenceSession(path, sess_options=so, providers=["CPUExecutionProvider"])


def run_case(sess, feeds):
    """feeds: list of (name, np.ndarray) in model input order. Returns case dict."""
    out_names = [o.name for o in sess.get_outputs()]
    outs = sess.run(out_names, dict(feeds))
    return {
        "inputs": [tensor_json(n, a) for n, a in feeds],
        "outputs": [tensor_json(n, a) for n, a in zip(out_names, outs)],
    }, outs


def write_json(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.relpath(path, REPO_ROOT)} ({os.path.getsize(path)} bytes)")


def rel(path):
    return os.path.relpath(path, REPO_ROOT)


def op_types(graph, acc=None):
    """Set of (domain, op_type) including If/Loop/Scan subgraphs."""
    acc = set() if acc is None else acc
    for n in graph.node:
        acc.add((n.domain or "ai.onnx", n.op_type))
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                op_types(a.g, acc)
            for g in a.graphs:
                op_types(g, acc)
    return acc


def value_info_desc(vi):
    t = vi.type.tensor_type
    dims = []
    for d in t.shape.dim:
        if d.HasField("dim_value"):
            dims.append(d.dim_value)
        elif d.HasField("dim_param"):
            dims.append(d.dim_param or "?")
        else:
            dims.append("?")
    return f"{vi.name}: {onnx.TensorProto.DataType.Name(t.elem_type)} {dims}"


def describe_model(m):
    inits = {i.name for i in m.graph.initializer}
    opsets = ", ".join(f"{o.domain or 'ai.onnx'}={o.version}" for o in m.opset_import)
    print(f"  ir_version={m.ir_version} opsets: {opsets}")
    for i in m.graph.input:
        if i.name not in inits:
            print("  input  " + value_info_desc(i))
    for o in m.graph.output:
        print("  output " + value_info_desc(o))
    ops = sorted(f"{d}:{t}" if d != "ai.onnx" else t for d, t in op_types(m.graph))
    print(f"  op types ({len(ops)}): {', '.join(ops)}")
