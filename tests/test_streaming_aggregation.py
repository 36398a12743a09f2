"""Aggregation as results arrive (issue 11, item 3): the server folds each checked result into a
running sum and drops it, so a round holds a constant number of models whatever the number of
clients; a reply that fails its checks never reaches the sum; the result is still flwr's FedAvg.

The loop runs here with stand-in clients (``LazyClient``) that build their reply only when asked,
as bytes parsed like the transport's, so the only replies alive are the ones the server keeps.
"""

from __future__ import annotations

import asyncio
import tracemalloc

import numpy as np
import pytest
from flwr.common import Code, Status
from flwr.common import FitRes as FlwrFitRes
from flwr.common import ndarrays_to_parameters as flwr_parameters
from flwr.server.strategy.aggregate import aggregate, weighted_loss_avg

from fedproto.codec import ndarrays_to_parameters
from fedproto.server.client_manager import ClientManager
from fedproto.server.loop import LoopConfig, run_rounds
from fedproto.server.strategy import CollectedFit, FedAdam, FedAvg, FedAvgFit, WeightedSum
from fedproto.server_role import (
    IN_PLACE_DECODE_BYTES,
    EvaluateRes,
    FailureKind,
    FitRes,
    ReplyError,
    decode_fit_reply,
    parse_reply,
    reply_tensor_type,
)
from fedproto.transport_pb2 import ClientMessage, ServerMessage

OK = {"code": 0, "message": "Success"}


class LazyClient:
    """A connected client that computes its FitRes/EvaluateRes when asked, on the next loop turn."""

    def __init__(self, cid: str, make_update, num_examples: int, loss: float = 1.0) -> None:
        self.cid = cid
        self.make_update = make_update  # () -> the NDArrays it answers FitIns with
        self.num_examples = num_examples
        self.loss = loss

    async def request_bytes(self, message: bytes, timeout=None, last=False) -> bytes:
        kind = ServerMessage.FromString(message).WhichOneof("msg")
        await asyncio.sleep(0)  # the reply comes later, as over a network
        if kind == "fit_ins":
            reply = ClientMessage(fit_res={"status": OK, "num_examples": self.num_examples,
                                           "parameters": ndarrays_to_parameters(self.make_update())})
        else:
            reply = ClientMessage(evaluate_res={"status": OK, "num_examples": self.num_examples,
                                                "loss": self.loss})
        return reply.SerializeToString()

    async def request(self, message: bytes, timeout=None, last=False) -> ClientMessage:
        return parse_reply(await self.request_bytes(message, timeout, last))


def run_one_round(strategy, clients) -> tuple:
    async def scenario():
        manager = ClientManager(seed=0)
        for client in clients:
            manager.register(client)
        return await run_rounds(strategy, manager, LoopConfig(rounds=1))

    result = asyncio.run(scenario())
    return result.parameters, result.history.rounds[0], result.history


def fedavg_for(clients_count: int, model) -> FedAvg:
    return FedAvg(initial_parameters=model, min_fit_clients=clients_count, min_evaluate_clients=clients_count,
                  min_available_clients=clients_count)


def peak_bytes_of_a_round(clients_count: int, model_size: int) -> int:
    """tracemalloc's peak over one fit + evaluate round with ``clients_count`` clients."""
    model = [np.zeros(model_size, np.float32)]
    clients = [LazyClient(f"c{i}", lambda i=i: [np.full(model_size, i, np.float32)], 1)
               for i in range(clients_count)]
    strategy = fedavg_for(clients_count, model)
    tracemalloc.start()
    try:
        parameters, record, _ = run_one_round(strategy, clients)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert record.fit_ok == clients_count
    np.testing.assert_allclose(parameters[0], np.full(model_size, (clients_count - 1) / 2), rtol=0, atol=1e-6)
    return peak


def test_a_round_holds_the_same_few_models_with_4_or_48_clients():
    model_size = 1_000_000  # 4 MB of float32
    model_bytes = 4 * model_size
    few, many = peak_bytes_of_a_round(4, model_size), peak_bytes_of_a_round(48, model_size)
    # Holding the results would add 44 models (176 MB) to the peak; folding them adds nothing.
    assert many - few < model_bytes / 2, (few / model_bytes, many / model_bytes)
    # Global model, its encoded FitIns, the float64 sum (2 models), the mean, one reply in flight.
    assert many < 10 * model_bytes, many / model_bytes


def random_results(seed: int, count: int = 6):
    rng = np.random.default_rng(seed)
    return [([rng.normal(size=(7, 3)).astype(np.float32), rng.normal(size=5),
              rng.integers(-50, 50, size=4).astype(np.int64)], int(n))
            for n in rng.integers(1, 500, size=count)]


def test_folding_in_any_arrival_order_equals_flwrs_fedavg():
    results = random_results(1)
    reference = aggregate([(arrays, n) for arrays, n in results])  # flwr's FedAvg
    for order in (range(len(results)), reversed(range(len(results))), [3, 0, 5, 1, 4, 2]):
        aggregator = FedAvg().begin_fit(1, results[0][0])
        assert isinstance(aggregator, FedAvgFit)
        for index in order:
            aggregator.fold(None, FitRes(*results[index]))
        parameters, _ = aggregator.finish([])
        assert [a.dtype for a in parameters] == [np.float32, np.float64, np.int64]
        for mine, theirs in zip(parameters[:2], reference[:2], strict=True):
            np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
        np.testing.assert_array_equal(parameters[2], np.rint(reference[2]))


def test_the_round_through_the_loop_equals_flwrs_fedavg_and_weighted_loss():
    results = random_results(2, count=5)
    model = [np.zeros_like(a) for a in results[0][0]]
    losses = [0.5, 2.0, 0.25, 1.5, 3.0]
    clients = [LazyClient(f"c{i}", lambda arrays=arrays: arrays, n, loss)
               for i, ((arrays, n), loss) in enumerate(zip(results, losses, strict=True))]
    parameters, record, history = run_one_round(fedavg_for(5, model), clients)
    reference = aggregate(results)
    for mine, theirs in zip(parameters[:2], reference[:2], strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    assert sorted(record.fit_clients) == sorted(record.evaluate_clients) == [f"c{i}" for i in range(5)]
    (_, loss), = history.losses_distributed
    assert loss == pytest.approx(
        weighted_loss_avg([(n, client_loss) for (_, n), client_loss in zip(results, losses)]), abs=1e-12)


class RecordingFedAvg(FedAvg):
    """FedAvg whose aggregator remembers which clients' results it was given."""

    folded: list[str]

    def begin_fit(self, server_round, parameters):
        aggregator = super().begin_fit(server_round, parameters)
        self.folded = []
        fold = aggregator.fold

        def recording_fold(client, res):
            self.folded.append(client.cid)
            fold(client, res)

        aggregator.fold = recording_fold
        return aggregator


@pytest.mark.parametrize("shape", [(2, 3), (600, 500)], ids=["parsed", "decoded-in-place"])
def test_replies_that_fail_their_checks_never_reach_the_sum(shape):
    assert (4 * np.prod(shape) >= IN_PLACE_DECODE_BYTES) == (shape == (600, 500))  # both decode paths
    model = [np.zeros(shape, np.float32)]
    swapped = shape[::-1]
    good = [LazyClient("good1", lambda: [np.full(shape, 1.0, np.float32)], 1),
            LazyClient("good2", lambda: [np.full(shape, 4.0, np.float32)], 2)]
    bad = [LazyClient("nan", lambda: [np.full(shape, np.nan, np.float32)], 1000),
           LazyClient("float64", lambda: [np.full(shape, 1e6, np.float64)], 1000),
           LazyClient("shape", lambda: [np.full(swapped, 1e6, np.float32)], 1000)]
    strategy = RecordingFedAvg(initial_parameters=model, min_fit_clients=5, min_evaluate_clients=5,
                               min_available_clients=5)
    parameters, record, _ = run_one_round(strategy, good + bad)
    assert sorted(strategy.folded) == ["good1", "good2"]
    assert {f.cid: f.kind for f in record.fit_failures} == {
        "nan": FailureKind.NON_FINITE, "float64": FailureKind.DTYPE_MISMATCH, "shape": FailureKind.SHAPE_MISMATCH}
    assert parameters[0].dtype == np.float32 and (parameters[0] == 3.0).all()


@pytest.mark.parametrize("tensor_type", ["numpy.ndarray", "cpp_double"])
def test_a_fitres_decoded_in_place_still_tells_its_tensor_format(tensor_type):
    update = [np.ones(300_000, np.float64)]
    reply = ClientMessage(fit_res={"status": OK, "num_examples": 1,
                                   "parameters": ndarrays_to_parameters(update, tensor_type=tensor_type)})
    data = reply.SerializeToString()
    assert len(data) >= IN_PLACE_DECODE_BYTES
    decoded = decode_fit_reply(data, update)
    assert decoded.tensor_type == tensor_type == reply_tensor_type(parse_reply(data))
    np.testing.assert_array_equal(decoded.parameters[0], update[0])


def test_the_running_sum_refuses_a_mismatched_model_before_adding_anything():
    running = WeightedSum([np.zeros(3, np.float32), np.zeros(2, np.float32)])
    running.add([np.ones(3, np.float32), np.ones(2, np.float32)], 2)
    for mismatched, kind in (([np.ones(3, np.float32)], FailureKind.SHAPE_MISMATCH),
                             ([np.ones(3, np.float32), np.ones(3, np.float32)], FailureKind.SHAPE_MISMATCH),
                             ([np.ones(3, np.float32), np.ones(2, np.float64)], FailureKind.DTYPE_MISMATCH),
                             ([np.ones(3, np.float32), np.ones(1, np.float32)], FailureKind.SHAPE_MISMATCH)):
        with pytest.raises(ReplyError) as caught:
            running.add([a * 1000 for a in mismatched], 5)
        assert caught.value.kind is kind
    assert (running.count, running.total) == (1, 2)
    assert [a.tolist() for a in running.mean()] == [[1.0] * 3, [1.0] * 2]


def test_tensors_longer_than_a_fold_step_and_complex_ones_are_summed_whole():
    rng = np.random.default_rng(3)
    long = [rng.normal(size=200_003).astype(np.float32), (rng.normal(size=3) + 1j * rng.normal(size=3))]
    other = [rng.normal(size=200_003).astype(np.float32), (rng.normal(size=3) + 1j * rng.normal(size=3))]
    running = WeightedSum()
    running.add(long, 3)
    running.add(other, 5)
    mean = running.mean()
    np.testing.assert_allclose(mean[0], (long[0].astype(np.float64) * 3 + other[0] * 5) / 8, rtol=0, atol=1e-6)
    np.testing.assert_allclose(mean[1], (long[1] * 3 + other[1] * 5) / 8, rtol=0, atol=1e-12)
    assert [a.dtype for a in mean] == [np.float32, np.complex128]


def test_a_subclass_that_overrides_aggregate_fit_still_gets_the_rounds_list():
    seen = []

    class ListFedAvg(FedAvg):
        def aggregate_fit(self, server_round, results, failures):
            seen.append([client.cid for client, _ in results])
            return super().aggregate_fit(server_round, results, failures)

        def aggregate_evaluate(self, server_round, results, failures):
            seen.append([res.loss for _, res in results])
            return super().aggregate_evaluate(server_round, results, failures)

    model = [np.zeros(2, np.float32)]
    assert isinstance(ListFedAvg().begin_fit(1, model), CollectedFit)
    clients = [LazyClient(f"c{i}", lambda i=i: [np.full(2, i, np.float32)], 1, loss=float(i)) for i in range(3)]
    strategy = ListFedAvg(initial_parameters=model, min_fit_clients=3, min_evaluate_clients=3,
                          min_available_clients=3)
    parameters, _, history = run_one_round(strategy, clients)
    assert sorted(seen[0]) == ["c0", "c1", "c2"] and sorted(seen[1]) == [0.0, 1.0, 2.0]
    assert parameters[0].tolist() == [1.0, 1.0] and history.losses_distributed == [(1, 1.0)]


def test_fedadam_streams_its_pseudo_gradient_like_its_all_at_once_form():
    initial = [np.zeros((4, 3), np.float32)]
    streamed, listed = FedAdam(initial_parameters=initial, eta=0.05), FedAdam(initial_parameters=initial, eta=0.05)
    parameters = initial
    for server_round in (1, 2):
        results = [([np.random.default_rng(server_round * 10 + i).normal(size=(4, 3)).astype(np.float32)], n)
                   for i, n in enumerate((3, 9))]
        aggregator = streamed.begin_fit(server_round, parameters)
        for arrays, n in results:
            aggregator.fold(None, FitRes(arrays, n))
        parameters, _ = aggregator.finish([])
        expected, _ = listed.aggregate_fit(server_round, [(None, FitRes(a, n)) for a, n in results], [])
        np.testing.assert_array_equal(parameters[0], expected[0])
    assert np.abs(parameters[0]).max() > 0.01


def test_evaluate_aggregator_matches_flwr_and_honours_accept_failures():
    from fedproto.server_role import Failure

    results = [(3, 0.5), (1, 2.0), (6, 0.125)]
    aggregator = FedAvg().begin_evaluate(1)
    for n, loss in results:
        aggregator.fold(None, EvaluateRes(loss, n))
    loss, _ = aggregator.finish([])
    assert loss == pytest.approx(weighted_loss_avg(results), abs=1e-15)
    strict = FedAvg(accept_failures=False).begin_evaluate(1)
    strict.fold(None, EvaluateRes(1.0, 1))
    assert strict.finish([Failure("c", FailureKind.TIMEOUT, "late")]) == (None, {})
    assert FedAvg().begin_evaluate(1).finish([]) == (None, {})


def test_flwrs_in_place_fedavg_agrees_with_the_streamed_one():
    from flwr.server.strategy.aggregate import aggregate_inplace

    results = random_results(4)
    aggregator = FedAvg().begin_fit(1, results[0][0])
    for arrays, n in results:
        aggregator.fold(None, FitRes(arrays, n))
    parameters, _ = aggregator.finish([])
    theirs = aggregate_inplace([(None, FlwrFitRes(Status(Code.OK, ""), flwr_parameters(arrays), n, {}))
                                for arrays, n in results])
    for mine, reference in zip(parameters[:2], theirs[:2], strict=True):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
