#!/usr/bin/env python3
"""Fetch small public ONNX models from PyPI wheels and write onnxruntime reference fixtures.

Models (extracted from wheels downloaded with `pip download`, nothing else is fetched):
  silero_vad.onnx  <- silero-vad==6.2.3            silero_vad/data/silero_vad_openvino_16k.onnx
     (the 16 kHz export without the sample-rate `If`: tract 0.23.9 analyses both branches of the
     plain silero_vad.onnx's `If(sr == 16000)` with the same input shape, and the 8 kHz branch
     fails with "Attempt to squeeze an axis which dimension is not one")
  ppocr_rec.onnx   <- rapidocr-onnxruntime==1.4.4  rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx
  ppocr_cls.onnx   <- rapidocr-onnxruntime==1.4.4  rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx

Writes into models/public/ (git-ignored):
  <name>.onnx, <name>.reference.json (same format as models/fixtures/*.reference.json),
  <name>.shapes.json = {"inputs": [{"name", "datatype", "shape"}]} (concrete shapes used).

Skips the download when every target file already exists with the pinned sha256.
Usage: python3 models/fetch_public_models.py
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import numpy as np
import onnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from fixture_util import REPO_ROOT, describe_model, ort_session, rel, run_case  # noqa: E402

PUBLIC_DIR = os.path.join(REPO_ROOT, "models", "public")

WHEELS = {
    "silero-vad": "6.2.3",
    "rapidocr-onnxruntime": "1.4.4",
}

# name -> (pypi package, member path inside the wheel, sha256 of the extracted file)
MODELS = {
    "silero_vad": ("silero-vad", "silero_vad/data/silero_vad_openvino_16k.onnx",
                   "7776b81ad1b0350c15d7f1555943b9232eb53e9ca5d989c6d0cea9ebc8664d87"),
    "ppocr_rec": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx",
                  "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"),
    "ppocr_cls": ("rapidocr-onnxruntime", "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
                  "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"),
}


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_path(name):
    return os.path.join(PUBLIC_DIR, f"{name}.onnx")


def fetch():
    os.makedirs(PUBLIC_DIR, exist_ok=True)
    missing = [n for n, (_, _, digest) in MODELS.items()
               if not (os.path.exists(model_path(n)) and sha256(model_path(n)) == digest)]
    if not missing:
        print("all public models present with matching sha256, skipping download")
        return
    packages = sorted({MODELS[n][0] for n in missing})
    with tempfile.TemporaryDirectory() as tmp:
        for pkg in packages:
            spec = f"{pkg}=={WHEELS[pkg]}"
            print(f"downloading {spec} ...", flush=True)
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                            "-q", "-d", tmp, spec], check=True)
        wheels = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.endswith(".whl")]
        for name in missing:
            pkg, member, digest = MODELS[name]
            prefix = pkg.replace("-", "_") + "-" + WHEELS[pkg] + "-"
            (whl,) = [w for w in wheels if os.path.basename(w).startswith(prefix)]
            with zipfile.ZipFile(whl) as z:
                data = z.read(member)
            got = hashlib.sha256(data).hexdigest()
            if got != digest:
                sys.exit(f"sha256 mismatch for {name} ({member} in {os.path.basename(whl)}): {got} != {digest}")
            with open(model_path(name), "wb") as f:
                f.write(data)
            print(f"extracted {member} from {os.path.basename(whl)} -> {rel(model_path(name))} "
                  f"({len(data)} bytes, sha256 {digest[:16]}...)")


# ---------------------------------------------------------------- deterministic inputs

def silero_cases(sess):
    """Three consecutive 512-sample chunks of 16 kHz audio (sine + seeded noise), fed the way
    silero-vad's own OnnxWrapper does: input = [64 context samples | 512 new samples] = [1, 576],
    state [2, 1, 128] (zeros at start, then the previous call's stateN); this export is fixed at 16 kHz.
    Cases chain: case k uses stateN and the last 64 input samples of case k-1."""
    sr = 16000
    rng = np.random.default_rng(1234)
    n = 3 * 512
    t = np.arange(n) / sr
    signal = (0.4 * np.sin(2 * np.pi * 220.0 * t) + 0.2 * np.sin(2 * np.pi * 660.0 * t)
              + 0.05 * rng.standard_normal(n)).astype(np.float32)
    context = np.zeros((1, 64), np.float32)
    state = np.zeros((2, 1, 128), np.float32)
    cases = []
    for i in range(3):
        x = np.concatenate([context, signal[None, i * 512:(i + 1) * 512]], axis=1).astype(np.float32)
        feeds = [("input", x), ("state", state)]
        cases.append(feeds)
        _, state = sess.run(["output", "stateN"], dict(feeds))
        context = x[:, -64:]
    return cases


def text_like_image(rng, h, w, flip=False):
    """[1, 3, h, w] float32 in [-1, 1], PaddleOCR normalization ((px/255 - 0.5) / 0.5):
    light background with dark glyph-like vertical bars, plus seeded noise."""
    img = np.full((h, w), 0.9, np.float32)
    x = 8
    while x < w - 12:
        bw = int(rng.integers(2, 6))
        top = int(rng.integers(8, 16))
        bottom = int(rng.integers(h - 16, h - 8))
        img[top:bottom, x:x + bw] = -0.9
        if rng.random() < 0.5:  # a horizontal stroke
            y = int(rng.integers(top, bottom))
            img[y:y + 2, x:x + bw + 6] = -0.9
        x += bw + int(rng.integers(4, 12))
    img = img + 0.05 * rng.standard_normal((h, w)).astype(np.float32)
    img = np.clip(img, -1.0, 1.0)
    if flip:
        img = img[::-1, ::-1]
    return np.ascontiguousarray(np.broadcast_to(img, (1, 3, h, w)), dtype=np.float32)


def ocr_cases(h, w, n, seed):
    """n images; odd cases are rotated 180 degrees (meaningful for the cls model)."""
    rng = np.random.default_rng(seed)
    return [[("x", text_like_image(rng, h, w, flip=(i % 2 == 1)))] for i in range(n)]


# ---------------------------------------------------------------- fixtures

def write_compact_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {rel(path)} ({os.path.getsize(path)} bytes)")


def make_fixture(name):
    path = model_path(name)
    m = onnx.load(path)
    print(f"== {name}: {rel(path)} ({os.path.getsize(path)} bytes)")
    describe_model(m)
    sess = ort_session(path)
    if name == "silero_vad":
        gen = silero_cases(sess)
    elif name == "ppocr_rec":
        gen = ocr_cases(48, 320, 2, seed=48320)
    elif name == "ppocr_cls":
        gen = ocr_cases(48, 192, 3, seed=48192)
    else:
        raise ValueError(name)
    cases, shapes = [], None
    for feeds in gen:
        case, outs = run_case(sess, feeds)
        cases.append(case)
        shapes = shapes or {"inputs": [{k: t[k] for k in ("name", "datatype", "shape")} for t in case["inputs"]]}
        summary = "; ".join(f"{o['name']} {o['datatype']} {o['shape']}" for o in case["outputs"])
        extra = ""
        if name == "silero_vad":
            extra = f" speech_prob={case['outputs'][0]['data'][0]:.4f}"
        elif name == "ppocr_cls":
            extra = f" probs(0deg,180deg)={[round(v, 4) for v in case['outputs'][0]['data']]}"
        elif name == "ppocr_rec":
            extra = f" argmax ids={np.argmax(outs[0][0], axis=-1).tolist()}"
        print(f"  case {len(cases) - 1}: outputs {summary}{extra}")
    write_compact_json(os.path.join(PUBLIC_DIR, f"{name}.reference.json"),
                       {"model": name, "onnx": rel(path), "cases": cases})
    write_compact_json(os.path.join(PUBLIC_DIR, f"{name}.shapes.json"), shapes)


def main():
    fetch()
    for name in MODELS:
        make_fixture(name)


if __name__ == "__main__":
    main()
