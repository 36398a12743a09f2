"""A client whose stream cannot be written to (it never reads, so its HTTP/2 window stays at 0)
must not stay registered once its request times out (issue 9).

Before the fix the writer sat in ``context.write`` forever: the abort queued behind it never
ran, so the proxy stayed in the client manager and was picked again every round.
"""

from __future__ import annotations

import asyncio
import queue
import time

import grpc
import pytest

from conftest import free_port
from fedproto.codec import ndarrays_to_parameters
from fedproto.server_role import FailureKind, ReplyError
from fedproto.transport_pb2 import ServerMessage
from fedproto.wire import JOIN_METHOD
from fedproto.server.client_manager import ClientManager
from fedproto.server.transport import create_server

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
