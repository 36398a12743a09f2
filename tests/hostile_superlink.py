"""A scriptable fake SuperLink (Fleet API over HTTP/1.1) for hostile-peer tests of our node.

It answers every Fleet RPC the way a well-behaved SuperLink does (see ``HostileSuperLink.normal``):
RegisterNode, ActivateNode (node id 7), heartbeats (success), PullMessages (the message given
to ``hand_out``, once, else nothing), PullObject (that message's objects), Confirm, PushMessages
(asks for every object of the reply), PushObject, DeactivateNode, UnregisterNode. A test breaks
one thing at a time by scripting a behaviour for the next attempts of one RPC:

    fake = HostileSuperLink()
    fake.script("PullMessages", dribble(announced=100 * 2**20, every=2.0))  # the next attempt only
    fake.script("SendNodeHeartbeat", stall, times=3)  # the next three
    ...  # start a node on fake.address, watch fake.received
    fake.stop()

A behaviour is any callable ``behaviour(exchange) -> None`` that answers (or does not answer) on
the ``Exchange``: ``exchange.answer(body, status)`` for a normal answer, ``exchange.normal()``
for what the fake would have answered, ``exchange.write(raw bytes)`` to put anything on the
socket (status lines, headers, chunks), ``exchange.close()`` to hang up, ``exchange.stall()`` to
wait until the fake stops. Scripts are consumed per RPC in order; once they are used up, the
RPC is answered normally again. Ready-made behaviours: ``dribble``, ``trickle``, ``cut_off``,
``chunked``, ``stall``, ``refuse``, ``raw`` (see each).

Every request is recorded in ``received`` (rpc name, request body) before it is answered;
``wait_for(rpc, count, timeout)`` waits until that many arrived. The server binds a free loopback
port (``address``), serves from daemon threads, and ``stop()`` ends it and any stalled behaviour.

``HostileGrpcSuperLink`` is the same for the gRPC-rere Fleet API (unary methods, raw bytes, no
serializers): ``script(rpc, behaviour)`` with ``behaviour(request, context) -> response bytes``;
``grpc_stall`` never answers, ``grpc_abort(code, details)`` fails the call.

``EchoHandler`` is a handler for the node (``--app hostile_superlink:EchoHandler``, with tests/ on
PYTHONPATH) and ``train_message()`` a valid instruction for it, so a test can take the node
through a whole message.
"""

from __future__ import annotations

import http.server
import socketserver
import threading
import time
from collections.abc import Callable
from concurrent import futures
from typing import Any

import grpc
import numpy as np

from fedproto.fleet_pb2 import (
    ActivateNodeResponse,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    RegisterNodeFleetResponse,
)
from fedproto.heartbeat_pb2 import SendNodeHeartbeatResponse
from fedproto.message_pb2 import Metadata, ObjectTree, PullObjectRequest, PullObjectResponse, PushObjectResponse
from fedproto.node import RPCS
from fedproto.objects import Array, ArrayRecord, ConfigRecord, DeflatedMessage, deflate_message

NODE_ID = 7
STALL_CAP = 30.0  # the longest a behaviour stalls, should a test forget to stop the fake
RPC_BY_PATH = {rpc.http_path: name for name, rpc in RPCS.items()}

Behaviour = Callable[["Exchange"], None]


class Exchange:
    """One request as a behaviour sees it, and the ways to answer it."""

    def __init__(self, fake: HostileSuperLink, handler: http.server.BaseHTTPRequestHandler, rpc: str,
                 body: bytes, attempt: int) -> None:
        self.fake, self.rpc, self.body, self.attempt = fake, rpc, body, attempt
        self._handler = handler

    def answer(self, body: bytes, status: int = 200, content_type: str = "application/protobuf") -> None:
        self.write(f"HTTP/1.1 {status} X\r\nContent-Type: {content_type}\r\n"
                   f"Content-Length: {len(body)}\r\n\r\n".encode("ascii") + body)

    def normal(self) -> None:
        self.answer(self.fake.normal(self.rpc, self.body))

    def write(self, data: bytes) -> None:
        self._handler.wfile.write(data)
        self._handler.wfile.flush()

    def close(self) -> None:
        self._handler.close_connection = True

    def stall(self, seconds: float = STALL_CAP) -> bool:
        """Wait ``seconds`` or until the fake stops; True if it stopped."""
        return self.fake.stopping.wait(seconds)


def dribble(announced: int, every: float) -> Behaviour:
    """A 200 announcing ``announced`` body bytes, then one byte every ``every`` s until the client leaves."""
    def behaviour(exchange: Exchange) -> None:
        exchange.write(f"HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n\r\n".encode("ascii"))
        for _ in range(announced):
            if exchange.stall(every):
                return
            try:
                exchange.write(b"\x00")
            except OSError:  # the client gave up
                return
        exchange.close()
    return behaviour


def trickle(body: bytes, rate: float, piece: int = 4096) -> Behaviour:
    """A whole 200 with ``body``, sent at about ``rate`` bytes/s (a slow but honest link)."""
    def behaviour(exchange: Exchange) -> None:
        exchange.write(f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\n\r\n".encode("ascii"))
        for start in range(0, len(body), piece):
            if exchange.stall(piece / rate):
                return
            exchange.write(body[start:start + piece])
    return behaviour


def cut_off(body: bytes, announced: int) -> Behaviour:
    """A 200 announcing ``announced`` bytes, sending ``body`` (fewer), then hanging up."""
    def behaviour(exchange: Exchange) -> None:
        exchange.write(f"HTTP/1.1 200 OK\r\nContent-Length: {announced}\r\n\r\n".encode("ascii") + body)
        exchange.close()
    return behaviour


def chunked(body: bytes, chunk: int = 65536) -> Behaviour:
    """A 200 with ``body`` in Transfer-Encoding: chunked (no Content-Length)."""
    def behaviour(exchange: Exchange) -> None:
        exchange.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for start in range(0, len(body), chunk):
            piece = body[start:start + chunk]
            try:
                exchange.write(f"{len(piece):x}\r\n".encode("ascii") + piece + b"\r\n")
            except OSError:  # the client refused it midway
                return
        exchange.write(b"0\r\n\r\n")
    return behaviour


def stall(exchange: Exchange) -> None:
    """Read the request, never answer (until the fake stops)."""
    exchange.stall()
    exchange.close()


def refuse(status: int, text: bytes) -> Behaviour:
    """An HTTP error ``status`` whose body is ``text`` (e.g. megabytes with CR/LF/ESC in them)."""
    def behaviour(exchange: Exchange) -> None:
        exchange.answer(text, status, "application/json")
    return behaviour


def raw(data: bytes) -> Behaviour:
    """Exactly ``data`` on the socket (a bad status line, broken headers...), then hang up."""
    def behaviour(exchange: Exchange) -> None:
        exchange.write(data)
        exchange.close()
    return behaviour


class WellBehaved:
    """The answers of a well-behaved SuperLink, shared by the HTTP and gRPC fakes."""

    def __init__(self) -> None:
        self._message: DeflatedMessage | None = None
        self._objects: dict[str, bytes] = {}

    def hand_out(self, message: DeflatedMessage) -> None:
        self._message = message

    def answer(self, rpc: str, body: bytes) -> bytes:
        """What a well-behaved SuperLink answers to ``rpc`` (serialized)."""
        if rpc == "RegisterNode":
            return RegisterNodeFleetResponse(node_id=NODE_ID).SerializeToString()
        if rpc == "ActivateNode":
            return ActivateNodeResponse(node_id=NODE_ID).SerializeToString()
        if rpc == "SendNodeHeartbeat":
            return SendNodeHeartbeatResponse(success=True).SerializeToString()
        if rpc == "PullMessages":
            message, self._message = self._message, None
            if message is None:
                return PullMessagesResponse().SerializeToString()
            self._objects = message.objects
            return PullMessagesResponse(messages_list=[message.message],
                                        message_object_trees=[message.object_tree]).SerializeToString()
        if rpc == "PullObject":
            object_id = PullObjectRequest.FromString(body).object_id
            content = self._objects.get(object_id)
            return PullObjectResponse(object_found=content is not None, object_available=content is not None,
                                      object_content=content or b"").SerializeToString()
        if rpc == "PushMessages":
            return push_messages_response(PushMessagesRequest.FromString(body)).SerializeToString()
        if rpc == "PushObject":
            return PushObjectResponse(stored=True).SerializeToString()
        return b""  # ConfirmMessageReceived, DeactivateNode, UnregisterNode: empty responses


class HostileSuperLink:
    def __init__(self) -> None:
        self.received: list[tuple[str, bytes]] = []
        self.stopping = threading.Event()
        self._scripts: dict[str, list[Behaviour]] = {}
        self._attempts: dict[str, int] = {}
        self.well_behaved = WellBehaved()
        self._lock = threading.Condition()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                fake._serve(self, body)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self._server = Server(("127.0.0.1", 0), Handler)
        self.address = f"127.0.0.1:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()

    # --- scripting ---------------------------------------------------------------------------

    def script(self, rpc: str, behaviour: Behaviour, times: int = 1) -> None:
        """The next ``times`` attempts of ``rpc`` get ``behaviour`` (after those already scripted)."""
        assert rpc in RPCS, rpc
        with self._lock:
            self._scripts.setdefault(rpc, []).extend([behaviour] * times)

    def hand_out(self, message: DeflatedMessage) -> None:
        """The next PullMessages brings ``message``; PullObject serves its objects."""
        self.well_behaved.hand_out(message)

    # --- what was received --------------------------------------------------------------------

    def count(self, rpc: str) -> int:
        with self._lock:  # reentrant: wait_for calls this holding it
            return sum(1 for name, _ in self.received if name == rpc)

    def requests(self, rpc: str) -> list[bytes]:
        with self._lock:
            return [body for name, body in self.received if name == rpc]

    def wait_for(self, rpc: str, count: int = 1, timeout: float = 10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.count(rpc) >= count, timeout)

    def stop(self) -> None:
        self.stopping.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)

    # --- serving --------------------------------------------------------------------------------

    def _serve(self, handler: http.server.BaseHTTPRequestHandler, body: bytes) -> None:
        rpc = RPC_BY_PATH.get(handler.path)
        if rpc is None:
            handler.send_error(404)
            return
        with self._lock:
            self.received.append((rpc, body))
            self._attempts[rpc] = self._attempts.get(rpc, 0) + 1
            scripted = self._scripts.get(rpc) or []
            behaviour = scripted.pop(0) if scripted else Exchange.normal
            self._lock.notify_all()
        try:
            behaviour(Exchange(self, handler, rpc, body, self._attempts[rpc]))
        except OSError:  # the client hung up on a behaviour
            handler.close_connection = True

    def normal(self, rpc: str, body: bytes) -> bytes:
        return self.well_behaved.answer(rpc, body)


def push_messages_response(request: PushMessagesRequest) -> PushMessagesResponse:
    """Asks for every object of the pushed reply's tree (what a SuperLink that has none of them does)."""
    wanted: list[str] = []

    def walk(tree: ObjectTree) -> None:
        for child in tree.children:
            walk(child)
        wanted.append(tree.object_id)

    for tree in request.message_object_trees:
        walk(tree)
    return PushMessagesResponse(objects_to_push=wanted, session_id="push-session")


class EchoHandler:
    """fit returns the arrays it was given (a reply with several objects to push)."""

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict]:
        return parameters, 1, {}


def train_message() -> DeflatedMessage:
    """A message-API "train" instruction for node NODE_ID with two arrays."""
    metadata = Metadata(run_id=5, src_node_id=1, dst_node_id=NODE_ID, group_id="1", message_type="train",
                        created_at=time.time(), ttl=600.0)
    arrays = ArrayRecord({"a": Array.from_numpy(np.arange(6.0)), "b": Array.from_numpy(np.ones(3, np.float32))})
    return deflate_message(metadata, {"arrays": arrays, "config": ConfigRecord({"server-round": 1})})


GrpcBehaviour = Callable[[bytes, grpc.ServicerContext], bytes]


def grpc_abort(code: grpc.StatusCode, details: str) -> GrpcBehaviour:
    def behaviour(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(code, details)
        return b""  # not reached: abort raises
    return behaviour


class HostileGrpcSuperLink:
    """The gRPC-rere Fleet API, answering like ``HostileSuperLink.normal`` unless scripted."""

    def __init__(self) -> None:
        self.well_behaved = WellBehaved()
        self.received: list[str] = []
        self.stopping = threading.Event()
        self._scripts: dict[str, list[GrpcBehaviour]] = {}
        self._lock = threading.Condition()
        handlers = {name: grpc.unary_unary_rpc_method_handler(self._handler(name)) for name in RPCS}
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
        self._server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("flwr.proto.Fleet", handlers),))
        self.address = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def script(self, rpc: str, behaviour: GrpcBehaviour, times: int = 1) -> None:
        with self._lock:
            self._scripts.setdefault(rpc, []).extend([behaviour] * times)

    def count(self, rpc: str) -> int:
        with self._lock:
            return self.received.count(rpc)

    def wait_for(self, rpc: str, count: int = 1, timeout: float = 10.0) -> bool:
        with self._lock:
            return self._lock.wait_for(lambda: self.count(rpc) >= count, timeout)

    def grpc_stall(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        """Never answer: wait until the client gives up (cancel, deadline) or the fake stops."""
        while context.is_active() and not self.stopping.wait(0.05):
            pass
        return b""

    def stop(self) -> None:
        self.stopping.set()
        self._server.stop(grace=None).wait(5)

    def _handler(self, rpc: str) -> GrpcBehaviour:
        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            with self._lock:
                self.received.append(rpc)
                scripted = self._scripts.get(rpc) or []
                behaviour = scripted.pop(0) if scripted else None
                self._lock.notify_all()
            if behaviour is None:
                return self.well_behaved.answer(rpc, request)
            return behaviour(request, context)
        return handle
