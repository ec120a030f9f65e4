#!/usr/bin/env python3
"""Train small real sample models on scikit-learn's bundled data sets and export them to ONNX.

Deterministic (fixed seeds, single-threaded ORT) and rerunnable. Writes:
  models/repo/<name>/1/model.onnx         model repository layout (<name>/<version>/model.onnx)
  models/fixtures/<name>.reference.json   onnxruntime reference outputs for 5 held-out rows
  models/requests/<name>.json             KServe v2 inference request for the first case

Only ops that tract-onnx 0.23.9 supports are emitted: the exported graphs use
Cast, MatMul, Add, Relu, Softmax/Sigmoid, Sub, Concat, ArgMax, Identity, Reshape.
skl2onnx maps the argmax index to the class label with ai.onnx.ml ArrayFeatureExtractor,
which tract does not support; since our classes are exactly 0..n-1 that node is an identity
and is replaced by Identity (checked below). Feature scaling is folded into the first layer's
weights instead of exporting a Scaler node, so the models take raw features.

Usage: python3 models/make_samples.py
"""
import os
import sys
import warnings

import numpy as np
import onnx
from onnx import helper
from skl2onnx import convert_sklearn
from skl2onnx.common.data_types import FloatTensorType
from sklearn.datasets import load_breast_cancer, load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_util import REPO_ROOT, describe_model, op_types, ort_session, rel, run_case, write_json  # noqa: E402

SEED = 0
N_CASES = 5
OPSET = {"": 15, "ai.onnx.ml": 3}
MODELS_DIR = os.path.join(REPO_ROOT, "models")

# Ops we allow in exported sample graphs (subset of what tract-onnx 0.23.9 handles).
ALLOWED_OPS = {
    ("ai.onnx", op) for op in
    ["Cast", "MatMul", "Gemm", "Add", "Sub", "Mul", "Relu", "Sigmoid", "Softmax", "Concat",
     "ArgMax", "Identity", "Reshape"]
}


def load(name):
    if name == "digits":
        # 8x8 images, 64 features with integer values 0..16, 10 classes.
        X, y = load_digits(return_X_y=True)
        mean = np.zeros(X.shape[1])
        std = np.full(X.shape[1], 16.0)  # simple /16 scaling
        hidden = (64,)
    elif name == "breast_cancer":
        # 30 real-valued features with very different ranges, 2 classes.
        X, y = load_breast_cancer(return_X_y=True)
        mean, std, hidden = None, None, (16,)
    else:
        raise ValueError(name)
    X = X.astype(np.float32)
    X_tr, X_te, y_tr, y_te = train_test_split(X, y, test_size=0.25, random_state=SEED, stratify=y)
    if mean is None:  # standardize with training statistics
        mean = X_tr.astype(np.float64).mean(axis=0)
        std = X_tr.astype(np.float64).std(axis=0)
        std[std == 0] = 1.0
    return X_tr, X_te, y_tr, y_te, mean, std, hidden


def fold_scaling(clf, mean, std):
    """Fold x' = (x - mean) / std into the first layer so the model takes raw features.
    h = x' @ W + b = x @ (W / std[:, None]) + (b - (mean / std) @ W)."""
    W, b = clf.coefs_[0], clf.intercepts_[0]
    clf.coefs_[0] = W / std[:, None]
    clf.intercepts_[0] = b - (mean / std) @ W


def remove_array_feature_extractor(model, n_classes):
    """Replace ArrayFeatureExtractor(classes, argmax) with Identity(argmax) when classes == 0..n-1."""
    g = model.graph
    inits = {i.name: i for i in g.initializer}
    for idx, node in enumerate(list(g.node)):
        if node.op_type != "ArrayFeatureExtractor":
            continue
        classes_name, index_name = node.input
        classes = onnx.numpy_helper.to_array(inits[classes_name])
        assert np.array_equal(classes, np.arange(n_classes)), classes
        new = helper.make_node("Identity", [index_name], list(node.output), name=node.name + "_identity")
        g.node.remove(node)
        g.node.insert(idx, new)
        if not any(classes_name in n.input for n in g.node):
            g.initializer.remove(inits[classes_name])
    if not any(n.domain == "ai.onnx.ml" for n in g.node):
        for o in list(model.opset_import):
            if o.domain == "ai.onnx.ml":
                model.opset_import.remove(o)


def build(name):
    X_tr, X_te, y_tr, y_te, mean, std, hidden = load(name)
    n_features = X_tr.shape[1]
    n_classes = len(np.unique(y_tr))
    clf = MLPClassifier(hidden_layer_sizes=hidden, max_iter=1000, random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit((X_tr - mean) / std, y_tr)
    acc_sklearn = clf.score((X_te - mean) / std, y_te)
    fold_scaling(clf, mean, std)

    model = convert_sklearn(
        clf,
        name=name,
        initial_types=[("input", FloatTensorType([1, n_features]))],
        options={id(clf): {"zipmap": False}},
        target_opset=OPSET,
    )
    remove_array_feature_extractor(model, n_classes)
    # Deterministic metadata (skl2onnx uses a random uuid for the graph name).
    model.graph.name = name
    model.doc_string = f"Warden sample model '{name}': sklearn MLPClassifier{hidden} on sklearn {name} data set"
    onnx.checker.check_model(model, full_check=True)
    ops = op_types(model.graph)
    bad = ops - ALLOWED_OPS
    assert not bad, f"{name}: unsupported ops {bad}"

    path = os.path.join(MODELS_DIR, "repo", name, "1", "model.onnx")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(model.SerializeToString())
    print(f"== {name}: wrote {rel(path)} ({os.path.getsize(path)} bytes)")
    describe_model(model)

    # Test accuracy through onnxruntime on raw (unscaled) features, batch 1.
    sess = ort_session(path)
    preds, probs = [], []
    for row in X_te:
        label, prob = sess.run(["label", "probabilities"], {"input": row[None, :]})
        preds.append(int(label[0]))
        probs.append(prob[0])
    acc_onnx = float(np.mean(np.array(preds) == y_te))
    sk_probs = clf.predict_proba(X_te.astype(np.float64))
    max_diff = float(np.max(np.abs(np.array(probs) - sk_probs)))
    print(f"  test accuracy: sklearn={acc_sklearn:.4f} onnxruntime={acc_onnx:.4f} "
          f"(n_test={len(y_te)}, max |p_ort - p_sklearn|={max_diff:.2e})")

    cases = []
    for row in X_te[:N_CASES]:
        case, _ = run_case(sess, [("input", row[None, :].astype(np.float32))])
        cases.append(case)
    write_json(os.path.join(MODELS_DIR, "fixtures", f"{name}.reference.json"),
               {"model": name, "onnx": rel(path), "cases": cases})
    write_json(os.path.join(MODELS_DIR, "requests", f"{name}.json"),
               {"id": "example", "inputs": cases[0]["inputs"]})
    return acc_onnx


def main():
    for name in ["digits", "breast_cancer"]:
        build(name)


if __name__ == "__main__":
    main()
