"""The server's end of ``FlowerService.Join`` on ``grpc.aio``: one coroutine per stream.

flwr's legacy server gives every stream a thread from a fixed pool, so its capacity is the
pool size. Here a stream is a coroutine parked on an asyncio queue, so thousands of idle
clients cost memory, not threads.

The Join method is registered as a generic handler with no (de)serializers: gRPC hands us the
raw bytes of each ClientMessage and we parse them, so a reply that is not a ClientMessage is
reported as a named failure of that client instead of an error inside gRPC.

Per stream (the server speaks first, the client answers each message once, in order):

1. Stream opens: a :class:`ClientProxy` is registered with the client manager.
2. The FL loop calls :meth:`ClientProxy.request`; the stream's writer sends the ServerMessage
   and its reader hands back the next ClientMessage.
3. No reply within the timeout: the stream is aborted with DEADLINE_EXCEEDED (as flwr does),
   because a late answer could no longer be told apart from the next one. A ClientMessage
   that arrives when nothing was asked aborts it with FAILED_PRECONDITION, for the same reason.
4. Stream ends (client closed its side or vanished, timeout, abort, server stop): the proxy is
   unregistered at once (before its closing status is out) and a pending request fails with
   ``stream_closed``.

A write is bounded by its request's timeout: a client that never reads (its HTTP/2 window
stays at 0) blocks ``context.write`` for ever, so when the stream ends (timeout, abort) the
blocked write is cancelled at once, the proxy is unregistered, the closing status gets at most
``CLOSE_TIMEOUT`` seconds (it queues behind the data the client does not take; a WARNING names
the client if it stays stuck), and the handler returns. The response headers go out on
their own when the stream opens: the first write would otherwise carry them, and while it is
stuck gRPC refuses the closing status, which then has to carry them too
(GRPC_CALL_ERROR_TOO_MANY_OPERATIONS).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import grpc

from fedproto.server.client_manager import ClientManager
from fedproto.server.endpoint import join_handler
from fedproto.server_role import FailureKind, ReplyError, parse_reply
from fedproto.transport_pb2 import ClientMessage
from fedproto.wire import MAX_MESSAGE_LENGTH, message_size_options

log = logging.getLogger("fedproto.server")

# grpc core queues at most this many calls that arrived before the application asked for the
# next one, and past the hard limit cancels new calls outright (defaults 1000 and 3000): a burst
# of thousands of clients joining at once would lose joins.
MAX_PENDING_JOINS = 100_000

# How long the closing status of an ended stream may wait behind a blocked write (seconds).
CLOSE_TIMEOUT = 0.5

CLIENT_SIDE_ENDED = ("client ended its side of the stream "
                     "(closed it, or sent a message gRPC refused, e.g. too large)")


class BindError(OSError):
    """The server could not listen on the address (in use, bad host, no permission)."""


@dataclass
class _Outgoing:
    data: bytes  # a serialized ServerMessage
    reply: asyncio.Future[bytes]


@dataclass
class _Close:
    """Queued for the writer: end the stream, with OK or with an error status."""

    code: grpc.StatusCode = grpc.StatusCode.OK
    details: str = ""


class ClientProxy:
    """One connected client, as the FL loop sees it: send a ServerMessage, await the reply.

    Each stream runs two coroutines. The writer (the RPC's own task) sends what the loop
    queues. The reader receives every ClientMessage as it arrives, so it also notices a client
    that closes its side while idle, or that sends a message nobody asked for: either ends
    the stream at once instead of being read later as the answer to the next instruction.
    """

    def __init__(self, cid: str, peer: str, on_end: Callable[[ClientProxy], None] | None = None) -> None:
        """Made on the event loop that serves the stream (``JoinServicer.join``); ``on_end(proxy)``
        is called once, as soon as the stream is over."""
        self.cid = cid
        self.peer = peer
        self._on_end = on_end
        # Looked up once: asyncio's own lookup costs a getpid() system call each time, and a
        # round at 10,000 clients makes tens of thousands of futures, timers and writes.
        self._loop = asyncio.get_running_loop()
        self._outbox: asyncio.Queue[_Outgoing | _Close] = asyncio.Queue()
        self._lock = asyncio.Lock()  # one request in flight per stream: replies come in order
        self._in_flight: _Outgoing | None = None  # written, reply not read yet
        self._ended: str | None = None  # why the stream ended, once it has
        self._writing: asyncio.Future[None] | None = None  # the write under way: _end cancels it

    def __repr__(self) -> str:
        return f"ClientProxy({self.cid}, {self.peer})"

    async def request(
        self, message: bytes, timeout: float | None = None, last: bool = False
    ) -> ClientMessage:
        """Send a serialized ServerMessage, return the client's reply; raises :class:`ReplyError`.

        The caller serializes, so one FitIns sent to thousands of clients is encoded once.
        No reply within ``timeout`` seconds aborts the stream with DEADLINE_EXCEEDED.
        ``last=True`` ends the stream normally after the reply (used for ReconnectIns).
        """
        return parse_reply(await self.request_bytes(message, timeout, last))

    async def request_bytes(self, message: bytes, timeout: float | None = None, last: bool = False) -> bytes:
        """:meth:`request`, the reply left as the bytes received (for a decoder that reads them in place)."""
        async with self._lock:
            if self._ended is not None:
                raise ReplyError(FailureKind.STREAM_CLOSED, self._ended)
            reply = self._loop.create_future()
            self._outbox.put_nowait(_Outgoing(message, reply))
            # A timer on the reply itself: asyncio.wait_for would add a future, a task-like
            # waiter and callbacks to each of thousands of requests.
            timer = self._loop.call_later(timeout, _expire, reply) if timeout is not None else None
            try:
                data = await reply
            except TimeoutError:
                reason = f"no reply within {timeout:g} s"
                self._end(reason, FailureKind.TIMEOUT)
                self._outbox.put_nowait(_Close(grpc.StatusCode.DEADLINE_EXCEEDED, reason))
                raise ReplyError(FailureKind.TIMEOUT, reason) from None
            finally:
                if timer is not None:
                    timer.cancel()
            if last:
                self._end("server ended the session", FailureKind.STREAM_CLOSED)
                self._outbox.put_nowait(_Close())
        return data

    async def serve(self, context: grpc.aio.ServicerContext) -> None:
        """The writer, run as the RPC's handler. Returns (or aborts) when the stream is over."""
        reader = self._loop.create_task(self._read_replies(context))
        try:
            await context.send_initial_metadata(())  # see the module docstring: not with the first write
            while True:
                item = await self._outbox.get()
                if isinstance(item, _Close):
                    if item.code is not grpc.StatusCode.OK:
                        # Behind a write the client never took, the status may never go out.
                        await asyncio.wait_for(context.abort(item.code, item.details), CLOSE_TIMEOUT)
                    return
                if item.reply.done():  # its request already failed (the stream is ending)
                    continue
                self._in_flight = item  # before the write: the reply may come back at once
                await self._write_unless_ended(context, item.data)
        except TimeoutError:  # the closing status was stuck: the handler returns without it
            log.warning("client %s: stream dropped without its closing status, stuck for %g s behind "
                        "a message the client does not read", self.cid, CLOSE_TIMEOUT)
            return
        except asyncio.CancelledError:  # how grpc.aio reports a vanished client (or a stop)
            self._end("stream cancelled (client disconnected or server stopping)", FailureKind.STREAM_CLOSED)
            raise
        finally:
            reader.cancel()
            self._end("stream ended", FailureKind.STREAM_CLOSED)

    async def _write_unless_ended(self, context: grpc.aio.ServicerContext, data: bytes) -> None:
        """``context.write(data)``, cancelled by :meth:`_end` as soon as the stream ends (e.g. its
        request timed out while the client's window stayed shut)."""
        self._writing = self._loop.create_task(context.write(data))
        try:
            await self._writing
        except asyncio.CancelledError:
            handler = asyncio.current_task()
            assert handler is not None  # this coroutine runs as a task
            if handler.cancelling():  # the handler itself is being cancelled
                raise
            # else _end cancelled the write: its request has already failed
        finally:
            self._writing = None

    async def _read_replies(self, context: grpc.aio.ServicerContext) -> None:
        """The reader: hand each ClientMessage to the request waiting for it."""
        while True:
            data = await context.read()
            if self._ended is not None:
                return
            if data is grpc.aio.EOF:
                # gRPC reports a message it refused (e.g. over max_message_length) the same way.
                self._end(CLIENT_SIDE_ENDED, FailureKind.STREAM_CLOSED)
                self._outbox.put_nowait(_Close())
                return
            if self._in_flight is None:
                reason = f"unsolicited ClientMessage ({len(data)} bytes) while no instruction was pending"
                log.warning("client %s: %s; closing its stream", self.cid, reason)
                self._end(reason, FailureKind.MALFORMED)
                self._outbox.put_nowait(_Close(grpc.StatusCode.FAILED_PRECONDITION, reason))
                return
            if not self._in_flight.reply.done():  # done: its requester was cancelled meanwhile
                self._in_flight.reply.set_result(data)
            self._in_flight = None

    def _end(self, reason: str, kind: FailureKind) -> None:
        """Mark the stream over and fail every request that can no longer be answered."""
        if self._ended is None:
            self._ended = reason
            if self._on_end is not None:  # out of the pool now, not once the closing status is out
                self._on_end(self)
        if self._writing is not None:
            self._writing.cancel()  # a write the client never takes would block the writer for ever
        waiting = [self._in_flight] if self._in_flight is not None else []
        self._in_flight = None
        while not self._outbox.empty():
            item = self._outbox.get_nowait()
            if isinstance(item, _Outgoing):
                waiting.append(item)
        for outgoing in waiting:
            if not outgoing.reply.done():
                outgoing.reply.set_exception(ReplyError(kind, reason))


def _expire(reply: asyncio.Future[bytes]) -> None:
    if not reply.done():
        reply.set_exception(TimeoutError())


class JoinServicer:
    """Registers a proxy for every Join stream and runs it until the stream ends."""

    def __init__(self, client_manager: ClientManager) -> None:
        self.client_manager = client_manager

    async def join(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        proxy = ClientProxy(uuid.uuid4().hex[:12], context.peer(), on_end=self.client_manager.unregister)
        self.client_manager.register(proxy)
        log.debug("client %s joined from %s (%d connected)", proxy.cid, proxy.peer,
                  self.client_manager.num_available())
        try:
            await proxy.serve(context)  # unregisters the proxy as the stream ends (on_end)
        finally:
            log.debug("client %s left (%d connected)", proxy.cid, self.client_manager.num_available())

    def generic_handler(self) -> grpc.GenericRpcHandler:
        # No deserializer/serializer: requests and responses stay bytes (see module docstring).
        return join_handler(self.join)


def server_options(max_message_length: int = MAX_MESSAGE_LENGTH) -> list[tuple[str, int]]:
    return [
        *message_size_options(max_message_length),
        ("grpc.server.max_pending_requests", MAX_PENDING_JOINS),
        ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_JOINS),
        # With port reuse a second server on the same port would silently share (steal) clients.
        ("grpc.so_reuseport", 0),
    ]


def create_server(
    address: str,
    client_manager: ClientManager,
    certificates: tuple[bytes, bytes, bytes] | None = None,
    max_message_length: int = MAX_MESSAGE_LENGTH,
) -> grpc.aio.Server:
    """A grpc.aio server with the Join handler bound to ``address`` (not started yet).

    ``certificates`` = (CA, server certificate, server private key), PEM bytes: TLS, as in
    flwr's ``start_server`` (clients are not asked for certificates).
    """
    server = grpc.aio.server(options=server_options(max_message_length))
    server.add_generic_rpc_handlers((JoinServicer(client_manager).generic_handler(),))
    try:
        if certificates is None:
            port = server.add_insecure_port(address)
        else:
            ca, cert, key = certificates
            credentials = grpc.ssl_server_credentials(
                [(key, cert)], root_certificates=ca, require_client_auth=False
            )
            port = server.add_secure_port(address, credentials)
    except RuntimeError as error:
        raise BindError(f"cannot listen on {address}: {error}") from None
    if port == 0:
        raise BindError(f"cannot listen on {address}")
    return server
