"""fedproto-server hosts Flower's C++ SDK clients (the stand-in, tests/cpp_sdk_client.py), alone and
next to our edge client, over loopback; and a run that learns nothing says so with exit code 5.

Each client records what it received and sent (JSON lines), so the tests recompute FedAvg from
the clients' own numbers and compare it with the server's checkpointed model (1e-9).

The edge-client handlers below are loaded by ``python -m fedproto.client`` in a subprocess
(``--app test_server_cpp_clients:...`` with tests/ on PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import ROOT, free_port
from fedproto.server.checkpoint import load_npz
from fedproto.server.history import History
from test_cpp_sdk_standin import TRAIN_SIZES, fedavg, records, start_standin, wait_until_listening

TIMEOUT = 60
EDGE_EXAMPLES = 300
EDGE_EVALUATE_EXAMPLES = 100
EDGE_DELTA = [np.array([0.5, -0.25]), np.array([0.125])]


class LineEdgeClient:
    """A numpy handler for quickstart-cpp's line model (weights (2,), bias (1,), float64).

    fit adds EDGE_DELTA; evaluate's loss is the model's squared distance to the true line.
    Every call is appended to the file named by EDGE_RECORD.
    """

    def get_parameters(self, config):
        return [np.zeros(2), np.zeros(1)]

    def fit(self, parameters, config):
        sent = [p + d for p, d in zip(parameters, EDGE_DELTA, strict=True)]
        self._record({"kind": "fit_ins", "received": [p.tolist() for p in parameters],
                      "dtypes": [p.dtype.str for p in parameters],
                      "sent": [p.tolist() for p in sent], "num_examples": EDGE_EXAMPLES})
        return sent, EDGE_EXAMPLES, {}

    def evaluate(self, parameters, config):
        loss = float(np.sum((parameters[0] - [3.5, 9.3]) ** 2) + (parameters[1][0] - 1.7) ** 2)
        self._record({"kind": "evaluate_ins", "loss": loss, "num_examples": EDGE_EVALUATE_EXAMPLES})
        return loss, EDGE_EVALUATE_EXAMPLES, {}

    @staticmethod
    def _record(entry: dict) -> None:
        with open(os.environ["EDGE_RECORD"], "a") as file:
            file.write(json.dumps(entry) + "\n")


class FailingFitClient(LineEdgeClient):
    """Every fit raises: the client answers FIT_NOT_IMPLEMENTED and nothing is ever learned."""

    def fit(self, parameters, config):
        raise RuntimeError("this client cannot train")


def test_help_lists_the_tensor_formats_hosted_and_exit_code_5():
    run = subprocess.run([sys.executable, "-m", "fedproto.server", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0
    text = " ".join(run.stdout.split())
    for expected in ("Tensor formats hosted: numpy.ndarray (.npy) and cpp_double",
                     "--tensor-type FORMAT", "5 nothing learned: rounds ran but none aggregated a single fit result",
                     "loss 0.612 distributed (4 clients)"):
        assert expected in text


def start_server(spawn, tmp_path: Path, *args: str):
    address = f"127.0.0.1:{free_port()}"
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--round-timeout", "30",
                   "--wait-timeout", str(TIMEOUT), "--checkpoint-dir", str(tmp_path / "ckpt"),
                   "--history", str(tmp_path / "history.json"), *args)
    wait_until_listening(address, server)
    return address, server


def start_edge(spawn, tmp_path: Path, address: str, handler: str):
    return spawn("edge", "-m", "fedproto.client", "--server", address, "--app", f"test_server_cpp_clients:{handler}",
                 env={"PYTHONPATH": f"{ROOT / 'tests'}:{ROOT}", "EDGE_RECORD": str(tmp_path / "edge.jsonl")})


def edge_records(tmp_path: Path, kind: str) -> list[dict]:
    lines = (tmp_path / "edge.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["kind"] == kind]


def assert_close(got, expected) -> None:
    assert len(got) == len(expected)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64), rtol=0, atol=1e-9)


def test_two_cpp_standins_train_through_our_server_and_the_final_model_is_fedavg_of_their_results(
        spawn, tmp_path):
    address, server = start_server(spawn, tmp_path, "--rounds", "2", "--min-clients", "2")
    clients = [start_standin(spawn, tmp_path, client_id, address) for client_id in TRAIN_SIZES]
    assert server.wait(TIMEOUT) == 0, server.log()[-4000:]
    for client in clients:
        assert client.wait(TIMEOUT) == 0, client.log()[-4000:]
        assert client.log().rstrip().endswith("Disconnect and shut down."), client.log()[-4000:]

    # The initial model: the one stand-in asked, as it sent it (flat float64 tensors).
    (asked,) = [r for c in TRAIN_SIZES for r in records(tmp_path, c, "get_parameters_ins")]
    model = [np.array(t) for t in asked["sent"]]
    assert "(cpp_double)" in server.log()
    for server_round in (1, 2):
        results = []
        for client_id in TRAIN_SIZES:
            fit = records(tmp_path, client_id, "fit_ins")[server_round - 1]
            assert_close(fit["received"], model)  # the server wrote it as cpp_double
            results.append((fit["sent"], fit["num_examples"]))
        model = fedavg(results)
    final = load_npz(tmp_path / "ckpt" / "parameters-round-0002.npz")
    assert [(a.dtype, a.shape) for a in final] == [(np.float64, (2,)), (np.float64, (1,))]
    assert_close(final, model)
    assert np.abs(final[0] - [3.5, 9.3]).max() < 0.05  # it learned the line

    history = History.from_json((tmp_path / "history.json").read_text())
    for record in history.rounds:
        assert (record.fit_ok, record.evaluate_ok, len(record.fit_clients), len(record.evaluate_clients)) \
            == (2, 2, 2, 2)
        assert record.fit_failures == [] and record.evaluate_failures == []
    for server_round, loss in history.losses_distributed:
        rows = [records(tmp_path, c, "evaluate_ins")[server_round - 1] for c in TRAIN_SIZES]
        expected = sum(r["num_examples"] * r["loss"] for r in rows) / sum(r["num_examples"] for r in rows)
        assert abs(loss - expected) < 1e-9 * max(1.0, abs(expected))
    assert "round 2/2: fit 2 ok 0 failed | evaluate 2 ok 0 failed | loss " in server.log()
    assert "distributed (2 clients) |" in server.log()


def test_a_cpp_standin_and_our_edge_client_aggregate_together(spawn, tmp_path):
    # A client not heard from yet gets cpp_double, which both read; afterwards each is answered
    # in the format it writes (the edge client writes .npy).
    address, server = start_server(spawn, tmp_path, "--rounds", "2", "--min-clients", "2",
                                   "--tensor-type", "cpp_double")
    standin = start_standin(spawn, tmp_path, 0, address)
    edge = start_edge(spawn, tmp_path, address, "LineEdgeClient")
    assert server.wait(TIMEOUT) == 0, server.log()[-4000:]
    assert standin.wait(TIMEOUT) == 0, standin.log()[-4000:]
    assert edge.wait(TIMEOUT) == 0, edge.log()[-4000:]

    standin_asked = records(tmp_path, 0, "get_parameters_ins")
    if standin_asked:
        model = [np.array(t) for t in standin_asked[0]["sent"]]
    else:  # the edge client was asked
        model = [np.zeros(2), np.zeros(1)]
    for server_round in (1, 2):
        standin_fit = records(tmp_path, 0, "fit_ins")[server_round - 1]
        edge_fit = edge_records(tmp_path, "fit_ins")[server_round - 1]
        assert_close(standin_fit["received"], model)
        assert_close(edge_fit["received"], model)
        assert edge_fit["dtypes"] == ["<f8", "<f8"]
        model = fedavg([(standin_fit["sent"], standin_fit["num_examples"]),
                        (edge_fit["sent"], edge_fit["num_examples"])])
    assert_close(load_npz(tmp_path / "ckpt" / "parameters-round-0002.npz"), model)
    history = History.from_json((tmp_path / "history.json").read_text())
    assert [(r.fit_ok, r.evaluate_ok) for r in history.rounds] == [(2, 2), (2, 2)]


def test_a_run_in_which_no_fit_result_is_aggregated_warns_and_exits_5(spawn, tmp_path):
    address, server = start_server(spawn, tmp_path, "--rounds", "2", "--min-clients", "1")
    edge = start_edge(spawn, tmp_path, address, "FailingFitClient")
    assert server.wait(TIMEOUT) == 5, server.log()[-4000:]
    assert edge.wait(TIMEOUT) == 0, edge.log()[-4000:]
    log = server.log()
    assert ("WARNING fedproto.server: round 2/2: fit 0 ok 1 failed | evaluate 1 ok 0 failed | "
            "loss 101.63 distributed (1 client), model unchanged |") in log
    assert ("WARNING fedproto.server: nothing learned: none of the 2 round(s) aggregated a fit result "
            "(2 fit failures: status); the final model is the initial one") in log
    history = History.from_json((tmp_path / "history.json").read_text())
    assert [(r.fit_ok, r.fit_clients, len(r.evaluate_clients)) for r in history.rounds] == [(0, [], 1)] * 2
    assert_close(load_npz(tmp_path / "ckpt" / "parameters-round-0002.npz"), [np.zeros(2), np.zeros(1)])


# ---------------------------------------------------------------------------- in process: who gets which format


class FormatClient:
    """A connected client that writes ``tensor_type``; fit adds 1 to every value.

    It records the tensor_type of each FitIns/EvaluateIns it receives. ``gives_model=False``
    declines GetParametersIns, so the initial model comes from another client.
    """

    def __init__(self, cid: str, tensor_type: str, gives_model: bool) -> None:
        self.cid, self.tensor_type, self.gives_model = cid, tensor_type, gives_model
        self.received: list[tuple[str, str]] = []

    async def request(self, message: bytes, timeout=None, last=False):
        from fedproto.codec import ndarrays_to_parameters, parameters_to_ndarrays
        from fedproto.transport_pb2 import ClientMessage, ServerMessage

        ins = ServerMessage.FromString(message)
        kind = ins.WhichOneof("msg")
        if kind == "get_parameters_ins":
            if not self.gives_model:
                return ClientMessage(get_parameters_res={"status": {"code": 2}})
            model = ndarrays_to_parameters([np.zeros(2), np.zeros(1)], tensor_type=self.tensor_type)
            return ClientMessage(get_parameters_res={"parameters": model})
        parameters = getattr(ins, kind).parameters
        self.received.append((kind, parameters.tensor_type))
        arrays = parameters_to_ndarrays(parameters)
        if kind == "fit_ins":
            updated = ndarrays_to_parameters([a + 1 for a in arrays], tensor_type=self.tensor_type)
            return ClientMessage(fit_res={"parameters": updated, "num_examples": 10})
        return ClientMessage(evaluate_res={"loss": 0.5, "num_examples": 10})

    async def request_bytes(self, message: bytes, timeout=None, last=False) -> bytes:
        return (await self.request(message, timeout, last)).SerializeToString()


def run_in_process(clients: list[FormatClient], tensor_type: str | None = None):
    import asyncio

    from fedproto.server.client_manager import ClientManager
    from fedproto.server.loop import LoopConfig, run_rounds
    from fedproto.server.strategy import FedAvg

    async def main():
        manager = ClientManager(seed=0)
        for client in clients:
            manager.register(client)
        return await run_rounds(FedAvg(min_available_clients=len(clients)), manager,
                                LoopConfig(rounds=2, tensor_type=tensor_type))

    return asyncio.run(main())


def test_each_client_is_answered_in_the_format_it_writes_and_a_new_one_in_the_initial_models():
    cpp = FormatClient("cpp", "cpp_double", gives_model=True)
    npy = FormatClient("npy", "numpy.ndarray", gives_model=False)
    result = run_in_process([cpp, npy])
    assert cpp.received == [("fit_ins", "cpp_double"), ("evaluate_ins", "cpp_double")] * 2
    # Not heard from before its first FitIns: the initial model's format; then its own.
    assert npy.received == [("fit_ins", "cpp_double"), ("evaluate_ins", "numpy.ndarray"),
                            ("fit_ins", "numpy.ndarray"), ("evaluate_ins", "numpy.ndarray")]
    assert_close(result.parameters, [np.full(2, 2.0), np.full(1, 2.0)])  # +1 per round, averaged
    assert result.learned


def test_tensor_type_fixes_the_format_for_clients_not_heard_from_yet():
    cpp = FormatClient("cpp", "cpp_double", gives_model=False)
    npy = FormatClient("npy", "numpy.ndarray", gives_model=True)
    run_in_process([cpp, npy], tensor_type="cpp_double")
    assert cpp.received == [("fit_ins", "cpp_double"), ("evaluate_ins", "cpp_double")] * 2
    # The model's giver was heard from (its GetParametersRes): answered in its own format.
    assert npy.received == [("fit_ins", "numpy.ndarray"), ("evaluate_ins", "numpy.ndarray")] * 2
