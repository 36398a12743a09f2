"""The server's pieces on their own: FedAvg's arithmetic against flwr's, sampling, waiting for
clients, History JSON, checkpoint files."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass

import numpy as np
import pytest
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters
from flwr.server.strategy.aggregate import aggregate, aggregate_inplace

from fedproto.server import checkpoint
from fedproto.server.client_manager import ClientManager
from fedproto.server.history import History, RoundRecord
from fedproto.server.strategy import FedAvg, weighted_average, weighted_metrics_average
from fedproto.server_role import Failure, FailureKind
from fedproto.server_role import FitRes as OurFitRes


@dataclass
class FakeClient:
    cid: str


def random_results(seed: int):
    rng = np.random.default_rng(seed)
    return [([rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=5)], int(n))
            for n in (13, 400, 1, 77)]


def test_weighted_average_matches_flwrs_fedavg_and_keeps_dtypes():
    results = random_results(0)
    ours = weighted_average(results)
    exact = aggregate(results)  # flwr's FedAvg(inplace=False)
    in_place = aggregate_inplace([
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(arrays), n, {})) for arrays, n in results])
    assert [a.dtype for a in ours] == [np.float32, np.float64]
    for mine, theirs, theirs_in_place in zip(ours, exact, in_place, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
        np.testing.assert_allclose(mine, theirs_in_place, rtol=0, atol=1e-6)


def test_weighted_average_accumulates_in_float64():
    # 2 * 40000 overflows float16 (max 65504); the mean, 40000, is exactly representable.
    results = [([np.full(3, 40000, np.float16)], 1), ([np.full(3, 40000, np.float16)], 1)]
    (mean,) = weighted_average(results)
    assert mean.dtype == np.float16 and mean.tolist() == [40000.0] * 3
    assert np.isinf(aggregate(results)[0]).all()  # flwr's sums in float16


def test_integer_tensors_are_rounded_to_the_nearest_integer():
    (mean,) = weighted_average([([np.array([1, 2], np.int64)], 1), ([np.array([2, 2], np.int64)], 2)])
    assert mean.dtype == np.int64 and mean.tolist() == [2, 2]  # 5/3 -> 2, 6/3 -> 2


def test_fedavg_aggregate_fit_weights_by_examples_and_honours_accept_failures():
    failure = Failure("c9", FailureKind.TIMEOUT, "no reply within 1 s")
    results = [(FakeClient("a"), OurFitRes([np.array([0.0])], 1, {"acc": 0.5})),
               (FakeClient("b"), OurFitRes([np.array([4.0])], 3, {"acc": 1.0}))]
    strategy = FedAvg(fit_metrics_aggregation_fn=weighted_metrics_average)
    parameters, metrics = strategy.aggregate_fit(1, results, [failure])
    assert parameters[0].tolist() == [3.0] and metrics == {"acc": 0.875}
    assert FedAvg(accept_failures=False).aggregate_fit(1, results, [failure]) == (None, {})
    assert FedAvg().aggregate_fit(1, [], []) == (None, {})


def test_fedavg_samples_like_flwr_and_skips_when_too_few_clients():
    manager = ClientManager(seed=1)
    for index in range(10):
        manager.register(FakeClient(f"c{index}"))
    strategy = FedAvg(fraction_fit=0.35, min_fit_clients=2, min_available_clients=4)
    instructions = strategy.configure_fit(1, [np.zeros(2)], manager)
    assert len(instructions) == 3 == len({client.cid for client, _ in instructions})  # int(10 * 0.35)
    assert len({id(ins) for _, ins in instructions}) == 1  # one FitIns shared: encoded once
    assert FedAvg(fraction_evaluate=0.0).configure_evaluate(1, [], manager) == []
    assert FedAvg(min_available_clients=11).configure_fit(1, [], manager) == []
    assert manager.sample(3, criterion=lambda client: client.cid in {"c1", "c2"}) == []


def test_client_manager_wait_for_and_unregister():
    async def scenario():
        manager = ClientManager()
        assert await manager.wait_for(1, timeout=0.05) is False
        waiting = asyncio.ensure_future(manager.wait_for(2, timeout=5))
        manager.register(FakeClient("a"))
        assert manager.register(FakeClient("a")) is False  # same id twice
        await asyncio.sleep(0.01)
        assert not waiting.done()
        manager.register(FakeClient("b"))
        assert await waiting is True
        manager.unregister(FakeClient("a"))
        manager.unregister(FakeClient("a"))  # idempotent
        return manager.num_available(), sorted(manager.all())

    assert asyncio.run(scenario()) == (1, ["b"])


def sample_history() -> History:
    history = History()
    history.add_loss_distributed(1, 0.5)
    history.add_loss_centralized(0, 2.25)
    history.add_metrics_distributed_fit(1, {"digest": b"\x00\xff", "n": 3, "ok": True, "name": "x"})
    history.add_metrics_distributed(1, {"accuracy": 0.75})
    history.add_metrics_centralized(0, {"accuracy": 0.25})
    history.rounds.append(RoundRecord(1, fit_ok=2, evaluate_ok=3, seconds=0.125, fit_failures=[
        Failure("abc", FailureKind.BAD_TENSOR, "FitRes.parameters.tensors[0]: object arrays are not accepted")]))
    return history


def test_history_json_round_trip_is_exact():
    history = sample_history()
    again = History.from_json(history.to_json())
    assert again == history
    assert again.metrics_distributed_fit["digest"] == [(1, b"\x00\xff")]
    assert again.round(1).fit_failures[0].kind is FailureKind.BAD_TENSOR
    with pytest.raises(KeyError, match="no round 2"):
        again.round(2)


def test_checkpoint_round_trip_and_named_errors(tmp_path):
    assert checkpoint.load(tmp_path) is None
    parameters = [np.arange(6, dtype=np.int32).reshape(2, 3), np.ones(2, np.float16)]
    history = sample_history()
    checkpoint.save(tmp_path, 1, parameters, history)
    history.rounds.append(RoundRecord(2))
    checkpoint.save(tmp_path, 2, parameters, history)
    assert sorted(os.listdir(tmp_path)) == ["history.json", "parameters-round-0002.npz"]
    restored = checkpoint.load(tmp_path)
    assert restored.history == history and restored.history.last_round == 2
    assert [(a.dtype, a.tolist()) for a in restored.parameters] == [(a.dtype, a.tolist()) for a in parameters]
    assert restored.strategy_state == {}

    (tmp_path / "parameters-round-0002.npz").write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(checkpoint.CheckpointError, match="not a parameters archive"):
        checkpoint.load(tmp_path)
    (tmp_path / "parameters-round-0002.npz").unlink()
    with pytest.raises(checkpoint.CheckpointError, match="parameters-round-0002.npz is missing"):
        checkpoint.load(tmp_path)


class ScriptedClient:
    """Stands in for a connected client: answers every request with one fixed ClientMessage."""

    def __init__(self, cid: str, reply) -> None:
        self.cid, self.reply, self.asked = cid, reply, 0

    async def request(self, message: bytes, timeout=None, last=False):
        self.asked += 1
        return self.reply


def test_initial_parameters_come_from_the_next_client_when_one_fails(caplog):
    from fedproto.codec import ndarrays_to_parameters as to_parameters
    from fedproto.server.loop import LoopConfig, NoInitialParameters, _initial_parameters
    from fedproto.transport_pb2 import ClientMessage

    refusal = ClientMessage(get_parameters_res={"status": {"code": 2, "message": "not implemented"}})
    wrong = ClientMessage(fit_res={})
    good = ClientMessage(get_parameters_res={"status": {"code": 0},
                                             "parameters": to_parameters([np.arange(3.0)])})

    async def initial(replies):
        manager = ClientManager()
        clients = [ScriptedClient(f"c{i}", reply) for i, reply in enumerate(replies)]
        for client in clients:
            manager.register(client)
        strategy = FedAvg(min_available_clients=len(clients))
        return await _initial_parameters(strategy, manager, LoopConfig(rounds=1)), clients

    parameters, clients = asyncio.run(initial([refusal, wrong, good, refusal]))
    assert [a.tolist() for a in parameters] == [[0.0, 1.0, 2.0]]
    assert clients[2].asked == 1 and max(c.asked for c in clients) == 1  # nobody asked twice

    with caplog.at_level("WARNING", logger="fedproto.server"), pytest.raises(NoInitialParameters) as caught:
        asyncio.run(initial([refusal, wrong]))
    assert str(caught.value) == "none of the 2 clients asked gave usable initial parameters, and the strategy has none"
    assert "GET_PARAMETERS_NOT_IMPLEMENTED: not implemented" in caplog.text
    assert "expected get_parameters_res, got fit_res" in caplog.text


def fit_results_for_round(server_round: int):
    rng = np.random.default_rng(100 + server_round)
    return [([rng.normal(size=(4, 3)).astype(np.float32), rng.normal(size=3).astype(np.float32)], n)
            for n in (10, 30, 5)]


def test_fedadam_follows_flwrs_fedadam_round_by_round():
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import FedAdam as FlwrFedAdam

    from fedproto.server.strategy import FedAdam

    initial = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]
    theirs = FlwrFedAdam(initial_parameters=ndarrays_to_parameters(initial), eta=0.05, beta_1=0.8)
    ours = FedAdam(initial_parameters=initial, eta=0.05, beta_1=0.8)
    for server_round in (1, 2, 3):
        results = fit_results_for_round(server_round)
        flwr_results = [(None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), n, {}))
                        for a, n in results]
        expected = parameters_to_ndarrays(theirs.aggregate_fit(server_round, flwr_results, [])[0])
        mine, _ = ours.aggregate_fit(server_round, [(FakeClient("c"), OurFitRes(a, n)) for a, n in results], [])
        assert [a.dtype for a in mine] == [np.float32, np.float32]
        for m, e in zip(mine, expected, strict=True):
            np.testing.assert_allclose(m, e, rtol=0, atol=1e-6)
        assert np.abs(mine[0]).max() > 0.01  # it moved


def test_fedadam_resumed_from_a_checkpoint_continues_the_same_trajectory(tmp_path):
    from fedproto.server.strategy import FedAdam

    initial = [np.zeros((4, 3), np.float32), np.zeros(3, np.float32)]

    def step(strategy, server_round):
        results = [(FakeClient("c"), OurFitRes(a, n)) for a, n in fit_results_for_round(server_round)]
        return strategy.aggregate_fit(server_round, results, [])[0]

    straight = FedAdam(initial_parameters=initial)
    for server_round in (1, 2, 3):
        expected = step(straight, server_round)

    interrupted = FedAdam(initial_parameters=initial)
    parameters = step(interrupted, 1)
    history = History(rounds=[RoundRecord(1)])
    checkpoint.save(tmp_path, 1, parameters, history, interrupted.state())
    assert sorted(os.listdir(tmp_path)) == ["history.json", "parameters-round-0001.npz",
                                            "strategy-round-0001.npz"]
    restored = checkpoint.load(tmp_path)
    resumed = FedAdam(initial_parameters=initial)
    resumed.restore(restored.parameters, restored.strategy_state)
    step(resumed, 2)
    for mine, reference in zip(step(resumed, 3), expected, strict=True):
        np.testing.assert_array_equal(mine, reference)

    fresh = FedAdam(initial_parameters=initial)  # without the moments it would drift
    fresh.restore(restored.parameters, {})
    step(fresh, 2)
    assert not np.array_equal(step(fresh, 3)[0], expected[0])


def test_fedprox_adds_proximal_mu_to_the_fit_config():
    from fedproto.server.strategy import FedProx

    manager = ClientManager()
    for index in range(3):
        manager.register(FakeClient(f"c{index}"))
    strategy = FedProx(proximal_mu=0.25, min_fit_clients=3, min_available_clients=3,
                       on_fit_config_fn=lambda server_round: {"server_round": server_round})
    instructions = strategy.configure_fit(4, [np.ones(2)], manager)
    assert len(instructions) == 3 and len({id(ins) for _, ins in instructions}) == 1
    assert instructions[0][1].config == {"server_round": 4, "proximal_mu": 0.25}
    assert repr(strategy).startswith("FedProx(proximal_mu=0.25, fraction_fit=1.0")


class FormatWritingClient:
    """A connected client that writes its tensors in ``tensor_type``: fit answers the model plus 1.

    It records the tensor_type of each FitIns it receives.
    """

    def __init__(self, cid: str, tensor_type: str) -> None:
        self.cid, self.tensor_type = cid, tensor_type
        self.fit_formats: list[str] = []

    async def request_bytes(self, message: bytes, timeout=None, last=False) -> bytes:
        from fedproto.codec import ndarrays_to_parameters as to_parameters
        from fedproto.codec import parameters_to_ndarrays
        from fedproto.transport_pb2 import ClientMessage, ServerMessage

        ins = ServerMessage.FromString(message)
        if ins.WhichOneof("msg") == "fit_ins":
            self.fit_formats.append(ins.fit_ins.parameters.tensor_type)
            update = [a + 1 for a in parameters_to_ndarrays(ins.fit_ins.parameters)]
            reply = ClientMessage(fit_res={"num_examples": 1,
                                           "parameters": to_parameters(update, tensor_type=self.tensor_type)})
        else:
            reply = ClientMessage(evaluate_res={"loss": 0.5, "num_examples": 1})
        return reply.SerializeToString()

    async def request(self, message: bytes, timeout=None, last=False):
        from fedproto.transport_pb2 import ClientMessage

        return ClientMessage.FromString(await self.request_bytes(message, timeout, last))


@pytest.mark.parametrize(("size", "in_place"), [(1_000, False), (300_000, True)], ids=["parsed", "decoded-in-place"])
def test_the_loop_decodes_each_fit_res_once_and_learns_its_format_from_the_result(monkeypatch, size, in_place):
    """Each FitRes is read once, by server_role.decode_fit_reply, whichever path its size takes
    (8 KB: protobuf's parse; 2.4 MB: in place), and the tensor_type the client answers in is the
    one the decoded result carries: the cpp_double client gets cpp_double from round 2 on."""
    from fedproto import framing, server_role
    from fedproto.server.loop import LoopConfig, run_rounds
    from fedproto.transport_pb2 import ClientMessage

    splits, parses = [], []
    split, parse = framing.split_tensors, server_role.parse_reply
    monkeypatch.setattr(framing, "split_tensors", lambda data, outer: splits.append(outer) or split(data, outer))
    monkeypatch.setattr(server_role, "parse_reply", lambda data: parses.append(len(data)) or parse(data))

    npy, cpp = FormatWritingClient("npy", "numpy.ndarray"), FormatWritingClient("cpp", "cpp_double")
    model = [np.zeros(size, np.float64)]
    strategy = FedAvg(initial_parameters=model, min_fit_clients=2, min_evaluate_clients=2, min_available_clients=2)

    async def two_rounds():
        manager = ClientManager(seed=0)
        for client in (npy, cpp):
            manager.register(client)
        return await run_rounds(strategy, manager, LoopConfig(rounds=2))

    result = asyncio.run(two_rounds())
    fit_res_count = 4  # 2 clients, 2 rounds
    if in_place:
        assert (splits, parses) == ([ClientMessage] * fit_res_count, [])
    else:
        assert (splits, len(parses)) == ([], fit_res_count)
    assert [sorted(record.fit_clients) for record in result.history.rounds] == [["cpp", "npy"]] * 2
    np.testing.assert_array_equal(result.parameters[0], np.full(size, 2.0))
    assert npy.fit_formats == ["numpy.ndarray"] * 2
    assert cpp.fit_formats == ["numpy.ndarray", "cpp_double"]
