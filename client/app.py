"""The edge client: a short loop that carries fedproto's sans-IO session over gRPC.

Read top to bottom, this file is the whole protocol as a client sees it:

1. Open a channel and call ``FlowerService.Join``: one bidirectional stream.
2. The server speaks first. Read a ServerMessage, let the session answer it
   (``fedproto.dispatch``), write the ClientMessage back. Repeat.
3. The server ends a session with ReconnectIns, which we answer with DisconnectRes:
   - seconds > 0: "come back later". End the call, sleep that long (at most
     ``max_reconnect_wait``: the server picks the number), join again.
   - seconds = 0: "we are done". End the call and exit 0.
   Ending the call is our job: flwr's server keeps it open until it shuts down.
4. A stream that breaks (server not up yet, restarted, crashed) is joined again with
   exponential backoff, a bounded number of times, then we give up.
5. No wait is unbounded. A server that keeps the stream open but sends nothing for
   ``idle_timeout`` seconds is left and joined again (step 4). gRPC keepalive pings find a
   connection whose peer is gone (host down, NAT entry dropped) within KEEPALIVE_TIMEOUT.

Messages travel as raw bytes: the channel does no (de)serialization, the session parses
and builds them, so anything malformed is reported by name instead of failing inside gRPC.

Not protocol, but memory (a model may be most of a small device's RAM): the stream runs on
grpc.aio, one event loop for the whole run, whose write keeps nothing once sent; the handler
runs in a thread of its own so the loop carries keepalive pings meanwhile; and glibc is told to
give freed buffers of 64 KiB and more straight back (:func:`return_freed_memory_to_os`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from fedproto.dispatch import ClientSession, ProtocolError, State
from fedproto.wire import JOIN_METHOD, MAX_MESSAGE_LENGTH, message_size_options

log = logging.getLogger("fedproto.client")

EXIT_DONE = 0  # the server ended the session (ReconnectIns with seconds = 0)
EXIT_PROTOCOL_ERROR = 1  # the server sent something that is not a valid instruction
EXIT_UNREACHABLE = 3  # retries used up without a working stream (server down, messages too big...)
EXIT_TLS_ERROR = 4  # the TLS handshake failed (wrong CA, not a TLS server...)
# (2, a usage error, and 130, Ctrl-C, come from client/cli.py.)

# The longest pause a ReconnectIns can impose; a bigger `seconds` is clamped to it.
MAX_RECONNECT_WAIT_SECONDS = 600.0
# How long we wait for the server's next instruction before leaving the stream and joining
# again. It bounds only the wait for the server: our own handler may take as long as it takes.
# A server that does not pick us (fraction_fit < 1) may legitimately leave us idle for rounds,
# so this is generous; rejoining costs a new stream and nothing else. None: wait forever (flwr).
IDLE_TIMEOUT_SECONDS = 3600.0
# gRPC keepalive: a PING every KEEPALIVE_SECONDS, the connection is dropped if one is not
# acknowledged within KEEPALIVE_TIMEOUT_MS. A gRPC server (flwr's start_server, ours) counts a
# ping less than 5 minutes (grpc.http2.min_ping_interval_without_data_ms) after the previous
# one, while it has sent us no data, as a strike and ends the connection with GOAWAY
# "too_many_pings" after two; 300 s is the shortest interval that can never strike.
KEEPALIVE_SECONDS = 300.0
KEEPALIVE_TIMEOUT_MS = 20_000

# Once our DisconnectRes is sent, how long the server gets to take it before we end the call.
# flwr's server never ends the call itself and counts us as available until we do, so this
# is short; but it reads our reply and notices the call's end on different threads, and
# cancelling at once can make it drop the reply (its reconnect() then fails).
DISCONNECT_GRACE_SECONDS = 0.2


@dataclass(frozen=True)
class Retry:
    """Bounded exponential backoff for (re)joining: 0.5 s, 1 s, 2 s ... capped at 30 s."""

    attempts: int = 8
    first_delay: float = 0.5
    max_delay: float = 30.0

    def delay(self, failures: int) -> float:
        return min(self.first_delay * 2 ** (failures - 1), self.max_delay)


# glibc's mallopt parameter number and the value we give it (see return_freed_memory_to_os).
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 64 * 1024


def return_freed_memory_to_os() -> None:
    """Make glibc give freed buffers back at once: the one memory setting of this process.

    Every instruction and reply of a big model passes through short-lived buffers of many MB
    (grpcio assembles an incoming message from its slices; the reply's bytes). glibc's default
    raises its mmap threshold each time such a buffer is freed (up to 32 MiB), after which
    buffers below it come from the heap, and freed heap memory mostly stays in the process:
    35-100 MiB with a 40 MB model. A fixed threshold of 64 KiB keeps every larger buffer in its
    own mapping, returned to the system when it is freed. ``python -m fedproto.bench.client_rss
    --side 3163`` (10M float32, median of 3 runs): 278 MiB peak before, 213 MiB after (on
    grpcio's blocking API; malloc_trim(0) after every reply gave 249 alone and nothing on top).
    Setting MALLOC_MMAP_THRESHOLD_ in the environment has the same effect and takes precedence;
    elsewhere than glibc this does nothing.
    """
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    libc_name = ctypes.util.find_library("c")
    if libc_name is None:
        return
    libc = ctypes.CDLL(libc_name)
    if hasattr(libc, "mallopt") and hasattr(libc, "gnu_get_libc_version"):  # glibc, not musl or macOS
        libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)


def run_client(
    server_address: str,
    handler: Any,
    *,
    root_certificates: bytes | None = None,
    max_message_length: int = MAX_MESSAGE_LENGTH,
    retry: Retry = Retry(),
    max_reconnect_wait: float = MAX_RECONNECT_WAIT_SECONDS,
    idle_timeout: float | None = IDLE_TIMEOUT_SECONDS,
    keepalive: float = KEEPALIVE_SECONDS,
) -> int:
    """Serve ``handler`` to the server at ``server_address`` until it says we are done.

    Returns an exit code (``EXIT_*``). ``root_certificates`` (PEM bytes) switches to TLS.
    ``max_reconnect_wait``, ``idle_timeout`` (None: forever) and ``keepalive``: see the constants.
    """
    options = [*message_size_options(max_message_length), *keepalive_options(keepalive)]
    # One event loop for every Join of this run: grpc.aio's completion queue stays bound to the
    # loop it first ran on, and a new loop per Join (asyncio.run each time) made it report into a
    # closed one after a reconnect ("RuntimeError: Event loop is closed" in the log).
    with asyncio.Runner() as runner:
        failures = 0  # consecutive joins that broke before the server said anything
        while True:
            session = ClientSession(handler)
            try:
                stream = runner.run(_join_once(server_address, session, root_certificates, options, idle_timeout))
            except ProtocolError as error:
                log.error("protocol error, leaving: %s", error)
                return EXIT_PROTOCOL_ERROR

            if stream.broken is None and session.state is State.DONE:
                log.info("server ended the session after %d messages; exiting", stream.answered)
                return EXIT_DONE
            if stream.broken is None:  # State.RECONNECT: the server asked us to come back after a pause
                failures = 0
                pause = min(session.reconnect_after, max_reconnect_wait)
                if pause < session.reconnect_after:
                    log.warning("server asked us to reconnect in %d s; waiting %g s (the maximum, "
                                "--max-reconnect-wait)", session.reconnect_after, pause)
                else:
                    log.info("server asked us to reconnect in %d s", session.reconnect_after)
                time.sleep(pause)
                continue

            if root_certificates is not None and is_tls_failure(stream.broken):
                log.error("TLS handshake with %s failed: %s", server_address, stream.broken)
                return EXIT_TLS_ERROR
            failures = 0 if stream.answered else failures + 1
            if failures >= retry.attempts:
                log.error("giving up on %s after %d attempts: %s", server_address, failures, stream.broken)
                return EXIT_UNREACHABLE
            delay = retry.delay(max(failures, 1))
            log.warning("stream to %s ended: %s; joining again in %.1f s", server_address, stream.broken, delay)
            time.sleep(delay)


@dataclass(frozen=True)
class StreamEnd:
    """How one Join stream ended: after ``answered`` messages, normally or ``broken``."""

    answered: int  # ServerMessages answered on this stream
    broken: str | None  # why it broke (gRPC status, or closed without ReconnectIns); None: ReconnectIns


def keepalive_options(keepalive: float) -> list[tuple[str, int]]:
    """gRPC channel options: a keepalive PING every ``keepalive`` seconds (see KEEPALIVE_SECONDS)."""
    return [
        ("grpc.keepalive_time_ms", round(keepalive * 1000)),
        ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
        # Keep pinging while the server sends nothing (gRPC's default stops after 2 pings)...
        ("grpc.http2.max_pings_without_data", 0),
        # ...but only while the Join call is open, as flwr's server expects (it permits none).
        ("grpc.keepalive_permit_without_calls", 0),
    ]


async def _join_once(
    server_address: str,
    session: ClientSession,
    root_certificates: bytes | None,
    options: list[tuple[str, int]],
    idle_timeout: float | None,
) -> StreamEnd:
    """One Join stream, until the session leaves state JOINED or the stream breaks.

    Raises ProtocolError if the server sends an invalid message.
    """
    # grpc.aio rather than the blocking API: its write returns once the message is sent and keeps
    # nothing, where the blocking API's sender keeps the last reply (maybe a whole model) until
    # the next one, so it was still held while the next instruction arrived (10M float32 in
    # bench.client_rss: 213 MiB peak on the blocking API, 176 MiB here).
    if root_certificates is None:
        channel = grpc.aio.insecure_channel(server_address, options=options)
    else:
        credentials = grpc.ssl_channel_credentials(root_certificates=root_certificates)
        channel = grpc.aio.secure_channel(server_address, credentials, options=options)

    answered = 0
    async with channel:
        # No serializers: requests and responses are bytes, the session (de)serializes.
        call = channel.stream_stream(JOIN_METHOD)()
        try:
            while True:
                # The server's silence is bounded (a timed-out read cancels the call); the time
                # our handler takes below does not count.
                try:
                    server_bytes = await asyncio.wait_for(call.read(), idle_timeout)
                except TimeoutError:
                    return StreamEnd(answered, f"the server sent nothing for {idle_timeout:g} s (idle timeout)")
                if server_bytes is grpc.aio.EOF:
                    return StreamEnd(answered, CLOSED_WITHOUT_RECONNECT)
                if answered == 0:
                    log.info("joined %s", server_address)  # the stream is up: the server spoke
                started = time.perf_counter()
                reply = await _in_thread(session.receive_bytes, server_bytes)
                answered += 1
                _log_exchange(session, len(server_bytes), started)
                del server_bytes  # each may hold a whole model: neither is kept while the next one arrives
                try:
                    await call.write(reply)
                except asyncio.InvalidStateError:  # the call ended while our handler ran
                    return StreamEnd(answered, await _ended_because(call))
                del reply
                if session.state is not State.JOINED:
                    break  # we just sent DisconnectRes: nothing more goes on this stream
        except grpc.aio.AioRpcError as error:
            return StreamEnd(answered, _describe(error))
        except ProtocolError:
            call.cancel()  # we leave on our own: end the call before the channel closes under it
            raise
        # The DisconnectRes is sent. Close our side, give the server a moment to take it (or to
        # end the call itself), then cancel: flwr unregisters us only when the call ends, and
        # until then it may pick us for its next instruction.
        await call.done_writing()
        try:
            await asyncio.wait_for(call.code(), DISCONNECT_GRACE_SECONDS)
        except TimeoutError:
            call.cancel()
    return StreamEnd(answered, None)


async def _in_thread(work: Callable[[bytes], bytes], argument: bytes) -> bytes:
    """``work(argument)`` in a thread of its own, so that the event loop carries gRPC's keepalive
    pings meanwhile. A daemon thread: Ctrl-C ends the client at once, not when the handler returns."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[bytes] = loop.create_future()

    def settle(set_outcome: Callable[[Any], None], outcome: Any) -> None:  # on the event loop
        if not done.cancelled():  # cancelled: Ctrl-C came while the thread ran
            set_outcome(outcome)

    def run() -> None:
        try:
            result = work(argument)
        except BaseException as error:  # handed to the awaiting coroutine as it is
            outcome: tuple[Callable[[Any], None], Any] = (done.set_exception, error)
        else:
            outcome = (done.set_result, result)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody awaits it any more
            loop.call_soon_threadsafe(settle, *outcome)

    threading.Thread(target=run, daemon=True).start()
    return await done


CLOSED_WITHOUT_RECONNECT = "server closed the stream without a ReconnectIns"


async def _ended_because(call: grpc.aio.StreamStreamCall) -> str:
    """Why a call that has ended ended, from its status."""
    code = await call.code()
    if code is grpc.StatusCode.OK:
        return CLOSED_WITHOUT_RECONNECT
    return f"{code.name}: {await call.details()}"


def _describe(error: grpc.RpcError) -> str:
    if isinstance(error, grpc.Call | grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return str(error)


def is_tls_failure(reason: str) -> bool:
    """Did the stream break in the TLS handshake? Judged from gRPC's status text.

    gRPC gives no better signal: a failed handshake (wrong CA, plaintext server, bad
    certificate) ends the call with UNAVAILABLE, the same code as "server not up yet", and the
    Python API exposes no error type or field for it; only the details text names the TLS
    layer. Without this, a certificate problem would be retried like a server that is down.
    """
    text = reason.lower()
    return "handshake" in text or "ssl" in text or "certificate" in text


def _log_exchange(session: ClientSession, size: int, started: float) -> None:
    """One INFO line per instruction: what came in, how big, how long the handler took."""
    elapsed_ms = (time.perf_counter() - started) * 1000
    if session.state is State.JOINED:
        log.info("%s (%d bytes) answered in %.0f ms", session.last_received, size, elapsed_ms)
    else:
        log.info("reconnect_ins(seconds=%d) answered with DisconnectRes", session.reconnect_after)
