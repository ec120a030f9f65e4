#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into OUT/<target>/ (default fuzz/target/seeds).

Everything comes from the repository: the sample bundles and requests in models/, the hostile
models in tests/fixtures/hostile/ (and models/public/ if it has been fetched), and signed
readings encoded here byte for byte as wire/FORMAT.md describes them (the signature bytes of the
generated ones are arbitrary: the wire_frame target decodes, it does not verify).
"""

import json
import struct
import sys
from pathlib import Path

FUZZ = Path(__file__).resolve().parent
ROOT = FUZZ.parent
OUT = Path(sys.argv[1]) if len(sys.argv) > 1 else FUZZ / "target" / "seeds"

# Flags of the manifest target (fuzz/src/lib.rs, mod manifest_flags).
RESIGN, REPO_LAYOUT, NO_SIGNATURE, NO_MODEL, INPUTS_FROM_MODEL = 1, 2, 4, 8, 16


def write(target, name, data):
    d = OUT / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


# --- postcard and COBS, as wire/FORMAT.md describes them -----------------------------------------

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


def zigzag32(v):
    return ((v << 1) ^ (v >> 31)) & 0xFFFFFFFF


def reading(device_id, counter, timestamp, sensor, unit, scale, channels, samples):
    out = bytearray(varint(len(device_id)) + device_id)
    out += varint(counter)
    out += b"\x00" if timestamp is None else b"\x01" + varint(timestamp)
    if isinstance(sensor, tuple):  # Other(u16)
        out += varint(3) + varint(sensor[1])
    else:
        out += varint(sensor)
    out += varint(unit)
    out += struct.pack("<f", scale)
    out += bytes([channels])
    out += varint(len(samples))
    for s in samples:
        out += varint(zigzag32(s))
    return bytes(out)


def signed(key_id, body, signature):
    return b"\x01" + key_id + body + signature


def cobs(data):
    out = bytearray()
    block = bytearray()
    for b in data:
        if b == 0:
            out += bytes([len(block) + 1]) + block
            block = bytearray()
        else:
            block.append(b)
            if len(block) == 254:
                out += b"\xff" + block
                block = bytearray()
    out += bytes([len(block) + 1]) + block
    return bytes(out) + b"\x00"


def wire_seeds():
    # The worked example of wire/FORMAT.md (a real signature by the RFC 8032 TEST 1 key).
    example = bytes.fromhex(
        "0121fe31dfa154a26107626f6172642d37ac020000000000803f0303180fd60f"
        "df9390d7c009adf3a9636793b1fa44f91581026d3fdd620f2fbe18488de65ffd"
        "097d6b366ea7036f23bb3e607e7974eb5021271f4a0ddd6dec2e4b683c305903"
    )
    bodies = {
        "format-example": example,
        "motion-window": signed(
            bytes(range(1, 9)),
            reading(b"board-7", 301, 1_764_000_000_000, 0, 0, 1.0, 3,
                    [12, -8, 1003, 10, -9, 998] * 4),
            bytes(range(64)),
        ),
        "largest": signed(
            b"\xff" * 8,
            reading(b"x" * 32, 2**64 - 1, 2**64 - 1, (3, 0xFFFF), 4, -0.0, 255,
                    [-(2**31)] * 96),
            b"\xff" * 64,
        ),
        "empty": signed(b"\x00" * 8, reading(b"", 0, None, 1, 1, 0.0, 0, []), b"\x00" * 64),
        "microphone-nan-scale": signed(
            b"\x10" * 8, reading(b"mic", 7, 5, 2, 4, float("nan"), 1, list(range(-48, 48))), b"\x01" * 64
        ),
    }
    for name, body in bodies.items():
        write("wire_frame", f"{name}.raw", body)
        write("wire_frame", f"{name}.frame", cobs(body))


# --- manifest: flags || u16 len || manifest.toml || u16 len || manifest.sig || model.onnx ------------

def manifest_input(flags, manifest, sig, model):
    return bytes([flags]) + struct.pack("<H", len(manifest)) + manifest + struct.pack("<H", len(sig)) + sig + model


def manifest_seeds():
    for bundle in sorted((ROOT / "models" / "repo").glob("*/1")):
        name = bundle.parent.name
        manifest = (bundle / "manifest.toml").read_bytes()
        sig = (bundle / "manifest.sig").read_bytes()
        model = (bundle / "model.onnx").read_bytes()
        for flags in (0, REPO_LAYOUT, RESIGN, RESIGN | REPO_LAYOUT | INPUTS_FROM_MODEL, RESIGN | NO_MODEL,
                      NO_SIGNATURE):
            write("manifest", f"{name}-flags{flags}", manifest_input(flags, manifest, sig, model))
        # The signature of another bundle's manifest.
        write("manifest", f"{name}-wrong-sig", manifest_input(0, manifest, sig[:-1] + b"\x00", model))
    # Manifests that verify (re-signed) but break rules or stress the checks, with a tiny model.
    model = b"\x08\x07"
    digest = __import__("hashlib").sha256(model).hexdigest()
    odd = [
        'format = 1\nname = "m"\nversion = 1\nmodel_sha256 = "%s"\n'
        '[[inputs]]\nname = "x"\ndtype = "f32"\nshape = [4294967296, 4294967296, 0]\nmin = [1.0]\n'
        '[[outputs]]\nname = "y"\ndtype = "f32"\nshape = ["n", 3]\n'
        '[output_policy]\ntop_k = 2\nstep = 0.5\n',
        'format = 1\nname = "m"\nversion = 18446744073709551615\nmodel_sha256 = "%s"\n'
        '[[inputs]]\nname = "a"\ndtype = "f32"\nshape = [1, 24]\n'
        '[[outputs]]\nname = "b"\ndtype = "f64"\nshape = [1, 0]\n'
        '[output_policy]\ntop_k = 1\nstep = 1e-300\n'
        '[limits]\nmax_memory_mib = 18446744073709551615\ntimeout_ms = 18446744073709551615\n'
        '[readings]\ninput = "a"\nsensor = { Other = 65535 }\noffset = 4294967295\n',
        'format = 1\nname = "m"\nversion = 2\nmodel_sha256 = "%s"\n'
        '[[inputs]]\nname = "b"\ndtype = "bool"\nshape = ["batch", 2]\n'
        '[[inputs]]\nname = "i"\ndtype = "i8"\nshape = ["batch"]\nmin = -5.0\nmax = 5.0\n'
        '[[outputs]]\nname = "o"\ndtype = "u16"\nshape = []\n'
        '[output_policy]\ndangerous_full_precision = true\n',
    ]
    for i, text in enumerate(odd):
        write("manifest", f"odd-{i}", manifest_input(RESIGN | INPUTS_FROM_MODEL, (text % digest).encode(), b"", model))


# --- kserve_request: the whole input as JSON, and (all but the last two bytes) as a binary body
#     whose JSON header length is the last two bytes (u16 LE) -----------------------------------------

PACK = {"FP32": "f", "FP64": "d", "INT64": "q", "INT32": "i", "INT16": "h", "INT8": "b", "UINT8": "B",
        "UINT16": "H", "UINT32": "I", "UINT64": "Q", "BOOL": "?"}


def flat(v):
    if isinstance(v, list):
        for x in v:
            yield from flat(x)
    else:
        yield v


def binary_body(doc):
    doc = json.loads(json.dumps(doc))
    tail = b""
    for t in doc["inputs"]:
        values = list(flat(t.pop("data")))
        raw = struct.pack("<%d%s" % (len(values), PACK[t["datatype"]]), *values)
        t.setdefault("parameters", {})["binary_data_size"] = len(raw)
        tail += raw
    doc["parameters"] = {"binary_data_output": True}
    header = json.dumps(doc, separators=(",", ":")).encode()
    return header + tail + struct.pack("<H", len(header))


def kserve_seeds():
    for path in sorted((ROOT / "models" / "requests").glob("*.json")):
        text = path.read_bytes()
        write("kserve_request", f"{path.stem}.json", text)
        doc = json.loads(text)
        write("kserve_request", f"{path.stem}.bin", binary_body(doc))
    small = {
        "id": "x",
        "inputs": [
            {"name": "a", "shape": [2, 2], "datatype": "INT8", "data": [[1, -2], [3, -128]]},
            {"name": "b", "shape": [1], "datatype": "BOOL", "data": [True]},
            {"name": "c", "shape": [0, 18446744073709551615], "datatype": "UINT64", "data": []},
            {"name": "d", "shape": [2], "datatype": "FP64", "data": [1e308, -0.0]},
        ],
        "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "d"}],
    }
    write("kserve_request", "mixed.json", json.dumps(small).encode())
    write("kserve_request", "mixed.bin", binary_body(small))


# --- onnx_sandbox: model bytes ----------------------------------------------------------------------

def onnx_seeds():
    paths = sorted((ROOT / "models" / "repo").glob("*/1/model.onnx"))
    paths += sorted((ROOT / "tests" / "fixtures" / "hostile").glob("*.onnx"))
    paths += sorted(p for p in (ROOT / "models" / "public").rglob("*.onnx") if p.stat().st_size <= 64 << 10) \
        if (ROOT / "models" / "public").is_dir() else []
    for p in paths:
        write("onnx_sandbox", f"{p.parent.parent.name if p.name == 'model.onnx' else p.stem}.onnx", p.read_bytes())


if __name__ == "__main__":
    wire_seeds()
    manifest_seeds()
    kserve_seeds()
    onnx_seeds()
    for target in sorted(OUT.iterdir()):
        print(f"{target.name}: {sum(1 for _ in target.iterdir())} seeds in {target}")
