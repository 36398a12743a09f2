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

Two more files cover what travels around the objects (docs/PROTOCOL.md §12-§14):

- ``rpcs.json`` + ``rpcs/``: one exchange per Fleet RPC (and a few variants), a node's life with
  fixed ids and times: the request and response bytes (``rpcs/<name>.request.bin``,
  ``.response.bin``; an empty message is an empty file), their fields in protobuf's JSON mapping,
  the HTTP path and gRPC method, and the exact signing headers and metadata of the request.
- ``signatures.json``: fixed keys (SECP384R1, the curve flwr's SuperNode uses, and SECP256R1,
  which the SuperLink accepts as well), fixed timestamps, DER signatures that verify and tampered
  ones that do not, and the SuperLink's acceptance window around one timestamp.

ECDSA signatures are deterministic here (RFC 6979, ``cryptography`` >= 44), so regenerating
writes the same bytes; any valid signature verifies, a port need not sign deterministically.
Needs the ``[fleet]`` extra (``cryptography``).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from google.protobuf import json_format
from google.protobuf.message import Message as ProtoMessage

from fedproto import recorddict_pb2
from fedproto.codec import TENSOR_TYPE, ndarray_to_bytes
from fedproto.error_pb2 import Error
from fedproto.fab_pb2 import Fab
from fedproto.fleet_pb2 import Reconnect
from fedproto.message_pb2 import Metadata, ObjectTree
from fedproto.node import RPCS
from fedproto.node_pb2 import Node
from fedproto.objects import (
    CHUNK_SIZE,
    Array,
    ArrayRecord,
    ConfigRecord,
    MetricRecord,
    RecordDict,
    check_object,
    deflate_message,
    pull_order,
)
from fedproto.run_pb2 import Run, RunStatus
from fedproto.transport_pb2 import Scalar

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


def _legacy_arrays(tensors: Mapping[str, np.ndarray]) -> ArrayRecord:
    """recorddict_compat's ArrayRecord of legacy Parameters: keys "0", "1", ..., no dtype, no shape."""
    return ArrayRecord({str(i): Array("", (), TENSOR_TYPE, ndarray_to_bytes(value))
                        for i, value in enumerate(tensors.values())})


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
    legacy_instruction = Vector(
        "legacy_fit_instruction",
        "A legacy strategy's FitIns inside a ServerApp (flwr's fitins_to_recorddict): tensors under "
        "'0', '1' with empty dtype and shape, config in fitins.config",
        _metadata(src_node_id=SUPERLINK_NODE_ID, dst_node_id=NODE_ID, message_type="train"),
        {
            "fitins.parameters": _legacy_arrays(MODEL),
            "fitins.config": ConfigRecord({"lr": 0.01, "epochs": 2, "tag": "round-1", "flag": True}),
        },
        None,
        {},
    )
    legacy_reply_metadata = {**reply_metadata, "reply_to_message_id": deflate_message(
        legacy_instruction.metadata, legacy_instruction.content).message_id}
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
        legacy_instruction,
        Vector(
            "legacy_fit_reply",
            "The node's FitRes for the legacy instruction, as flwr's fitres_to_recorddict lays it out: "
            "fitres.num_examples is a MetricRecord (a ConfigRecord there fails the round for this node "
            "while PushMessages still answers 200), fitres.metrics and fitres.status are ConfigRecords",
            _metadata(**legacy_reply_metadata),
            {
                "fitres.metrics": ConfigRecord({"train-loss": 0.75, "device": "sensor-7"}),
                "fitres.num_examples": MetricRecord({"num_examples": 120}),
                "fitres.parameters": _legacy_arrays(TRAINED),
                "fitres.status": ConfigRecord({"code": 0, "message": "Success"}),
            },
            None,
            {},
        ),
        Vector(
            "legacy_evaluate_reply",
            "The node's EvaluateRes, as flwr's evaluateres_to_recorddict lays it out: evaluateres.loss and "
            "evaluateres.num_examples are MetricRecords, evaluateres.metrics and evaluateres.status ConfigRecords "
            "(reply_to_message_id: the legacy instruction's id, standing for an evaluateins message)",
            _metadata(**{**legacy_reply_metadata, "message_type": "evaluate"}),
            {
                "evaluateres.loss": MetricRecord({"loss": 0.5}),
                "evaluateres.num_examples": MetricRecord({"num_examples": 40}),
                "evaluateres.metrics": ConfigRecord({"accuracy": 0.875}),
                "evaluateres.status": ConfigRecord({"code": 0, "message": "Success"}),
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
    recipes: dict[str, str] = {}
    for key, recipe in vector.recipes.items():
        record_name, array_key = key.split("/")
        assert vector.content is not None  # recipes are for arrays of content
        data = vector.content[record_name][array_key].data
        for start in range(0, len(data), CHUNK_SIZE):
            piece = data[start : start + CHUNK_SIZE]
            header = f"ArrayChunk  {len(piece)}".encode()
            chunk_id = hashlib.sha256(header + b"\x00" + piece).hexdigest()
            recipes.setdefault(chunk_id, f"bytes [{start}, {start + len(piece)}) of the .npy of {recipe}")
    return recipes


# ---------------------------------------------------------------------------- signatures and RPCs

SIGNATURES = "signatures.json"
RPC_MANIFEST = "rpcs.json"
RPC_DIR = "rpcs"
UTC = datetime.timezone.utc
CREATED = datetime.datetime.fromtimestamp(CREATED_AT, UTC)  # the train instruction's created_at
SIGNED_AT = CREATED - datetime.timedelta(seconds=10)  # the node's first request: RegisterNode
# flwr (superlink/routers/fleet/node_auth.py): -SYSTEM_TIME_TOLERANCE < now - timestamp <
# TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE, both bounds excluded (common/constant.py: 5 and 300).
ACCEPTED_AGE = (-5, 305)
ECDSA_SHA256 = ec.ECDSA(hashes.SHA256(), deterministic_signing=True)  # RFC 6979: same bytes every run
PROTOBUF = "application/protobuf"  # flwr's PROTOBUF_MEDIA_TYPE: Content-Type and Accept of every call
HEARTBEAT_INTERVAL = 30.0
SESSION_ID = "6f1c2a8e-3b4d-4e5f-8a9b-0c1d2e3f4a5b"  # a PushMessages session: the SuperLink's UUID4 text
FAB = b"PK\x05\x06" + bytes(18)  # the smallest zip archive (no entries); a real FAB is a zip of the app
RUN_TIMES = [CREATED - datetime.timedelta(seconds=seconds) for seconds in (30, 29.5, 28)]  # pending, starting, running


class VectorKey(NamedTuple):
    curve: str  # cryptography's name: secp384r1, secp256r1
    private_key: ec.EllipticCurvePrivateKey
    public_key_pem: bytes  # SubjectPublicKeyInfo PEM: what RegisterNode carries and the header encodes


def vector_keys() -> dict[str, VectorKey]:
    """Fixed keys: the private scalar is the SHA-256 of a label, so anyone can rebuild them."""
    keys = {}
    for curve in (ec.SECP384R1(), ec.SECP256R1()):
        label = f"fedproto fleet vector key {curve.name}".encode()
        private_key = ec.derive_private_key(int.from_bytes(hashlib.sha256(label).digest(), "big"), curve)
        pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                    serialization.PublicFormat.SubjectPublicKeyInfo)
        keys[curve.name] = VectorKey(curve.name, private_key, pem)
    return keys


def timestamp(moment: datetime.datetime, timespec: str = "auto") -> str:
    """The form every SuperLink parses: ``YYYY-MM-DDTHH:MM:SS[.fff|.ffffff]+00:00`` (no ``Z``)."""
    return moment.isoformat(timespec=timespec)


def sign(key: VectorKey, text: str, algorithm: ec.ECDSA = ECDSA_SHA256) -> bytes:
    """DER ECDSA signature of the timestamp's ASCII bytes."""
    return key.private_key.sign(text.encode("ascii"), algorithm)


def http_headers(public_key_pem: bytes, text: str, signature: bytes) -> dict[str, str]:
    return {"Content-Type": PROTOBUF, "Accept": PROTOBUF,
            "flwr-public-key": base64.b64encode(public_key_pem).decode("ascii"),
            "flwr-timestamp": text,
            "flwr-signature": base64.b64encode(signature).decode("ascii")}


def grpc_metadata(public_key_pem: bytes, text: str, signature: bytes) -> list[list[str]]:
    """gRPC metadata pairs; the value of a ``-bin`` key as the hex of its raw bytes."""
    return [["flwr-public-key-bin", public_key_pem.hex()], ["flwr-timestamp", text],
            ["flwr-signature-bin", signature.hex()]]


def _raw_r_s(signature: bytes, size: int) -> bytes:
    """The same signature as r || s, fixed width (IEEE P1363, what many embedded libraries emit)."""
    r, s = decode_dss_signature(signature)
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


def signature_vectors() -> dict[str, Any]:
    keys = vector_keys()
    p384, p256 = keys["secp384r1"], keys["secp256r1"]
    sent = timestamp(SIGNED_AT)
    later = timestamp(SIGNED_AT + datetime.timedelta(seconds=1))
    good = sign(p384, sent)
    flipped = good[:-1] + bytes([good[-1] ^ 1])
    cases = []

    def case(name: str, verifies: bool, why: str, key: VectorKey, text: str, signature: bytes,
             accepted: bool | None = None) -> None:
        cases.append({"name": name, "verifies": verifies, "accepted": verifies if accepted is None else accepted,
                      "why": why, "public_key": key.curve, "timestamp": text, "signature": signature.hex(),
                      "http_headers": http_headers(key.public_key_pem, text, signature),
                      "grpc_metadata": grpc_metadata(key.public_key_pem, text, signature)})

    case("secp384r1", True, "the curve flwr's SuperNode uses; 6-digit fraction", p384, sent, good)
    case("secp256r1", True, "P-256: the SuperLink accepts any EC key it can load", p256, sent, sign(p256, sent))
    milliseconds = timestamp(SIGNED_AT, "milliseconds")
    case("secp384r1_milliseconds", True, "a 3-digit fraction", p384, milliseconds, sign(p384, milliseconds))
    whole = timestamp(SIGNED_AT.replace(microsecond=0))
    case("secp256r1_whole_seconds", True, "no fraction", p256, whole, sign(p256, whole))
    zulu = sent.replace("+00:00", "Z")
    case("z_suffix", True, "accepted by flwr 1.42 (Python >= 3.11) only: SuperLinks on Python 3.9/3.10 cannot "
         "parse Z; write +00:00", p384, zulu, sign(p384, zulu))
    naive = sent.removesuffix("+00:00")
    case("no_offset", True, "a valid signature, but a time without offset cannot be compared with the SuperLink's "
         "UTC clock (TypeError): refused", p384, naive, sign(p384, naive), accepted=False)
    case("flipped_bit", False, "the DER signature's last byte XOR 1", p384, sent, flipped)
    case("edited_timestamp", False, f"signed {sent}, sent one second later", p384, later, good)
    case("other_key", False, "signed with the P-256 key, the P-384 public key sent", p384, sent, sign(p256, sent))
    case("raw_r_s", False, "a valid signature as r || s (96 bytes), not DER", p384, sent, _raw_r_s(good, 48))
    case("sha384", False, "ECDSA over SHA-384 instead of SHA-256", p384, sent,
         sign(p384, sent, ec.ECDSA(hashes.SHA384(), deterministic_signing=True)))
    low, high = ACCEPTED_AGE
    window = [{"now": timestamp(SIGNED_AT + datetime.timedelta(seconds=age)), "age": age, "accepted": accepted}
              for age, accepted in ((low, False), (low + 0.001, True), (0, True), (high - 0.001, True), (high, False))]
    return {
        "generator": "python -m fedproto.kit.make_fleet_vectors",
        "format": "docs/PROTOCOL.md §14: signature = ECDSA-SHA256(timestamp.encode('ascii')), DER-encoded; "
                  "HTTP headers carry base64 (standard alphabet, padded) of the PEM and of the signature; gRPC "
                  "metadata the raw bytes under -bin keys",
        "keys": {
            key.curve: {
                "private_scalar": format(key.private_key.private_numbers().private_value, "x"),
                "private_key_pem": key.private_key.private_bytes(
                    serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption()).decode("ascii"),
                "public_key_pem": key.public_key_pem.decode("ascii"),
            }
            for key in keys.values()
        },
        "conventions": {
            "signature": "hex of the bytes sent as the signature",
            "verifies": "the signature is valid for the public key and the timestamp's ASCII bytes",
            "accepted": "flwr 1.42's SuperLink accepts the headers one second after the timestamp",
            "grpc_metadata": "[key, value] pairs; a -bin key's value as the hex of its raw bytes",
            "window": "the SuperLink accepts the request when -5 < now - timestamp < 305 (seconds, both bounds "
                      "excluded); each entry: a 'now' for the secp384r1 case's timestamp and the verdict",
        },
        "cases": cases,
        "window": {"timestamp": sent, "checks": window},
    }


class Exchange(NamedTuple):
    name: str  # the RPC's name, or RPC.variant
    sent: float  # seconds after the train instruction's created_at (signed then)
    request: ProtoMessage
    response: ProtoMessage
    why: str


def rpc_exchanges() -> list[Exchange]:
    """A node's life: every Fleet RPC once (GetRun and GetFab as flwr's SuperNode calls them), plus variants."""
    vectors = {vector.name: vector for vector in build_vectors()}
    instruction = deflate_message(vectors["train_instruction"].metadata, vectors["train_instruction"].content)
    reply = deflate_message(vectors["train_reply"].metadata, vectors["train_reply"].content)
    pem = vector_keys()["secp384r1"].public_key_pem
    node = Node(node_id=NODE_ID)
    run_id = instruction.message.metadata.run_id
    message_object = pull_order(instruction.object_tree)[0]  # the Message object: pulled first
    first_pushed = next(iter(reply.objects))
    fab_hash = hashlib.sha256(FAB).hexdigest()
    rpc = {name: (spec.request_type, spec.response_type) for name, spec in RPCS.items()}

    def exchange(name: str, sent: float, why: str, request: dict[str, Any], response: dict[str, Any]) -> Exchange:
        request_type, response_type = rpc[name.partition(".")[0]]
        return Exchange(name, sent, request_type(**request), response_type(**response), why)

    run = Run(run_id=run_id, fab_id="fedproto/vector-app", fab_version="1.0.0",
              override_config={"num-server-rounds": Scalar(sint64=3)}, fab_hash=fab_hash,
              pending_at=timestamp(RUN_TIMES[0]), starting_at=timestamp(RUN_TIMES[1]),
              running_at=timestamp(RUN_TIMES[2]),
              status=RunStatus(status="running"), flwr_aid="<id:none>", federation="@none/default",
              primary_task_type="flwr-serverapp", primary_task_id=7_001, series_id=7_002)
    return [
        exchange("RegisterNode", -10, "the node's PEM public key; the SuperLink answers the new node id",
                 {"public_key": pem}, {"node_id": NODE_ID}),
        exchange("ActivateNode", -9, "the same PEM and the heartbeat interval (10 to 1800 s)",
                 {"public_key": pem, "heartbeat_interval": HEARTBEAT_INTERVAL}, {"node_id": NODE_ID}),
        exchange("SendNodeHeartbeat", -8, "right after activation, then every (interval - 5) * 0.8 s",
                 {"node": node, "heartbeat_interval": HEARTBEAT_INTERVAL}, {"success": True}),
        exchange("PullMessages.empty", -5, "nothing to do: an empty response (zero bytes)", {"node": node}, {}),
        exchange("PullMessages", 0.5,
                 "the train_instruction vector: metadata with its id, an empty RecordDict, its tree",
                 {"node": node},
                 {"messages_list": [instruction.message], "message_object_trees": [instruction.object_tree]}),
        exchange("PullObject.unavailable", 0.75, "the ServerApp is still uploading it: ask again later",
                 {"node": node, "run_id": run_id, "object_id": message_object},
                 {"object_found": True, "object_available": False}),
        exchange("PullObject", 1, "the Message object of train_instruction",
                 {"node": node, "run_id": run_id, "object_id": message_object},
                 {"object_found": True, "object_available": True,
                  "object_content": instruction.objects[message_object]}),
        exchange("PullObject.not_found", 1.25, "an id the SuperLink does not hold: drop the message",
                 {"node": node, "run_id": run_id, "object_id": hashlib.sha256(b"").hexdigest()},
                 {"object_found": False, "object_available": False}),
        exchange("ConfirmMessageReceived", 1.5, "every object pulled: the SuperLink may delete the message",
                 {"node": node, "run_id": run_id, "message_object_id": instruction.message_id}, {}),
        exchange("GetRun", 1.625, "flwr's SuperNode asks for a run it has not seen (fedproto's node never calls it)",
                 {"node": node, "run_id": run_id}, {"run": run}),
        exchange("GetFab", 1.75, "then for the run's app; hash_str is the SHA-256 of content",
                 {"node": node, "hash_str": fab_hash, "run_id": run_id},
                 {"fab": Fab(hash_str=fab_hash, content=FAB)}),
        exchange("PushMessages", 2.75, "the train_reply vector; the SuperLink lists the objects it lacks (all, "
                 "children first) and opens a session",
                 {"node": node, "messages_list": [reply.message], "message_object_trees": [reply.object_tree],
                  "clientapp_runtime_list": [2.5]},
                 {"reconnect": Reconnect(reconnect=5), "results": {reply.message_id: 0},
                  "objects_to_push": list(reply.objects), "session_id": SESSION_ID}),
        exchange("PushObject", 3, "the first object asked for, in the session",
                 {"node": node, "run_id": run_id, "object_id": first_pushed,
                  "object_content": reply.objects[first_pushed], "session_id": SESSION_ID},
                 {"stored": True}),
        exchange("SendNodeHeartbeat.forgotten", 20, "the SuperLink no longer knows the node: register again",
                 {"node": node, "heartbeat_interval": HEARTBEAT_INTERVAL}, {"success": False}),
        exchange("DeactivateNode", 30, "leaving (SIGTERM)", {"node_id": NODE_ID}, {}),
        exchange("UnregisterNode", 30.5, "leaving, last", {"node_id": NODE_ID}, {}),
    ]


def _message_json(message: ProtoMessage) -> dict[str, Any]:
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


def write_rpc_vectors(directory: Path) -> dict[str, Any]:
    key = vector_keys()["secp384r1"]
    folder = directory / RPC_DIR
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for exchange in rpc_exchanges():
        spec = RPCS[exchange.name.partition(".")[0]]
        text = timestamp(CREATED + datetime.timedelta(seconds=exchange.sent))
        signature = sign(key, text)
        entry: dict[str, Any] = {
            "name": exchange.name, "rpc": exchange.name.partition(".")[0], "why": exchange.why,
            "http_path": spec.http_path, "grpc_method": spec.grpc_method,
            "timestamp": text, "http_headers": http_headers(key.public_key_pem, text, signature),
            "grpc_metadata": grpc_metadata(key.public_key_pem, text, signature),
        }
        for side, message in (("request", exchange.request), ("response", exchange.response)):
            data = message.SerializeToString(deterministic=True)
            (folder / f"{exchange.name}.{side}.bin").write_bytes(data)
            entry[side] = {"type": message.DESCRIPTOR.full_name, "file": f"{RPC_DIR}/{exchange.name}.{side}.bin",
                           "size": len(data), "fields": _message_json(message)}
        entries.append(entry)
    manifest = {
        "generator": "python -m fedproto.kit.make_fleet_vectors",
        "format": "docs/PROTOCOL.md §12-§14: HTTP: POST http_path, body = the request file, headers = http_headers; "
                  "answer 200 with the response file as body. gRPC-rere: unary call grpc_method with the same "
                  "bytes, metadata = grpc_metadata",
        "key": "secp384r1 of signatures.json; each request signed at its timestamp (the train instruction is "
               f"created at {timestamp(CREATED)})",
        "ids": {"node_id": str(NODE_ID), "run_id": "4242", "session_id": SESSION_ID},
        "conventions": {
            "fields": "protobuf's JSON mapping (MessageToDict, proto field names): uint64 as decimal strings, "
                      "bytes as base64, default values left out",
            "files": "the serialized message; an empty message is an empty file (and an empty HTTP body)",
            "grpc_metadata": "[key, value] pairs; a -bin key's value as the hex of its raw bytes",
        },
        "exchanges": entries,
    }
    (directory / RPC_MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    return manifest


def write_signature_vectors(directory: Path) -> dict[str, Any]:
    signatures = signature_vectors()
    text = json.dumps(signatures, indent=1, ensure_ascii=False) + "\n"
    (directory / SIGNATURES).write_text(text, encoding="utf-8")
    return signatures


def write_vectors(directory: Path) -> dict[str, Any]:
    """Every file of the folder; returns the object vectors' manifest."""
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
    write_rpc_vectors(directory)
    write_signature_vectors(directory)
    return manifest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.kit.make_fleet_vectors",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("directory", nargs="?", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args(argv)
    manifest = write_vectors(args.directory)
    print(f"wrote {len(manifest['vectors'])} Fleet object vectors, the RPC exchanges and the signature vectors "
          f"to {args.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
