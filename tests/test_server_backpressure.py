"""A client whose stream cannot be written to (it never reads, so its HTTP/2 window stays at 0)
must not stay registered once its request times out (issue 9), and dropping it must not log a
traceback (issue 16).

Before the first fix the writer sat in ``context.write`` forever: the abort queued behind it never
ran, so the proxy stayed in the client manager and was picked again every round. Before the
second, the abort that followed asked gRPC to send the response headers a second time (the
stuck write held them): ExecuteBatchError, GRPC_CALL_ERROR_TOO_MANY_OPERATIONS, logged by
grpc.aio as an ERROR with a traceback each time.
"""

from __future__ import annotations

import asyncio
import queue
import re
import time

import grpc
import numpy as np
import pytest

from conftest import free_port
from fedproto.codec import ndarrays_to_parameters
from fedproto.server.checkpoint import save_npz
from fedproto.server.client_manager import ClientManager
from fedproto.server.transport import create_server
from fedproto.server_role import FailureKind, ReplyError
from fedproto.transport_pb2 import ServerMessage
from fedproto.wire import JOIN_METHOD

# Far more than any flow-control window the silent client grants (64 KiB, without BDP probing).
LARGE_FIT_INS = ServerMessage(fit_ins=ServerMessage.FitIns(
    parameters=ndarrays_to_parameters([__import__("numpy").zeros(4_000_000, "f4")]))).SerializeToString()
SILENT_CLIENT_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),  # no window growth behind the application's back
    ("grpc.http2.lookahead_bytes", 1024),
]


class SilentClient:
    """Opens the Join stream and never reads a byte of what the server sends."""

    def __init__(self, address: str) -> None:
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.channel = grpc.insecure_channel(address, options=SILENT_CLIENT_OPTIONS)
        self.call = self.channel.stream_stream(JOIN_METHOD)(iter(self.outbox.get, None), wait_for_ready=True)

    def close(self) -> None:
        self.outbox.put(None)
        self.call.cancel()
        self.channel.close()


async def until(condition, timeout: float) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


@pytest.mark.parametrize("timeout", [0.5, 1.5])
def test_a_client_that_never_reads_is_unregistered_when_its_request_times_out(timeout):
    address = f"127.0.0.1:{free_port()}"
    client = SilentClient(address)

    async def scenario():
        manager = ClientManager()
        server = create_server(address, manager)
        await server.start()
        try:
            await until(lambda: manager.num_available() == 1, timeout=10)
            (proxy,) = manager.all().values()
            started = time.monotonic()
            with pytest.raises(ReplyError) as failed:
                await proxy.request(LARGE_FIT_INS, timeout=timeout)
            await until(lambda: manager.num_available() == 0, timeout=timeout + 10)
            left_after = time.monotonic() - started
            with pytest.raises(ReplyError) as closed:  # and the stream is over for good
                await proxy.request(LARGE_FIT_INS, timeout=timeout)
            return failed.value, left_after, closed.value
        finally:
            await server.stop(0.5)

    try:
        failed, left_after, closed = asyncio.run(scenario())
    finally:
        client.close()
    assert failed.kind is FailureKind.TIMEOUT
    assert left_after < timeout + 1.0  # the blocked write did not keep it registered
    assert closed.kind in (FailureKind.TIMEOUT, FailureKind.STREAM_CLOSED)


def wait_for_log(proc, pattern: str, timeout: float = 30) -> re.Match:
    deadline = time.monotonic() + timeout
    while (found := re.search(pattern, proc.log())) is None:
        assert proc.popen.poll() is None, f"{proc.name} exited early:\n{proc.log()}"
        assert time.monotonic() < deadline, f"{pattern!r} not in {proc.name}'s log:\n{proc.log()}"
        time.sleep(0.05)
    return found


def test_a_client_that_never_reads_is_dropped_with_a_warning_and_the_round_completes(spawn, tmp_path):
    """fedproto-server, a client that opens its stream and never reads, two edge clients: the
    4 MB FitIns to the first never finishes being written; it times out, is dropped with one
    WARNING naming it, no traceback, and the round completes with the other two."""
    address = f"127.0.0.1:{free_port()}"
    save_npz(tmp_path / "model.npz", [np.zeros(1_000_000, np.float32)])  # far beyond a shut window
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "1", "--min-clients", "2",
                   "--round-timeout", "2", "--initial-parameters", str(tmp_path / "model.npz"),
                   "--log-level", "DEBUG")
    spawn("never-reads", "tests/hostile_clients.py", "never-reads", "--server", address)
    # It joins first, so it is connected when the round starts and is sent the FitIns.
    stalled = wait_for_log(server, r"client (\w+) joined from")[1]
    clients = [spawn(f"edge{i}", "-m", "fedproto.client", "--server", address,
                     "--app", "tests.server_clients:AddsOneClient") for i in range(2)]
    assert server.wait(60) == 0, server.log()
    assert all(client.wait(30) == 0 for client in clients)
    log = server.log()
    assert "Traceback" not in log and "ExecuteBatchError" not in log, log
    assert f"round 1 fit: client {stalled} failed: timeout: no reply within 2 s" in log
    assert len(re.findall(rf"WARNING fedproto.server: client {stalled}: stream dropped without its closing status",
                          log)) == 1, log
    assert re.search(r"round 1/1: fit [12] ok 1 failed \| evaluate 2 ok 0 failed", log), log
