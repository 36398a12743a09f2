"""Updates and initial models that would change the global model's dtype or leave it unchecked
(issue 9, item 2), rounds that run short of clients (item 3), and per-reply metric caps (item 5).

The hostile clients are raw gRPC processes (tests/hostile_clients.py); the servers are
``python -m fedproto.server`` processes or ``run_server`` in this process when the test reads its log.
"""

from __future__ import annotations

import collections
import logging

import numpy as np
import pytest

from conftest import free_port
from fedproto.codec import ndarrays_to_parameters, scalars_to_proto
from fedproto.server.app import run_server
from fedproto.server.checkpoint import load_npz, save_npz
from fedproto.server.history import History
from fedproto.server.strategy import FedAdam, FedAvg, FedProx
from fedproto.server_role import (
    FailureKind,
    FitRes,
    ReplyError,
    decode_fit_res,
    decode_get_parameters_res,
    parse_reply,
)
from fedproto.text import DROPPED_METRICS_KEY, MAX_METRICS
from fedproto.transport_pb2 import ClientMessage, Scalar
from test_server_failures import ZEROS, fedavg_of_demo_partitions

OK = {"code": 0, "message": "Success"}


def edge(spawn, address, partition, name=None):
    return spawn(name or f"good{partition}", "-m", "fedproto.client", "--server", address,
                 "--app", "fedproto.client.demo:make_client", env={"DEMO_PARTITION": str(partition)})


def test_updates_of_another_dtype_are_refused_and_the_model_keeps_its_dtype(spawn, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    save_npz(tmp_path / "initial.npz", ZEROS)
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "2", "--min-clients", "5",
                   "--round-timeout", "30", "--initial-parameters", str(tmp_path / "initial.npz"),
                   "--history", str(tmp_path / "history.json"), "--checkpoint-dir", str(tmp_path / "ckpt"))
    clients = [edge(spawn, address, 0), edge(spawn, address, 1)] + [
        spawn(mode, "tests/hostile_clients.py", mode, "--server", address)
        for mode in ("float64", "big-endian", "int8")]

    assert server.wait(90) == 0, server.log()
    for client in clients:
        assert client.wait(30) == 0, f"{client.name}:\n{client.log()}"

    history = History.from_json((tmp_path / "history.json").read_text())
    for record in history.rounds:
        assert (record.fit_ok, record.evaluate_ok) == (2, 5)
        assert sorted((f.kind, f.reason) for f in record.fit_failures) == [
            (FailureKind.DTYPE_MISMATCH, "FitRes.parameters.tensors[0] has dtype <f8, the model's is <f4"),
            (FailureKind.DTYPE_MISMATCH, "FitRes.parameters.tensors[0] has dtype >f4, the model's is <f4"),
            (FailureKind.DTYPE_MISMATCH, "FitRes.parameters.tensors[0] has dtype |i1, the model's is <f4"),
        ]
    assert server.log().count("failed: dtype_mismatch") == 6

    # FedAvg over the two good clients only; float32 throughout.
    expected = fedavg_of_demo_partitions(fedavg_of_demo_partitions(ZEROS, [0, 1], 1), [0, 1], 2)
    saved = load_npz(tmp_path / "ckpt" / "parameters-round-0002.npz")
    assert [a.dtype.str for a in saved] == ["<f4", "<f4"]
    for mine, reference in zip(saved, expected, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)


def test_no_usable_initial_model_from_any_client_ends_the_run_with_exit_3(spawn):
    address = f"127.0.0.1:{free_port()}"
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "1", "--min-clients", "2",
                   "--round-timeout", "30")
    clients = [spawn(mode, "tests/hostile_clients.py", mode, "--server", address)
               for mode in ("empty-model", "bool-model")]
    assert server.wait(60) == 3, server.log()
    log = server.log()
    assert "failed: unusable_model: GetParametersRes.parameters holds no tensors" in log
    assert "failed: unusable_model: GetParametersRes.parameters.tensors[0] has dtype bool, not a number" in log
    assert "none of the 2 clients asked gave usable initial parameters, and the strategy has none" in log
    assert "round 1" not in log
    for client in clients:
        client.wait(30)


def test_the_next_client_gives_the_initial_model_when_one_hands_out_an_unusable_one(spawn, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "1", "--min-clients", "3",
                   "--round-timeout", "30", "--checkpoint-dir", str(tmp_path / "ckpt"))
    clients = [edge(spawn, address, 0)] + [spawn(mode, "tests/hostile_clients.py", mode, "--server", address)
                                           for mode in ("empty-model", "bool-model")]
    assert server.wait(60) == 0, server.log()
    for client in clients:
        assert client.wait(30) == 0, f"{client.name}:\n{client.log()}"
    log = server.log()
    # The clients are asked in random order until one answers with a usable model: the good one.
    refusals = [line for line in log.splitlines() if "initial parameters from client" in line and "failed" in line]
    assert all("unusable_model" in line for line in refusals) and len(refusals) <= 2
    assert "round 1/1: fit 1 ok 2 failed" in log
    final = load_npz(tmp_path / "ckpt" / "parameters-round-0001.npz")
    for mine, reference in zip(final, fedavg_of_demo_partitions(ZEROS, [0], 1), strict=True):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)


@pytest.mark.parametrize("update", [
    [ZEROS[0].astype(np.float64), ZEROS[1]],
    [ZEROS[0].astype(">f4"), ZEROS[1]],
    [ZEROS[0], ZEROS[1].astype(np.int8)],
], ids=["float64", "big-endian", "int8"])
def test_decode_fit_res_refuses_another_dtype_with_the_tensor_named(update):
    reply = ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(update), "num_examples": 1})
    with pytest.raises(ReplyError) as caught:
        decode_fit_res(parse_reply(reply.SerializeToString()), ZEROS)
    assert caught.value.kind is FailureKind.DTYPE_MISMATCH
    index = next(i for i, (a, m) in enumerate(zip(update, ZEROS)) if a.dtype != m.dtype)
    assert caught.value.reason.startswith(f"FitRes.parameters.tensors[{index}] has dtype {update[index].dtype.str}")


@pytest.mark.parametrize("model", [
    [np.zeros((3, 2), np.float32), np.zeros(2, np.float16)],
    [np.zeros((3, 2), np.float64), np.zeros(2, np.int8)],
    [np.zeros((3, 2), ">f4"), np.zeros(2, ">i8")],
], ids=["float32+float16", "float64+int8", "big-endian"])
@pytest.mark.parametrize("make_strategy", [
    lambda model: FedAvg(),
    lambda model: FedProx(proximal_mu=0.1),
    lambda model: FedAdam(initial_parameters=model),
], ids=["FedAvg", "FedProx", "FedAdam"])
def test_strategies_return_the_models_dtypes(make_strategy, model):
    strategy = make_strategy(model)
    rng = np.random.default_rng(0)
    for server_round in (1, 2, 3):
        results = [(None, FitRes([(m + rng.normal(size=m.shape) * 10).astype(m.dtype) for m in model], n))
                   for n in (3, 7)]
        aggregated, _ = strategy.aggregate_fit(server_round, results, [])
        assert [a.dtype.str for a in aggregated] == [m.dtype.str for m in model]
        assert [a.shape for a in aggregated] == [m.shape for m in model]


def test_a_reply_keeps_at_most_max_metrics_entries_and_its_status_text_is_bounded():
    metrics = {f"m{i:06d}": float(i) for i in range(100_000)}
    reply = ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(ZEROS), "num_examples": 1,
                                   "metrics": scalars_to_proto(metrics)})
    decoded = decode_fit_res(parse_reply(reply.SerializeToString()), ZEROS).metrics
    assert len(decoded) == MAX_METRICS + 1 and decoded[DROPPED_METRICS_KEY] == 100_000 - MAX_METRICS
    assert decoded["m000000"] == 0.0 and "m000064" not in decoded

    forged = "fit failed\nWARNING fedproto.server: round 9: all good" + "x" * 10_000_000
    reply = ClientMessage(fit_res={"status": {"code": 3, "message": forged}})
    with pytest.raises(ReplyError) as caught:
        decode_fit_res(parse_reply(reply.SerializeToString()), ZEROS)
    assert "\n" not in caught.value.reason and len(caught.value.reason) < 300
    assert caught.value.reason.startswith("FIT_NOT_IMPLEMENTED: fit failed\\nWARNING fedproto.server")

    reply = ClientMessage(fit_res={"status": OK, "parameters": ndarrays_to_parameters(ZEROS), "num_examples": 1,
                                   "metrics": {"k\nWARNING forged" + "y" * 1_000_000: Scalar()}})
    with pytest.raises(ReplyError) as caught:
        decode_fit_res(parse_reply(reply.SerializeToString()), ZEROS)
    assert caught.value.kind is FailureKind.MALFORMED
    assert "\n" not in caught.value.reason and len(caught.value.reason) < 300


def test_get_parameters_res_that_is_empty_or_bool_is_unusable():
    for parameters, reason in (([], "GetParametersRes.parameters holds no tensors"),
                               ([np.zeros(2, np.float32), np.ones(2, bool)],
                                "GetParametersRes.parameters.tensors[1] has dtype bool, not a number")):
        reply = ClientMessage(get_parameters_res={"status": OK, "parameters": ndarrays_to_parameters(parameters)})
        with pytest.raises(ReplyError) as caught:
            decode_get_parameters_res(parse_reply(reply.SerializeToString()))
        assert (caught.value.kind, caught.value.reason) == (FailureKind.UNUSABLE_MODEL, reason)


def test_a_round_after_a_client_died_between_rounds_says_how_many_were_live(spawn, caplog):
    address = f"127.0.0.1:{free_port()}"
    clients = {p: edge(spawn, address, p) for p in range(3)}
    replacements = []

    def fit_config(server_round):
        # Round 1 is over; client 2 dies before round 2's FitIns reach it, and a new one comes.
        if server_round == 2:
            clients[2].kill()
            replacements.append(edge(spawn, address, 3))
        return {"server_round": server_round}

    strategy = FedAvg(min_fit_clients=3, min_evaluate_clients=3, min_available_clients=3,
                      initial_parameters=ZEROS, on_fit_config_fn=fit_config)
    with caplog.at_level(logging.INFO, logger="fedproto.server"):
        result = run_server(address, strategy, rounds=2, round_timeout=30, wait_timeout=60)

    rounds = {record.getMessage().split(":")[0]: record for record in caplog.records
              if record.getMessage().startswith("round ") and "/2: fit" in record.getMessage()}
    assert rounds["round 1/2"].levelno == logging.INFO
    assert "clients live" not in rounds["round 1/2"].getMessage()
    second = rounds["round 2/2"]
    assert second.levelno == logging.WARNING
    assert second.getMessage().startswith("round 2/2: fit 2 ok 1 failed | evaluate 3 ok 0 failed")
    assert second.getMessage().endswith(" | 3 of 4 clients live")
    assert collections.Counter(f.kind for f in result.history.round(2).fit_failures) == {
        FailureKind.STREAM_CLOSED: 1}

    expected = fedavg_of_demo_partitions(fedavg_of_demo_partitions(ZEROS, [0, 1, 2], 1), [0, 1], 2)
    for mine, reference in zip(result.parameters, expected, strict=True):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
    for client in [clients[0], clients[1], *replacements]:
        assert client.wait(30) == 0, client.log()
