#!/usr/bin/env python3
"""Drive a running `warden serve` with NVIDIA's stock Python client, tritonclient.http.

Usage: python3 tests/python/triton_client_check.py URL [--int64-model NAME] [--digits-request PATH]

URL is the daemon's base URL (http://127.0.0.1:PORT). Checks server and model health, the
server metadata (which must list the binary_tensor_data extension), the repository index, digits' metadata, and inference on digits with its FP32 input sent as JSON
(set_data_from_numpy(binary_data=False)) and as binary data (the default), with outputs
requested as binary and as JSON, and with all outputs left to the client's default (which asks
for binary outputs with the request parameter binary_data_output). An input of the wrong shape
must raise InferenceServerException carrying the server's own error message. If a served model
has an INT64 input (--int64-model, or the first one found), it is run the same ways with
deterministic values for every input.

Prints one JSON document on stdout: every check, and for every inference case the request in
plain KServe JSON form (so a caller can run the same request elsewhere, e.g. `warden infer`) with
the outputs the client decoded. Exits 1 if any check failed (the failures are listed in the
document, and on stderr), 2 on bad usage.
"""
import argparse
import json
import os
import sys
import traceback
import urllib.error
import urllib.request

import numpy as np
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

NP_TYPES = {
    "BOOL": np.bool_,
    "UINT8": np.uint8,
    "INT8": np.int8,
    "UINT16": np.uint16,
    "INT16": np.int16,
    "UINT32": np.uint32,
    "INT32": np.int32,
    "UINT64": np.uint64,
    "INT64": np.int64,
    "FP32": np.float32,
    "FP64": np.float64,
}


class Checker:
    def __init__(self):
        self.failures = []
        self.checks = {}

    def check(self, name, ok, detail=None):
        self.checks[name] = bool(ok) if detail is None else {"ok": bool(ok), "detail": detail}
        if not ok:
            self.failures.append(f"{name}: {detail}" if detail is not None else name)


def plain(values):
    """numpy values as JSON-friendly Python values (floats exact, as the client decoded them)."""
    return np.asarray(values).flatten().tolist()


def sample_values(datatype, shape, salt):
    """Deterministic, small, exactly representable values for an input."""
    n = int(np.prod(shape)) if shape else 1
    i = np.arange(n, dtype=np.int64) + salt
    if datatype == "BOOL":
        v = (i % 3) == 0
    elif datatype in ("FP32", "FP64"):
        v = (i % 7) * 0.5 - 1.25
    elif datatype.startswith("UINT"):
        v = (i * 5) % 200
    else:
        v = (i * 3) % 50 - 25
    return np.asarray(v, dtype=NP_TYPES[datatype]).reshape(shape)


def run_case(client, c, name, model, arrays, binary_inputs, requested):
    """One inference through the stock client.

    arrays: list of (input name, datatype, numpy array). requested: None (the client's default:
    every output, asking for binary) or a list of (output name, binary_data).
    Returns the case record for the summary (or None if the call failed; the failure is noted).
    """
    inputs = []
    for in_name, datatype, arr in arrays:
        t = httpclient.InferInput(in_name, list(arr.shape), datatype)
        t.set_data_from_numpy(arr, binary_data=binary_inputs)
        inputs.append(t)
    outputs = None
    if requested is not None:
        outputs = [httpclient.InferRequestedOutput(o, binary_data=b) for o, b in requested]
    plain_request = {
        "inputs": [
            {"name": n, "shape": list(a.shape), "datatype": d, "data": plain(a)} for n, d, a in arrays
        ]
    }
    if requested is not None:
        plain_request["outputs"] = [{"name": o} for o, _ in requested]
    record = {
        "name": name,
        "model": model,
        "binary_inputs": binary_inputs,
        "requested": None if requested is None else [{"name": o, "binary_data": b} for o, b in requested],
        "request": plain_request,
    }
    try:
        result = client.infer(model, inputs, outputs=outputs)
    except Exception as e:  # noqa: BLE001 - every failure is reported, then the next case runs
        detail = e.message() if isinstance(e, InferenceServerException) else repr(e)
        status = e.status() if isinstance(e, InferenceServerException) else None
        c.check(f"{name}: infer", False, f"status {status}: {detail}")
        record["error"] = {"status": status, "message": detail}
        return record
    response = result.get_response()
    got = {}
    for out in response.get("outputs", []):
        arr = result.as_numpy(out["name"])
        binary = "binary_data_size" in (out.get("parameters") or {})
        got[out["name"]] = {
            "datatype": out["datatype"],
            "shape": list(out["shape"]),
            "data": plain(arr),
            "binary": binary,
        }
    record["outputs"] = got
    c.check(f"{name}: infer", True)
    c.check(f"{name}: model_name", response.get("model_name") == model, response.get("model_name"))
    # Which outputs come back, and in which form (Triton's binary tensor data extension).
    if requested is not None:
        wanted = [o for o, _ in requested]
        c.check(f"{name}: outputs are the requested ones", sorted(got) == sorted(wanted), sorted(got))
        for o, b in requested:
            if o in got:
                c.check(
                    f"{name}: output {o} binary={b} (spec: parameters.binary_data)",
                    got[o]["binary"] == b,
                    f"came back binary={got[o]['binary']}",
                )
    else:
        for o, v in got.items():
            c.check(
                f"{name}: output {o} binary (spec: binary_data_output, the client's default)",
                v["binary"],
                f"came back binary={v['binary']}",
            )
    return record


def same_outputs(a, b):
    """Outputs equal by name, datatype, shape and values (only names both hold)."""
    for k in set(a) & set(b):
        if (a[k]["datatype"], a[k]["shape"], a[k]["data"]) != (b[k]["datatype"], b[k]["shape"], b[k]["data"]):
            return False, k
    return True, None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("url")
    ap.add_argument("--int64-model", help="a served model with an INT64 input (default: the first one found)")
    ap.add_argument("--digits-request", default=os.path.join(ROOT, "models", "requests", "digits.json"))
    args = ap.parse_args()

    base = args.url.rstrip("/")
    hostport = base.split("://", 1)[-1]
    client = httpclient.InferenceServerClient(url=hostport, connection_timeout=30.0, network_timeout=60.0)
    c = Checker()
    summary = {"url": base, "tritonclient": getattr(httpclient, "__version__", None), "cases": []}

    try:
        c.check("is_server_live", client.is_server_live())
        c.check("is_server_ready", client.is_server_ready())
        server_meta = client.get_server_metadata()
        summary["server_metadata"] = server_meta
        c.check(
            "get_server_metadata() reports binary_tensor_data",
            "binary_tensor_data" in server_meta.get("extensions", []),
            server_meta.get("extensions"),
        )
        index = client.get_model_repository_index()
        names = [e.get("name") for e in index]
        summary["repository_index"] = index
        c.check("get_model_repository_index lists digits", "digits" in names, names)
        meta = client.get_model_metadata("digits")
        summary["digits_metadata"] = meta
        c.check("get_model_metadata('digits').name", meta.get("name") == "digits", meta.get("name"))
        c.check(
            "get_model_metadata('digits').inputs",
            meta.get("inputs") == [{"name": "input", "datatype": "FP32", "shape": [1, 64]}],
            meta.get("inputs"),
        )
        out_names = [o["name"] for o in meta.get("outputs", [])]
        c.check("get_model_metadata('digits').outputs", out_names == ["label", "probabilities"], out_names)
        c.check("is_model_ready('digits')", client.is_model_ready("digits"))
        c.check("is_model_ready('no-such-model') is False", not client.is_model_ready("no-such-model"))

        # digits, FP32 input, every combination the client offers.
        with open(args.digits_request) as f:
            digits_req = json.load(f)
        pixels = np.asarray(digits_req["inputs"][0]["data"], dtype=np.float32).reshape(1, 64)
        arrays = [("input", "FP32", pixels)]
        digits_cases = [
            ("digits json-in default-out", False, None),
            ("digits binary-in default-out", True, None),
            ("digits json-in json-out", False, [("label", False), ("probabilities", False)]),
            ("digits json-in binary-out", False, [("label", True), ("probabilities", True)]),
            ("digits binary-in mixed-out", True, [("label", True), ("probabilities", False)]),
            ("digits binary-in only-probabilities-binary", True, [("probabilities", True)]),
        ]
        for name, binary_inputs, requested in digits_cases:
            summary["cases"].append(run_case(client, c, name, "digits", arrays, binary_inputs, requested))

        # The same request gives the same numbers whatever the encoding.
        done = [r for r in summary["cases"] if "outputs" in r]
        for r in done[1:]:
            same, which = same_outputs(done[0]["outputs"], r["outputs"])
            c.check(f"{r['name']}: same values as {done[0]['name']}", same, which)

        # Wrong shape: InferenceServerException with the server's own message and status.
        short = pixels[:, :32]
        t = httpclient.InferInput("input", [1, 32], "FP32")
        t.set_data_from_numpy(short, binary_data=False)
        try:
            client.infer("digits", [t])
            c.check("wrong shape raises InferenceServerException", False, "no exception")
        except InferenceServerException as e:
            summary["error_case"] = {"status": e.status(), "message": e.message()}
            raw_body = json.dumps(
                {
                    "inputs": [{"name": "input", "shape": [1, 32], "datatype": "FP32", "data": plain(short)}],
                    "parameters": {"binary_data_output": True},
                }
            ).encode()
            req = urllib.request.Request(
                f"{base}/v2/models/digits/infer", data=raw_body, headers={"Content-Type": "application/json"}
            )
            try:
                urllib.request.urlopen(req, timeout=60)
                server = None
            except urllib.error.HTTPError as he:
                server = {"status": str(he.code), "message": json.loads(he.read())["error"]}
            summary["error_case"]["server"] = server
            c.check("wrong shape raises InferenceServerException", True)
            c.check("wrong shape: status 400", e.status() == "400", e.status())
            c.check(
                "wrong shape: the exception carries the server's message",
                server is not None and e.message() == server["message"] and "shape" in e.message(),
                {"exception": e.message(), "server": server},
            )

        # A model with an INT64 input, every input filled deterministically.
        target = args.int64_model
        if target is None:
            for name in names:
                m = client.get_model_metadata(name)
                if any(i["datatype"] == "INT64" for i in m.get("inputs", [])):
                    target = name
                    break
        summary["int64_model"] = target
        if target is not None:
            m = client.get_model_metadata(target)
            c.check(
                f"{target} has an INT64 input",
                any(i["datatype"] == "INT64" for i in m["inputs"]),
                [i["datatype"] for i in m["inputs"]],
            )
            arrays = [
                (i["name"], i["datatype"], sample_values(i["datatype"], [max(d, 1) for d in i["shape"]], salt))
                for salt, i in enumerate(m["inputs"])
            ]
            outs = [o["name"] for o in m["outputs"]]
            first = len(summary["cases"])
            for name, binary_inputs, requested in [
                (f"{target} json-in json-out", False, [(o, False) for o in outs]),
                (f"{target} binary-in default-out", True, None),
                (f"{target} binary-in binary-out", True, [(o, True) for o in outs]),
            ]:
                summary["cases"].append(run_case(client, c, name, target, arrays, binary_inputs, requested))
            done = [r for r in summary["cases"][first:] if "outputs" in r]
            for r in done[1:]:
                same, which = same_outputs(done[0]["outputs"], r["outputs"])
                c.check(f"{r['name']}: same values as {done[0]['name']}", same, which)
    except Exception:  # noqa: BLE001 - report, do not hide
        c.failures.append("unexpected: " + traceback.format_exc())
    finally:
        client.close()

    summary["checks"] = c.checks
    summary["failures"] = c.failures
    json.dump(summary, sys.stdout, indent=1)
    sys.stdout.write("\n")
    for f in c.failures:
        print(f"FAIL {f}", file=sys.stderr)
    return 1 if c.failures else 0


if __name__ == "__main__":
    sys.exit(main())
