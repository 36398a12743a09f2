"""fedproto-trace --fleet: a Fleet API relay between nodes and a flower-superlink that logs every call and message.

Nodes (ours, flwr's ``flower-supernode``, a port) connect to ``--listen`` instead of the SuperLink;
the relay forwards each call to ``--upstream`` unchanged and the answer back unchanged. Over HTTP
(the default) it is a plain HTTP/1.1 reverse proxy: one upstream keep-alive connection per node
connection, bodies whole in both directions. With ``--fleet-transport grpc-rere`` it serves the
unary ``flwr.proto.Fleet`` methods and forwards their raw bytes, metadata (the request signature)
included. The RPC of a call is looked up in ``fedproto.node.RPCS`` (HTTP path or gRPC method).

It prints, on the side of what it forwards:

- one line per call: time, node id, RPC, request and response bytes, HTTP status or gRPC code,
  round-trip time to the SuperLink, and what the call carried (object id and type, heartbeat
  interval, how many messages, ...);
- one line per message that crosses, once all its objects have passed: direction (``SL->N``
  pulled by a node, ``N->SL`` pushed by one), message type, run, group, TTL, reply-to, and its
  content, decoded from the object tree by ``fedproto.objects.inflate_message`` (arrays: dtype,
  shape, L2 norm, first values; config and metric values; an error's code and reason). A message
  whose objects do not form a valid tree is shown with the reason.

``--jsonl FILE`` writes every field as one JSON object per line; ``--dump-objects DIR`` writes
every object that crosses to ``DIR/<object id>``. Every piece of peer text on a line goes
through ``fedproto.text.bound_text``; a peer that sends garbage gets one line and an error answer,
and the relay goes on. The objects kept for one message never exceed ``--max-message-length``.

Fault injection (only when asked; otherwise no byte changes):
- ``--delay-ms N`` holds each call (or each call of ``--delay-rpc``) N ms before forwarding it.
- ``--drop-object ID|TYPE`` keeps an object from its receiver: a PullObject is answered "not
  found", a PushObject is answered "stored" and not forwarded.
- ``--corrupt-object ID|TYPE`` flips the last byte of the object as it crosses, so its sha256 no
  longer matches its id.
- ``--answer-401-once RPC`` mimics a SuperLink that lost its database: the first such call from a
  known node is answered HTTP 401 / UNAUTHENTICATED, and the relay takes the node offline on the
  SuperLink (DeactivateNode, signed with the intercepted call's own headers: a signature covers
  only its timestamp, so anyone on the path can replay it for the 305 s the SuperLink accepts
  it). A SuperLink never lets a key register twice (412, even after UnregisterNode), so the
  relay answers the node's next RegisterNode itself, with the node's id, and forwards the
  ActivateNode that brings it back online.
- ``--cut-response RPC`` sends half the response body, then closes the connection (gRPC: the call
  ends UNAVAILABLE).
- ``--fault-times N``: each object fault and ``--cut-response`` fires at most N times.
"""

from __future__ import annotations

import argparse
import http.client
import http.server
import json
import logging
import math
import os
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import grpc
import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from fedproto.client.fleet import CallClock, CallLimits, KeepAliveConnection, Unreachable
from fedproto.errors import FedprotoError
from fedproto.fleet_pb2 import (
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    RegisterNodeFleetRequest,
    RegisterNodeFleetResponse,
)
from fedproto.kit.trace import TraceLog, format_values
from fedproto.message_pb2 import ObjectTree, PullObjectResponse, PushObjectRequest, PushObjectResponse
from fedproto.node import ID_TEXT, RPCS
from fedproto.objects import (
    Array,
    ArrayRecord,
    ConfigRecord,
    ObjectError,
    RecordDict,
    check_object,
    inflate_message,
    is_object_id,
    tree_object_ids,
)
from fedproto.text import KEY_LIMIT, bound_bytes, bound_metrics, bound_text
from fedproto.wire import MAX_MESSAGE_LENGTH, message_size_options

log = logging.getLogger("fedproto.trace")

TO_NODE, TO_SUPERLINK = "SL->N", "N->SL"
RPC_BY_PATH = {rpc.http_path: name for name, rpc in RPCS.items()}
# Headers that describe one HTTP connection, not the call: a proxy does not pass them on.
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
                        "transfer-encoding", "upgrade", "content-length"})
SIGNATURE_HEADERS = ("flwr-public-key", "flwr-timestamp", "flwr-signature")  # HTTP; gRPC: -bin keys
CALL_LIMITS = CallLimits()  # the node's own deadline rule (client/fleet.py), for both sides of a call
IDLE_TIMEOUT = 30.0  # seconds a node connection may wait between two reads before it is closed
READ_PIECE = 65536
FIRST_VALUES = 4  # values of an array shown
LIST_ITEMS = 8  # items of a list value shown
MAX_ARRAYS = 32  # arrays of one ArrayRecord shown
MAX_CROSSING = 64  # messages whose objects are being collected at once; the oldest goes first
MAX_KEYS = 10_000  # node keys remembered for --answer-401-once
SHORT_ID = 12  # hex digits of an object or message id on a console line


def short(object_id: str) -> str:
    return bound_text(object_id[:SHORT_ID], SHORT_ID) if is_object_id(object_id) else bound_text(object_id, ID_TEXT)


# ---------------------------------------------------------------------------- faults


@dataclass
class Faults:
    delay_ms: float = 0.0
    delay_rpcs: frozenset[str] = frozenset()  # empty: every RPC
    drop_objects: frozenset[str] = frozenset()  # object ids or type names
    corrupt_objects: frozenset[str] = frozenset()
    answer_401_once: str | None = None
    cut_responses: frozenset[str] = frozenset()
    times: int | None = None  # each object fault and cut fires at most this often (None: always)
    fired: dict[str, int] = field(default_factory=dict)
    answered_401: bool = False
    node_of_key: dict[bytes, int] = field(default_factory=dict)  # RegisterNode public key -> node id
    forgotten: int | None = None  # the node answered 401, until it registers again
    lock: threading.Lock = field(default_factory=threading.Lock)  # calls arrive on many threads

    def fire(self, name: str, specs: frozenset[str], *keys: str) -> bool:
        """True if one of ``keys`` (an id, a type, an RPC) is in ``specs`` and the fault may fire again."""
        if not specs.intersection(keys):
            return False
        with self.lock:
            if self.times is not None and self.fired.get(name, 0) >= self.times:
                return False
            self.fired[name] = self.fired.get(name, 0) + 1
            return True

    def take_401(self, rpc: str, node_id: int | None) -> bool:
        """True once: for the first call of --answer-401-once's RPC from a known node."""
        with self.lock:
            if rpc != self.answer_401_once or not node_id or self.answered_401:
                return False
            self.answered_401, self.forgotten = True, node_id
            return True

    def registered(self, public_key: bytes, node_id: int) -> None:
        """Remember who registered, while --answer-401-once has not fired (bounded)."""
        with self.lock:
            if self.answer_401_once and not self.answered_401 and len(self.node_of_key) < MAX_KEYS:
                self.node_of_key[public_key] = node_id

    def take_reregistration(self, public_key: bytes) -> int | None:
        """The id of the node answered 401, once, when it registers again with its key."""
        with self.lock:
            node_id = self.node_of_key.get(public_key)
            if node_id is None or node_id != self.forgotten:
                return None
            self.forgotten = None
            return node_id


def corrupted(content: bytes) -> bytes:
    """The object with its last byte flipped: same length, any hash check fails."""
    return content[:-1] + bytes([content[-1] ^ 0xFF]) if content else b"\x00"


def object_type(content: bytes) -> str:
    """The type named in an object's header, before the object is checked (for faults and lines)."""
    return bound_text(content[:40].split(b" ", 1)[0].decode("ascii", "replace"), 20)


# ---------------------------------------------------------------------------- describing messages


def describe_value(value: Any) -> Any:
    """A config or metric value, JSON-ready and bounded: bytes as hex, lists cut to LIST_ITEMS."""
    if isinstance(value, bytes):
        kept, more = bound_bytes(value)
        return f"bytes[{len(value)}]:{kept.hex()}" + ("..." if more else "")
    if isinstance(value, str):
        return bound_text(value)
    if isinstance(value, list):
        shown = [describe_value(item) for item in value[:LIST_ITEMS]]
        return shown + ([f"... ({len(value) - LIST_ITEMS} more)"] if len(value) > LIST_ITEMS else [])
    return value


def describe_array(array: Array) -> dict[str, Any]:
    if not array.data:  # flwr's "_empty" marker of a legacy instruction without tensors
        return {"dtype": "", "shape": [], "empty": True}
    ndarray = array.to_numpy()
    shown: dict[str, Any] = {"dtype": str(ndarray.dtype), "shape": list(ndarray.shape)}
    if ndarray.dtype.kind in "biuf":
        shown["norm"] = float(np.linalg.norm(ndarray.ravel().astype(np.float64)))
        shown["first"] = [float(x) if ndarray.dtype.kind == "f" else int(x) for x in ndarray.ravel()[:FIRST_VALUES]]
    return shown


def describe_content(content: RecordDict) -> dict[str, Any]:
    """Each record of a RecordDict: its kind and what it holds, bounded."""
    records: dict[str, Any] = {}
    for name, record in content.items():
        key = bound_text(name, KEY_LIMIT)
        if isinstance(record, ArrayRecord):
            arrays = {bound_text(n, KEY_LIMIT): describe_array(a) for n, a in list(record.items())[:MAX_ARRAYS]}
            if len(record) > MAX_ARRAYS:
                arrays[f"({len(record) - MAX_ARRAYS} more)"] = {}
            records[key] = {"kind": "arrays", "arrays": arrays}
        else:
            kind = "config" if isinstance(record, ConfigRecord) else "metrics"
            values = bound_metrics({k: describe_value(v) for k, v in record.items()})
            records[key] = {"kind": kind, "values": values}
    return records


def describe_message(tree: ObjectTree, objects: dict[str, bytes]) -> dict[str, Any]:
    """Metadata and content of a message whose objects have all passed (or why it does not decode)."""
    try:
        message = inflate_message(tree, objects)
    except FedprotoError as error:  # ObjectError and CodecError: a tree that is not a valid message
        return {"error": bound_text(str(error), 400)}
    meta = message.metadata
    record: dict[str, Any] = {
        "message_type": bound_text(meta.message_type, KEY_LIMIT), "run_id": meta.run_id,
        "group_id": bound_text(meta.group_id, KEY_LIMIT), "ttl": meta.ttl, "created_at": meta.created_at,
        "src_node_id": meta.src_node_id, "dst_node_id": meta.dst_node_id,
        "reply_to": short(meta.reply_to_message_id) if meta.reply_to_message_id else "",
    }
    if message.error is not None:
        record["message_error"] = {"code": message.error.code, "reason": bound_text(message.error.reason)}
    if message.content is not None:
        record["content"] = describe_content(message.content)
    return record


def format_array(name: str, array: dict[str, Any]) -> str:
    if not array or array.get("empty"):
        return f"{name}: -"
    text = f"{name}: {array['dtype']}{tuple(array['shape'])}"
    if "norm" in array:
        first = ", ".join(f"{value:.4g}" for value in array["first"])
        more = ", ..." if math.prod(array["shape"]) > len(array["first"]) else ""
        text += f" |x|={array['norm']:.6g} [{first}{more}]"
    return text


CALL_FIELDS = ("object_id", "object_type", "found", "available", "stored", "messages", "objects_to_push",
               "message_id", "heartbeat_interval", "success", "run_id", "request_error", "response_error",
               "object_error", "by")


def format_line(record: dict[str, Any]) -> str:
    """One console line for a call, a message or an event."""
    node = record.get("node_id")
    head = f"{record['elapsed_s']:9.3f}s  node {'-' if node is None else node:>20}"
    if record["kind"] == "event":
        return f"{head}  ---- {record['event']}"
    if record["kind"] == "call":
        status = record["status"]
        parts = [f"{head}  {record['rpc']:<22} {record['request_bytes']:>11,} B > {record['response_bytes']:>11,} B"
                 f"  {status}  rtt={record['rtt_ms']:.1f} ms"]
        parts += [f"{name}={record[name]}" for name in CALL_FIELDS if name in record]
    else:
        parts = [f"{head}  {record['direction']:<5} message {record['message_id']}"
                 f" objects={record['objects']} ({record['object_bytes']:,} B)"]
        if "error" in record:
            parts.append(f"not decoded: {record['error']}")
        else:
            parts.append(f"{record['message_type'] or '-'} run={record['run_id']} group={record['group_id'] or '-'}"
                         f" ttl={record['ttl']:g} reply_to={record['reply_to'] or '-'}")
        if "message_error" in record:
            parts.append(f"error={record['message_error']['code']} ({record['message_error']['reason']!r})")
        for name, content in record.get("content", {}).items():
            if content["kind"] == "arrays":
                parts.append(f"{name}={{" + ", ".join(format_array(n, a) for n, a in content["arrays"].items()) + "}")
            else:
                parts.append(format_values(name, content["values"]))
    if "fault" in record:
        parts.append(f"FAULT: {record['fault']}")
    return "  ".join(parts)


# ---------------------------------------------------------------------------- the tracer


@dataclass
class Crossing:
    """A message whose objects are crossing: collected until every one has passed."""

    direction: str
    node_id: int | None
    message_id: str
    tree: ObjectTree
    tree_ids: frozenset[str]
    expected: set[str]  # ids still to cross before the message is shown
    objects: dict[str, bytes] = field(default_factory=dict)
    size: int = 0


@dataclass
class Call:
    """One call as the tracer sees it. ``answer`` is set when the relay answers it itself."""

    rpc: str  # a Fleet RPC name, or the bounded path of anything else
    request: bytes
    request_bytes: int = 0
    started: float = 0.0
    node_id: int | None = None
    parsed: ProtoMessage | None = None
    record: dict[str, Any] = field(default_factory=dict)
    faults: list[str] = field(default_factory=list)
    answer: bytes | None = None  # the 200 body the relay gives instead of forwarding
    answer_401: bool = False  # --answer-401-once fired: take the node offline upstream, answer 401
    cut: bool = False


class FleetTracer:
    """What both transports share: parse, log, collect objects, inject faults. Thread-safe."""

    def __init__(self, faults: Faults, trace_log: TraceLog, max_message_length: int,
                 dump_dir: Path | None, grpc: bool = False) -> None:
        self.faults, self.log, self.grpc = faults, trace_log, grpc
        self.max_message_length, self.dump_dir = max_message_length, dump_dir
        self.lock = threading.Lock()
        self.crossing: dict[tuple[str, int | None, str], Crossing] = {}  # (direction, node, message id)

    def event(self, text: str, node_id: int | None = None) -> None:
        self.log.write({"kind": "event", "node_id": node_id, "event": bound_text(text, 400)}, format_line)

    # --- a call, before it is forwarded

    def begin(self, rpc: str | None, path: str, request: bytes, forged: bool = False) -> Call:
        call = Call(rpc or bound_text(path, 100), request, len(request))
        if rpc is not None:
            try:
                call.parsed = RPCS[rpc].request_type.FromString(request)
            except DecodeError:
                call.record["request_error"] = "not a valid protobuf message"
        if call.parsed is not None:
            if call.parsed.DESCRIPTOR.fields_by_name.get("node"):
                call.node_id = call.parsed.node.node_id  # type: ignore[attr-defined]
            elif call.parsed.DESCRIPTOR.fields_by_name.get("node_id"):
                call.node_id = call.parsed.node_id  # type: ignore[attr-defined]
        if forged:
            call.record["by"] = "relay (--answer-401-once)"
        else:
            self._request_faults(call)
        call.started = time.monotonic()
        return call

    def _request_faults(self, call: Call) -> None:
        faults = self.faults
        if faults.delay_ms and (not faults.delay_rpcs or call.rpc in faults.delay_rpcs):
            time.sleep(faults.delay_ms / 1000)
            call.faults.append(f"delayed {faults.delay_ms:g} ms")
        if faults.take_401(call.rpc, call.node_id):
            call.answer_401 = True
            call.faults.append("answered 401; the relay takes the node offline on the SuperLink")
            return
        if isinstance(call.parsed, RegisterNodeFleetRequest):
            node_id = faults.take_reregistration(call.parsed.public_key)
            if node_id is not None:
                call.node_id = node_id
                call.answer = RegisterNodeFleetResponse(node_id=node_id).SerializeToString()
                call.faults.append("answered by the relay with the node's own id (the SuperLink still holds its key)")
                return
        if call.rpc == "PushObject" and isinstance(call.parsed, PushObjectRequest):
            oid, content = call.parsed.object_id, call.parsed.object_content
            kind = object_type(content)
            if faults.fire("drop", faults.drop_objects, oid, kind):
                call.answer = PushObjectResponse(stored=True).SerializeToString()
                call.faults.append(f"dropped {kind} {short(oid)}: not forwarded, answered stored=true")
            elif faults.fire("corrupt", faults.corrupt_objects, oid, kind):
                call.parsed.object_content = corrupted(content)
                call.request = call.parsed.SerializeToString()
                call.faults.append(f"corrupted {kind} {short(oid)} (last byte flipped)")

    # --- a call, once answered

    def end(self, call: Call, status: int | str, response: bytes) -> tuple[bytes, bool]:
        """Log the call (and any message it completes); returns (response to pass on, cut it)."""
        rtt_ms = (time.monotonic() - call.started) * 1000
        ok = status in (200, "OK")
        parsed: ProtoMessage | None = None
        if ok and call.rpc in RPCS:
            try:
                parsed = RPCS[call.rpc].response_type.FromString(response)
            except DecodeError:
                call.record["response_error"] = "not a valid protobuf message"
        if isinstance(parsed, PullObjectResponse):
            response = self._pulled_object_faults(call, parsed, response)
        if ok and self.faults.fire("cut", self.faults.cut_responses, call.rpc):
            call.cut = True
            if self.grpc:  # a unary gRPC answer cannot arrive in part: the call fails instead
                status = "UNAVAILABLE"
                call.faults.append(f"cut: the call ends UNAVAILABLE instead of its {len(response)}-byte answer")
            else:
                call.faults.append(f"cut: {len(response) // 2} of {len(response)} bytes sent, then closed")
        record = {"kind": "call", "node_id": call.node_id, "rpc": call.rpc, "request_bytes": call.request_bytes,
                  "response_bytes": len(response), "status": status, "rtt_ms": round(rtt_ms, 3), **call.record}
        crossed: list[tuple[str, str, bytes]] = []
        self._summarize(call, parsed, record, crossed)
        if call.faults:
            record["fault"] = "; ".join(call.faults)
        self.log.write(record, format_line)
        if ok and not call.cut:
            try:
                self._track(call, parsed, crossed)
            except Exception as error:  # a tracing defect must not stop the forwarding: one line, go on
                self.event(f"{call.rpc}: not traced: {type(error).__name__}: {error}", call.node_id)
        return response, call.cut

    def _pulled_object_faults(self, call: Call, parsed: PullObjectResponse, response: bytes) -> bytes:
        if not (parsed.object_found and parsed.object_available):
            return response
        oid = getattr(call.parsed, "object_id", "")
        kind = object_type(parsed.object_content)
        if self.faults.fire("drop", self.faults.drop_objects, oid, kind):
            call.faults.append(f"dropped {kind} {short(oid)}: answered object_found=false")
            parsed.Clear()
            return parsed.SerializeToString()
        if self.faults.fire("corrupt", self.faults.corrupt_objects, oid, kind):
            call.faults.append(f"corrupted {kind} {short(oid)} (last byte flipped)")
            parsed.object_content = corrupted(parsed.object_content)
            return parsed.SerializeToString()
        return response

    def _summarize(self, call: Call, response: ProtoMessage | None, record: dict[str, Any],
                   crossed: list[tuple[str, str, bytes]]) -> None:
        """The call's own fields for its line; the objects it carried go to ``crossed``."""
        request = call.parsed
        if request is None:
            return
        if hasattr(request, "heartbeat_interval"):
            record["heartbeat_interval"] = request.heartbeat_interval
        if call.node_id is None and response is not None and hasattr(response, "node_id"):
            call.node_id = record["node_id"] = response.node_id
        if isinstance(request, RegisterNodeFleetRequest) and isinstance(response, RegisterNodeFleetResponse):
            self.faults.registered(request.public_key, response.node_id)
        if hasattr(response, "success"):
            record["success"] = response.success  # type: ignore[union-attr]
        if call.rpc in ("GetRun", "GetFab") and request.DESCRIPTOR.fields_by_name.get("run_id"):
            record["run_id"] = request.run_id  # type: ignore[attr-defined]
        if call.rpc == "ConfirmMessageReceived":
            record["message_id"] = short(request.message_object_id)  # type: ignore[attr-defined]
        if call.rpc == "PullObject":
            record["object_id"] = short(request.object_id)  # type: ignore[attr-defined]
            if isinstance(response, PullObjectResponse):
                record["found"], record["available"] = response.object_found, response.object_available
                if response.object_found and response.object_available:
                    content = response.object_content
                    record["object_type"] = object_type(content)
                    crossed.append((request.object_id, TO_NODE, content))  # type: ignore[attr-defined]
        if call.rpc == "PushObject" and isinstance(request, PushObjectRequest):
            record["object_id"], record["object_type"] = short(request.object_id), object_type(request.object_content)
            if isinstance(response, PushObjectResponse):
                record["stored"] = response.stored
                if call.answer is None:  # forwarded, not dropped
                    crossed.append((request.object_id, TO_SUPERLINK, request.object_content))
        if isinstance(response, PullMessagesResponse):
            record["messages"] = [short(m.metadata.message_id) for m in response.messages_list[:8]]
        if isinstance(request, PushMessagesRequest):
            record["messages"] = [short(m.metadata.message_id) for m in request.messages_list[:8]]
            if isinstance(response, PushMessagesResponse):
                record["objects_to_push"] = len(response.objects_to_push)
        for oid, _, content in crossed:
            try:
                check_object(oid, content)
            except ObjectError as error:
                record["object_error"] = call.record["object_error"] = bound_text(error.reason, 200)

    # --- messages and their objects

    def _track(self, call: Call, response: ProtoMessage | None, crossed: list[tuple[str, str, bytes]]) -> None:
        with self.lock:
            if isinstance(response, PullMessagesResponse):
                self._open(TO_NODE, call.node_id, response.message_object_trees, None)
            if isinstance(call.parsed, PushMessagesRequest) and isinstance(response, PushMessagesResponse):
                self._open(TO_SUPERLINK, call.node_id, call.parsed.message_object_trees,
                           set(response.objects_to_push))
            for oid, direction, content in crossed:
                if "object_error" not in call.record:  # a file is named by the hash of what it holds
                    self._dump(oid, content)
                self._collect(call.node_id, oid, direction, content)

    def _open(self, direction: str, node_id: int | None, trees: Any, to_push: set[str] | None) -> None:
        for stale in [key for key in self.crossing if key[:2] == (direction, node_id)]:  # one message at a time
            self._give_up(self.crossing.pop(stale), "superseded before all its objects crossed")
        for tree in trees:
            try:
                ids = frozenset(tree_object_ids(tree))
            except ObjectError as error:
                self.event(f"{direction} message {short(tree.object_id)}: object tree refused: {error.reason}",
                           node_id)
                continue
            key = (direction, node_id, tree.object_id)
            if len(self.crossing) >= MAX_CROSSING:
                self._give_up(self.crossing.pop(next(iter(self.crossing))), f"over {MAX_CROSSING} messages at once")
            expected = set(ids) if to_push is None else set(ids & to_push)
            crossing = self.crossing[key] = Crossing(direction, node_id, tree.object_id, tree, ids, expected)
            if not expected:  # the SuperLink held every object already
                self._complete(key, crossing)

    def _collect(self, node_id: int | None, oid: str, direction: str, content: bytes) -> None:
        """An object crossed between ``node_id`` and the SuperLink: it counts for that node's messages."""
        for key, crossing in list(self.crossing.items()):
            if key[:2] != (direction, node_id) or oid not in crossing.tree_ids or oid in crossing.objects:
                continue
            if crossing.size + len(content) > self.max_message_length:
                del self.crossing[key]
                self._give_up(crossing, f"its objects exceed --max-message-length ({self.max_message_length} B); "
                                        "collected objects dropped, forwarding goes on")
                continue
            crossing.objects[oid] = content
            crossing.size += len(content)
            crossing.expected.discard(oid)
            if not crossing.expected:
                self._complete(key, crossing)

    def _complete(self, key: tuple[str, int | None, str], crossing: Crossing) -> None:
        del self.crossing[key]
        record: dict[str, Any] = {"kind": "message", "node_id": crossing.node_id, "direction": crossing.direction,
                                  "message_id": short(crossing.message_id), "objects": len(crossing.objects),
                                  "object_bytes": crossing.size}
        missing = len(crossing.tree_ids) - len(crossing.objects)
        if missing:
            record["error"] = f"{missing} objects did not cross (the SuperLink held them already)"
        else:
            record.update(describe_message(crossing.tree, crossing.objects))
        self.log.write(record, format_line)

    def _give_up(self, crossing: Crossing, why: str) -> None:
        self.event(f"{crossing.direction} message {short(crossing.message_id)}: not shown, {why} "
                   f"({len(crossing.objects)} of {len(crossing.tree_ids)} objects crossed)", crossing.node_id)

    def _dump(self, oid: str, content: bytes) -> None:
        if self.dump_dir is None or not is_object_id(oid):  # only 64 hex digits ever become a file name
            return
        path = self.dump_dir / oid
        if not path.exists():
            path.write_bytes(content)


# ---------------------------------------------------------------------------- HTTP


@dataclass
class UpstreamResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


class HttpUpstream:
    """One keep-alive connection to the SuperLink, for one node connection. Each call has one deadline."""

    def __init__(self, address: str, tls: ssl.SSLContext | None, max_length: int) -> None:
        host, _, port = address.rpartition(":")
        self.connection = KeepAliveConnection(host.strip("[]"), int(port), tls, max_length)

    def call(self, method: str, path: str, headers: dict[str, str], body: bytes) -> UpstreamResponse:
        """The whole response; raises Unreachable (or OSError, HTTPException) and closes the connection."""
        clock = CallClock(CALL_LIMITS, len(body), self.connection.max_length, None)
        response, data = self.connection.exchange(method, path, headers, body, clock)
        return UpstreamResponse(response.status, response.reason, response.getheaders(), data)

    def close(self) -> None:
        self.connection.close()


class FleetHttpServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, listen: tuple[str, int], tracer: FleetTracer, upstream: str,
                 upstream_tls: ssl.SSLContext | None, listen_tls: ssl.SSLContext | None) -> None:
        super().__init__(listen, FleetHttpHandler)
        self.tracer, self.upstream, self.upstream_tls, self.listen_tls = tracer, upstream, upstream_tls, listen_tls

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One line instead of socketserver's traceback; the server goes on."""
        error = sys.exc_info()[1]
        self.tracer.event(f"connection from {client_address[0]}: {type(error).__name__}: {error}")

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, peer = super().get_request()
        if self.listen_tls is not None:  # handshake in the connection's thread, on its first read
            sock = self.listen_tls.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return sock, peer


class FleetHttpHandler(http.server.BaseHTTPRequestHandler):
    """One node connection: every request is forwarded on this connection's own upstream connection."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the nodes use it
    timeout = IDLE_TIMEOUT
    server: FleetHttpServer

    def setup(self) -> None:
        super().setup()
        self.tracer = self.server.tracer
        self.upstream = HttpUpstream(self.server.upstream, self.server.upstream_tls, self.tracer.max_message_length)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.upstream.close()

    def handle(self) -> None:
        try:
            super().handle()
        except (OSError, ssl.SSLError) as error:  # the node went away or failed its TLS handshake
            self.tracer.event(f"connection from {self.client_address[0]} ended: {type(error).__name__}: {error}")

    refusing = False  # the relay refuses a request and has logged why: http.server's line is not needed

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - BaseHTTPRequestHandler's name
        """http.server's own messages (a malformed request it refused): one bounded line."""
        if not self.refusing:
            self.tracer.event(f"from {self.client_address[0]}: {format % args}")

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Nothing: a forwarded call has its own line, a refused request its event."""

    def do_POST(self) -> None:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self._refuse(411, "a chunked request body (send Content-Length)")
            return
        try:
            length = int(self.headers.get("Content-Length", "0"))
            if length < 0:
                raise ValueError
        except ValueError:
            self._refuse(400, f"Content-Length {self.headers.get('Content-Length')!r} is not a length")
            return
        if length > self.tracer.max_message_length:
            self._refuse(413, f"a body of {length} bytes, above --max-message-length")
            return
        try:
            body = self._read_body(length)
        except (OSError, Unreachable) as error:
            self.tracer.event(f"from {self.client_address[0]}: request body not whole: {error}")
            self.close_connection = True
            return
        path = self.path
        call = self.tracer.begin(RPC_BY_PATH.get(path), path, body)
        headers = {key: value for key, value in self.headers.items() if key.lower() not in HOP_BY_HOP}
        if call.answer_401:
            self._take_offline(call, headers)
            self._answer(401, "Unauthorized", [("Content-Type", "application/json")],
                         json.dumps({"code": 401, "message": "fedproto-trace --answer-401-once"}).encode(), call)
            return
        if call.answer is not None:
            self._answer(200, "OK", [("Content-Type", "application/protobuf")], call.answer, call)
            return
        try:
            response = self.upstream.call(self.command, path, headers, call.request)
        # ValueError: http.client refuses to send a header value the node sent (a line break in it).
        except (OSError, http.client.HTTPException, Unreachable, ValueError) as error:
            call.record["response_error"] = bound_text(f"no whole answer: {type(error).__name__}: {error}")
            self.tracer.end(call, 502, b"")
            self._answer(502, "Bad Gateway", [("Content-Type", "text/plain")], b"fedproto-trace: no answer", None)
            return
        headers_back = [(k, v) for k, v in response.headers if k.lower() not in HOP_BY_HOP]
        self._answer(response.status, response.reason, headers_back, response.body, call)

    do_GET = do_PUT = do_DELETE = do_PATCH = do_POST  # forwarded alike; only Fleet paths are decoded

    def _read_body(self, length: int) -> bytes:
        deadline = time.monotonic() + CALL_LIMITS.floor + length / CALL_LIMITS.min_rate
        body = bytearray()
        while len(body) < length:
            if time.monotonic() > deadline:
                raise Unreachable(f"{len(body)} of {length} bytes within the call's deadline")
            piece = self.rfile.read1(min(READ_PIECE, length - len(body)))
            if not piece:
                raise Unreachable(f"connection closed after {len(body)} of {length} bytes")
            body += piece
        return bytes(body)

    def _answer(self, status: int, reason: str, headers: list[tuple[str, str]], body: bytes,
                call: Call | None) -> None:
        cut = False
        if call is not None:
            body, cut = self.tracer.end(call, status, body)
        # The SuperLink's reason phrase goes back only if it is plain text (no line break can ride on it).
        self.send_response_only(status, reason if reason.isascii() and reason.isprintable() else None)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(body)))
        if cut:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body[: len(body) // 2] if cut else body)
        if cut:
            self.close_connection = True

    def _refuse(self, status: int, what: str) -> None:
        self.tracer.event(f"from {self.client_address[0]} {bound_text(self.path, 100)}: refused {what}")
        self.close_connection = self.refusing = True
        self.send_error(status)

    def _take_offline(self, call: Call, headers: dict[str, str]) -> None:
        """Take the node offline on the SuperLink, signed with the intercepted call's own headers."""
        signed = {key: value for key, value in headers.items() if key.lower() in SIGNATURE_HEADERS}
        signed["Content-Type"] = "application/protobuf"
        rpc = RPCS["DeactivateNode"]
        request = rpc.request_type(node_id=call.node_id).SerializeToString()
        forged = self.tracer.begin("DeactivateNode", rpc.http_path, request, forged=True)
        try:
            response = self.upstream.call("POST", rpc.http_path, signed, request)
            self.tracer.end(forged, response.status, response.body)
        except (OSError, http.client.HTTPException, Unreachable) as error:
            forged.record["response_error"] = bound_text(f"no whole answer: {type(error).__name__}: {error}")
            self.tracer.end(forged, 502, b"")


def serve_http(listen: str, tracer: FleetTracer, upstream: str, upstream_tls: ssl.SSLContext | None,
               listen_tls: ssl.SSLContext | None) -> None:
    host, _, port = listen.rpartition(":")
    server = FleetHttpServer((host.strip("[]"), int(port)), tracer, upstream, upstream_tls, listen_tls)
    log.info("relaying the Fleet API (HTTP) from %s to %s", listen, upstream)
    try:
        server.serve_forever()
    finally:
        server.server_close()


# ---------------------------------------------------------------------------- gRPC-rere


def fleet_grpc_handler(tracer: FleetTracer, channel: grpc.Channel) -> grpc.GenericRpcHandler:
    """Every unary Fleet method, forwarded as raw bytes with the caller's metadata."""

    def forward(rpc: str) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        method = channel.unary_unary(RPCS[rpc].grpc_method)  # no (de)serializers: raw bytes

        def behavior(request: bytes, context: grpc.ServicerContext) -> bytes:
            call = tracer.begin(rpc, RPCS[rpc].grpc_method, request)
            metadata = [(key, value) for key, value in context.invocation_metadata()
                        if not key.startswith((":", "grpc-")) and key != "user-agent"]
            timeout = CALL_LIMITS.floor + (len(request) + tracer.max_message_length) / CALL_LIMITS.min_rate
            if call.answer_401:  # take the node offline, signed with the call's own metadata
                deactivate = RPCS["DeactivateNode"]
                forged_request = deactivate.request_type(node_id=call.node_id).SerializeToString()
                forged = tracer.begin("DeactivateNode", deactivate.grpc_method, forged_request, forged=True)
                try:
                    channel.unary_unary(deactivate.grpc_method)(forged_request, metadata=metadata, timeout=timeout)
                    tracer.end(forged, "OK", b"")
                except grpc.RpcError as error:
                    tracer.end(forged, error.code().name, b"")
                tracer.end(call, "UNAUTHENTICATED", b"")
                context.abort(grpc.StatusCode.UNAUTHENTICATED, "fedproto-trace --answer-401-once")
            if call.answer is not None:
                return tracer.end(call, "OK", call.answer)[0]
            try:
                response = method(call.request, metadata=metadata, timeout=timeout)
            except grpc.RpcError as error:
                call.record["response_error"] = bound_text(error.details() or "")
                tracer.end(call, error.code().name, b"")
                context.abort(error.code(), bound_text(error.details() or ""))
            body, cut = tracer.end(call, "OK", response)
            if cut:
                context.abort(grpc.StatusCode.UNAVAILABLE, "fedproto-trace --cut-response")
            return body

        return behavior

    handlers = {rpc: grpc.unary_unary_rpc_method_handler(forward(rpc)) for rpc in RPCS}
    return grpc.method_handlers_generic_handler("flwr.proto.Fleet", handlers)


def serve_grpc(listen: str, tracer: FleetTracer, upstream: str, root_certificates: bytes | None,
               server_certificates: tuple[bytes, bytes, bytes] | None) -> None:
    options = message_size_options(tracer.max_message_length)
    if root_certificates is None:
        channel = grpc.insecure_channel(upstream, options=options)
    else:
        channel = grpc.secure_channel(upstream, grpc.ssl_channel_credentials(root_certificates), options=options)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=options)
    server.add_generic_rpc_handlers([fleet_grpc_handler(tracer, channel)])
    if server_certificates is None:
        port = server.add_insecure_port(listen)
    else:
        ca, cert, key = server_certificates
        port = server.add_secure_port(listen, grpc.ssl_server_credentials([(key, cert)], root_certificates=ca))
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    log.info("relaying the Fleet API (gRPC-rere) from %s to %s", listen, upstream)
    try:
        server.wait_for_termination()
    finally:
        server.stop(grace=1.0)
        channel.close()


# ---------------------------------------------------------------------------- command line


EPILOG = """\
Each call line: seconds since start, node id, RPC, request > response bytes, HTTP status (gRPC
code), rtt (the SuperLink's time to answer), then what the call carried. Each message line:
direction (SL->N: a node pulled it; N->SL: a node pushed it), id, objects, then the metadata and
content decoded from the object tree.

examples:
  # watch a SuperLink and its nodes: point the nodes at 8001 instead of 8000
  fedproto-trace --fleet --listen 127.0.0.1:8001 --upstream 127.0.0.1:8000 --jsonl fleet.jsonl

  # the gRPC-rere Fleet API (FLWR_INTERNAL_GRPC_FLEET_API=1 on the SuperLink)
  fedproto-trace --fleet --fleet-transport grpc-rere --listen 127.0.0.1:9095 --upstream 127.0.0.1:9092

  # the first PullMessages answered 401: does the node register again?
  fedproto-trace --fleet --listen 127.0.0.1:8001 --upstream 127.0.0.1:8000 --answer-401-once PullMessages

  # the first ArrayChunk pulled arrives corrupted
  fedproto-trace --fleet --listen 127.0.0.1:8001 --upstream 127.0.0.1:8000 \\
      --corrupt-object ArrayChunk --fault-times 1
"""


def _rpc_name(text: str) -> str:
    if text not in RPCS:
        raise argparse.ArgumentTypeError(f"{text} is not a Fleet RPC ({', '.join(RPCS)})")
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-trace",
        description="Relay the Fleet API between nodes and a flower-superlink, logging every call and message.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--fleet", action="store_true", required=True, help="relay the Fleet API (not Join)")
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where nodes connect")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the SuperLink's Fleet API")
    parser.add_argument("--fleet-transport", choices=["http", "grpc-rere"], default="http",
                        help="HTTP/1.1 (default) or the gRPC-rere Fleet service, on both sides")
    parser.add_argument("--jsonl", type=argparse.FileType("w", encoding="utf-8"), metavar="FILE",
                        help="also write one JSON object per call, message and event")
    parser.add_argument("--dump-objects", type=Path, metavar="DIR", help="write every object that crosses to DIR/<id>")
    parser.add_argument("--max-message-length", type=int, default=MAX_MESSAGE_LENGTH, metavar="BYTES",
                        help="largest body, and most object bytes kept for one message "
                        f"(default: {MAX_MESSAGE_LENGTH})")
    parser.add_argument("--root-certificates", type=Path, metavar="PEM",
                        help="the SuperLink uses TLS: trust these CA certificates (as fedproto-client)")
    parser.add_argument("--certificates", nargs=3, type=Path, metavar=("CA", "CERT", "KEY"),
                        help="serve TLS to the nodes with this certificate and key (as fedproto-server)")
    faults = parser.add_argument_group("fault injection")
    faults.add_argument("--delay-ms", type=float, default=0.0, metavar="N", help="hold each call N ms")
    faults.add_argument("--delay-rpc", type=_rpc_name, action="append", default=[], metavar="RPC",
                        help="delay only calls of this RPC (repeatable; default: every RPC)")
    faults.add_argument("--drop-object", action="append", default=[], metavar="ID|TYPE",
                        help="keep this object (id, or type such as ArrayChunk) from its receiver (repeatable)")
    faults.add_argument("--corrupt-object", action="append", default=[], metavar="ID|TYPE",
                        help="flip the last byte of this object as it crosses (repeatable)")
    faults.add_argument("--answer-401-once", type=_rpc_name, metavar="RPC",
                        help="answer the first call of RPC from a known node 401 (a SuperLink that lost its database)")
    faults.add_argument("--cut-response", type=_rpc_name, action="append", default=[], metavar="RPC",
                        help="send half of this RPC's response, then close (repeatable)")
    faults.add_argument("--fault-times", type=int, metavar="N",
                        help="each object fault and --cut-response fires at most N times (default: always)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None, console: TextIO = sys.stdout) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faults = Faults(args.delay_ms, frozenset(args.delay_rpc), frozenset(args.drop_object),
                    frozenset(args.corrupt_object), args.answer_401_once, frozenset(args.cut_response),
                    args.fault_times)
    try:
        root = args.root_certificates.read_bytes() if args.root_certificates else None
        certificates = tuple(path.read_bytes() for path in args.certificates) if args.certificates else None
        if args.dump_objects is not None:
            os.makedirs(args.dump_objects, exist_ok=True)
        tracer = FleetTracer(faults, TraceLog(console, args.jsonl), args.max_message_length, args.dump_objects,
                             grpc=args.fleet_transport == "grpc-rere")
        if args.fleet_transport == "grpc-rere":
            serve_grpc(args.listen, tracer, args.upstream, root, certificates)
        else:
            upstream_tls = ssl.create_default_context(cadata=root.decode("ascii")) if root else None
            listen_tls = None
            if args.certificates:
                listen_tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
                listen_tls.load_cert_chain(args.certificates[1], args.certificates[2])
            serve_http(args.listen, tracer, args.upstream, upstream_tls, listen_tls)
    except (OSError, ValueError, ssl.SSLError) as error:
        print(f"fedproto-trace: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if args.jsonl is not None:
            args.jsonl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
