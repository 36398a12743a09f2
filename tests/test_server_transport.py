"""The Join servicer over real loopback gRPC, with raw clients that do odd things on the stream."""

from __future__ import annotations

import asyncio
import queue
import threading

import grpc
import pytest

from conftest import free_port
from fedproto.server.client_manager import ClientManager
from fedproto.server.transport import CLIENT_SIDE_ENDED, BindError, create_server
from fedproto.server_role import FailureKind, ReplyError
from fedproto.transport_pb2 import ClientMessage, ServerMessage
from fedproto.wire import JOIN_METHOD

FIT_INS = ServerMessage(fit_ins=ServerMessage.FitIns()).SerializeToString()
FIT_RES = ClientMessage(fit_res=ClientMessage.FitRes(num_examples=7)).SerializeToString()


class RawClient:
    """A Join stream driven by hand from a thread: ``send`` queues bytes, ``close`` half-closes."""

    def __init__(self, address: str, on_message) -> None:
        self.outbox: queue.SimpleQueue = queue.SimpleQueue()
        self.status: tuple[grpc.StatusCode, str] | None = None
        self.done = threading.Event()
        self._channel = grpc.insecure_channel(address)
        self._call = self._channel.stream_stream(JOIN_METHOD)(iter(self.outbox.get, None),
                                                              wait_for_ready=True)
        threading.Thread(target=self._run, args=(on_message,), daemon=True).start()

    def _run(self, on_message) -> None:
        try:
            for data in self._call:
                on_message(self, data)
        except grpc.RpcError:
            pass
        self.status = (self._call.code(), self._call.details())
        self.done.set()
        self._channel.close()

    def send(self, data: bytes) -> None:
        self.outbox.put(data)

    def close(self) -> None:
        self.outbox.put(None)


async def serve_with(address: str, scenario, **server_options):
    manager = ClientManager()
    server = create_server(address, manager, **server_options)
    await server.start()
    try:
        return await scenario(manager)
    finally:
        await server.stop(0.5)


async def until(condition, timeout: float = 10) -> None:
    async def poll():
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout)


def test_reply_received_then_an_unsolicited_message_closes_the_stream():
    address = f"127.0.0.1:{free_port()}"
    client = RawClient(address, lambda c, data: [c.send(FIT_RES), c.send(FIT_RES)])  # one too many

    async def scenario(manager):
        await until(lambda: manager.num_available() == 1)
        (proxy,) = manager.all().values()
        reply = await proxy.request(FIT_INS, timeout=10)
        await until(lambda: manager.num_available() == 0)
        with pytest.raises(ReplyError) as closed:
            await proxy.request(FIT_INS, timeout=10)
        return reply, closed.value

    reply, closed = asyncio.run(serve_with(address, scenario))
    assert reply.fit_res.num_examples == 7
    assert closed.kind is FailureKind.STREAM_CLOSED  # later requests: the stream is gone, and why
    assert closed.reason == "unsolicited ClientMessage (4 bytes) while no instruction was pending"
    assert client.done.wait(10)
    assert client.status == (grpc.StatusCode.FAILED_PRECONDITION, closed.reason)


def test_a_client_closing_its_side_while_idle_is_unregistered_at_once():
    address = f"127.0.0.1:{free_port()}"
    client = RawClient(address, lambda c, data: None)

    async def scenario(manager):
        await until(lambda: manager.num_available() == 1)
        (proxy,) = manager.all().values()
        client.close()
        await until(lambda: manager.num_available() == 0)
        with pytest.raises(ReplyError) as closed:
            await proxy.request(FIT_INS, timeout=10)
        return closed.value

    closed = asyncio.run(serve_with(address, scenario))
    assert (closed.kind, closed.reason) == (FailureKind.STREAM_CLOSED, CLIENT_SIDE_ENDED)
    assert client.done.wait(10) and client.status[0] == grpc.StatusCode.OK


def test_bytes_that_are_not_a_client_message_are_named_and_the_stream_stays():
    address = f"127.0.0.1:{free_port()}"
    replies = iter([b"\xff\xff\xff", FIT_RES])
    RawClient(address, lambda c, data: c.send(next(replies)))

    async def scenario(manager):
        await until(lambda: manager.num_available() == 1)
        (proxy,) = manager.all().values()
        with pytest.raises(ReplyError) as malformed:
            await proxy.request(FIT_INS, timeout=10)
        return malformed.value, await proxy.request(FIT_INS, timeout=10)

    malformed, reply = asyncio.run(serve_with(address, scenario))
    assert malformed.kind is FailureKind.MALFORMED
    assert malformed.reason.startswith("reply is not a ClientMessage (Error parsing message")
    assert malformed.reason.endswith("; 3 bytes)")
    assert reply.fit_res.num_examples == 7


def test_silence_past_the_timeout_aborts_the_stream_with_deadline_exceeded():
    address = f"127.0.0.1:{free_port()}"
    client = RawClient(address, lambda c, data: None)

    async def scenario(manager):
        await until(lambda: manager.num_available() == 1)
        (proxy,) = manager.all().values()
        with pytest.raises(ReplyError) as silent:
            await proxy.request(FIT_INS, timeout=0.3)
        await until(lambda: manager.num_available() == 0)
        return silent.value

    silent = asyncio.run(serve_with(address, scenario))
    assert (silent.kind, silent.reason) == (FailureKind.TIMEOUT, "no reply within 0.3 s")
    assert client.done.wait(10)
    assert client.status == (grpc.StatusCode.DEADLINE_EXCEEDED, "no reply within 0.3 s")


def test_a_reply_over_the_message_size_limit_ends_only_that_stream():
    address = f"127.0.0.1:{free_port()}"
    big = ClientMessage(fit_res=ClientMessage.FitRes(metrics={"blob": {"bytes": b"x" * 500}}))
    client = RawClient(address, lambda c, data: c.send(big.SerializeToString()))

    async def scenario(manager):
        await until(lambda: manager.num_available() == 1)
        (proxy,) = manager.all().values()
        with pytest.raises(ReplyError) as refused:
            await proxy.request(FIT_INS, timeout=10)
        await until(lambda: manager.num_available() == 0)
        await until(client.done.is_set)  # the client has its status before the server stops
        return refused.value

    refused = asyncio.run(serve_with(address, scenario, max_message_length=200))
    assert (refused.kind, refused.reason) == (FailureKind.STREAM_CLOSED, CLIENT_SIDE_ENDED)
    assert client.done.wait(10)
    assert client.status == (grpc.StatusCode.RESOURCE_EXHAUSTED,
                             f"SERVER: Received message larger than max ({big.ByteSize()} vs. 200)")


def test_an_address_that_cannot_be_bound_is_a_bind_error():
    async def bind_twice(address):
        first = create_server(address, ClientManager())
        await first.start()
        try:
            create_server(address, ClientManager())
        finally:
            await first.stop(None)

    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BindError, match=f"cannot listen on {address}"):
        asyncio.run(bind_twice(address))
