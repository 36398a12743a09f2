"""Our edge client against flwr's real server (flwr.server.start_server), over loopback gRPC.

Each test runs examples/flwr_server.py and ``python -m fedproto.client`` (and, once, flwr's own
NumPyClient) as separate processes, then checks what flwr's History, the aggregated
parameters and the processes' logs say. The handlers (tests/interop_handlers.py) are
deterministic, so every expected value is computed here by hand.
"""

from __future__ import annotations

import ast
import datetime
import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

import interop_handlers as handlers
from conftest import Proc, free_port

TESTS = Path(__file__).resolve().parent
TIMEOUT = 60  # per process; a whole run takes a few seconds


@dataclass
class FlwrRun:
    """One examples/flwr_server.py process and the files it writes."""

    server: Proc
    address: str
    history_path: Path
    record_dir: Path

    def history(self) -> dict:
        """Wait for the server to finish and return its History JSON."""
        code = self.server.wait(TIMEOUT)
        assert code == 0, self.server.log()[-4000:]
        return json.loads(self.history_path.read_text())

    def aggregated(self, server_round: int) -> list[np.ndarray]:
        with np.load(self.record_dir / f"round_{server_round}.npz") as arrays:
            return [arrays[f"arr_{i}"] for i in range(len(arrays.files))]


def start_flwr_server(spawn, tmp_path, *options: str, rounds: int = 3, min_clients: int = 2,
                      listen: str = "127.0.0.1", host: str = "127.0.0.1") -> FlwrRun:
    """flwr's server listening on ``listen``; clients will dial ``host`` (a name, for TLS)."""
    port = free_port()
    history_path, record_dir = tmp_path / "history.json", tmp_path / "aggregated"
    server = spawn(
        "flwr_server", "examples/flwr_server.py", "--address", f"{listen}:{port}",
        "--rounds", str(rounds), "--min-clients", str(min_clients),
        "--history", str(history_path), "--record-dir", str(record_dir), "--per-client-metrics", *options,
    )
    return FlwrRun(server, f"{host}:{port}", history_path, record_dir)


def wait_until_listening(run: FlwrRun, timeout: float = TIMEOUT) -> None:
    """For tests that must not spend client retries on the server's start-up."""
    host, _, port = run.address.rpartition(":")
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            return
        except OSError:
            assert time.monotonic() < deadline and run.server.popen.poll() is None, run.server.log()[-4000:]
            time.sleep(0.1)


def handler_env(client: int, tmp_path: Path, **extra: str) -> dict[str, str]:
    return {"PYTHONPATH": str(TESTS), "HANDLER_CLIENT": str(client),
            "HANDLER_RECORD": str(tmp_path / f"record_{client}.jsonl"), **extra}


def start_edge_client(spawn, run: FlwrRun, tmp_path, client: int, *options: str,
                      app: str = "interop_handlers:delta_client", **extra_env: str) -> Proc:
    # --retry-delay is small because the clients start while flwr's server is still importing.
    return spawn(f"edge_client_{client}", "-m", "fedproto.client", "--server", run.address, "--app", app,
                 "--retry-delay", "0.2", *options, env=handler_env(client, tmp_path, **extra_env))


def assert_exits_zero(*procs: Proc) -> None:
    for proc in procs:
        assert proc.wait(TIMEOUT) == 0, proc.log()[-4000:]


def records(tmp_path: Path, client: int) -> list[dict]:
    lines = (tmp_path / f"record_{client}.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def per_client(history: dict, section: str, server_round: int) -> list[tuple[int, dict]]:
    """The per-client metrics recorded by examples/flwr_server.py, values decoded from repr."""
    by_round = dict(history[section]["per_client"])
    return [(n, {k: ast.literal_eval(v) for k, v in m.items()}) for n, m in json.loads(by_round[server_round])]


def typed(values: dict) -> dict:
    """Values with their exact type, so True != 1 and b'x' != 'x' in comparisons."""
    return {key: (type(value).__name__, value) for key, value in values.items()}


def expected_fedavg(rounds: int, clients: list[int], fails=lambda client, rnd: False) -> list[list[np.ndarray]]:
    """Global parameters after each round: the example-weighted mean of the clients' results."""
    params = [p.astype(np.float64) for p in handlers.initial_parameters()]
    after_round = []
    for rnd in range(1, rounds + 1):
        results = [(handlers.fit_examples(k), [p + d for p, d in zip(params, handlers.fit_delta(k, rnd))])
                   for k in clients if not fails(k, rnd)]
        total = sum(n for n, _ in results)
        params = [sum(n * arrays[i] for n, arrays in results) / total for i in range(len(params))]
        after_round.append(params)
    return after_round


def assert_fedavg_run(run: FlwrRun, history: dict, clients: list[int], rounds: int = 3) -> None:
    """Aggregates, losses and metrics of a run where every client fits every round."""
    for rnd, expected in enumerate(expected_fedavg(rounds, clients), start=1):
        got = run.aggregated(rnd)
        assert [a.dtype for a in got] == [np.float64, np.float32]
        for got_tensor, expected_tensor in zip(got, expected):
            np.testing.assert_allclose(got_tensor, expected_tensor, rtol=0, atol=1e-6)
        # EvaluateRes.loss is a 32-bit float on the wire.
        losses = [(handlers.evaluate_examples(k), np.float32(handlers.evaluate_loss(k, got)).item()) for k in clients]
        expected_loss = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
        assert dict(history["losses_distributed"])[rnd] == pytest.approx(expected_loss, rel=0, abs=1e-9)
        fit_metrics = sorted(per_client(history, "metrics_distributed_fit", rnd), key=lambda item: item[0])
        assert [(n, typed(m)) for n, m in fit_metrics] == [
            (handlers.fit_examples(k), typed(handlers.fit_metrics(k, rnd))) for k in clients]
        evaluated = sorted(per_client(history, "metrics_distributed", rnd), key=lambda item: item[0])
        assert evaluated == [(handlers.evaluate_examples(k), {"client": k, "loss_copy": handlers.evaluate_loss(k, got)})
                             for k in clients]  # a metric is a 64-bit double: loss_copy is exact
    assert history["failures"] == {str(rnd): [] for rnd in range(1, rounds + 1)}
    weights = {k: handlers.fit_examples(k) for k in clients}
    assert history["metrics_distributed_fit"]["round"] == [[rnd, rnd] for rnd in range(1, rounds + 1)]
    assert dict(history["metrics_distributed_fit"]["client"])[1] == sum(k * n for k, n in weights.items()) / sum(
        weights.values())


def log_time(line: str) -> datetime.datetime:
    return datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


# ------------------------------------------------------------------------------------ tests


def test_fedavg_three_rounds_aggregates_the_weighted_average_of_two_edge_clients(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path)
    clients = [start_edge_client(spawn, run, tmp_path, k) for k in (0, 1)]
    history = run.history()
    assert_exits_zero(*clients)

    assert_fedavg_run(run, history, clients=[0, 1])
    for proc in clients:
        log = proc.log()
        assert log.count("fit_ins (") == 3 and log.count("evaluate_ins (") == 3
        assert "reconnect_ins(seconds=0) answered with DisconnectRes" in log
        assert "server ended the session" in log


def test_every_scalar_kind_crosses_both_ways(spawn, tmp_path):
    config = {"lr": 0.25, "epochs": 7, "offset": -3, "shuffle": True, "name": "fedproto ✓",
              "huge": 2**64 - 1}  # above sint64: flwr sends it as uint64
    run = start_flwr_server(spawn, tmp_path, "--config-json", json.dumps(config),
                            "--bytes-config", "blob=00ff7f", rounds=1, min_clients=1)
    client = start_edge_client(spawn, run, tmp_path, 0)
    history = run.history()
    assert_exits_zero(client)

    sent = {**config, "blob": b"\x00\xff\x7f", "server_round": 1}
    expected = {key: [type(value).__name__, repr(value)] for key, value in sorted(sent.items())}
    received = records(tmp_path, 0)
    assert [r["method"] for r in received] == ["get_parameters", "fit", "evaluate"]
    assert received[0]["config"] == {}
    assert received[1]["config"] == expected
    assert received[2]["config"] == expected
    assert [(n, typed(m)) for n, m in per_client(history, "metrics_distributed_fit", 1)] == [
        (handlers.fit_examples(0), typed(handlers.fit_metrics(0, 1)))]


def test_mixed_fleet_with_flwr_numpy_client(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path)
    ours = start_edge_client(spawn, run, tmp_path, 0)
    theirs = spawn("flwr_client_1", str(TESTS / "flwr_numpy_client.py"), run.address,
                   env=handler_env(1, tmp_path))
    history = run.history()
    assert_exits_zero(ours, theirs)

    assert_fedavg_run(run, history, clients=[0, 1])
    assert [r["method"] for r in records(tmp_path, 0) if r["method"] != "get_parameters"] == ["fit", "evaluate"] * 3
    assert [r["method"] for r in records(tmp_path, 1) if r["method"] != "get_parameters"] == ["fit", "evaluate"] * 3


def test_get_properties_answered_or_not_implemented(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path, "--ask-properties", rounds=1)
    with_properties = start_edge_client(spawn, run, tmp_path, 0, app="interop_handlers:properties_client")
    without = start_edge_client(spawn, run, tmp_path, 1)
    history = run.history()
    assert_exits_zero(with_properties, without)

    assert history["properties"] == [
        {"code": "GET_PROPERTIES_NOT_IMPLEMENTED", "message": "Client does not implement `get_properties`",
         "properties": {}},
        {"code": "OK", "message": "Success",
         "properties": {"client": "0", "echo": repr(repr({"asked_by": "flwr_server.py"})),
                        "has_gpu": "False", "memory_mb": "64.5"}},
    ]
    assert history["failures"] == {"1": []}  # both went on to train
    assert len(per_client(history, "metrics_distributed_fit", 1)) == 2


def test_reconnect_with_seconds_rejoins_after_the_pause_and_keeps_training(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path, "--reconnect-after-round", "1", "--reconnect-seconds", "2")
    clients = [start_edge_client(spawn, run, tmp_path, k) for k in (0, 1)]
    history = run.history()
    assert_exits_zero(*clients)

    [reconnect] = history["reconnects"]
    assert (reconnect["round"], reconnect["seconds"], reconnect["reasons"], reconnect["failures"]) == (
        1, 2, ["RECONNECT", "RECONNECT"], [])
    # Both clients ended their calls soon after the DisconnectRes; until a call ends, flwr still
    # lists that client as available and may send it the next instruction.
    assert reconnect["streams_closed_after_s"] < 0.8
    assert_fedavg_run(run, history, clients=[0, 1])
    for proc in clients:
        lines = proc.log().splitlines()
        [asked] = [i for i, line in enumerate(lines) if "server asked us to reconnect in 2 s" in line]
        assert "reconnect_ins(seconds=2) answered with DisconnectRes" in lines[asked - 1]
        assert f"joined {run.address}" in lines[asked + 1]
        assert "evaluate_ins (" in lines[asked + 2]  # round 1's evaluation, on the new stream
        assert (log_time(lines[asked + 1]) - log_time(lines[asked])).total_seconds() >= 2.0
        assert sum(f"joined {run.address}" in line for line in lines) == 2
        assert "server ended the session" in lines[-1]
        assert not [line for line in lines if " ERROR " in line or "Traceback" in line], proc.log()


def test_handler_error_in_fit_is_one_failure_and_the_client_stays(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path)
    healthy = start_edge_client(spawn, run, tmp_path, 0)
    failing = start_edge_client(spawn, run, tmp_path, 1, HANDLER_FAIL_FIT_ROUND="2")
    history = run.history()
    assert_exits_zero(healthy, failing)

    assert history["failures"] == {
        "1": [], "2": ["FIT_NOT_IMPLEMENTED: fit raised RuntimeError: client 1 refuses round 2"], "3": []}
    expected = expected_fedavg(3, [0, 1], fails=lambda client, rnd: (client, rnd) == (1, 2))
    for rnd in (1, 2, 3):
        for got, want in zip(run.aggregated(rnd), expected[rnd - 1]):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)
    assert [n for n, _ in per_client(history, "metrics_distributed_fit", 2)] == [handlers.fit_examples(0)]
    assert len(per_client(history, "metrics_distributed_fit", 3)) == 2
    log = failing.log()
    assert "RuntimeError: client 1 refuses round 2" in log  # the traceback, for the device's owner
    assert log.count("fit_ins (") == 3


def test_tls_with_the_right_ca_trains_and_the_wrong_ca_exits_4(spawn, tmp_path, tls_files):
    run = start_flwr_server(spawn, tmp_path, "--certificates", str(tls_files.ca), str(tls_files.cert),
                            str(tls_files.key), rounds=1, min_clients=1, host="localhost")
    wrong = start_edge_client(spawn, run, tmp_path, 1, "--root-certificates", str(tls_files.other_ca))
    assert wrong.wait(TIMEOUT) == 4
    assert re.search(rf"ERROR fedproto.client: TLS handshake with {run.address} failed: .*CERTIFICATE_VERIFY_FAILED",
                     wrong.log()), wrong.log()

    right = start_edge_client(spawn, run, tmp_path, 0, "--root-certificates", str(tls_files.ca))
    history = run.history()
    assert_exits_zero(right)
    assert history["failures"] == {"1": []}
    assert per_client(history, "metrics_distributed_fit", 1) == [(handlers.fit_examples(0), handlers.fit_metrics(0, 1))]


def test_max_message_length_refuses_bigger_instructions(spawn, tmp_path):
    # FitIns and EvaluateIns with interop_handlers' two tensors are 343 bytes; allow 300.
    run = start_flwr_server(spawn, tmp_path, "--initial-zeros", "[[3, 2], [4]]", rounds=1, min_clients=1)
    wait_until_listening(run)
    client = start_edge_client(spawn, run, tmp_path, 0, "--max-message-length", "300", "--retries", "2")
    history = run.history()
    assert client.wait(TIMEOUT) == 3

    assert history["failures"] == {"1": ["GrpcBridgeClosed: "]}  # flwr saw the stream end during fit
    reason = "RESOURCE_EXHAUSTED: Stream removed (CLIENT: Received message larger than max (343 vs. 300))"
    lines = client.log().splitlines()
    assert len(lines) == 2, lines  # FitIns refused, rejoined, EvaluateIns refused, gave up
    assert lines[0].endswith(
        f"WARNING fedproto.client: stream to {run.address} ended: {reason}; joining again in 0.2 s")
    assert lines[1].endswith(f"ERROR fedproto.client: giving up on {run.address} after 2 attempts: {reason}")


def test_ipv6_loopback_address_in_brackets(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path, rounds=1, min_clients=1, listen="[::1]", host="[::1]")
    client = start_edge_client(spawn, run, tmp_path, 0)
    history = run.history()
    assert_exits_zero(client)
    assert history["failures"] == {"1": []}
    assert f"joined {run.address}" in client.log()
