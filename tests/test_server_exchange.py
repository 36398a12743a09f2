"""The server's exchange path in process: streams on fake servicer contexts, the write budget, malloc_trim."""

from __future__ import annotations

import asyncio
import platform

import numpy as np
import pytest

from fedproto.bench.loadgen import TrivialModelClient
from fedproto.dispatch import ClientSession
from fedproto.server import loop, memory
from fedproto.server.client_manager import ClientManager
from fedproto.server.loop import LoopConfig, disconnect_all, run_rounds
from fedproto.server.strategy import FedAvg
from fedproto.server.transport import ClientProxy, JoinServicer, WriteBudget, write_order
from fedproto.transport_pb2 import ServerMessage

STREAMS = 3


class FakeContext:
    """One Join stream's servicer context, in process: every message written is answered at once by
    a ClientSession around the load generator's trivial handler (fit adds 0.01)."""

    def __init__(self, peer: str = "fake", write_log: list[str] | None = None) -> None:
        self._peer = peer
        self._write_log = write_log  # shared by the contexts: the peer of every write, in order
        self.written: list[bytes] = []
        self.session = ClientSession(TrivialModelClient())
        self._replies: asyncio.Queue[bytes] = asyncio.Queue()

    def peer(self) -> str:
        return self._peer

    async def send_initial_metadata(self, metadata: tuple) -> None:
        pass

    async def write(self, data: bytes) -> None:
        if self._write_log is not None:
            self._write_log.append(self._peer)
        self.written.append(data)
        self._replies.put_nowait(self.session.receive_bytes(data))

    async def read(self) -> bytes:
        return await self._replies.get()


def run_with_fake_streams(rounds: int, contexts: list[FakeContext] | None = None
                          ) -> tuple[list[FakeContext], loop.ServerResult]:
    """``rounds`` FedAvg rounds over ``contexts`` (default: STREAMS plain ones), all of them required."""
    contexts = contexts if contexts is not None else [FakeContext() for _ in range(STREAMS)]
    count = len(contexts)

    async def scenario():
        manager = ClientManager(seed=0)
        servicer = JoinServicer(manager)
        streams = [asyncio.create_task(servicer.join(None, context)) for context in contexts]
        strategy = FedAvg(initial_parameters=[np.zeros(1000, np.float32)], min_fit_clients=count,
                          min_evaluate_clients=count, min_available_clients=count)
        result = await run_rounds(strategy, manager, LoopConfig(rounds=rounds, round_timeout=10))
        await disconnect_all(manager)
        await asyncio.wait_for(asyncio.gather(*streams), 5)  # every stream ends after its ReconnectIns
        return contexts, result

    return asyncio.run(scenario())


def test_every_stream_is_written_the_same_bytes_object_and_the_rounds_complete():
    contexts, result = run_with_fake_streams(rounds=2)
    kinds = [[ServerMessage.FromString(data).WhichOneof("msg") for data in context.written] for context in contexts]
    assert kinds == [["fit_ins", "evaluate_ins", "fit_ins", "evaluate_ins", "reconnect_ins"]] * STREAMS
    for step in range(4):  # each instruction encoded once: the very same bytes object went to every stream
        assert len({id(context.written[step]) for context in contexts}) == 1
    assert [len(record.fit_clients) for record in result.history.rounds] == [STREAMS, STREAMS]
    np.testing.assert_allclose(result.parameters[0], np.full(1000, 0.02, np.float32))
    assert [loss for _, loss in result.history.losses_distributed] == pytest.approx([0.01, 0.02])


def test_write_order_puts_the_streams_of_one_connection_together_in_order_of_first_appearance():
    async def proxies(peers):
        return [ClientProxy(f"c{index}", peer) for index, peer in enumerate(peers)]

    clients = asyncio.run(proxies(["ipv4:b:1", "ipv4:a:2", "ipv4:b:1", "ipv4:c:3", "ipv4:a:2", "ipv4:b:1"]))
    assert write_order(clients) == [0, 2, 5, 1, 4, 3]
    other = object()  # not a ClientProxy (another transport, a test double): a connection of its own
    assert write_order([clients[1], other, clients[0], clients[4]]) == [0, 3, 1, 2]
    assert write_order([]) == []


def test_each_instruction_goes_out_connection_by_connection_whatever_order_the_strategy_samples():
    write_log: list[str] = []
    peers = [f"ipv4:127.0.0.1:{port}" for port in (5001, 5002, 5003)]
    # Streams joined interleaved, as streams of several channels do; the strategy samples at random.
    contexts = [FakeContext(peers[index % 3], write_log) for index in range(12)]
    _, result = run_with_fake_streams(rounds=2, contexts=contexts)
    assert [len(record.fit_clients) for record in result.history.rounds] == [12, 12]
    instructions = [write_log[step * 12:(step + 1) * 12] for step in range(4)]  # fit, evaluate, fit, evaluate
    for writes in instructions:
        runs = [peer for index, peer in enumerate(writes) if index == 0 or writes[index - 1] != peer]
        assert sorted(runs) == peers, writes  # three runs of four writes: one per connection


def test_freed_memory_is_released_after_each_round(monkeypatch):
    calls = []
    monkeypatch.setattr(memory, "release_freed_memory", lambda: calls.append(1) or True)
    run_with_fake_streams(rounds=2)
    assert len(calls) == 2


def test_malloc_trim_is_called_only_on_glibc(monkeypatch):
    memory._malloc_trim.cache_clear()
    monkeypatch.setattr(platform, "libc_ver", lambda *args, **kwargs: ("musl", "1.2"))
    try:
        assert memory.release_freed_memory() is False
    finally:
        memory._malloc_trim.cache_clear()
    monkeypatch.undo()
    assert memory.release_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_write_budget_grants_in_order_as_bytes_are_given_back():
    async def scenario():
        budget = WriteBudget(limit=100, max_wait=10)
        assert budget.take(60) and not budget.take(60)  # does not fit beside the first
        second = asyncio.create_task(budget.wait_take(60))
        third = asyncio.create_task(budget.wait_take(30))
        await asyncio.sleep(0.01)
        assert not second.done() and not third.done()
        assert not budget.take(1)  # no one jumps the queue
        budget.give_back(60)
        await asyncio.sleep(0.01)
        assert second.done() and third.done() and budget.in_use == 90
        budget.give_back(60)
        budget.give_back(30)
        assert budget.in_use == 0 and budget.take(500)  # a message over the limit goes out alone

    asyncio.run(scenario())


def test_write_budget_lets_a_writer_through_after_max_wait_and_forgets_a_cancelled_one():
    async def scenario():
        budget = WriteBudget(limit=100, max_wait=0.05)
        assert budget.take(100)  # held by a client that does not read
        cancelled = asyncio.create_task(budget.wait_take(50))
        await asyncio.sleep(0.01)
        cancelled.cancel()
        await asyncio.gather(cancelled, return_exceptions=True)
        assert budget.in_use == 100
        await asyncio.wait_for(budget.wait_take(50), 1)  # not held up until the stuck write ends
        assert budget.in_use == 150

    asyncio.run(scenario())
