"""Load generator: N concurrent ``FlowerService.Join`` streams held by one or a few processes.

    python -m fedproto.bench.loadgen --server 127.0.0.1:8080 --clients 1000 --processes 2 --duration 120

Each simulated client is one asyncio task on a ``grpc.aio`` channel, speaking raw bytes
(``fedproto.wire.JOIN_METHOD``, no serializers) and answering through
``fedproto.dispatch.ClientSession`` with a trivial NumPy handler for a 1,000-parameter model.
Streams share channels (``--streams-per-channel``); each channel is its own TCP connection.

A join that fails (server not up yet, or refusing streams with RESOURCE_EXHAUSTED as flwr's
thread-pool server does past 1,000) is retried with backoff, like a real client, until the
``--duration`` deadline. The generator always stops by itself: when every client has been told
it is done (ReconnectIns with seconds = 0), or at the deadline. Exit code 0 means all were done.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import ipaddress
import json
import logging
import multiprocessing
import random
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field

import grpc
import numpy as np

from fedproto.client.cli import positive_int
from fedproto.dispatch import ClientSession, State
from fedproto.wire import JOIN_METHOD, message_size_options

log = logging.getLogger("fedproto.bench.loadgen")

MODEL_SIZE = 1_000  # parameters of the simulated model: one float32 vector
FIT_STEP = 0.01  # what "training" adds to every parameter
EXAMPLES = 10  # num_examples each client reports

# After our DisconnectRes, how long the server may take to end the call before we cancel it.
DISCONNECT_GRACE_SECONDS = 1.0
FIRST_RETRY_DELAY, MAX_RETRY_DELAY = 0.5, 5.0
GC_YOUNG_THRESHOLD = 50_000  # Python's default is 700 allocations


class TrivialModelClient:
    """A NumPyClient-shaped handler whose work is negligible, so the server is what gets timed."""

    def get_parameters(self, config):
        return [np.zeros(MODEL_SIZE, np.float32)]

    def fit(self, parameters, config):
        return [p + np.float32(FIT_STEP) for p in parameters], EXAMPLES, {}

    def evaluate(self, parameters, config):
        return float(np.mean(parameters[0])), EXAMPLES, {}


@dataclass
class Stats:
    """What the clients of one or more worker processes saw."""

    clients: int = 0
    done: int = 0  # clients that received ReconnectIns(seconds = 0)
    answered: Counter = field(default_factory=Counter)  # instruction kind -> replies sent
    stream_errors: Counter = field(default_factory=Counter)  # "CODE: details" -> count
    joins: int = 0  # streams opened (including retries)

    def merge(self, other: Stats) -> None:
        self.clients += other.clients
        self.done += other.done
        self.answered.update(other.answered)
        self.stream_errors.update(other.stream_errors)
        self.joins += other.joins

    def as_dict(self) -> dict:
        return {**asdict(self), "answered": dict(self.answered), "stream_errors": dict(self.stream_errors)}


async def _serve_one(channel: grpc.aio.Channel, stats: Stats, deadline: float) -> None:
    """One client: join, answer until told we are done, rejoin with backoff if the stream breaks.

    Gives up at ``deadline`` (a ``time.monotonic()`` value) or when its task is cancelled.
    """
    join = channel.stream_stream(JOIN_METHOD)  # no serializers: raw bytes both ways
    failures = 0
    while time.monotonic() < deadline:
        session = ClientSession(TrivialModelClient())
        call = join()
        stats.joins += 1
        try:
            while session.state is State.JOINED:
                data = await call.read()
                if data is grpc.aio.EOF:
                    raise ConnectionError("server closed the stream without a ReconnectIns")
                await call.write(session.receive_bytes(data))
                stats.answered[session.last_received] += 1
                failures = 0
        except (grpc.RpcError, ConnectionError) as error:
            call.cancel()
            # A task cancelled inside call.read() may see the call's CANCELLED status instead
            # of CancelledError: retrying then would outlive the cancellation, forever.
            this_task = asyncio.current_task()
            assert this_task is not None  # this coroutine runs as a task
            if this_task.cancelling():
                raise asyncio.CancelledError from None
            stats.stream_errors[_describe(error)] += 1
            failures += 1
            delay = min(FIRST_RETRY_DELAY * 2 ** (failures - 1), MAX_RETRY_DELAY)
            delay *= random.uniform(0.5, 1.0)  # jitter: no thundering herd
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            continue
        if session.state is State.DONE:
            stats.done += 1
            await _end_call(call)
            return
        await _end_call(call)  # State.RECONNECT: come back after the pause the server asked for
        await asyncio.sleep(session.reconnect_after)


async def _end_call(call: grpc.aio.StreamStreamCall) -> None:
    await call.done_writing()
    try:
        await asyncio.wait_for(call.code(), DISCONNECT_GRACE_SECONDS)
    except asyncio.TimeoutError:
        call.cancel()


def _describe(error: BaseException) -> str:
    if isinstance(error, grpc.aio.AioRpcError):
        return f"{error.code().name}: {error.details()}"
    return f"{type(error).__name__}: {error}"


async def _run_clients(server: str, clients: int, streams_per_channel: int, deadline: float) -> Stats:
    stats = Stats(clients=clients)
    options = [
        *message_size_options(),
        # Without this, channels to the same target share one TCP connection (global pool).
        ("grpc.use_local_subchannel_pool", 1),
    ]
    channels = [grpc.aio.insecure_channel(server, options=options)
                for _ in range(-(-clients // streams_per_channel))]
    tasks = [asyncio.create_task(_serve_one(channels[i // streams_per_channel], stats, deadline))
             for i in range(clients)]
    _, pending = await asyncio.wait(tasks, timeout=max(0.0, deadline - time.monotonic()))
    for task in pending:  # streams still waiting for the server to say something
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in tasks:
        if task.done() and not task.cancelled() and (error := task.exception()) is not None:
            # A ProtocolError or a bug: count it by name rather than losing it.
            stats.stream_errors[_describe(error)] += 1
    await asyncio.gather(*(channel.close() for channel in channels))
    return stats


def run_worker(server: str, clients: int, streams_per_channel: int, deadline: float) -> dict:
    """Entry point of one worker process: hold ``clients`` streams until done or ``deadline``
    (a ``time.monotonic()`` value: Linux's monotonic clock is the same in every process)."""
    # Thousands of live streams keep the cyclic GC busy re-scanning them (~12% of this
    # process's CPU at 500 streams); young collections 70x less often cost only some memory.
    gc.set_threshold(GC_YOUNG_THRESHOLD, *gc.get_threshold()[1:])
    stats = asyncio.run(_run_clients(server, clients, streams_per_channel, deadline))
    return stats.as_dict()


def run_loadgen(server: str, clients: int, *, processes: int = 1, streams_per_channel: int = 100,
                duration: float = 120.0) -> Stats:
    """Run ``clients`` simulated clients split over ``processes`` worker processes."""
    shares = [clients // processes + (1 if i < clients % processes else 0) for i in range(processes)]
    total = Stats()
    # spawn, not fork: a forked child must not inherit gRPC's internal threads and state.
    with ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn")) as pool:
        # Counted from now, not from each worker's start: spawning them takes a second or two.
        deadline = time.monotonic() + duration
        futures = [pool.submit(run_worker, server, share, streams_per_channel, deadline)
                   for share in shares if share]
        for future in futures:
            result = future.result()
            total.merge(Stats(result["clients"], result["done"], Counter(result["answered"]),
                              Counter(result["stream_errors"]), result["joins"]))
    return total


def positive_float(text: str) -> float:
    """argparse type: a number > 0, else a usage error naming the value."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def loopback_address(text: str) -> str:
    """argparse type: HOST:PORT on this machine only (the generator is a local test tool)."""
    host, separator, port = text.rpartition(":")
    host = host.strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not separator or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    if not loopback:
        raise argparse.ArgumentTypeError(f"loopback only (127.0.0.1, ::1, localhost), got {host!r}")
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.bench.loadgen",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m fedproto.bench.loadgen --server 127.0.0.1:8080 --clients 20\n"
               "  python -m fedproto.bench.loadgen --server 127.0.0.1:8080 --clients 10000 --processes 2 "
               "--duration 300 --report load.json",
    )
    parser.add_argument("--server", type=loopback_address, required=True,
                        help="HOST:PORT of the server, on this machine")
    parser.add_argument("--clients", type=positive_int, required=True,
                        help="number of concurrent streams")
    parser.add_argument("--processes", type=positive_int, default=1,
                        help="worker processes (default 1)")
    parser.add_argument("--streams-per-channel", type=positive_int, default=100,
                        help="Join streams sharing one channel / TCP connection (default 100)")
    parser.add_argument("--duration", type=positive_float, default=120.0,
                        help="stop after this many seconds even if not done (default 120)")
    parser.add_argument("--report", help="also write the counts as JSON to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    started = time.monotonic()
    stats = run_loadgen(args.server, args.clients, processes=args.processes,
                        streams_per_channel=args.streams_per_channel, duration=args.duration)
    report = {**stats.as_dict(), "seconds": round(time.monotonic() - started, 3)}
    log.info("%d/%d clients done in %.1f s; replies %s; stream errors %s", stats.done, stats.clients,
             report["seconds"], dict(stats.answered), dict(stats.stream_errors) or "none")
    if args.report:
        with open(args.report, "w") as file:
            json.dump(report, file, indent=1)
    return 0 if stats.done == stats.clients else 1


if __name__ == "__main__":
    sys.exit(main())
