"""Misbehaving clients: each is counted as a failure, left out of the average, and the server
keeps serving everyone else.

One run of ``python -m fedproto.server`` with nine clients in round 1: two good edge clients, and one
each that returns NaN/Inf weights, raises in fit, is killed mid-fit, answers FitIns with an
EvaluateRes, sends a pickled tensor, sends a truncated tensor, and never answers. Two fresh
clients join while round 1 runs (replacing the killed and the timed-out one), so round 2
trains four good clients next to the five misbehaving ones still connected.
"""

from __future__ import annotations

import collections
import time

import numpy as np

from conftest import free_port
from fedproto.client.demo import SoftmaxClient
from fedproto.server.checkpoint import load_npz, save_npz
from fedproto.server.history import History
from fedproto.server.transport import CLIENT_SIDE_ENDED

ROUND_TIMEOUT = 3
ZEROS = [np.zeros((20, 4), np.float32), np.zeros(4, np.float32)]


def fedavg_of_demo_partitions(parameters, partitions, server_round):
    """What FedAvg must produce from demo clients on ``partitions`` (400 examples each)."""
    fits = [SoftmaxClient(partition=p).fit(parameters, {"server_round": server_round})[0]
            for p in partitions]
    return [np.mean([fit[i].astype(np.float64) for fit in fits], axis=0).astype(np.float32)
            for i in range(len(parameters))]


def wait_for_file(path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} did not appear within {timeout} s"
        time.sleep(0.05)


def test_each_misbehaving_client_is_a_counted_failure_and_the_rounds_complete(spawn, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    save_npz(tmp_path / "initial.npz", ZEROS)
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "2",
                   "--min-clients", "9", "--round-timeout", str(ROUND_TIMEOUT),
                   "--initial-parameters", str(tmp_path / "initial.npz"),
                   "--history", str(tmp_path / "history.json"),
                   "--checkpoint-dir", str(tmp_path / "checkpoints"))

    def edge(name, app, partition=0, **env):
        return spawn(name, "-m", "fedproto.client", "--server", address, "--app", app,
                     env={"DEMO_PARTITION": str(partition), **env})

    def raw(mode):
        return spawn(mode, "tests/server_clients.py", mode, "--server", address)

    marker = tmp_path / "slow_fit_started"
    clients = [
        edge("good0", "fedproto.client.demo:make_client", 0),
        edge("good1", "fedproto.client.demo:make_client", 1),
        edge("nan", "tests.server_clients:NanClient"),
        edge("raising", "tests.server_clients:RaisingClient"),
        raw("wrong-type"), raw("pickled"), raw("truncated"), raw("silent"),
    ]
    doomed = edge("killed", "tests.server_clients:SlowClient",
                  SLOW_FIT_MARKER=str(marker), SLOW_FIT_SECONDS="120")
    wait_for_file(marker, 90)  # round 1 fit has reached it
    doomed.kill()
    clients += [edge("late2", "fedproto.client.demo:make_client", 2),
                edge("late3", "fedproto.client.demo:make_client", 3)]

    assert server.wait(90) == 0, server.log()
    for client in clients:
        assert client.wait(30) == 0, f"{client.name}:\n{client.log()}"

    history = History.from_json((tmp_path / "history.json").read_text())
    first, second = history.rounds
    assert (first.fit_ok, first.evaluate_ok, first.evaluate_failures) == (2, 9, [])
    assert collections.Counter(f.kind.value for f in first.fit_failures) == {
        "stream_closed": 1, "timeout": 1, "status": 1, "wrong_reply": 1, "non_finite": 1, "bad_tensor": 2}
    assert (second.fit_ok, second.evaluate_ok, second.evaluate_failures) == (4, 9, [])
    assert collections.Counter(f.kind.value for f in second.fit_failures) == {
        "status": 1, "wrong_reply": 1, "non_finite": 1, "bad_tensor": 2}

    reasons = sorted(f.reason for f in first.fit_failures)
    assert reasons == sorted([
        CLIENT_SIDE_ENDED,
        f"no reply within {ROUND_TIMEOUT} s",
        "FIT_NOT_IMPLEMENTED: fit raised RuntimeError: simulated training crash",
        "expected fit_res, got evaluate_res",
        "FitRes.parameters.tensors[0] holds NaN or Inf",
        "FitRes.parameters.tensors[0]: object arrays are not accepted (pickled .npy)",
        "FitRes.parameters.tensors[0]: truncated .npy data: float32 (20, 4) needs 320 bytes, got 310",
    ])
    log = server.log()
    assert log.count("failed: bad_tensor") == 4 and log.count("failed: non_finite") == 2
    assert "round 1/2: fit 2 ok 7 failed | evaluate 9 ok 0 failed" in log
    assert "round 2/2: fit 4 ok 5 failed | evaluate 9 ok 0 failed" in log
    assert "stream ended: DEADLINE_EXCEEDED" in next(c for c in clients if c.name == "silent").log()

    # Only the good clients were averaged: round 1 over partitions 0, 1; round 2 over 0-3.
    expected = fedavg_of_demo_partitions(ZEROS, [0, 1], 1)
    expected = fedavg_of_demo_partitions(expected, [0, 1, 2, 3], 2)
    final = load_npz(tmp_path / "checkpoints" / "parameters-round-0002.npz")
    for mine, reference in zip(final, expected, strict=True):
        assert mine.dtype == np.float32
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
