"""The edge client as a Fleet API node: a short loop that carries fedproto.node over HTTP or gRPC.

Read top to bottom, this is the whole Fleet protocol as a node sees it (``fedproto/node.py``
holds the rules; ``docs/fleet-node.md`` the details):

1. Make (or load) an ECDSA SECP384R1 key. Every request is signed with it, even on an insecure
   SuperLink: three headers carry the public key, the current UTC time and a signature of that
   time (:class:`NodeKey`).
2. Ask the session what to do (``session.next_step(now)``) and do it:
   - ``Send``: POST the request bytes to the SuperLink, give the response bytes back. A
     refusal (HTTP 4xx, gRPC UNAUTHENTICATED...) goes back as a ``Refusal``; a SuperLink that
     cannot be reached, or whose answer is not whole in time, is retried here with bounded
     exponential backoff, like the Join client does. Every call has one deadline
     (:class:`CallLimits`), across all its reads and writes.
   - ``RunHandler``: start the user's handler on a worker thread and keep looping: the session
     hands out heartbeats while a long ``fit`` runs.
   - ``Wait``: sleep until then, or until the handler ends or a signal arrives.
   - ``Finished``: exit.
3. SIGINT / SIGTERM: tell the session to stop; it deactivates and unregisters, then finishes.
   A call stalled when the signal comes is given up within READ_SLICE (``session.abandon()``),
   so leaving does not wait for it; a second signal gives up on leaving too.

Which transport, which port: flwr 1.40 and later serve the Fleet API over HTTP on the
SuperLink's ``--port`` (default 8000); 1.20-1.39 only over gRPC-rere on ``--fleet-api-address``
(default 9092), and 1.20-1.22 join with CreateNode (``--superlink-release 1.22``). The node does not
guess: when the answer shows it knocked at the wrong door (404 on ``/v1/fleet/*``, an HTTP server
answering gRPC or the reverse, a join RPC the SuperLink does not have), it logs one line naming the
likely releases and the flag and port to use (:func:`transport_hint`), and exits.

Everything the SuperLink says that reaches a log line or an error (a refusal's body, a bad
status line, gRPC details) goes through ``fedproto.text.bound_text``: one line, bounded.

Why ``http.client``: the Fleet API over HTTP is one POST per request and response, HTTP/1.1,
with protobuf bodies. The standard library does that (keep-alive, TLS through ``ssl``) without a
new dependency, and every platform we port to has an equivalent. flwr's own SuperNode uses
httpx for the same calls, also over HTTP/1.1.

Signing needs the ``cryptography`` package, which is an extra (``pip install fedproto[fleet]``):
the Join client does not need it, so it is imported only here, when a Fleet node starts.
"""

from __future__ import annotations

import base64
import datetime
import http.client
import io
import logging
import signal
import socket
import ssl
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fedproto.client.app import (
    EXIT_DONE,
    EXIT_PROTOCOL_ERROR,
    EXIT_TLS_ERROR,
    EXIT_UNREACHABLE,
    Retry,
    is_tls_failure,
)
from fedproto.node import (
    RPCS,
    Finished,
    Generation,
    NodeProtocolError,
    NodeSession,
    Refusal,
    RunHandler,
    Send,
    Wait,
    refusal_for_grpc_code,
    refusal_for_http_status,
)
from fedproto.objects import CHUNK_SIZE
from fedproto.text import bound_text
from fedproto.wire import MAX_MESSAGE_LENGTH

log = logging.getLogger("fedproto.client")

EXIT_REFUSED = 5  # the SuperLink refused to register or activate this node
EXIT_USAGE = 2  # like argparse: the [fleet] extra is not installed, --node-key unusable

TRANSPORTS = ("http", "grpc-rere")
CALL_TIMEOUT = 60.0  # seconds any call may take before its bytes are counted (see CallLimits)
MIN_TRANSFER_RATE = 8192.0  # bytes/s (64 kbit/s): a link at least this fast is never cut
CONNECT_TIMEOUT = 10.0  # seconds for the TCP connection and the TLS handshake, within the call's deadline
READ_SLICE = 0.5  # seconds a blocked read or write waits before it looks at the stop flag again
READ_PIECE = 65536  # bytes of a response body read at a time
# flower-superlink (uvicorn) closes a keep-alive connection after 5 s without a request. Reusing
# one that may be closed fails the next request, so a connection idle this long is not reused.
KEEPALIVE_IDLE = 4.0
PROTOBUF = "application/protobuf"


class CryptographyMissing(Exception):
    """The ``cryptography`` package (extra ``fleet``) is not installed."""


class NodeKey:
    """The node's ECDSA key: generated per run, or loaded from a PEM file (``--node-key``).

    flwr's SuperLink checks, for every Fleet request (``superlink/routers/fleet/node_auth.py``):
    the public key (PEM SubjectPublicKeyInfo), a UTC ISO-8601 timestamp between 5 s in the
    future and 305 s in the past, and an ECDSA-SHA256 signature of the timestamp's ASCII bytes.
    """

    def __init__(self, private_key_pem: bytes | None = None) -> None:
        try:
            from cryptography.hazmat.primitives import hashes, serialization
            from cryptography.hazmat.primitives.asymmetric import ec
        except ImportError:
            raise CryptographyMissing() from None
        if private_key_pem is None:
            key = ec.generate_private_key(ec.SECP384R1())  # the curve flwr's SuperNode uses
        else:
            loaded = serialization.load_pem_private_key(private_key_pem, password=None)
            if not isinstance(loaded, ec.EllipticCurvePrivateKey):
                raise ValueError(f"--node-key must be an EC private key, got {type(loaded).__name__}")
            key = loaded
        self._key, self._ecdsa = key, ec.ECDSA(hashes.SHA256())
        self.public_key_pem = key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def sign_now(self) -> tuple[str, bytes]:
        """(timestamp, signature) for one request; sign every attempt anew, the SuperLink checks age."""
        timestamp = datetime.datetime.now(tz=datetime.timezone.utc).isoformat()
        return timestamp, self._key.sign(timestamp.encode("ascii"), self._ecdsa)

    def http_headers(self) -> dict[str, str]:
        """Fleet over HTTP: base64 of the PEM and of the DER signature (supernode/node_auth_http_interceptor.py)."""
        timestamp, signature = self.sign_now()
        return {
            "flwr-public-key": base64.b64encode(self.public_key_pem).decode("ascii"),
            "flwr-timestamp": timestamp,
            "flwr-signature": base64.b64encode(signature).decode("ascii"),
        }

    def grpc_metadata(self) -> list[tuple[str, str | bytes]]:
        """Fleet over gRPC: raw bytes under -bin keys (gRPC base64s them on the wire itself)."""
        timestamp, signature = self.sign_now()
        return [("flwr-public-key-bin", self.public_key_pem), ("flwr-timestamp", timestamp),
                ("flwr-signature-bin", signature)]


class Unreachable(Exception):
    """No whole answer (connection refused or lost, body cut off or too big, deadline, HTTP 5xx, UNAVAILABLE)."""


class Interrupted(Exception):
    """A stop was requested while the call was outstanding: the call was given up."""


@dataclass(frozen=True)
class CallLimits:
    """How long one call may take: ``floor`` seconds plus the time its bytes take at ``min_rate``.

    The request's bytes count from the start; the response's count as they arrive (HTTP), or, on
    gRPC, where the deadline is fixed when the call starts, the largest response the RPC can
    bring. So a link at least ``min_rate`` fast is never cut, whatever the size, while a peer
    that announces a big body and dribbles it is cut after about ``floor``. At most a call
    lasts ``floor + (request + --max-message-length) / min_rate``.
    """

    floor: float = CALL_TIMEOUT
    min_rate: float = MIN_TRANSFER_RATE


class CallClock:
    """The deadline of one HTTP call, and the event that gives the call up (a stop request)."""

    def __init__(self, limits: CallLimits, request_bytes: int, max_credit: int,
                 interrupt: threading.Event | None) -> None:
        self.started = time.monotonic()
        self.deadline = self.started + limits.floor + request_bytes / limits.min_rate
        self.min_rate, self.credit_left, self.interrupt = limits.min_rate, max_credit, interrupt

    def received(self, count: int) -> None:
        """``count`` response bytes arrived: they extend the deadline (up to ``max_credit`` bytes)."""
        credited = min(count, self.credit_left)
        self.credit_left -= credited
        self.deadline += credited / self.min_rate

    def next_wait(self) -> float:
        """Seconds the next blocking socket operation may wait; raises if the call must end now."""
        if self.interrupt is not None and self.interrupt.is_set():
            raise Interrupted()
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise Unreachable(f"no whole answer within the call's deadline ({time.monotonic() - self.started:.1f} s)")
        return min(left, READ_SLICE)


class SlicedSocket:
    """A connected socket as http.client uses it, whose reads and writes wait in READ_SLICE steps.

    A socket timeout bounds one read, not a call: a peer that sends a byte now and then resets it
    forever. Here each wait is a slice of the call's clock; between slices the clock may end the
    call (deadline passed, stop requested). A timed-out slice leaves the socket usable (TLS too).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.clock: CallClock | None = None  # set for each call

    def _wait(self) -> None:
        assert self.clock is not None, "a call's clock is set before the call"
        self.sock.settimeout(self.clock.next_wait())

    def sendall(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            self._wait()
            try:
                sent = self.sock.send(view)
            except TimeoutError:
                continue
            view = view[sent:]

    def recv_into(self, buffer: Any) -> int:
        while True:
            self._wait()
            try:
                count = self.sock.recv_into(buffer)
            except TimeoutError:
                continue
            assert self.clock is not None
            self.clock.received(count)
            return count

    def makefile(self, mode: str) -> io.BufferedReader:  # what http.client reads a response from
        return io.BufferedReader(_SlicedReader(self))

    def close(self) -> None:
        """Nothing: http.client calls this on a "Connection: close" answer before its body is read;
        HttpFleet closes the socket itself (``close_socket``)."""

    def close_socket(self) -> None:
        self.sock.close()


class _SlicedReader(io.RawIOBase):
    def __init__(self, sock: SlicedSocket) -> None:
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._sock.recv_into(buffer)


class Refused(Exception):
    def __init__(self, refusal: Refusal, detail: str, hint: str = "") -> None:
        super().__init__(detail)
        self.refusal = refusal
        self.hint = hint  # transport_hint's line when the refusal shows a wrong transport or release


class WrongTransport(Exception):
    """The peer speaks the other transport (HTTP where gRPC was expected, or the reverse): retrying will not help."""


# What a node can tell about the SuperLink from how its first call failed (see transport_hint).
HINTS = {
    "http_404": "{superlink} answers HTTP 404 on {path}: no Fleet API over HTTP there. flwr 1.40 and later serve "
                "it on the SuperLink's --port (default 8000); flwr 1.20-1.39 only over gRPC-rere on its "
                "--fleet-api-address (default 9092): use --superlink HOST:9092 --fleet-transport grpc-rere "
                "(and --superlink-release 1.22 for 1.20-1.22)",
    "grpc_peer": "{superlink} is a gRPC server, not HTTP: flwr 1.20-1.39 serve the Fleet API over gRPC-rere on "
                 "--fleet-api-address (default 9092): add --fleet-transport grpc-rere (and --superlink-release "
                 "1.22 for 1.20-1.22)",
    "http_peer": "{superlink} does not answer gRPC (an HTTP/1.x server?): flwr 1.40 and later serve the Fleet "
                 "API over HTTP on the SuperLink's --port (default 8000): use --fleet-transport http; flwr "
                 "1.23-1.39's HTTP port "
                 "has no Fleet API (theirs is gRPC-rere on --fleet-api-address, default 9092)",
    "no_register": "{superlink} refused RegisterNode ({detail}): flwr 1.20-1.22 SuperLinks join nodes with "
                   "CreateNode and refuse RegisterNode: if this SuperLink is one, add --superlink-release 1.22",
    "no_create": "{superlink} refused CreateNode ({detail}): a flwr 1.23 or later SuperLink has no CreateNode: "
                 "drop --superlink-release (or give its release)",
}


def transport_hint(kind: str, superlink: str, path: str = "", detail: str = "") -> str:
    """One line naming the SuperLink's likely release range and the flag and port to use."""
    return HINTS[kind].format(superlink=superlink, path=path, detail=bound_text(detail, 200))


class TlsFailure(Exception):
    """The TLS handshake failed: retrying will not help."""


class KeepAliveConnection:
    """One keep-alive HTTP/1.1 connection (TLS optional): each exchange has one deadline and a whole body.

    The node's transport (HttpFleet) and the trace relay's upstream side (kit/fleet_trace.py) both
    talk to a SuperLink through it. Any error closes the connection; the next exchange reconnects.
    """

    def __init__(self, host: str, port: int, tls: ssl.SSLContext | None, max_length: int) -> None:
        self.host, self.port, self.tls, self.max_length = host, port, tls, max_length
        self.connection: http.client.HTTPConnection | None = None
        self.sock: SlicedSocket | None = None  # the connection's socket, closed only by close()
        self.last_used = 0.0

    def exchange(self, method: str, path: str, headers: dict[str, str], body: bytes,
                 clock: CallClock) -> tuple[http.client.HTTPResponse, bytes]:
        """The response and its whole body; raises what http.client, ssl or the clock raise."""
        if self.connection is not None and time.monotonic() - self.last_used > KEEPALIVE_IDLE:
            self.close()  # the SuperLink may have closed an idle connection already
        try:
            self._connect()
            assert self.connection is not None and self.sock is not None
            self.sock.clock = clock
            self.connection.request(method, path, body=body, headers=headers)
            response = self.connection.getresponse()
            data = self._whole_body(response)
        except BaseException:
            self.close()  # the next attempt opens a fresh connection
            raise
        self.last_used = time.monotonic()
        return response, data

    def _connect(self) -> None:
        """Connect, unless the keep-alive connection is there and http.client has not let it go."""
        if self.connection is None:
            if self.tls is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT)
            else:
                self.connection = http.client.HTTPSConnection(self.host, self.port, timeout=CONNECT_TIMEOUT,
                                                              context=self.tls)
        if self.connection.sock is None:  # new, or the last answer said "Connection: close"
            if self.sock is not None:
                self.sock.close_socket()
            self.connection.connect()  # TCP and TLS handshake, bounded by CONNECT_TIMEOUT
            assert self.connection.sock is not None  # connect() set it
            self.sock = SlicedSocket(self.connection.sock)
            self.connection.sock = self.sock  # http.client reads and writes through it from now on

    def _whole_body(self, response: http.client.HTTPResponse) -> bytes:
        """The body, whole: exactly Content-Length bytes, or chunked to its last chunk, within max_length.

        http.client returns what arrived when the peer closes early; a cut-off body must not pass
        for a shorter message (a protobuf cut at a field boundary still parses), so it is counted.
        A body framed by neither could end anywhere: refused too. Oversize is refused as soon as
        it is known, before more is read.
        """
        expected = response.length  # None when chunked or not given
        if not response.chunked:
            if expected is None:
                raise Unreachable(f"HTTP {response.status} response has neither Content-Length nor chunked "
                                  "encoding: cannot tell whether it is whole")
            if expected > self.max_length:
                raise Unreachable(f"response of {expected} bytes is above --max-message-length ({self.max_length})")
        body = bytearray()
        while piece := response.read(min(READ_PIECE, self.max_length + 1 - len(body))):
            body += piece
            if len(body) > self.max_length:
                raise Unreachable(f"chunked response above --max-message-length ({self.max_length} bytes)")
        if expected is not None and len(body) != expected:
            raise Unreachable(f"response cut off after {len(body)} of {expected} bytes")
        return bytes(body)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None
        if self.sock is not None:
            self.sock.close_socket()
            self.sock = None


class HttpFleet:
    """POST /v1/fleet/<rpc> with protobuf bodies on one KeepAliveConnection; errors become the node's terms."""

    def __init__(self, address: str, key: NodeKey, root_certificates: bytes | None, max_length: int,
                 limits: CallLimits) -> None:
        host, _, port = address.rpartition(":")
        tls = None
        if root_certificates is not None:
            tls = ssl.create_default_context(cadata=root_certificates.decode("ascii"))
        self.address, self.key, self.max_length, self.limits = address, key, max_length, limits
        self.connection = KeepAliveConnection(host.strip("[]"), int(port), tls, max_length)

    def call(self, rpc: str, request: bytes, interrupt: threading.Event | None) -> bytes:
        """The 200 response's body; raises Refused, Unreachable, TlsFailure or Interrupted (``interrupt`` set)."""
        clock = CallClock(self.limits, len(request), self.max_length, interrupt)
        headers = {"Content-Type": PROTOBUF, "Accept": PROTOBUF, **self.key.http_headers()}
        try:
            response, body = self.connection.exchange("POST", RPCS[rpc].http_path, headers, request, clock)
        except ssl.SSLError as error:  # certificate not trusted, not a TLS server, ...
            raise TlsFailure(bound_text(str(error))) from None
        except http.client.BadStatusLine as error:
            # A gRPC server answers an HTTP/1.1 request with an HTTP/2 SETTINGS frame (length, type 4).
            if str(error).startswith("\x00\x00"):  # str() is the line received
                raise WrongTransport(transport_hint("grpc_peer", self.address)) from None
            raise Unreachable(bound_text(f"BadStatusLine: {error}")) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            raise Unreachable(bound_text(f"{type(error).__name__}: {error}")) from None
        if response.status == 200:
            return body
        # flwr's SuperLink answers errors as JSON, e.g. {"code": 23, "message": "Public key already in use."}
        detail = f"HTTP {response.status}: {bound_text(body[:1000].decode('utf-8', 'replace'))}"
        refusal = refusal_for_http_status(response.status)
        if refusal is None:
            raise Unreachable(detail)
        hint = transport_hint("http_404", self.address, RPCS[rpc].http_path) if response.status == 404 else ""
        raise Refused(refusal, detail, hint)

    def close(self) -> None:
        self.connection.close()


class GrpcFleet:
    """Unary calls on /flwr.proto.Fleet/<rpc>, raw bytes in and out (the session parses them)."""

    def __init__(self, address: str, key: NodeKey, root_certificates: bytes | None, max_length: int,
                 limits: CallLimits) -> None:
        import grpc  # only this transport needs it; the HTTP node does not load gRPC

        from fedproto.wire import message_size_options

        self.grpc, self.key, self.limits, self.address = grpc, key, limits, address
        options = message_size_options(max_length)
        if root_certificates is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(address, credentials, options=options)

    def call(self, rpc: str, request: bytes, interrupt: threading.Event | None) -> bytes:
        """As HttpFleet.call. gRPC enforces the deadline (it checks size limits and wholeness itself)."""
        method = self.channel.unary_unary(RPCS[rpc].grpc_method)  # no serializers: bytes both ways
        largest_response = CHUNK_SIZE if rpc == "PullObject" else 0  # the one RPC that brings big answers
        deadline = self.limits.floor + (len(request) + largest_response) / self.limits.min_rate
        future = method.future(request, metadata=self.key.grpc_metadata(), timeout=deadline)
        try:
            # Waited for in slices, so that a stop request gives the call up at once.
            while True:
                if interrupt is not None and interrupt.is_set():
                    future.cancel()
                    raise Interrupted()
                try:
                    return future.result(timeout=READ_SLICE)
                except self.grpc.FutureTimeoutError:
                    continue
        except self.grpc.RpcError as error:
            code, details = error.code(), bound_text(error.details() or "")
            detail = f"{code.name}: {details}"
            # gRPC reports a failed handshake only as UNAVAILABLE with a text; see client/app.py.
            if code == self.grpc.StatusCode.UNAVAILABLE and is_tls_failure(details):
                raise TlsFailure(detail) from None
            # gRPC's words for a peer that answered in HTTP/1.x (or anything but HTTP/2).
            if code == self.grpc.StatusCode.UNAVAILABLE and "Failed parsing HTTP/2" in details:
                raise WrongTransport(transport_hint("http_peer", self.address)) from None
            refusal = refusal_for_grpc_code(code.name)
            if refusal is None:
                raise Unreachable(detail) from None
            raise Refused(refusal, detail, self._join_hint(rpc, code.name, detail)) from None

    def _join_hint(self, rpc: str, code_name: str, detail: str) -> str:
        """A join RPC the SuperLink does not have: it is of the other generation (fedproto.node.Generation)."""
        if code_name not in ("UNIMPLEMENTED", "UNAUTHENTICATED"):
            return ""
        if rpc == "RegisterNode":
            return transport_hint("no_register", self.address, detail=detail)
        if rpc == "CreateNode":
            return transport_hint("no_create", self.address, detail=detail)
        return ""

    def close(self) -> None:
        self.channel.close()


@dataclass
class Worker:
    """The user's handler running on its own thread, so heartbeats go on meanwhile."""

    thread: threading.Thread
    result: list[Any]


def run_node(
    superlink: str,
    handler: Any,
    *,
    transport: str = "http",
    root_certificates: bytes | None = None,
    node_key_pem: bytes | None = None,
    heartbeat_interval: float = 30.0,
    poll_interval: float = 3.0,
    max_message_length: int = MAX_MESSAGE_LENGTH,
    retry: Retry = Retry(),
    call_limits: CallLimits = CallLimits(),
    install_signal_handlers: bool = True,
    generation: Generation = Generation.REGISTER_ACTIVATE,
) -> int:
    """Serve ``handler`` as a node of the SuperLink at ``superlink`` until stopped. Returns an exit code."""
    try:
        key = NodeKey(node_key_pem)
    except CryptographyMissing:
        print("fedproto-client: the Fleet API needs the 'cryptography' package: pip install 'fedproto[fleet]'",
              file=sys.stderr)
        return EXIT_USAGE
    except (ValueError, TypeError) as error:  # not a PEM, not EC, encrypted (cryptography's words)
        print(f"fedproto-client: cannot use --node-key: {error}", file=sys.stderr)
        return EXIT_USAGE
    fleet_class = HttpFleet if transport == "http" else GrpcFleet
    fleet = fleet_class(superlink, key, root_certificates, max_message_length, call_limits)
    session = NodeSession(handler, key.public_key_pem, heartbeat_interval=heartbeat_interval,
                          poll_interval=poll_interval, max_message_length=max_message_length,
                          generation=generation)

    # A signal only sets flags; the loop sees them between two requests, a call within READ_SLICE.
    wake = threading.Event()  # set by a signal or by the worker when the handler returns
    stop_requested = threading.Event()  # first signal: give up the call in flight, then leave
    leave_now = threading.Event()  # second signal: give up leaving too

    def request_stop(signum: int, _frame: Any) -> None:
        if stop_requested.is_set():
            log.info("%s received again: leaving without waiting for the SuperLink", signal.Signals(signum).name)
            leave_now.set()
        else:
            log.info("%s received: leaving the federation", signal.Signals(signum).name)
        stop_requested.set()
        wake.set()

    if install_signal_handlers:
        signal.signal(signal.SIGINT, request_stop)
        signal.signal(signal.SIGTERM, request_stop)

    worker: Worker | None = None
    stopping = False
    handled = 0
    try:
        while True:
            wake.clear()  # cleared before the checks below, so a later wake-up is never lost
            if stop_requested.is_set() and not stopping:
                stopping = True
                session.stop(time.time())

            # A finished handler goes back to the session before anything else.
            if worker is not None and worker.result:
                session.handler_finished(worker.result[0], time.time())
                worker = None

            step = session.next_step(time.time())

            if isinstance(step, Send):
                interrupt = leave_now if stopping else stop_requested
                outcome = _send(fleet, session, step, retry, interrupt, stopping, superlink)
                if outcome is not None:
                    return outcome
                if session.handled_count != handled:
                    handled = session.handled_count
                    _log_handled(session)

            elif isinstance(step, RunHandler):
                worker = _start_worker(step.run, wake)

            elif isinstance(step, Wait):
                wake.wait(max(0.0, step.until - time.time()))

            elif isinstance(step, Finished):
                if step.outcome == "refused":
                    return EXIT_REFUSED
                log.info("node %d left the SuperLink after %d messages", session.node_id, handled)
                return EXIT_DONE
    except NodeProtocolError as error:  # its text may quote the SuperLink's bytes
        log.error("protocol error, leaving without deactivating: %s", bound_text(str(error)))
        return EXIT_PROTOCOL_ERROR
    finally:
        fleet.close()


def _send(fleet: Any, session: NodeSession, step: Send, retry: Retry, interrupt: threading.Event,
          stopping: bool, superlink: str) -> int | None:
    """One request, retried with backoff while it gets no whole answer. Returns an exit code, or None.

    ``interrupt`` set (a stop request; while leaving, a second one) gives the request up: the
    session is told (``abandon``) and is as before it, so the loop can go on to leave.
    """
    failures = 0
    while True:
        try:
            response = fleet.call(step.rpc, step.request, interrupt)
        except Refused as refused:
            log.warning("%s refused by the SuperLink: %s", step.rpc, refused)
            if refused.hint:
                log.error("%s", refused.hint)
            session.refused(refused.refusal, time.time())
            return None
        except WrongTransport as wrong:
            log.error("%s", wrong)
            return EXIT_UNREACHABLE
        except TlsFailure as error:
            log.error("TLS handshake with %s failed: %s", superlink, error)
            return EXIT_TLS_ERROR
        except Interrupted:
            if stopping:
                log.warning("%s given up on a second signal; exiting without waiting for the SuperLink", step.rpc)
                return EXIT_DONE
            log.info("%s given up to leave", step.rpc)
            session.abandon()
            return None
        except Unreachable as error:
            failures += 1
            if stopping:
                # The SuperLink is down while we leave: it marks us offline after 2 x interval.
                log.warning("%s to %s failed while leaving (%s); exiting without deactivating",
                            step.rpc, superlink, error)
                return EXIT_DONE
            if failures >= retry.attempts:
                log.error("giving up on %s after %d attempts: %s", superlink, failures, error)
                return EXIT_UNREACHABLE
            delay = retry.delay(failures)
            log.warning("%s to %s failed: %s; again in %.1f s", step.rpc, superlink, error, delay)
            if interrupt.wait(delay):  # asked to stop meanwhile: leave instead of trying again
                session.abandon()
                return None
            continue
        session.receive(response, time.time())
        return None


def _start_worker(run: Callable[[], Any], wake: threading.Event) -> Worker:
    result: list[Any] = []

    def target() -> None:
        result.append(run())  # fleet_content.answer never raises: handler errors become the reply's error
        wake.set()

    thread = threading.Thread(target=target, name="fedproto-handler", daemon=True)
    thread.start()
    return Worker(thread, result)


def _log_handled(session: NodeSession) -> None:
    """One INFO line per message: what came in, how big, how long the handler took."""
    done = session.last_handled
    if done is None:
        return
    outcome = f"error reply: {bound_text(done.error, 160)}" if done.error else f"reply {done.sent_bytes} bytes"
    log.info("%s (run %d, %d bytes) answered in %.0f ms, %s", bound_text(done.message_type, 60), done.run_id,
             done.received_bytes, done.handler_seconds * 1000, outcome)
