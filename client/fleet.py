"""The edge client as a Fleet API node: a short loop that carries fedproto.node over HTTP or gRPC.

Read top to bottom, this is the whole Fleet protocol as a node sees it (``fedproto/node.py``
holds the rules; ``docs/fleet-node.md`` the details):

1. Make (or load) an ECDSA SECP384R1 key. Every request is signed with it, even on an insecure
   SuperLink: three headers carry the public key, the current UTC time and a signature of that
   time (:class:`NodeKey`).
2. Ask the session what to do (``session.next_step(now)``) and do it:
   - ``Send``: POST the request bytes to the SuperLink, give the response bytes back. A
     refusal (HTTP 4xx, gRPC UNAUTHENTICATED...) goes back as a ``Refusal``; a SuperLink that
     cannot be reached is retried here with exponential backoff, like the Join client does.
   - ``RunHandler``: start the user's handler on a worker thread and keep looping: the session
     hands out heartbeats while a long ``fit`` runs.
   - ``Wait``: sleep until then, or until the handler ends or a signal arrives.
   - ``Finished``: exit.
3. SIGINT / SIGTERM: tell the session to stop; it deactivates and unregisters, then finishes.

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
import logging
import signal
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
    NodeProtocolError,
    NodeSession,
    Refusal,
    RunHandler,
    Send,
    Wait,
    refusal_for_grpc_code,
    refusal_for_http_status,
)
from fedproto.wire import MAX_MESSAGE_LENGTH

log = logging.getLogger("fedproto.client")

EXIT_REFUSED = 5  # the SuperLink refused to register or activate this node
EXIT_USAGE = 2  # like argparse: the [fleet] extra is not installed, --node-key unusable

TRANSPORTS = ("http", "grpc-rere")
CALL_TIMEOUT = 60.0  # seconds one request may take (objects are at most 5 MiB plus a header)
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
            key = serialization.load_pem_private_key(private_key_pem, password=None)
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise ValueError(f"--node-key must be an EC private key, got {type(key).__name__}")
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
    """The request did not get an answer (connection refused or lost, HTTP 5xx, UNAVAILABLE)."""


class Refused(Exception):
    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(detail)
        self.refusal = refusal


class TlsFailure(Exception):
    """The TLS handshake failed: retrying will not help."""


class HttpFleet:
    """POST /v1/fleet/<rpc> with protobuf bodies, one keep-alive connection, reopened after errors."""

    def __init__(self, address: str, key: NodeKey, root_certificates: bytes | None, max_length: int) -> None:
        host, _, port = address.rpartition(":")
        self.host, self.port = host.strip("[]"), int(port)
        self.key, self.max_length = key, max_length
        self.tls = None
        if root_certificates is not None:
            self.tls = ssl.create_default_context(cadata=root_certificates.decode("ascii"))
        self.connection: http.client.HTTPConnection | None = None
        self.last_used = 0.0

    def call(self, rpc: str, request: bytes) -> bytes:
        if self.connection is not None and time.monotonic() - self.last_used > KEEPALIVE_IDLE:
            self.close()
        if self.connection is None:
            if self.tls is None:
                self.connection = http.client.HTTPConnection(self.host, self.port, timeout=CALL_TIMEOUT)
            else:
                self.connection = http.client.HTTPSConnection(self.host, self.port, timeout=CALL_TIMEOUT,
                                                              context=self.tls)
        headers = {"Content-Type": PROTOBUF, "Accept": PROTOBUF, **self.key.http_headers()}
        try:
            self.connection.request("POST", RPCS[rpc].http_path, body=request, headers=headers)
            response = self.connection.getresponse()
            length = int(response.headers.get("Content-Length") or 0)
            if length > self.max_length:
                raise Unreachable(f"{rpc}: response of {length} bytes is above --max-message-length")
            body = response.read(self.max_length + 1)
            self.last_used = time.monotonic()
        except ssl.SSLError as error:  # certificate not trusted, not a TLS server, ...
            self.close()
            raise TlsFailure(str(error)) from None
        except (OSError, http.client.HTTPException, ValueError) as error:
            self.close()  # the next attempt opens a fresh connection
            raise Unreachable(f"{type(error).__name__}: {error}") from None
        if response.status == 200:
            return body
        # flwr's SuperLink answers errors as JSON, e.g. {"code": 23, "message": "Public key already in use."}
        detail = f"HTTP {response.status}: {body[:300].decode('utf-8', 'replace')}"
        refusal = refusal_for_http_status(response.status)
        if refusal is None:
            raise Unreachable(detail)
        raise Refused(refusal, detail)

    def close(self) -> None:
        if self.connection is not None:
            self.connection.close()
            self.connection = None


class GrpcFleet:
    """Unary calls on /flwr.proto.Fleet/<rpc>, raw bytes in and out (the session parses them)."""

    def __init__(self, address: str, key: NodeKey, root_certificates: bytes | None, max_length: int) -> None:
        import grpc  # only this transport needs it; the HTTP node does not load gRPC

        from fedproto.wire import message_size_options

        self.grpc, self.key = grpc, key
        options = message_size_options(max_length)
        if root_certificates is None:
            self.channel = grpc.insecure_channel(address, options=options)
        else:
            credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
            self.channel = grpc.secure_channel(address, credentials, options=options)

    def call(self, rpc: str, request: bytes) -> bytes:
        method = self.channel.unary_unary(RPCS[rpc].grpc_method)  # no serializers: bytes both ways
        try:
            return method(request, metadata=self.key.grpc_metadata(), timeout=CALL_TIMEOUT)
        except self.grpc.RpcError as error:
            code, details = error.code(), error.details()
            detail = f"{code.name}: {details}"
            # gRPC reports a failed handshake only as UNAVAILABLE with a text; see client/app.py.
            if code == self.grpc.StatusCode.UNAVAILABLE and is_tls_failure(details or ""):
                raise TlsFailure(detail) from None
            refusal = refusal_for_grpc_code(code.name)
            if refusal is None:
                raise Unreachable(detail) from None
            raise Refused(refusal, detail) from None

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
    install_signal_handlers: bool = True,
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
    fleet = fleet_class(superlink, key, root_certificates, max_message_length)
    session = NodeSession(handler, key.public_key_pem, heartbeat_interval=heartbeat_interval,
                          poll_interval=poll_interval)

    # A signal only sets a flag; the loop below sees it between two requests.
    wake = threading.Event()  # set by a signal or by the worker when the handler returns
    stop_requested = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
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
                outcome = _send(fleet, session, step, retry, stop_requested, stopping, superlink)
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
    except NodeProtocolError as error:
        log.error("protocol error, leaving without deactivating: %s", error)
        return EXIT_PROTOCOL_ERROR
    finally:
        fleet.close()


def _send(fleet: Any, session: NodeSession, step: Send, retry: Retry, stop_requested: threading.Event,
          stopping: bool, superlink: str) -> int | None:
    """One request, retried while the SuperLink is unreachable. Returns an exit code to stop with, or None."""
    failures = 0
    while True:
        try:
            response = fleet.call(step.rpc, step.request)
        except Refused as refused:
            log.warning("%s refused by the SuperLink: %s", step.rpc, refused)
            session.refused(refused.refusal, time.time())
            return None
        except TlsFailure as error:
            log.error("TLS handshake with %s failed: %s", superlink, error)
            return EXIT_TLS_ERROR
        except Unreachable as error:
            failures += 1
            if stopping or stop_requested.is_set():
                # Asked to leave while the SuperLink is down: it marks us offline after 2 x interval.
                log.warning("%s to %s failed while leaving (%s); exiting without deactivating",
                            step.rpc, superlink, error)
                return EXIT_DONE
            if failures >= retry.attempts:
                log.error("giving up on %s after %d attempts: %s", superlink, failures, error)
                return EXIT_UNREACHABLE
            delay = retry.delay(failures)
            log.warning("%s to %s failed: %s; again in %.1f s", step.rpc, superlink, error, delay)
            stop_requested.wait(delay)
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
    outcome = f"error reply: {done.error}" if done.error else f"reply {done.sent_bytes} bytes"
    log.info("%s (run %d, %d bytes) answered in %.0f ms, %s", done.message_type, done.run_id,
             done.received_bytes, done.handler_seconds * 1000, outcome)
