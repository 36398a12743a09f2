"""fedproto-conformance --fleet: play a SuperLink for one Fleet API node and grade what it does.

The runner serves the Fleet API (HTTP/1.1 ``POST /v1/fleet/<rpc>``, or gRPC-rere with
``--fleet-transport grpc-rere``) on ``--address`` for one node under test, drives it through a
scripted run and prints a table with a verdict per step (PASS, FAIL or SKIP), like the Join
runner; exit code 0 only if no step failed. ``-- NODE COMMAND...`` after the runner's own flags
makes the runner start the node itself: then it can also send it SIGTERM, and restart it if it
dies, so that one step that kills a node hides nothing. Without a command the node is started by
hand and the steps that need the process (sigterm) read SKIP "not run".

The SuperLink side is three small parts: :class:`FleetLink` holds what a SuperLink holds (keys,
node ids, messages and their objects) and answers each call, checking its signature and recording
it; :class:`HttpFront` / :class:`GrpcFront` carry calls to it (routed by ``fedproto.node.RPCS``);
:class:`Script` queues messages, waits for what the node does and grades it. The link serves a
request whose signature fails (a SuperLink would answer 401) and records the failure, so that a
node with one defect still gets a verdict on everything else.

The steps (``--skip``/``--only`` take the number or the name)
------------------------------------------------------------------
Required: what a node must do to take part in a run of flower-superlink
  1  register              RegisterNode, then ActivateNode with the same key and an interval in [10, 1800] s
  2  signatures            every request: PEM EC public key, UTC timestamp 5 s ahead .. 305 s old, ECDSA-SHA256
                           signature of the timestamp; the key in Register/Activate bodies is the signing
                           key; the node id in every other body is the signing key's
  3  heartbeat             first heartbeat within the announced interval of activation, then gaps of at most the
                           interval (the SuperLink counts a node offline after 2 x interval), none under 1 s
  4  poll                  PullMessages while idle: gaps after an empty answer at most the interval, none under 0.1 s
  5  train                 message-API "train" ({"arrays", "config"}), float32; one chunk answers
                           object_available=false at first -> one ArrayRecord with the same keys, shapes and
                           dtypes, a MetricRecord with "num-examples" >= 1
  6  evaluate              message-API "evaluate" -> a MetricRecord with "num-examples" >= 1
  7  big_model             "train" with a model of more than one 5 MiB chunk, as 5
  8  unservable            message type "query.fedproto_conformance_unknown" -> a reply with Message.error
  9  pull_objects          every message: each object of its tree pulled, an unavailable one pulled again
 10  confirm_before_reply  every message: ConfirmMessageReceived(its id) after the pulls, before PushMessages
 11  reply_metadata        every reply: run, src = node, dst = sender, reply_to, group, type, created_at
                           around now, created_at + ttl <= the instruction's; the hashed copy agrees
 12  reply_objects         every reply: each pushed object's id is the SHA-256 of its bytes, headers valid,
                           the ObjectTree is the objects' own, the root is the message id, the tree inflates
 13  push_exactly          every reply: exactly the objects PushMessages asked for, each once
 14  reregister            the runner forgets the node (401): it registers and activates again with the same key,
                           within --reregister-backoff + 10 s
 15  sigterm               SIGTERM: DeactivateNode, then UnregisterNode, then the process exits (needs the command)
Optional: what a port may decline with Message.error (a wrong answer still fails)
 16  query                 message-API "query" with a ConfigRecord -> a reply
 17  legacy_fit            legacy "fitins.*" layout -> "fitres.*": parameters, num_examples (MetricRecord)
 18  legacy_evaluate       legacy "evaluateins.*" -> "evaluateres.*": loss, num_examples (MetricRecords)
 19  legacy_get_parameters legacy "getparametersins.config" -> "getparametersres.parameters"
 20  legacy_get_properties legacy "getpropertiesins.config" -> "getpropertiesres.properties"
 21  config_kinds          "train" whose config holds every ConfigRecord value kind, lists included
 22  other_dtypes          "train" with float64, int32 and uint8 arrays: same dtypes and shapes back
 23  deflate_layout        every reply's objects are byte-identical to flwr's deflate() of its content

Timing follows the node: the runner waits for a poll as long as the heartbeat interval the node
announced (plus 5 s), for a reply up to ``--timeout``, and watches heartbeats until at least one
interval has passed since activation. A node with ``--heartbeat-interval 10 --poll-interval 0.2``
is graded in about 15 s; with flwr's defaults (30 s, 3 s) in under a minute.

A node the runner started that dies is started again (at most MAX_STARTS times); one that does
not pull a message or finish its reply is stopped and started afresh, and the script goes on. A
node started by hand that makes no call while the runner waits is given up: the steps after read
"not run".

To grade flwr's own ``flower-supernode``, pass ``--fab-dir APP_DIR`` (a flwr app whose ClientApp
answers "train" and "evaluate", e.g. examples/superlink_app): the runner serves GetRun and GetFab
with a FAB built from that directory, which the SuperNode installs and runs.

Needs the ``cryptography`` package (``pip install 'fedproto[fleet]'``) to verify signatures.
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import http.server
import io
import json
import logging
import math
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
import tomllib
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from fedproto import objects
from fedproto.errors import FedprotoError
from fedproto.fab_pb2 import Fab, GetFabResponse
from fedproto.fleet_pb2 import (
    ActivateNodeResponse,
    DeactivateNodeResponse,
    PullMessagesResponse,
    PushMessagesResponse,
    RegisterNodeFleetResponse,
    UnregisterNodeFleetResponse,
)
from fedproto.heartbeat_pb2 import SendNodeHeartbeatResponse
from fedproto.kit.conformance import Row, Step, format_table, number, select, step_type, write_json
from fedproto.message_pb2 import (
    ConfirmMessageReceivedResponse,
    Metadata,
    ObjectTree,
    PullObjectResponse,
    PushObjectResponse,
)
from fedproto.node import HEARTBEAT_INTERVAL_RANGE, RPCS
from fedproto.run_pb2 import GetRunResponse, Run, RunStatus
from fedproto.text import bound_text
from fedproto.wire import MAX_MESSAGE_LENGTH

log = logging.getLogger("fedproto.conformance")

RUN_ID = 4242
SUPERLINK_NODE_ID = 1  # flwr's SUPERLINK_NODE_ID: the src of every instruction
INSTRUCTION_TTL = 3600.0
SIGNED_AGE = (-5.0, 305.0)  # seconds a signed timestamp may be old (flwr's TIMESTAMP_TOLERANCE + 5 s clock skew)
CLOCK_SKEW = 5.0  # seconds a reply's created_at may differ from the runner's clock
TTL_SLACK = 0.01  # seconds of float rounding allowed in created_at + ttl
HEARTBEAT_FLOOR = 1.0  # seconds: a node that heartbeats faster is busy-looping
POLL_FLOOR = 0.1
DELIVERY_SLACK = 5.0  # seconds added to the announced interval when waiting for a poll
REREGISTER_SLACK = 10.0
EXIT_GRACE = 10.0  # seconds a node has to exit after SIGTERM
MAX_STARTS = 10  # a node the runner starts that keeps dying is given up after this many starts
BIG_MODEL_ELEMENTS = 1_600_000  # float32: 6.4 MB of .npy, two 5 MiB chunks
# A well-formed type ("<category>.<action>", as flwr validates it) that no handler serves.
UNSERVABLE_TYPE = "query.fedproto_conformance_unknown"
HTTP_BODY_LIMIT = MAX_MESSAGE_LENGTH  # the largest request body the runner reads
SHOWN = 3  # problems shown in one row's detail

EVERY_CONFIG_KIND = {
    "server-round": 1, "bool": True, "sint64": -(2**40), "uint64": 2**63 + 5, "double": 0.25, "string": "é ok",
    "bytes": b"\x00\xff", "bool_list": [True, False], "sint_list": [1, -2], "uint_list": [2**63, 2**64 - 1],
    "double_list": [0.5, -1.5], "string_list": ["a", "b"], "bytes_list": [b"x", b""],
}

STEPS = [
    Step("register", "RegisterNode, ActivateNode, interval in range"),
    Step("signatures", "every request signed by the node's key"),
    Step("heartbeat", "heartbeat cadence within the interval"),
    Step("poll", "PullMessages cadence while idle"),
    Step("train", "message-API train, one object late"),
    Step("evaluate", "message-API evaluate"),
    Step("big_model", "train with a model > one 5 MiB chunk"),
    Step("unservable", "unknown message type -> Message.error"),
    Step("pull_objects", "every object pulled, late one retried", ("train",)),
    Step("confirm_before_reply", "ConfirmMessageReceived before the reply", ("train",)),
    Step("reply_metadata", "reply metadata", ("train",)),
    Step("reply_objects", "reply object ids, headers and tree", ("train",)),
    Step("push_exactly", "exactly the requested objects pushed", ("train",)),
    Step("reregister", "after a 401: same key registers again"),
    Step("sigterm", "SIGTERM: DeactivateNode, UnregisterNode, exit"),
    Step("query", "message-API query (optional)"),
    Step("legacy_fit", "legacy fitins layout (optional)"),
    Step("legacy_evaluate", "legacy evaluateins layout (optional)"),
    Step("legacy_get_parameters", "legacy getparametersins (optional)"),
    Step("legacy_get_properties", "legacy getpropertiesins (optional)"),
    Step("config_kinds", "every ConfigRecord value kind (optional)"),
    Step("other_dtypes", "float64, int32, uint8 arrays (optional)"),
    Step("deflate_layout", "reply bytes as flwr's deflate() (optional)", ("train",)),
]
STEP_NAMES = [step.name for step in STEPS]
REQUIRED = STEP_NAMES[: STEP_NAMES.index("sigterm") + 1]
# Graded over every message exchanged, once the message steps are over.
PER_MESSAGE = ("pull_objects", "confirm_before_reply", "reply_metadata", "reply_objects", "push_exactly",
               "deflate_layout")

EXIT_ALL_PASSED, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


class CheckFailed(Exception):
    """One reply broke the contract; the text says how."""


class NotServed(Exception):
    """The link answers this call with an HTTP error status (and the matching gRPC code)."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status


# ---------------------------------------------------------------------------- signatures


@dataclass
class Signed:
    """What the signature headers of one request say; ``problem`` is '' when they verify."""

    public_key: bytes = b""
    problem: str = ""


def check_signature(public_key: bytes | None, timestamp: str | None, signature: bytes | None, now: float) -> Signed:
    """flwr's node_auth checks, each failure named: PEM EC key, timestamp window, ECDSA-SHA256 signature."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    if not public_key or timestamp is None or not signature:
        missing = [name for name, value in (("public key", public_key), ("timestamp", timestamp),
                                            ("signature", signature)) if not value]
        return Signed(public_key or b"", f"no {', no '.join(missing)} header")
    try:
        key = serialization.load_pem_public_key(public_key)
    except (ValueError, TypeError):
        return Signed(public_key, "the public key is not a PEM SubjectPublicKeyInfo")
    if not isinstance(key, ec.EllipticCurvePublicKey):
        return Signed(public_key, f"the public key is {type(key).__name__}, not an EC key")
    try:
        signed_at = datetime.datetime.fromisoformat(timestamp)
    except ValueError:
        return Signed(public_key, f"timestamp {bound_text(timestamp, 60)!r} is not ISO 8601")
    if signed_at.tzinfo is None:
        return Signed(public_key, f"timestamp {bound_text(timestamp, 60)!r} has no UTC offset")
    age = now - signed_at.timestamp()
    if not SIGNED_AGE[0] < age < SIGNED_AGE[1]:
        return Signed(public_key, f"timestamp {bound_text(timestamp, 60)} is {age:.0f} s old, outside "
                                  f"{SIGNED_AGE[0]:g} .. {SIGNED_AGE[1]:g} s")
    try:
        key.verify(signature, timestamp.encode("ascii"), ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, UnicodeEncodeError):
        return Signed(public_key, "the signature does not verify over the timestamp")
    return Signed(public_key)


def http_signature(headers: Any, now: float) -> Signed:
    """Fleet over HTTP: base64 of the PEM and of the DER signature."""
    try:
        public_key = base64.b64decode(headers.get("flwr-public-key", ""), validate=True)
        signature = base64.b64decode(headers.get("flwr-signature", ""), validate=True)
    except ValueError:
        return Signed(b"", "a signature header is not base64")
    return check_signature(public_key, headers.get("flwr-timestamp"), signature, now)


def grpc_signature(metadata: Any, now: float) -> Signed:
    """Fleet over gRPC: raw bytes under the -bin keys."""
    values = {key: value for key, value in metadata}
    timestamp = values.get("flwr-timestamp")
    return check_signature(values.get("flwr-public-key-bin"), timestamp if isinstance(timestamp, str) else None,
                           values.get("flwr-signature-bin"), now)


# ---------------------------------------------------------------------------- the SuperLink side


@dataclass
class Call:
    """One request as the runner saw it."""

    rpc: str
    at: float  # time.monotonic()
    node_id: int  # the one its body names (0 for RegisterNode / ActivateNode)
    status: int = 200
    empty: bool = False  # PullMessages answered with no message


@dataclass
class Exchange:
    """One message the script sends, and everything the node did about it."""

    step: str
    message_type: str
    content: objects.DeflatedContent
    unavailable_once: set[str] = field(default_factory=set)  # ids answered object_available=false once
    message: objects.DeflatedMessage | None = None  # built when delivered (dst = the node id then)
    delivered_at: float = 0.0
    pulled: list[tuple[str, bool]] = field(default_factory=list)  # (object id, available) per PullObject
    confirmed_at: float = 0.0
    confirmed_id: str = ""
    pushed_at: float = 0.0  # PushMessages
    push_wall_time: float = 0.0
    reply: Any = None  # the PushMessagesRequest
    requested: list[str] = field(default_factory=list)  # objects_to_push
    pushed: list[tuple[str, bytes]] = field(default_factory=list)  # PushObject (id, content)
    session_id: str = ""

    @property
    def done(self) -> bool:
        return self.reply is not None and set(self.requested) <= {oid for oid, _ in self.pushed}

    def progress(self) -> str:
        tree = objects.tree_object_ids(self.message.object_tree) if self.message else []
        got = {oid for oid, available in self.pulled if available}
        confirmed = "yes" if self.confirmed_at else "no"
        return (f"pulled {len(got & set(tree))} of {len(tree)} objects, confirmed {confirmed}, "
                f"PushMessages {'yes' if self.reply is not None else 'no'}, "
                f"pushed {len(self.pushed)} of {len(self.requested)} objects")


class FleetLink:
    """What a SuperLink holds for one node, and its answer to each Fleet call (thread-safe)."""

    def __init__(self, fab: bytes | None, fab_id: str, fab_version: str) -> None:
        self.changed = threading.Condition()
        self.calls: list[Call] = []
        self.auth_problems: list[str] = []
        self.registered: set[bytes] = set()  # public keys
        self.node_of_key: dict[bytes, int] = {}  # active nodes
        self.key_of_node: dict[int, bytes] = {}  # every node ever activated
        self.intervals: dict[int, float] = {}  # node id -> announced heartbeat interval
        self.activated_at: dict[int, float] = {}
        self.node_id = 0  # the node the script talks to: the last one activated
        self.registrations: list[tuple[float, bytes]] = []
        self.forget_next = False  # answer the next call 401 and forget the node, as a SuperLink that lost its state
        self.forgotten_at = 0.0
        self.outbox: list[Exchange] = []
        self.exchanges: list[Exchange] = []
        self.by_message: dict[str, Exchange] = {}
        self.store: dict[str, bytes] = {}  # every instruction object, and every reply object pushed
        self.stray: list[str] = []  # PushMessages/PushObject that match no message
        self.fab = fab or b""
        self.run = Run(run_id=RUN_ID, fab_id=fab_id, fab_version=fab_version,
                       fab_hash=hashlib.sha256(self.fab).hexdigest() if fab else "",
                       status=RunStatus(status="running"))

    # ---- entry point of both fronts

    def serve(self, rpc: str, body: bytes, signed: Signed) -> bytes:
        """The response bytes for one call, or NotServed."""
        spec = RPCS[rpc]
        try:
            request = spec.request_type.FromString(body)
        except DecodeError:
            raise NotServed(400, f"{rpc}: the body is not a {spec.request_type.__name__}") from None
        with self.changed:
            node_id = _body_node_id(request)
            call = Call(rpc, time.monotonic(), node_id)
            self.calls.append(call)
            self._check_auth(rpc, request, node_id, signed)
            try:
                if self.forget_next and rpc not in ("RegisterNode", "ActivateNode"):
                    self._forget(signed.public_key)
                    raise NotServed(401, "node unknown (the runner forgot it)")
                response = getattr(self, f"_{rpc}")(request, call)
            except NotServed as refused:
                call.status = refused.status
                raise
            except Exception as error:  # a request no step foresaw: one line, answered 500, the run goes on
                log.error("%s: cannot serve it: %s", rpc, bound_text(f"{type(error).__name__}: {error}"))
                call.status = 500
                raise NotServed(500, "the conformance runner cannot serve this request") from None
            finally:
                self.changed.notify_all()
        return response.SerializeToString()

    def _check_auth(self, rpc: str, request: Any, node_id: int, signed: Signed) -> None:
        problem = signed.problem
        if not problem and rpc in ("RegisterNode", "ActivateNode") and request.public_key != signed.public_key:
            problem = "the public key in the body is not the signing key"
        if not problem and rpc not in ("RegisterNode", "ActivateNode"):
            owner = self.key_of_node.get(node_id)
            if owner is not None and owner != signed.public_key:
                problem = f"node id {node_id} belongs to another key"
            elif owner is None:
                problem = f"node id {node_id} was never activated"
        if problem:
            self.auth_problems.append(f"{rpc}: {problem}")

    def _forget(self, key: bytes) -> None:
        self.forget_next = False
        self.forgotten_at = time.monotonic()
        self.registered.discard(key)
        self.node_of_key.pop(key, None)

    # ---- one method per RPC

    def _RegisterNode(self, request: Any, call: Call) -> ProtoMessage:
        if request.public_key in self.registered:
            raise NotServed(409, "public key already in use")
        self.registered.add(request.public_key)
        self.registrations.append((call.at, request.public_key))
        return RegisterNodeFleetResponse()

    def _ActivateNode(self, request: Any, call: Call) -> ProtoMessage:
        if request.public_key not in self.registered:
            raise NotServed(401, "ActivateNode for a key that is not registered")
        node_id = self.node_of_key.get(request.public_key) or secrets.randbits(62) + 2
        self.node_of_key[request.public_key] = node_id
        self.key_of_node[node_id] = request.public_key
        self.intervals[node_id] = request.heartbeat_interval
        self.activated_at[node_id] = call.at
        self.node_id = node_id
        return ActivateNodeResponse(node_id=node_id)

    def _SendNodeHeartbeat(self, request: Any, call: Call) -> ProtoMessage:
        active = request.node.node_id in self.node_of_key.values()
        return SendNodeHeartbeatResponse(success=active)

    def _PullMessages(self, request: Any, call: Call) -> ProtoMessage:
        if not self.outbox or request.node.node_id != self.node_id:
            call.empty = True
            return PullMessagesResponse()
        exchange = self.outbox.pop(0)
        metadata = Metadata(run_id=RUN_ID, src_node_id=SUPERLINK_NODE_ID, dst_node_id=self.node_id,
                            group_id=exchange.step, message_type=exchange.message_type,
                            created_at=time.time(), ttl=INSTRUCTION_TTL)
        exchange.message = objects.deflate_message(metadata, exchange.content)
        exchange.delivered_at = call.at
        self.store.update(exchange.message.objects)
        self.by_message[exchange.message.message_id] = exchange
        self.exchanges.append(exchange)
        return PullMessagesResponse(messages_list=[exchange.message.message],
                                    message_object_trees=[exchange.message.object_tree])

    def _PullObject(self, request: Any, call: Call) -> ProtoMessage:
        exchange = self._exchange_of_object(request.object_id)
        if request.object_id not in self.store:
            return PullObjectResponse(object_found=False, object_available=False)
        if exchange is not None and request.object_id in exchange.unavailable_once:
            exchange.unavailable_once.discard(request.object_id)
            exchange.pulled.append((request.object_id, False))
            return PullObjectResponse(object_found=True, object_available=False)
        if exchange is not None:
            exchange.pulled.append((request.object_id, True))
        return PullObjectResponse(object_found=True, object_available=True,
                                  object_content=self.store[request.object_id])

    def _ConfirmMessageReceived(self, request: Any, call: Call) -> ProtoMessage:
        exchange = self.by_message.get(request.message_object_id)
        if exchange is None:
            self.stray.append(f"ConfirmMessageReceived for unknown message {bound_text(request.message_object_id, 70)}")
        elif not exchange.confirmed_at:
            exchange.confirmed_at, exchange.confirmed_id = call.at, request.message_object_id
        return ConfirmMessageReceivedResponse()

    def _PushMessages(self, request: Any, call: Call) -> ProtoMessage:
        if len(request.messages_list) != 1:
            self.stray.append(f"PushMessages with {len(request.messages_list)} messages")
            return PushMessagesResponse()
        reply_to = request.messages_list[0].metadata.reply_to_message_id
        exchange = self.by_message.get(reply_to)
        if exchange is None or exchange.reply is not None:
            self.stray.append(f"PushMessages replying to {bound_text(reply_to, 70)!r}, no message waiting for one")
            return PushMessagesResponse()
        exchange.reply, exchange.pushed_at, exchange.push_wall_time = request, call.at, time.time()
        wanted: list[str] = []
        for tree in request.message_object_trees:
            try:
                wanted += [oid for oid in objects.tree_object_ids(tree) if oid not in self.store]
            except objects.ObjectError:
                pass  # reply_objects names it
        exchange.requested = list(dict.fromkeys(wanted))
        exchange.session_id = secrets.token_hex(8)
        return PushMessagesResponse(objects_to_push=exchange.requested, session_id=exchange.session_id)

    def _PushObject(self, request: Any, call: Call) -> ProtoMessage:
        owner = next((e for e in reversed(self.exchanges) if request.object_id in e.requested), None)
        if owner is None:
            self.stray.append(f"PushObject of {bound_text(request.object_id, 70)!r}, which no PushMessages asked for")
        else:
            owner.pushed.append((request.object_id, request.object_content))
        return PushObjectResponse(stored=True)

    def _DeactivateNode(self, request: Any, call: Call) -> ProtoMessage:
        return DeactivateNodeResponse()

    def _UnregisterNode(self, request: Any, call: Call) -> ProtoMessage:
        key = self.key_of_node.get(request.node_id)
        if key is not None:
            self.registered.discard(key)
            self.node_of_key.pop(key, None)
        return UnregisterNodeFleetResponse()

    def _GetRun(self, request: Any, call: Call) -> ProtoMessage:
        if request.run_id != RUN_ID:
            raise NotServed(404, f"no run {request.run_id}")
        return GetRunResponse(run=self.run)

    def _GetFab(self, request: Any, call: Call) -> ProtoMessage:
        if not self.fab or request.hash_str != self.run.fab_hash:
            raise NotServed(404, "no such FAB (start the runner with --fab-dir to serve one)")
        return GetFabResponse(fab=Fab(hash_str=self.run.fab_hash, content=self.fab))

    def _exchange_of_object(self, object_id: str) -> Exchange | None:
        for exchange in reversed(self.exchanges):
            if exchange.message is not None and object_id in exchange.message.objects:
                return exchange
        return None


def _body_node_id(request: Any) -> int:
    if request.DESCRIPTOR.fields_by_name.get("node") is not None:
        return request.node.node_id
    if request.DESCRIPTOR.fields_by_name.get("node_id") is not None:
        return request.node_id
    return 0


# ---------------------------------------------------------------------------- transports

HTTP_PATHS = {rpc.http_path: name for name, rpc in RPCS.items()}


class HttpFront:
    """The Fleet API over HTTP/1.1: one POST per call, protobuf bodies, errors as JSON (as flwr's)."""

    def __init__(self, link: FleetLink, host: str, port: int) -> None:
        link_ = link

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as flower-superlink (uvicorn)
            timeout = 60  # seconds one read may stall before the connection is dropped
            disable_nagle_algorithm = True  # headers and body go in two writes: do not hold the body back

            def do_POST(self) -> None:  # noqa: N802 (http.server's name)
                rpc = HTTP_PATHS.get(self.path)
                length = self.headers.get("Content-Length")
                if rpc is None:
                    return self._answer(404, b'{"detail": "Not Found"}', "application/json")
                if length is None or not length.isdigit() or int(length) > HTTP_BODY_LIMIT:
                    return self._answer(413, b'{"detail": "body too large or without Content-Length"}',
                                        "application/json")
                body = self.rfile.read(int(length))
                signed = http_signature(self.headers, time.time())
                try:
                    response = link_.serve(rpc, body, signed)
                except NotServed as refused:
                    text = json.dumps({"code": refused.status, "message": str(refused)}).encode()
                    return self._answer(refused.status, text, "application/json")
                self._answer(200, response, "application/protobuf")

            def _answer(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (http.server's name)
                log.debug("http: " + format, *args)

        self.server = http.server.ThreadingHTTPServer((host, port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, name="fleet-http", daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


GRPC_CODES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 409: "FAILED_PRECONDITION"}


class GrpcFront:
    """The Fleet API over gRPC-rere: unary ``/flwr.proto.Fleet/<Rpc>``, raw bytes both ways."""

    def __init__(self, link: FleetLink, address: str) -> None:
        from concurrent import futures

        import grpc

        from fedproto.wire import message_size_options

        def method(rpc: str) -> Callable[[bytes, Any], bytes]:
            def call(request: bytes, context: Any) -> bytes:
                try:
                    return link.serve(rpc, request, grpc_signature(context.invocation_metadata(), time.time()))
                except NotServed as refused:
                    code = getattr(grpc.StatusCode, GRPC_CODES.get(refused.status, "INVALID_ARGUMENT"))
                    context.abort(code, str(refused))
                    raise AssertionError("context.abort raises") from None
            return call

        handlers = {name: grpc.unary_unary_rpc_method_handler(method(name)) for name in RPCS}
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=message_size_options())
        self.server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("flwr.proto.Fleet", handlers)])
        if self.server.add_insecure_port(address) == 0:
            raise OSError(f"cannot listen on {address}")

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop(grace=1.0)


# ---------------------------------------------------------------------------- the node process


class NodeProcess:
    """The node under test, when the runner starts it (``-- NODE COMMAND``)."""

    def __init__(self, command: list[str]) -> None:
        self.command = command
        self.popen: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        log.info("starting the node: %s", " ".join(self.command))
        # The node's output goes to our stderr; the table goes to stdout.
        self.popen = subprocess.Popen(self.command, stdout=sys.stderr, stderr=sys.stderr)

    def exit_code(self) -> int | None:
        return None if self.popen is None else self.popen.poll()

    def terminate(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it is still there after EXIT_GRACE."""
        self.terminate()
        try:
            if self.popen is not None:
                self.popen.wait(EXIT_GRACE)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


# ---------------------------------------------------------------------------- the script


def _model(*shapes: tuple[int, ...], dtype: Any = np.float32) -> list[np.ndarray]:
    return [(np.arange(math.prod(shape)) % 7 - 3).astype(dtype).reshape(shape) for shape in shapes]


def _array_record(arrays: list[np.ndarray], legacy: bool = False) -> objects.ArrayRecord:
    """Keys "0", "1", ... as flwr's ``ArrayRecord(list of arrays)``; the legacy layout leaves dtype and shape empty."""
    record = objects.ArrayRecord()
    for index, array in enumerate(arrays):
        full = objects.Array.from_numpy(array)
        record[str(index)] = objects.Array("", (), full.stype, full.data) if legacy else full
    return record


@dataclass
class Script:
    """The scripted run: queue a message, wait for what the node does, grade it."""

    link: FleetLink
    node: NodeProcess | None
    timeout: float
    reregister_backoff: float
    skipped: dict[str, str]
    rows: dict[str, Row] = field(default_factory=dict)
    leaving: bool = False  # the node is meant to exit now: do not start it again
    gone: str = ""  # set when a node started by hand stopped calling: why the rest is not run

    # ---- bookkeeping

    def record(self, step: str, passed: bool, detail: str) -> None:
        self.rows[step] = Row(step, "PASS" if passed else "FAIL", detail)
        log.info("[%2d/%d] %s  %s: %s", number(step, STEPS), len(STEPS), self.rows[step].result, step, detail)

    def table(self) -> list[Row]:
        return [self.rows.get(step.name, Row(step.name, "FAIL", "not run")) for step in STEPS]

    def wanted(self, step: str) -> bool:
        return step not in self.skipped and step not in self.rows

    def wait_for(self, condition: Callable[[], Any], seconds: float) -> Any:
        """``condition()`` (called under the link's lock) once true, or its last value after ``seconds``."""
        deadline = time.monotonic() + seconds
        with self.link.changed:
            while not (value := condition()):
                left = deadline - time.monotonic()
                if left <= 0:
                    return value
                self.link.changed.wait(min(left, 0.2))
                self._restart_if_dead()
            return value

    def _restart_if_dead(self) -> None:
        """A node the runner started that died is started again, so the next steps still get a verdict."""
        node = self.node
        if node is None or node.exit_code() is None or self.leaving or self.gone:
            return
        if node.starts > MAX_STARTS:
            self.gone = f"the node exited with code {node.exit_code()}, {node.starts} times"
            log.warning("%s; not starting it again", self.gone)
            return
        log.warning("the node exited with code %s; starting it again", node.exit_code())
        node.start()

    @property
    def interval(self) -> float:
        """The heartbeat interval the node announced, within what a SuperLink accepts: the runner's waits
        follow it, and an announced 1e300 or NaN (failed at step register) must not stall them."""
        low, high = HEARTBEAT_INTERVAL_RANGE
        announced = self.link.intervals.get(self.link.node_id, low)
        return min(max(announced, low), high) if math.isfinite(announced) else low

    # ---- the run

    def run(self) -> None:
        for step in STEPS:
            if step.name in self.skipped:
                self.rows[step.name] = Row(step.name, "SKIP", self.skipped[step.name])
        if self.node is not None:
            self.node.start()
        self._register("register")
        if not self.link.node_id:
            for name in STEP_NAMES:
                if self.wanted(name):
                    self.record(name, False, "not run: the node never activated")
            return
        for name, run_step in self._message_steps():
            if self.wanted(name) and self.gone:
                self.record(name, False, f"not run: {self.gone}")
            elif self.wanted(name):
                run_step(name)
        self._cadence()
        for name, run_step in (("reregister", self._reregister), ("sigterm", self._sigterm)):
            if self.wanted(name) and self.gone:
                self.record(name, False, f"not run: {self.gone}")
            elif self.wanted(name):
                run_step(name)
        self._grade_signatures()
        self._grade_exchanges()

    def _register(self, step: str) -> None:
        activated = self.wait_for(lambda: self.link.node_id, self.timeout)
        if not activated:
            registered = self.link.registrations
            self.record(step, False, f"no ActivateNode within {self.timeout:g} s"
                        + ("" if not registered else " (RegisterNode came)") + (f"; {self.gone}" if self.gone else ""))
            return
        interval = self.link.intervals[self.link.node_id]
        low, high = HEARTBEAT_INTERVAL_RANGE
        if not low <= interval <= high:
            self.record(step, False, f"ActivateNode announces a heartbeat interval of {interval:g} s, "
                                     f"outside [{low:g}, {high:g}]")
            return
        self.record(step, True, f"node {self.link.node_id}, heartbeat interval {interval:g} s")

    def _message_steps(self) -> list[tuple[str, Callable[[str], None]]]:
        return [("train", self._train), ("evaluate", self._evaluate), ("big_model", self._big_model),
                ("unservable", self._unservable), ("query", self._query), ("legacy_fit", self._legacy_fit),
                ("legacy_evaluate", self._legacy_evaluate), ("legacy_get_parameters", self._legacy_get_parameters),
                ("legacy_get_properties", self._legacy_get_properties), ("config_kinds", self._config_kinds),
                ("other_dtypes", self._other_dtypes)]

    # ---- one message

    def exchange(self, step: str, message_type: str, content: objects.RecordDict, late_object: bool = False
                 ) -> Exchange | None:
        """Send one message and wait for the node's whole reply; None if there is none (recorded)."""
        deflated = objects.deflate_content(content)
        exchange = Exchange(step, message_type, deflated)
        if late_object:  # the last chunk: the ServerApp may still be uploading it
            chunks = [oid for oid, data in deflated.objects.items() if data.startswith(b"ArrayChunk ")]
            exchange.unavailable_once = {chunks[-1]} if chunks else set()
        with self.link.changed:
            self.link.outbox.append(exchange)
        delivery = self.interval + DELIVERY_SLACK
        if not self.wait_for(lambda: exchange.message is not None, delivery):
            with self.link.changed:
                if exchange in self.link.outbox:
                    self.link.outbox.remove(exchange)
            self.record(step, False, f"the node did not pull the message within {delivery:g} s")
            self._recover(step, delivery)
            return None
        if not self.wait_for(lambda: exchange.done, self.timeout):
            self.record(step, False, f"no whole reply within {self.timeout:g} s ({exchange.progress()})")
            self._recover(step, self.timeout)
            return None
        return exchange

    def _recover(self, step: str, waited: float) -> None:
        """After a message the node did not finish: go on with a node that works, if there is one.

        A node the runner started is stopped and started afresh (a new key, registered again); a
        node started by hand that made no call while the runner waited is given up.
        """
        if self.node is None:
            with self.link.changed:
                last_call = self.link.calls[-1].at if self.link.calls else 0.0
            if time.monotonic() - last_call >= waited:
                self.gone = f"the node stopped calling at step {number(step, STEPS)} ({step})"
            return
        log.warning("starting the node afresh after step %s", step)
        self.leaving = True
        self.node.stop()
        self.leaving = False
        old = self.link.node_id
        self.node.start()
        self.wait_for(lambda: self.link.node_id != old and any(
            call.node_id == self.link.node_id for call in self.link.calls[-50:]), self.timeout)

    def reply_step(self, step: str, message_type: str, content: objects.RecordDict,
                   check: Callable[[objects.RecordDict], str], refusal_allowed: bool,
                   late_object: bool = False) -> None:
        exchange = self.exchange(step, message_type, content, late_object)
        if exchange is None:
            return
        started = exchange.delivered_at
        try:
            reply = inflate_reply(exchange, self.link.store)
        except FedprotoError as error:
            self.record(step, False, f"the reply does not inflate: {error}")
            return
        elapsed = f"({(exchange.pushed_at - started) * 1000:.0f} ms)"
        if reply.error is not None:
            text = f"Message.error code {reply.error.code} ({bound_text(reply.error.reason, 60)!r})"
            self.record(step, refusal_allowed, f"{'refused: ' if refusal_allowed else ''}{text} {elapsed}"
                        + ("" if refusal_allowed else ", expected a reply with content"))
            return
        try:
            summary = check(reply.content or {})
        except (CheckFailed, FedprotoError) as failure:
            self.record(step, False, str(failure))
            return
        self.record(step, True, f"{summary} {elapsed}")

    # ---- the message steps

    def _train_step(self, step: str, arrays: list[np.ndarray], config: dict[str, Any], late: bool,
                    refusal_allowed: bool) -> None:
        content: objects.RecordDict = {"arrays": _array_record(arrays), "config": objects.ConfigRecord(config)}
        self.reply_step(step, "train", content, check_train(arrays), refusal_allowed, late)

    def _train(self, step: str) -> None:
        self._train_step(step, _model((3, 2), (4,)), {"server-round": 1}, late=True, refusal_allowed=False)

    def _big_model(self, step: str) -> None:
        self._train_step(step, _model((BIG_MODEL_ELEMENTS,), (4,)), {"server-round": 1}, late=False,
                         refusal_allowed=False)

    def _config_kinds(self, step: str) -> None:
        self._train_step(step, _model((3, 2)), dict(EVERY_CONFIG_KIND), late=False, refusal_allowed=True)

    def _other_dtypes(self, step: str) -> None:
        arrays = _model((3, 2), dtype=np.float64) + _model((5,), dtype=np.int32) + _model((2, 2), dtype=np.uint8)
        self._train_step(step, arrays, {"server-round": 1}, late=False, refusal_allowed=True)

    def _evaluate(self, step: str) -> None:
        content: objects.RecordDict = {"arrays": _array_record(_model((3, 2), (4,))),
                                       "config": objects.ConfigRecord({"server-round": 1})}
        self.reply_step(step, "evaluate", content, check_evaluate, refusal_allowed=False)

    def _unservable(self, step: str) -> None:
        exchange = self.exchange(step, UNSERVABLE_TYPE, {"config": objects.ConfigRecord({"x": 1})})
        if exchange is None:
            return
        try:
            reply = inflate_reply(exchange, self.link.store)
        except FedprotoError as error:
            self.record(step, False, f"the reply does not inflate: {error}")
            return
        if reply.error is None:
            self.record(step, False, f"a reply with content ({_records(reply.content)}), expected Message.error")
        else:
            self.record(step, True, f"Message.error code {reply.error.code} ({bound_text(reply.error.reason, 60)!r})")

    def _query(self, step: str) -> None:
        content: objects.RecordDict = {"config": objects.ConfigRecord({"server-round": 1, "question": "properties"})}
        self.reply_step(step, "query", content, lambda reply: f"OK, records {_records(reply)}", refusal_allowed=True)

    def _legacy_fit(self, step: str) -> None:
        arrays = _model((3, 2), (4,))
        content: objects.RecordDict = {"fitins.parameters": _array_record(arrays, legacy=True),
                   "fitins.config": objects.ConfigRecord({"server-round": 1})}
        self.reply_step(step, "train", content, check_legacy_fit(arrays), refusal_allowed=True)

    def _legacy_evaluate(self, step: str) -> None:
        content: objects.RecordDict = {"evaluateins.parameters": _array_record(_model((3, 2), (4,)), legacy=True),
                   "evaluateins.config": objects.ConfigRecord({"server-round": 1})}
        self.reply_step(step, "evaluate", content, check_legacy_evaluate, refusal_allowed=True)

    def _legacy_get_parameters(self, step: str) -> None:
        content: objects.RecordDict = {"getparametersins.config": objects.ConfigRecord({})}
        self.reply_step(step, "get_parameters", content, check_legacy_parameters, refusal_allowed=True)

    def _legacy_get_properties(self, step: str) -> None:
        content: objects.RecordDict = {"getpropertiesins.config": objects.ConfigRecord({"server-round": 1})}
        self.reply_step(step, "get_properties", content, check_legacy_properties, refusal_allowed=True)

    # ---- cadence: heartbeats and polls

    def _cadence(self) -> None:
        if not (self.wanted("heartbeat") or self.wanted("poll")):
            return
        node_id, interval = self.link.node_id, self.interval
        activated = self.link.activated_at.get(node_id, time.monotonic())
        # Watch at least one whole interval after activation, so that a node that never heartbeats
        # again after its first one is caught.
        time.sleep(max(0.0, activated + interval + 1.0 - time.monotonic()))
        with self.link.changed:
            calls = [call for call in self.link.calls if call.node_id == node_id]
            now = time.monotonic()
        if self.wanted("heartbeat"):
            beats = [call.at for call in calls if call.rpc == "SendNodeHeartbeat"]
            problem = cadence_problem([activated, *beats, now], interval, HEARTBEAT_FLOOR, "heartbeat")
            gaps = np.diff(beats) if len(beats) > 1 else np.zeros(1)
            self.record("heartbeat", not problem, problem or f"{len(beats)} heartbeats, gaps {gaps.min():.1f} .. "
                                                             f"{gaps.max():.1f} s (interval {interval:g} s)")
        if self.wanted("poll"):
            self._grade_polls(node_id, interval)

    def _grade_polls(self, node_id: int, interval: float) -> None:
        def idle_gaps() -> tuple[list[float], float]:
            """Gaps from each PullMessages answered empty to the next, and the one still running (0: none)."""
            polls = [call for call in self.link.calls if call.node_id == node_id and call.rpc == "PullMessages"]
            gaps = [after.at - before.at for before, after in zip(polls, polls[1:]) if before.empty]
            running = time.monotonic() - polls[-1].at if polls and polls[-1].empty else 0.0
            return gaps, running

        # The message steps keep a node busy: watch it idle for two polls (or one interval) first.
        self.wait_for(lambda: len(idle_gaps()[0]) >= 2, interval + DELIVERY_SLACK)
        with self.link.changed:
            polls = sum(call.node_id == node_id and call.rpc == "PullMessages" for call in self.link.calls)
            gaps, running = idle_gaps()
        if not polls:
            self.record("poll", False, "no PullMessages at all")
            return
        late = [gap for gap in [*gaps, running] if gap > interval]
        fast = [gap for gap in gaps if gap < POLL_FLOOR]
        if late or fast:
            self.record("poll", False, f"{len(late)} gaps over the {interval:g} s interval, {len(fast)} under "
                                       f"{POLL_FLOOR:g} s after an empty PullMessages (max {max(late or fast):.2f} s)")
            return
        if not gaps:
            self.record("poll", False, "no PullMessages answered empty was followed by another")
            return
        self.record("poll", True, f"{polls} PullMessages, gaps after an empty one {min(gaps):.2f} .. {max(gaps):.2f} s")

    # ---- re-registration and leaving

    def _reregister(self, step: str) -> None:
        with self.link.changed:
            key = self.link.key_of_node.get(self.link.node_id)
            self.link.forget_next = True
            registered_before = len(self.link.registrations)
        if not self.wait_for(lambda: self.link.forgotten_at, self.interval + DELIVERY_SLACK):
            self.record(step, False, "the node sent nothing that could be answered 401")
            return
        forgotten_at = self.link.forgotten_at
        starts = self.node.starts if self.node is not None else 0
        window = self.reregister_backoff + REREGISTER_SLACK
        self.leaving = True  # a node that exits after the 401 is not restarted until this step is graded
        try:
            came = self.wait_for(lambda: len(self.link.registrations) > registered_before
                                 or (self.node is not None and self.node.exit_code() is not None), window)
        finally:
            self.leaving = False
        node = self.node
        if node is not None and node.exit_code() is not None and len(self.link.registrations) == registered_before:
            self.record(step, False, f"the node exited with code {node.exit_code()} after the 401 "
                                     "instead of registering again")
            node.start()
            self.wait_for(lambda: self.link.node_id and self.link.key_of_node.get(self.link.node_id) != key,
                          self.timeout)
            return
        if not came:
            self.record(step, False, f"no RegisterNode within {window:g} s of the 401")
            return
        at, new_key = self.link.registrations[registered_before]
        if new_key != key or (self.node is not None and self.node.starts != starts):
            self.record(step, False, "registered again with a different key")
            return
        if not self.wait_for(lambda: self.link.node_of_key.get(key), self.timeout):
            self.record(step, False, "registered again but did not activate")
            return
        self.record(step, True, f"same key registered {at - forgotten_at:.2f} s after the 401, node "
                                f"{self.link.node_of_key[key]}")

    def _sigterm(self, step: str) -> None:
        if self.node is None:
            self.rows[step] = Row(step, "SKIP", "not run: the runner did not start the node (-- NODE COMMAND)")
            return
        # Active, and it knows it: a call under its new node id came after the ActivateNode answer.
        if not self.wait_for(lambda: self.link.node_id in self.link.node_of_key.values() and any(
                call.node_id == self.link.node_id for call in self.link.calls[-50:]), self.timeout):
            self.record(step, False, "not run: the node is not active")
            return
        node_id = self.link.node_id
        with self.link.changed:
            first_call = len(self.link.calls)
        self.leaving = True
        node = self.node
        node.terminate()
        if not self.wait_for(lambda: node.exit_code() is not None, EXIT_GRACE):
            node.kill()
            self.record(step, False, f"still running {EXIT_GRACE:g} s after SIGTERM (killed)")
            return
        with self.link.changed:
            leaving = [call.rpc for call in self.link.calls[first_call:]
                       if call.rpc in ("DeactivateNode", "UnregisterNode") and call.node_id == node_id]
        if leaving[:2] != ["DeactivateNode", "UnregisterNode"]:
            seen = ", ".join(leaving) or "neither DeactivateNode nor UnregisterNode"
            self.record(step, False, f"after SIGTERM: {seen}; expected DeactivateNode, UnregisterNode")
            return
        self.record(step, True, f"DeactivateNode, UnregisterNode, exit code {node.exit_code()}")

    # ---- graded over the whole run

    def _grade_signatures(self) -> None:
        if not self.wanted("signatures"):
            return
        with self.link.changed:
            problems, count = list(self.link.auth_problems), len(self.link.calls)
        if problems:
            self.record("signatures", False, f"{len(problems)} of {count} requests: " + "; ".join(problems[:SHOWN]))
        else:
            keys = {self.link.key_of_node[n] for n in self.link.key_of_node}
            self.record("signatures", True, f"{count} requests, {len(keys)} key(s), {_curve_names(keys)}")

    def _grade_exchanges(self) -> None:
        done = [exchange for exchange in self.link.exchanges if exchange.done]
        problems: dict[str, list[str]] = {name: [] for name in PER_MESSAGE}
        for exchange in done:
            for name, problem in grade_exchange(exchange, self.link.store).items():
                problems[name].append(f"{exchange.step}: {problem}")
        stray = list(self.link.stray)
        problems["push_exactly"] += [text for text in stray if text.startswith("PushObject")]
        problems["reply_metadata"] += [text for text in stray if not text.startswith("PushObject")]
        for name in PER_MESSAGE:
            if not self.wanted(name):
                continue
            found = problems[name]
            if not done:
                self.record(name, False, "not run: no message was answered")
            elif found:
                self.record(name, False, f"{len(found)} problem(s): " + "; ".join(found[:SHOWN]))
            else:
                self.record(name, True, f"{len(done)} replies, steps {done[0].step} .. {done[-1].step}")


# ---------------------------------------------------------------------------- checks


def inflate_reply(exchange: Exchange, store: dict[str, bytes]) -> objects.InflatedMessage:
    """The reply's message, from the objects pushed and the ones the runner already had."""
    request = exchange.reply
    tree = request.message_object_trees[0] if request.message_object_trees else ObjectTree()
    available = {**store, **dict(exchange.pushed)}
    return objects.inflate_message(tree, available)


def grade_exchange(exchange: Exchange, store: dict[str, bytes]) -> dict[str, str]:
    """Per-message checks of one answered message: {step name: the first problem}."""
    assert exchange.message is not None
    problems: dict[str, str] = {}
    instruction = exchange.message
    tree_ids = objects.tree_object_ids(instruction.object_tree)
    got = [oid for oid, available in exchange.pulled if available]
    missing = [oid for oid in tree_ids if oid not in got]
    late = [oid for oid, available in exchange.pulled if not available]
    if missing:
        problems["pull_objects"] = f"{len(missing)} of {len(tree_ids)} objects never pulled"
    elif any(oid not in got for oid in late):
        problems["pull_objects"] = "an object answered object_available=false was not pulled again"
    if not exchange.confirmed_at:
        problems["confirm_before_reply"] = "no ConfirmMessageReceived"
    elif exchange.confirmed_id != instruction.message_id:
        problems["confirm_before_reply"] = "ConfirmMessageReceived names another message"
    elif exchange.confirmed_at > exchange.pushed_at:
        problems["confirm_before_reply"] = "ConfirmMessageReceived after PushMessages"
    request = exchange.reply
    pushed_ids = [oid for oid, _ in exchange.pushed]
    if sorted(pushed_ids) != sorted(exchange.requested):
        extra = len(pushed_ids) - len(set(pushed_ids))
        absent = set(exchange.requested) - set(pushed_ids)
        problems["push_exactly"] = (f"asked for {len(exchange.requested)} objects, pushed {len(pushed_ids)} "
                                    f"({extra} twice, {len(absent)} never)")
    metadata_problem = _metadata_problem(exchange)
    if metadata_problem:
        problems["reply_metadata"] = metadata_problem
    try:
        for oid, content in exchange.pushed:
            objects.check_object(oid, content)
        if len(request.message_object_trees) != 1:
            raise CheckFailed(f"{len(request.message_object_trees)} object trees for one message")
        root = request.message_object_trees[0].object_id
        if root != request.messages_list[0].metadata.message_id:
            raise CheckFailed("the object tree's root is not the message id")
        reply = inflate_reply(exchange, store)
    except (CheckFailed, FedprotoError) as error:
        problems["reply_objects"] = str(error)
        problems["deflate_layout"] = "not checked: the reply objects are invalid"
        return problems
    hashed = reply.metadata
    pushed = request.messages_list[0].metadata
    for name in ("run_id", "src_node_id", "dst_node_id", "reply_to_message_id", "group_id", "message_type",
                 "created_at", "ttl"):
        if getattr(hashed, name) != getattr(pushed, name):
            problems.setdefault("reply_metadata", f"PushMessages says {name} = {getattr(pushed, name)!r}, the "
                                                  f"hashed Message object {getattr(hashed, name)!r}")
    if reply.error is not None:
        again = objects.deflate_message(hashed, error=reply.error)
    else:
        again = objects.deflate_message(hashed, reply.content or {})
    if again.message_id != reply.message_id:
        problems["deflate_layout"] = "flwr's deflate() of the same content gives other bytes"
    return problems


def _metadata_problem(exchange: Exchange) -> str:
    request, instruction = exchange.reply, exchange.message
    assert instruction is not None
    if len(request.messages_list) != 1:
        return f"{len(request.messages_list)} messages in PushMessages"
    sent = instruction.message.metadata
    reply = request.messages_list[0].metadata
    expected = {"run_id": sent.run_id, "src_node_id": sent.dst_node_id, "dst_node_id": sent.src_node_id,
                "reply_to_message_id": sent.message_id, "group_id": sent.group_id,
                "message_type": sent.message_type}
    for name, value in expected.items():
        if getattr(reply, name) != value:
            return f"{name} = {bound_text(repr(getattr(reply, name)), 70)}, expected {value!r}"
    if not sent.created_at - CLOCK_SKEW <= reply.created_at <= exchange.push_wall_time + CLOCK_SKEW:
        return (f"created_at {reply.created_at:.3f} is not between the message's and the push's time "
                f"(+-{CLOCK_SKEW:g} s)")
    if reply.ttl <= 0:
        return f"ttl {reply.ttl:g} is not positive"
    if reply.created_at + reply.ttl > sent.created_at + sent.ttl + TTL_SLACK:
        return (f"created_at + ttl ends {reply.created_at + reply.ttl - sent.created_at - sent.ttl:.3f} s after the "
                "instruction's: the SuperLink drops such a reply")
    return ""


def cadence_problem(times: list[float], ceiling: float, floor: float, what: str) -> str:
    """'' if every gap of ``times`` (activation, calls..., now) is within [floor, ceiling]."""
    gaps = np.diff(times)
    for index, gap in enumerate(gaps):
        if gap > ceiling:
            if index == len(gaps) - 1:
                return f"no {what} for {gap:.1f} s at the end, over the {ceiling:g} s interval"
            where = "after activation" if index == 0 else f"between {what} {index} and {index + 1}"
            return f"{gap:.1f} s {where}, over the {ceiling:g} s interval"
        if 0 < index < len(gaps) - 1 and gap < floor:
            return f"{gap:.2f} s between {what} {index} and {index + 1}, under {floor:g} s"
    return ""


def check_train(sent: list[np.ndarray]) -> Callable[[objects.RecordDict], str]:
    def check(content: objects.RecordDict) -> str:
        array_records = [(name, r) for name, r in content.items() if isinstance(r, objects.ArrayRecord)]
        metric_records = [r for r in content.values() if isinstance(r, objects.MetricRecord)]
        if len(array_records) != 1:
            raise CheckFailed(f"{len(array_records)} ArrayRecords, expected 1 ({_records(content)})")
        name, record = array_records[0]
        expected_keys = [str(index) for index in range(len(sent))]
        if list(record) != expected_keys:
            raise CheckFailed(f"ArrayRecord {bound_text(name, 40)!r} keys {[bound_text(k, 20) for k in record]}, "
                              f"sent {expected_keys}")
        arrays = [record[key].to_numpy(key) for key in expected_keys]
        for key, got, want in zip(expected_keys, arrays, sent):
            if got.shape != want.shape or got.dtype != want.dtype:
                raise CheckFailed(f"{key}: {got.dtype}{got.shape} returned, {want.dtype}{want.shape} sent")
        examples = _num_examples(metric_records, "num-examples")
        return f"OK, {_describe(arrays)}, num-examples={examples}"
    return check


def check_evaluate(content: objects.RecordDict) -> str:
    metric_records = [r for r in content.values() if isinstance(r, objects.MetricRecord)]
    examples = _num_examples(metric_records, "num-examples")
    keys = sorted(key for record in metric_records for key in record)
    return f"OK, num-examples={examples}, metrics {[bound_text(k, 20) for k in keys][:6]}"


def check_legacy_fit(sent: list[np.ndarray]) -> Callable[[objects.RecordDict], str]:
    def check(content: objects.RecordDict) -> str:
        arrays = _legacy_arrays(content, "fitres.parameters")
        if [(a.shape, a.dtype) for a in arrays] != [(a.shape, a.dtype) for a in sent]:
            raise CheckFailed(f"fitres.parameters {_describe(arrays)}, sent {_describe(sent)}")
        examples = _num_examples([content.get("fitres.num_examples")], "num_examples")
        _typed(content, "fitres.status", objects.ConfigRecord)
        return f"OK, {_describe(arrays)}, num_examples={examples}"
    return check


def check_legacy_evaluate(content: objects.RecordDict) -> str:
    loss_record = _typed(content, "evaluateres.loss", objects.MetricRecord)
    loss = loss_record.get("loss")
    if not isinstance(loss, (int, float)) or not math.isfinite(loss):
        raise CheckFailed(f"evaluateres.loss['loss'] = {bound_text(repr(loss), 40)}, expected a finite number")
    examples = _num_examples([content.get("evaluateres.num_examples")], "num_examples")
    _typed(content, "evaluateres.status", objects.ConfigRecord)
    return f"OK, loss={loss:.4g}, num_examples={examples}"


def check_legacy_parameters(content: objects.RecordDict) -> str:
    arrays = _legacy_arrays(content, "getparametersres.parameters")
    _typed(content, "getparametersres.status", objects.ConfigRecord)
    return f"OK, {_describe(arrays)}"


def check_legacy_properties(content: objects.RecordDict) -> str:
    properties = _typed(content, "getpropertiesres.properties", objects.ConfigRecord)
    _typed(content, "getpropertiesres.status", objects.ConfigRecord)
    return f"OK, {len(properties)} properties"


def _typed(content: objects.RecordDict, name: str, kind: type) -> Any:
    record = content.get(name)
    if not isinstance(record, kind):
        found = type(record).__name__ if record is not None else "missing"
        raise CheckFailed(f"{name} is {found}, expected a {kind.__name__} ({_records(content)})")
    return record


def _legacy_arrays(content: objects.RecordDict, name: str) -> list[np.ndarray]:
    record = _typed(content, name, objects.ArrayRecord)
    keys = [key for key in record if key != "_empty"]
    if not all(key.isdigit() for key in keys):
        raise CheckFailed(f"{name} keys are not 0, 1, ...")
    return [record[key].to_numpy(f"{name}[{key}]") for key in sorted(keys, key=int)]


def _num_examples(records: list[Any], key: str) -> int:
    values = [r[key] for r in records if isinstance(r, objects.MetricRecord) and key in r]
    if len(values) != 1:
        raise CheckFailed(f"{len(values)} MetricRecords hold {key!r}, expected 1")
    if not isinstance(values[0], int) or values[0] < 1:
        raise CheckFailed(f"{key} = {bound_text(repr(values[0]), 40)}, expected an int >= 1")
    return values[0]


def _records(content: objects.RecordDict | None) -> str:
    shown = [f"{bound_text(name, 40)}: {type(record).__name__}" for name, record in list((content or {}).items())[:6]]
    return "{" + ", ".join(shown) + "}"


def _describe(arrays: list[np.ndarray]) -> str:
    return f"{len(arrays)} arrays " + ", ".join(f"{a.dtype}{tuple(a.shape)}" for a in arrays)


def _curve_names(keys: set[bytes]) -> str:
    from cryptography.hazmat.primitives import serialization

    names = set()
    for key in keys:
        names.add(serialization.load_pem_public_key(key).curve.name)  # type: ignore[union-attr]
    return ", ".join(sorted(names))


# ---------------------------------------------------------------------------- the FAB


def build_fab(app_dir: Path) -> tuple[bytes, str, str]:
    """(FAB bytes, fab_id, version) of a flwr app directory, laid out as ``flwr build`` does.

    A zip of the app's files plus ``.info/CONTENT``, one ``path,sha256,bits`` line per file, which
    the SuperNode's ClientApp checks before installing it (``flwr/cli/install.py``).
    """
    config = tomllib.loads((app_dir / "pyproject.toml").read_text())
    fab_id = f"{config['tool']['flwr']['app']['publisher']}/{config['project']['name']}"
    files = sorted(path for path in app_dir.rglob("*") if path.is_file() and path.suffix in (".py", ".toml", ".md")
                   and "__pycache__" not in path.parts and not any(p.startswith(".") for p in path.parts))
    buffer = io.BytesIO()
    manifest = []
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as fab:
        for path in files:
            data = path.read_bytes()
            name = path.relative_to(app_dir).as_posix()
            fab.writestr(zipfile.ZipInfo(name, (1980, 1, 1, 0, 0, 0)), data)
            manifest.append(f"{name},{hashlib.sha256(data).hexdigest()},{len(data) * 8}")
        fab.writestr(zipfile.ZipInfo(".info/CONTENT", (1980, 1, 1, 0, 0, 0)), "\n".join(manifest))
    return buffer.getvalue(), fab_id, str(config["project"]["version"])


# ---------------------------------------------------------------------------- running


def run(address: str, transport: str, node_command: list[str], timeout: float, reregister_backoff: float,
        skipped: dict[str, str], fab_dir: Path | None = None) -> list[Row]:
    """Serve one scripted run on ``address``; returns the table rows."""
    fab, fab_id, fab_version = build_fab(fab_dir) if fab_dir else (None, "", "")
    link = FleetLink(fab, fab_id, fab_version)
    host, _, port = address.rpartition(":")
    front: HttpFront | GrpcFront
    if transport == "http":
        front = HttpFront(link, host.strip("[]"), int(port))
    else:
        front = GrpcFront(link, address)
    front.start()
    node = NodeProcess(node_command) if node_command else None
    script = Script(link, node, timeout, reregister_backoff, skipped)
    log.info("waiting for a node on %s (%s, timeout %g s)", address, transport, timeout)
    try:
        script.run()
    finally:
        if node is not None:
            node.stop()
        front.stop()
    return script.table()


EPILOG = "steps (for --skip / --only, by number or name; 1-15 required, 16-23 optional):\n" + "\n".join(
    f"  {i:2d} {step.name:<22} {step.title}" for i, step in enumerate(STEPS, 1)) + """

examples:
  # the runner starts the node (and can grade SIGTERM): everything after -- is the node's command
  fedproto-conformance --fleet --address 127.0.0.1:9093 -- \\
      fedproto-client --superlink 127.0.0.1:9093 --app superlink_app.handlers:make_client \\
      --heartbeat-interval 10 --poll-interval 0.2

  # a node started by hand (sigterm reads SKIP), over gRPC-rere
  fedproto-conformance --fleet --address 0.0.0.0:9092 --fleet-transport grpc-rere --json verdicts.json

  # flwr's own SuperNode runs a ClientApp from the FAB the runner serves
  fedproto-conformance --fleet --address 127.0.0.1:9093 --fab-dir examples/superlink_app -- \\
      flower-supernode --insecure --superlink 127.0.0.1:9093

exit codes: 0 no check failed (skipped ones aside), 1 some check failed (named in the table),
            2 usage error (also: the [fleet] extra, cryptography, is missing)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-conformance --fleet",
        usage="fedproto-conformance --fleet --address HOST:PORT [options] [-- NODE COMMAND...]",
        description="Play a SuperLink for one Fleet API node, drive it through a scripted run, "
                    "print a table with a verdict for every step.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fleet", action="store_true", required=True, help="grade a Fleet API node")
    parser.add_argument("--address", required=True, metavar="HOST:PORT", help="where to listen")
    parser.add_argument("--fleet-transport", choices=("http", "grpc-rere"), default="http",
                        help="the Fleet API over HTTP/1.1 (default) or gRPC-rere")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="longest wait for the node to activate and for each reply (default: %(default)s)")
    parser.add_argument("--reregister-backoff", type=float, default=1.0, metavar="S",
                        help="the pause the node documents before registering again after a 401; it must register "
                             f"within this + {REREGISTER_SLACK:g} s (default: %(default)s, fedproto's)")
    parser.add_argument("--fab-dir", type=Path, metavar="APP_DIR",
                        help="serve GetRun/GetFab with a FAB of this flwr app (for flower-supernode)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--skip", type=step_type(STEP_NAMES), action="append", default=[], metavar="STEP",
                        help="leave this step out (and the steps that need it); repeatable")
    choice.add_argument("--only", type=step_type(STEP_NAMES), action="append", default=[], metavar="STEP",
                        help="run only this step, with register and the steps it needs; repeatable")
    parser.add_argument("--json", metavar="FILE", help="also write the verdicts to FILE as JSON (for CI)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    split = argv.index("--") if "--" in argv else len(argv)
    own, node_command = argv[:split], argv[split + 1:]
    parser = build_parser()
    args = parser.parse_args(own)
    if "register" in args.skip:
        parser.error("step 1 (register) cannot be skipped: every other step needs a node")
    try:
        import cryptography  # noqa: F401 (verifying signatures needs it)
    except ImportError:
        print("fedproto-conformance: --fleet needs the 'cryptography' package: pip install 'fedproto[fleet]'",
              file=sys.stderr)
        return EXIT_USAGE
    skipped = select(STEPS, [], "register", args.skip, args.only)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rows = run(args.address, args.fleet_transport, node_command, args.timeout, args.reregister_backoff,
                   skipped, args.fab_dir)
    except OSError as error:
        print(f"fedproto-conformance: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    print(format_table(rows, STEPS), flush=True)
    if args.json:
        write_json(args.json, rows, STEPS)
    return EXIT_ALL_PASSED if all(row.passed for row in rows) else EXIT_FAILED


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
