"""The C++ SDK stand-in (tests/cpp_sdk_client.py) is a faithful peer of flwr's real server.

Two stand-ins train through flwr's ``start_server`` with quickstart-cpp's kind of strategy
(tests/flwr_cpp_server.py): every round's model is the FedAvg of what the clients sent, the
next round starts from it, and both clients end as the SDK does when flwr says goodbye. The
stand-in's crash on GetPropertiesIns and its ReconnectIns handling are checked against a raw
gRPC Join server written here, because flwr's server has no way to show them.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest

from conftest import free_port
from fedproto.transport_pb2 import ClientMessage, Reason, Scalar, ServerMessage
from fedproto.wire import JOIN_METHOD

TIMEOUT = 60
TRAIN_SIZES = {0: 1000, 1: 600}


def wait_until_listening(address: str, server) -> None:
    host, _, port = address.rpartition(":")
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and server.popen.poll() is None, server.log()[-4000:]
            time.sleep(0.1)


def start_standin(spawn, tmp_path: Path, client_id: int, address: str):
    return spawn(f"cpp_client_{client_id}", "tests/cpp_sdk_client.py", str(client_id), address,
                 "--train-size", str(TRAIN_SIZES[client_id]), "--record", str(tmp_path / f"client_{client_id}.jsonl"))


def records(tmp_path: Path, client_id: int, kind: str) -> list[dict]:
    lines = (tmp_path / f"client_{client_id}.jsonl").read_text().splitlines()
    return [entry for entry in map(json.loads, lines) if entry["kind"] == kind]


def fedavg(results: list[tuple[list[list[float]], int]]) -> list[np.ndarray]:
    total = sum(n for _, n in results)
    return [sum(np.array(tensors[i]) * n for tensors, n in results) / total for i in range(len(results[0][0]))]


@pytest.mark.parametrize("initial", ["server", "client"])
def test_two_standins_train_two_rounds_through_flwr_and_the_model_is_fedavg_of_their_results(
        spawn, tmp_path, initial):
    address = f"127.0.0.1:{free_port()}"
    out = tmp_path / "run.json"
    server = spawn("flwr_cpp_server", "tests/flwr_cpp_server.py", "--address", address, "--rounds", "2",
                   "--out", str(out), *(["--initial-from-client"] if initial == "client" else []))
    wait_until_listening(address, server)
    clients = [start_standin(spawn, tmp_path, client_id, address) for client_id in TRAIN_SIZES]
    assert server.wait(TIMEOUT) == 0, server.log()[-4000:]
    for client in clients:
        assert client.wait(TIMEOUT) == 0, client.log()[-4000:]
        assert client.log().rstrip().endswith("Disconnect and shut down."), client.log()[-4000:]
    run = json.loads(out.read_text())

    if initial == "server":
        model = [np.array([1.0, 2.0]), np.array([3.0])]  # quickstart-cpp's server.py
        assert not any(records(tmp_path, c, "get_parameters_ins") for c in TRAIN_SIZES)
    else:
        (asked,) = [r for c in TRAIN_SIZES for r in records(tmp_path, c, "get_parameters_ins")]
        model = [np.array(t) for t in asked["sent"]]
    fits = {c: records(tmp_path, c, "fit_ins") for c in TRAIN_SIZES}
    assert [len(f) for f in fits.values()] == [2, 2]
    for server_round in (1, 2):
        results = []
        for client_id, client_fits in fits.items():
            fit = client_fits[server_round - 1]
            for received, expected in zip(fit["received"], model, strict=True):
                np.testing.assert_allclose(received, expected, rtol=0, atol=1e-9)
            assert fit["num_examples"] == TRAIN_SIZES[client_id]
            results.append((fit["sent"], fit["num_examples"]))
        model = fedavg(results)
        aggregated = run["aggregated"][str(server_round)]
        assert [len(t) for t in aggregated] == [2, 1]
        for got, expected in zip(aggregated, model, strict=True):
            np.testing.assert_allclose(got, expected, rtol=0, atol=1e-9)
    assert np.abs(model[0] - [3.5, 9.3]).max() < 0.05  # the line is learned; the bias is slower

    evaluations = {c: records(tmp_path, c, "evaluate_ins") for c in TRAIN_SIZES}
    for server_round in (1, 2):
        rows = [e[server_round - 1] for e in evaluations.values()]
        total = sum(r["num_examples"] for r in rows)
        loss = sum(r["num_examples"] * r["loss"] for r in rows) / total
        metric = sum(r["num_examples"] * r["metric_loss"] for r in rows) / total
        assert run["losses_distributed"][server_round - 1] == [server_round, pytest.approx(loss, rel=1e-12)]
        assert run["metrics_distributed"]["loss"][server_round - 1] == [server_round, pytest.approx(metric, rel=1e-12)]


# ---------------------------------------------------------------------------- a raw Join server


class ScriptedJoin:
    """A Join server that sends ``script`` on each stream in turn and records every reply."""

    def __init__(self, scripts: list[list[ServerMessage]]) -> None:
        self.scripts = queue.SimpleQueue()
        for script in scripts:
            self.scripts.put(script)
        self.streams: list[dict] = []  # per stream: replies and how it ended
        self.opened = threading.Event()

    def join(self, request_iterator, context):
        stream = {"replies": [], "ended": None, "opened_at": time.monotonic()}
        self.streams.append(stream)
        self.opened.set()
        script = self.scripts.get_nowait()
        try:
            for message in script:
                yield message.SerializeToString()
                stream["replies"].append(ClientMessage.FromString(next(request_iterator)))
            stream["ended"] = "script done"
        except StopIteration:
            stream["ended"] = "client half-closed"
        except grpc.RpcError as error:
            stream["ended"] = f"rpc error {error}"
        if not context.is_active():
            stream["ended"] = f"{stream['ended']}; call no longer active"


@pytest.fixture
def scripted_server():
    servers = []

    def start(scripts):
        join = ScriptedJoin(scripts)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        service, method = JOIN_METHOD.strip("/").split("/")
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(
            service, {method: grpc.stream_stream_rpc_method_handler(join.join)})])
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        servers.append(server)
        return join, f"127.0.0.1:{port}"

    yield start
    for server in servers:
        server.stop(grace=None)


def get_properties() -> ServerMessage:
    return ServerMessage(get_properties_ins=ServerMessage.GetPropertiesIns(config={"k": Scalar(string="v")}))


def get_parameters() -> ServerMessage:
    return ServerMessage(get_parameters_ins=ServerMessage.GetParametersIns())


def reconnect(seconds: int) -> ServerMessage:
    return ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=seconds))


@pytest.mark.parametrize("instruction", [
    get_properties(),
    ServerMessage(),
    ServerMessage(fit_ins=ServerMessage.FitIns(config={"big": Scalar(uint64=2**63)})),
], ids=["GetPropertiesIns", "empty ServerMessage", "uint64 config"])
def test_standin_aborts_without_answering_where_the_sdk_throws(spawn, tmp_path, scripted_server, instruction):
    join, address = scripted_server([[get_parameters(), instruction]])
    client = start_standin(spawn, tmp_path, 0, address)
    assert client.wait(TIMEOUT) == -signal.SIGABRT, client.log()
    assert "terminate called after throwing an instance of 'char const*'" in client.log()
    assert "Disconnect and shut down." not in client.log() and "Fitting..." not in client.log()
    deadline = time.monotonic() + TIMEOUT
    while join.streams[0]["ended"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
    (stream,) = join.streams
    assert [r.WhichOneof("msg") for r in stream["replies"]] == ["get_parameters_res"]
    assert stream["ended"] is not None and stream["ended"] != "script done"


def test_standin_replies_have_no_status_and_cpp_double_tensors(spawn, tmp_path, scripted_server):
    join, address = scripted_server([[get_parameters(), reconnect(0)]])
    client = start_standin(spawn, tmp_path, 0, address)
    assert client.wait(TIMEOUT) == 0, client.log()
    (stream,) = join.streams
    parameters_res, disconnect = stream["replies"]
    assert not parameters_res.get_parameters_res.HasField("status")
    parameters = parameters_res.get_parameters_res.parameters
    assert parameters.tensor_type == "cpp_double"
    assert [len(t) for t in parameters.tensors] == [16, 8]
    assert parameters.tensors[1] == b"\x00" * 8  # the example's bias starts at 0.0
    assert disconnect.disconnect_res.reason == Reason.ACK


def test_standin_rejoins_at_once_after_reconnect_with_seconds_and_exits_after_seconds_zero(
        spawn, tmp_path, scripted_server):
    join, address = scripted_server([[reconnect(30)], [reconnect(0)]])
    client = start_standin(spawn, tmp_path, 0, address)
    assert client.wait(TIMEOUT) == 0, client.log()
    assert client.log().rstrip().endswith("Disconnect and shut down.")
    first, second = join.streams
    assert first["replies"][0].disconnect_res.reason == Reason.RECONNECT
    assert second["replies"][0].disconnect_res.reason == Reason.ACK
    assert second["opened_at"] - first["opened_at"] < 10  # not the 30 s asked: the SDK's sleep is commented out


def test_standin_with_no_server_listening_shuts_down_at_once(spawn, tmp_path):
    client = start_standin(spawn, tmp_path, 0, f"127.0.0.1:{free_port()}")
    assert client.wait(TIMEOUT) == 0, client.log()
    assert client.log().rstrip().endswith("Disconnect and shut down.")
