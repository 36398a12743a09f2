"""Golden vectors: the exact bytes of every ServerMessage and ClientMessage variant.

    python -m fedproto.kit.make_vectors [DIR]        (default: kit/vectors)

Each vector is one serialized message (``NAME.bin``, no gRPC framing) and one entry in
``manifest.json`` describing its content, so a port in any language can check both directions:
parse the .bin and compare with the manifest, build the message from the manifest and compare
with the .bin. Serialization is protobuf's deterministic mode (map entries sorted by key), the
only way map-bearing messages have one canonical byte string.

Manifest conventions (also written into the manifest itself):
- A Scalar is ``{"kind": K, "value": V}``; K is the Scalar oneof field. sint64 and uint64 values
  are decimal strings (JSON numbers lose precision above 2**53), bytes values are hex strings.
- A tensor is ``{"dtype": numpy descr, "shape": [...], "values": nested lists, "npy_size": N}``.
- Enum fields (Status.code, DisconnectRes.reason) are given by name.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedproto.codec import TENSOR_TYPE, ndarray_to_bytes, scalars_to_proto
from fedproto.transport_pb2 import ClientMessage, Code, Parameters, ServerMessage, Status

DEFAULT_DIR = Path(__file__).resolve().parent / "vectors"
MANIFEST = "manifest.json"

# One value of every Scalar kind; the int kinds at their extremes. (kit.conformance sends it too.)
EVERY_SCALAR = {
    "a_double": 0.125,
    "b_uint64": 2**64 - 1,  # above sint64's range, so it can only travel as uint64
    "c_sint64": -(2**63),
    "d_bool": True,
    "e_string": "héllo, wörld",
    "f_bytes": b"\x00\xff",
}

# Every tensor flavour a port must read: dtypes, byte orders, 0-d, empty, multi-dimensional.
EVERY_TENSOR = [
    np.array([[0.5, -1.0, 2.25], [3.0, -4.5, 1e-3]], dtype="<f4"),
    np.array([1.5, -2.25, 1e-300], dtype=">f8"),
    np.array([[1, -2], [2**31 - 1, -(2**31)]], dtype="<i4"),
    np.array([7, -8, 65536], dtype=">i4"),
    np.array([0, 1, 127, 255], dtype="|u1"),
    np.array([[True, False], [False, True]], dtype="|b1"),
    np.array(3.5, dtype="<f4"),
    np.zeros((0,), dtype="<f4"),
    np.zeros((2, 0, 3), dtype="<i4"),
    np.arange(24, dtype="<f8").reshape(2, 3, 4) / 8,
]

MODEL = [np.arange(6, dtype="<f4").reshape(3, 2) / 4, np.array([0.5, -0.5], dtype="<f4")]


def scalar_json(value: Any) -> dict[str, Any]:
    """One Python Scalar value as the manifest writes it (kind chosen as fedproto.codec does)."""
    kind = scalars_to_proto({"v": value})["v"].WhichOneof("scalar")
    if kind in ("sint64", "uint64"):
        return {"kind": kind, "value": str(value)}
    if kind == "bytes":
        return {"kind": kind, "value": value.hex()}
    return {"kind": kind, "value": value}


def scalar_from_json(entry: Mapping[str, Any]) -> Any:
    """The manifest's Scalar back to the Python value fedproto.codec decodes."""
    kind, value = entry["kind"], entry["value"]
    if kind in ("sint64", "uint64"):
        return int(value)
    if kind == "bytes":
        return bytes.fromhex(value)
    return value


def tensor_json(array: np.ndarray) -> dict[str, Any]:
    return {
        "dtype": array.dtype.str,
        "shape": list(array.shape),
        "values": array.tolist(),
        "npy_size": len(ndarray_to_bytes(array)),
    }


def tensor_from_json(entry: Mapping[str, Any]) -> np.ndarray:
    return np.array(entry["values"], dtype=entry["dtype"]).reshape(entry["shape"])


def _parameters(arrays: list[np.ndarray]) -> tuple[Parameters, dict[str, Any]]:
    proto = Parameters(tensors=[ndarray_to_bytes(a) for a in arrays], tensor_type=TENSOR_TYPE)
    return proto, {"tensor_type": TENSOR_TYPE, "tensors": [tensor_json(a) for a in arrays]}


def _scalars(values: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    return scalars_to_proto(values), {k: scalar_json(v) for k, v in values.items()}


def _status(code: Code, message: str) -> tuple[Status, dict[str, Any]]:
    return Status(code=code, message=message), {"code": Code.Name(code), "message": message}


def build_vectors() -> list[tuple[str, str, Any, dict[str, Any]]]:
    """(name, description, message, content) for every vector, in manifest order."""
    vectors: list[tuple[str, str, Any, dict[str, Any]]] = []

    def add(name: str, description: str, message: Any, content: dict[str, Any]) -> None:
        vectors.append((name, description, message, content))

    add("server_reconnect_ins_5s", "ReconnectIns(seconds=5): close the stream, rejoin after 5 s",
        ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=5)), {"seconds": "5"})
    add("server_reconnect_ins_0s",
        "ReconnectIns with seconds unset (0): the session is over. What flwr's server sends at the end",
        ServerMessage(reconnect_ins=ServerMessage.ReconnectIns()), {"seconds": "0"})
    config, config_json = _scalars(EVERY_SCALAR)
    add("server_get_properties_ins", "GetPropertiesIns with one config value of every Scalar kind",
        ServerMessage(get_properties_ins=ServerMessage.GetPropertiesIns(config=config)),
        {"config": config_json})
    add("server_get_parameters_ins", "GetParametersIns with an empty config (what flwr sends)",
        ServerMessage(get_parameters_ins=ServerMessage.GetParametersIns()), {"config": {}})
    parameters, parameters_json = _parameters(EVERY_TENSOR)
    add("server_fit_ins",
        "FitIns with tensors of every dtype, byte order and shape kind, and every Scalar kind in config",
        ServerMessage(fit_ins=ServerMessage.FitIns(parameters=parameters, config=config)),
        {"parameters": parameters_json, "config": config_json})
    empty, empty_json = _parameters([])
    add("server_fit_ins_empty_parameters", "FitIns with no tensors at all and an empty config",
        ServerMessage(fit_ins=ServerMessage.FitIns(parameters=empty)),
        {"parameters": empty_json, "config": {}})
    model, model_json = _parameters(MODEL)
    round_config, round_config_json = _scalars({"server_round": 3})
    add("server_evaluate_ins", "EvaluateIns with a two-tensor float32 model",
        ServerMessage(evaluate_ins=ServerMessage.EvaluateIns(parameters=model, config=round_config)),
        {"parameters": model_json, "config": round_config_json})

    for reason in ("RECONNECT", "ACK"):
        add(f"client_disconnect_res_{reason.lower()}", f"DisconnectRes(reason={reason})",
            ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=reason)),
            {"reason": reason})
    ok, ok_json = _status(Code.OK, "Success")
    add("client_get_properties_res", "GetPropertiesRes, status OK, one property of every Scalar kind",
        ClientMessage(get_properties_res=ClientMessage.GetPropertiesRes(status=ok, properties=config)),
        {"status": ok_json, "properties": config_json})
    add("client_get_parameters_res", "GetParametersRes, status OK, a two-tensor float32 model",
        ClientMessage(get_parameters_res=ClientMessage.GetParametersRes(status=ok, parameters=model)),
        {"status": ok_json, "parameters": model_json})
    metrics, metrics_json = _scalars({"train_loss": 0.75, "steps": 13})
    add("client_fit_res", "FitRes, status OK, the model, 400 examples, two metrics",
        ClientMessage(fit_res=ClientMessage.FitRes(status=ok, parameters=model, num_examples=400,
                                                   metrics=metrics)),
        {"status": ok_json, "parameters": model_json, "num_examples": "400", "metrics": metrics_json})
    failed, failed_json = _status(Code.FIT_NOT_IMPLEMENTED, "fit raised ValueError: shapes (3,2) and (4,) differ")
    add("client_fit_res_handler_error",
        "FitRes reporting a handler error: the method's *_NOT_IMPLEMENTED code, the error in message",
        ClientMessage(fit_res=ClientMessage.FitRes(status=failed)),
        {"status": failed_json, "parameters": {"tensor_type": "", "tensors": []}, "num_examples": "0",
         "metrics": {}})
    accuracy, accuracy_json = _scalars({"accuracy": 0.875})
    add("client_evaluate_res", "EvaluateRes, status OK, loss 0.25 (float32), 400 examples",
        ClientMessage(evaluate_res=ClientMessage.EvaluateRes(status=ok, loss=0.25, num_examples=400,
                                                             metrics=accuracy)),
        {"status": ok_json, "loss": 0.25, "num_examples": "400", "metrics": accuracy_json})
    return vectors


def write_vectors(directory: Path) -> list[Path]:
    """Write every NAME.bin and manifest.json into ``directory``; returns the files written."""
    directory.mkdir(parents=True, exist_ok=True)
    entries, written = [], []
    for name, description, message, content in build_vectors():
        data = message.SerializeToString(deterministic=True)
        path = directory / f"{name}.bin"
        path.write_bytes(data)
        written.append(path)
        entries.append({
            "name": name,
            "file": path.name,
            "message": type(message).__name__,
            "oneof": message.WhichOneof("msg"),
            "description": description,
            "size": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
            "content": content,
        })
    manifest = {
        "generator": "python -m fedproto.kit.make_vectors",
        "proto": "proto/flwr/proto/transport.proto (package flwr.proto)",
        "serialization": "protobuf deterministic: fields in number order, map entries sorted by key",
        "conventions": {
            "scalar": '{"kind": Scalar oneof field, "value": ...}; sint64/uint64 as decimal strings, '
                      "bytes as hex",
            "int64 fields": "seconds and num_examples as decimal strings",
            "tensor": "one .npy file (numpy.save, allow_pickle=False); dtype is the numpy descr, "
                      "values are nested lists in C order",
            "enum": "by name",
        },
        "vectors": entries,
    }
    manifest_path = directory / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    written.append(manifest_path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.kit.make_vectors",
        description="Write the golden vectors (.bin per message variant + manifest.json).",
        epilog="example:\n  python -m fedproto.kit.make_vectors /tmp/vectors && diff -r /tmp/vectors kit/vectors",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR,
                        help="output directory (default: kit/vectors)")
    args = parser.parse_args(argv)
    written = write_vectors(args.directory)
    print(f"wrote {len(written) - 1} vectors and {MANIFEST} to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
