"""Golden vectors for the Fleet API's object format: a few messages as their exact objects.

    python -m fedproto.kit.make_fleet_vectors [DIR]        (default: kit/fleet_vectors)

Each vector is one Message deflated by fedproto.objects (tests/test_objects.py proves every one
byte-identical to flwr 1.42's ``deflate()``): ``manifest.json`` gives its metadata, content (or
error), message id and ObjectTree, and lists its objects in push order (children first). Each
object is a file ``NAME/<object id>.bin`` holding the whole object (header, NUL, body), except
the ArrayChunks of arrays above one chunk: those are given as a recipe (which bytes of which
tensor's .npy file) plus size and id, so the repository does not carry megabytes of generated
data. A port checks both directions: deflate the manifest's message and compare every id and
byte; inflate the files and compare with the manifest.

Manifest conventions (also written into the manifest itself):
- Metadata fields as the proto names them, unset ones left out; the uint64 ids are decimal
  strings, ttl and created_at JSON numbers (doubles).
- A ConfigRecord / MetricRecord value is ``{"kind": K, "value": V}``; K is the
  ConfigRecordValue / MetricRecordValue oneof field. sint64/uint64 values (and list items) are
  decimal strings, bytes are hex.
- An Array is ``{"dtype", "shape", "stype"}`` as they travel in the Array object, plus the
  tensor its .npy holds: ``{"tensor": {"dtype": numpy descr, "shape", "values"}}`` or, for the
  large ones, ``{"recipe": "numpy expression"}``, and ``npy_size``.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from fedproto import recorddict_pb2
from fedproto.codec import TENSOR_TYPE, ndarray_to_bytes
from fedproto.error_pb2 import Error
from fedproto.message_pb2 import Metadata, ObjectTree
from fedproto.objects import (
    CHUNK_SIZE,
    Array,
    ArrayRecord,
    ConfigRecord,
    MetricRecord,
    RecordDict,
    check_object,
    deflate_message,
)

# Not under kit/vectors/: tests/test_kit_vectors.py expects that folder to hold the Join vectors only.
DEFAULT_DIR = Path(__file__).resolve().parent / "fleet_vectors"
MANIFEST = "manifest.json"
UINT64_FIELDS = ("run_id", "src_node_id", "dst_node_id", "src_task_id", "dst_task_id")

SUPERLINK_NODE_ID = 1  # flwr's common/constant.py: the ServerApp's messages come from node 1
NODE_ID = 17_446_744_073_709_551_615  # above 2**63: SuperLinks draw node ids from 8 random bytes
CREATED_AT = 1_767_225_600.125  # 2026-01-01T00:00:00.125Z
TTL = 43_200.0  # flwr's DEFAULT_TTL (app/constants.py)

MODEL = {"w": np.arange(6, dtype="<f4").reshape(3, 2) / 4, "b": np.array([0.5, -0.5], dtype="<f4")}
TRAINED = {"w": MODEL["w"] - 0.125, "b": MODEL["b"] + 0.25}
# Large tensors, as a recipe (a numpy expression, `np` being numpy) and the same built here.
# 6,000,128 .npy bytes -> a 5 MiB chunk and a 757,248-byte one.
LARGE_RECIPE = 'np.arange(1_500_000, dtype="<f4")'
LARGE_TENSOR = np.arange(1_500_000, dtype="<f4")
# 16,000,128 bytes of zeros -> 4 slices, the middle two equal: arraychunk_ids [0, 1, 1, 2].
ZEROS_RECIPE = 'np.zeros(4_000_000, dtype="<f4")'
ZEROS_TENSOR = np.zeros(4_000_000, dtype="<f4")


class Vector(NamedTuple):
    name: str
    description: str
    metadata: Metadata
    content: RecordDict | None
    error: Error | None
    recipes: dict[str, str]  # record name/array key -> recipe, for the arrays given as recipes


def _metadata(**fields: Any) -> Metadata:
    defaults = dict(run_id=4_242, message_id="", group_id="1", ttl=TTL, created_at=CREATED_AT)
    return Metadata(**{**defaults, **fields})


def build_vectors() -> list[Vector]:
    """Every vector, in manifest order. The reply's reply_to_message_id is the instruction's id."""
    instruction = Vector(
        "train_instruction",
        "A message-API FedAvg train instruction (ServerApp -> node): 2 arrays and a config with server-round",
        _metadata(src_node_id=SUPERLINK_NODE_ID, dst_node_id=NODE_ID, message_type="train"),
        {
            "arrays": ArrayRecord({key: Array.from_numpy(value) for key, value in MODEL.items()}),
            "config": ConfigRecord({"server-round": 1, "lr": 0.01}),
        },
        None,
        {},
    )
    instruction_id = deflate_message(instruction.metadata, instruction.content).message_id
    reply_metadata = dict(src_node_id=NODE_ID, dst_node_id=SUPERLINK_NODE_ID, message_type="train",
                          reply_to_message_id=instruction_id, created_at=CREATED_AT + 2.5, ttl=TTL - 2.5)
    return [
        instruction,
        Vector(
            "train_reply",
            "The node's reply: the same array keys, trained, and a MetricRecord with num-examples",
            _metadata(**reply_metadata),
            {
                "arrays": ArrayRecord({key: Array.from_numpy(value) for key, value in TRAINED.items()}),
                "metrics": MetricRecord({"num-examples": 120, "train-loss": 0.75}),
            },
            None,
            {},
        ),
        Vector(
            "error_reply",
            "A reply carrying an error instead of content (code 2: the ClientApp raised); no children",
            _metadata(**reply_metadata),
            None,
            Error(code=2, reason="ValueError: the handler failed"),
            {},
        ),
        Vector(
            "legacy_fit_instruction",
            "A legacy strategy's FitIns inside a ServerApp (flwr's fitins_to_recorddict): tensors under "
            "'0', '1' with empty dtype and shape, config in fitins.config",
            _metadata(src_node_id=SUPERLINK_NODE_ID, dst_node_id=NODE_ID, message_type="train"),
            {
                "fitins.parameters": ArrayRecord(
                    {str(i): Array("", (), TENSOR_TYPE, ndarray_to_bytes(value)) for i, value in enumerate(MODEL.values())}
                ),
                "fitins.config": ConfigRecord({"lr": 0.01, "epochs": 2, "tag": "round-1", "flag": True}),
            },
            None,
            {},
        ),
        Vector(
            "large_array_two_chunks",
            "One array whose .npy (6,000,128 bytes) is cut at 5 MiB into two chunks",
            _metadata(src_node_id=SUPERLINK_NODE_ID, dst_node_id=NODE_ID, message_type="train", group_id="2"),
            {"arrays": ArrayRecord({"big": Array.from_numpy(LARGE_TENSOR)}),
             "config": ConfigRecord({"server-round": 2})},
            None,
            {"arrays/big": LARGE_RECIPE},
        ),
        Vector(
            "zeros_repeated_chunk",
            "A zero array of 16,000,128 .npy bytes: 4 slices, the middle two identical, so the Array lists "
            "3 distinct chunks and arraychunk_ids [0, 1, 1, 2]; the same Array under two keys is one object",
            _metadata(src_node_id=SUPERLINK_NODE_ID, dst_node_id=NODE_ID, message_type="evaluate", group_id="3"),
            {"arrays": ArrayRecord({"zeros": (zeros := Array.from_numpy(ZEROS_TENSOR)), "again": zeros})},
            None,
            {"arrays/zeros": ZEROS_RECIPE, "arrays/again": ZEROS_RECIPE},
        ),
    ]


def _value_json(value: recorddict_pb2.ConfigRecordValue | recorddict_pb2.MetricRecordValue) -> dict[str, Any]:
    kind = value.WhichOneof("value")
    raw = getattr(value, kind)
    items = list(raw.vals) if kind.endswith("_list") else [raw]
    if kind.startswith(("sint", "uint")):
        items = [str(item) for item in items]
    elif kind.startswith("bytes"):
        items = [item.hex() for item in items]
    return {"kind": kind, "value": items if kind.endswith("_list") else items[0]}


def _body(content: bytes) -> bytes:
    return content[content.index(b"\x00") + 1 :]


def _record_json(record: Any, record_object: bytes, recipes: Mapping[str, str], record_name: str) -> dict[str, Any]:
    """One record for the manifest; config and metric values with the kinds their object carries."""
    if isinstance(record, ArrayRecord):
        arrays = {}
        for key, array in record.items():
            entry: dict[str, Any] = {"dtype": array.dtype, "shape": list(array.shape), "stype": array.stype}
            recipe = recipes.get(f"{record_name}/{key}")
            if recipe:
                entry["recipe"] = recipe
            else:
                tensor = array.to_numpy()
                entry["tensor"] = {"dtype": tensor.dtype.str, "shape": list(tensor.shape), "values": tensor.tolist()}
            entry["npy_size"] = len(array.data)
            arrays[key] = entry
        return {"type": "ArrayRecord", "arrays": arrays}
    body_class = recorddict_pb2.ConfigRecord if isinstance(record, ConfigRecord) else recorddict_pb2.MetricRecord
    body = body_class.FromString(_body(record_object))
    return {"type": type(record).__name__, "values": {item.key: _value_json(item.value) for item in body.items}}


def _tree_json(tree: ObjectTree) -> dict[str, Any]:
    return {"object_id": tree.object_id, "children": [_tree_json(child) for child in tree.children]}


def _chunk_recipes(vector: Vector) -> dict[str, str]:
    """ArrayChunk id -> "bytes [start, end) of the .npy of <recipe>", for arrays given as recipes."""
    recipes = {}
    for key, recipe in vector.recipes.items():
        record_name, array_key = key.split("/")
        data = vector.content[record_name][array_key].data
        for start in range(0, len(data), CHUNK_SIZE):
            piece = data[start : start + CHUNK_SIZE]
            header = f"ArrayChunk  {len(piece)}".encode()
            chunk_id = hashlib.sha256(header + b"\x00" + piece).hexdigest()
            recipes.setdefault(chunk_id, f"bytes [{start}, {start + len(piece)}) of the .npy of {recipe}")
    return recipes


def write_vectors(directory: Path) -> dict[str, Any]:
    directory.mkdir(parents=True, exist_ok=True)
    entries = []
    for vector in build_vectors():
        deflated = deflate_message(vector.metadata, vector.content, vector.error)
        chunk_recipes = _chunk_recipes(vector)
        folder = directory / vector.name
        folder.mkdir(exist_ok=True)
        objects = []
        for oid, content in deflated.objects.items():
            header = check_object(oid, content)
            entry: dict[str, Any] = {"object_id": oid, "type": header.type_name, "size": len(content)}
            if oid in chunk_recipes:
                entry["recipe"] = chunk_recipes[oid]
            else:
                entry["file"] = f"{vector.name}/{oid}.bin"
                (folder / f"{oid}.bin").write_bytes(content)
            objects.append(entry)
        metadata = {field.name: str(value) if field.name in UINT64_FIELDS else value
                    for field, value in vector.metadata.ListFields()}
        content_json = None
        if vector.content is not None:
            record_ids = json.loads(_body(deflated.objects[deflated.object_tree.children[0].object_id]))
            content_json = {
                name: _record_json(record, deflated.objects[record_ids[name]], vector.recipes, name)
                for name, record in vector.content.items()
            }
        entries.append({
            "name": vector.name,
            "description": vector.description,
            "metadata": metadata,
            "content": content_json,
            "error": None if vector.error is None else {"code": vector.error.code, "reason": vector.error.reason},
            "message_id": deflated.message_id,
            "object_tree": _tree_json(deflated.object_tree),
            "objects": objects,
        })
    manifest = {
        "generator": "python -m fedproto.kit.make_fleet_vectors",
        "format": "docs/PROTOCOL.md §16; object = b'<TypeName> <child ids joined by ,> <len(body)>' + b'\\x00' + body, "
                  "id = sha256(object).hexdigest()",
        "chunk_size": CHUNK_SIZE,
        "conventions": {
            "metadata": "proto field names, unset fields left out; uint64 ids as decimal strings; message_id is "
                        "empty (the id is the Message object's id)",
            "record value": "{\"kind\": ConfigRecordValue/MetricRecordValue oneof field, \"value\": ...}; "
                            "sint64/uint64 (and their list items) as decimal strings, bytes as hex",
            "array": "dtype/shape/stype as in the Array object; the .npy's tensor as {dtype: numpy descr, shape, "
                     "values} or a numpy recipe",
            "objects": "in push order (children first); file = the whole object, or a recipe for large chunks",
        },
        "vectors": entries,
    }
    (directory / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.kit.make_fleet_vectors", description=__doc__.splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    manifest = write_vectors(args.directory)
    print(f"wrote {len(manifest['vectors'])} Fleet object vectors to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
