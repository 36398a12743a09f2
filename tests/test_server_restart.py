"""Crash and resume: SIGKILL the server after round 2 of 4, start it again with --resume.

The edge clients rejoin on their own (their stream broke, so they back off and join again),
the restarted server continues with round 3 from the round-2 checkpoint, and the result is
the model an uninterrupted run produces.
"""

from __future__ import annotations

import time

import numpy as np

from conftest import free_port
from fedproto.client.demo import SoftmaxClient
from fedproto.server.checkpoint import load_npz
from fedproto.server.history import History

ROUNDS = 4


def uninterrupted_fedavg(rounds: int, partitions: list[int]):
    """The demo model after ``rounds`` of FedAvg over equal-sized partitions, from zeros."""
    clients = [SoftmaxClient(partition=p) for p in partitions]
    parameters = clients[0].get_parameters({})
    for server_round in range(1, rounds + 1):
        fits = [c.fit(parameters, {"server_round": server_round})[0] for c in clients]
        parameters = [np.mean([fit[i].astype(np.float64) for fit in fits], axis=0).astype(np.float32)
                      for i in range(len(parameters))]
    return parameters


def wait_for_round(history_path, server_round: int, timeout: float) -> History:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if history_path.exists():
            history = History.from_json(history_path.read_text())
            if history.last_round >= server_round:
                return history
        time.sleep(0.02)
    raise AssertionError(f"round {server_round} was not checkpointed within {timeout} s")


def test_killed_server_resumes_from_the_last_round_and_loses_nothing(spawn, tmp_path):
    port = free_port()
    checkpoints = tmp_path / "checkpoints"
    command = ("-m", "fedproto.server", "--address", f"127.0.0.1:{port}", "--rounds", str(ROUNDS),
               "--min-clients", "2", "--checkpoint-dir", str(checkpoints))
    first = spawn("server_first", *command)
    clients = [
        spawn(f"client{p}", "-m", "fedproto.client", "--server", f"127.0.0.1:{port}", "--retry-delay", "0.2",
              "--app", "tests.server_clients:SlowClient",
              env={"DEMO_PARTITION": str(p), "SLOW_FIT_SECONDS": "0.5"})
        for p in (0, 1)
    ]
    before = wait_for_round(checkpoints / "history.json", 2, timeout=90)
    first.kill()  # SIGKILL, in the middle of round 3's half-second fit
    assert before.last_round == 2, "the checkpoint moved past round 2 before the kill"
    assert "round 3/4" not in first.log()

    second = spawn("server_second", *command, "--resume")
    assert second.wait(90) == 0, second.log()
    for client in clients:
        assert client.wait(30) == 0, client.log()
        assert client.log().count(f"joined 127.0.0.1:{port}") == 2  # first server, then the second

    after = History.from_json((checkpoints / "history.json").read_text())
    assert [r.server_round for r in after.rounds] == [1, 2, 3, 4]
    assert after.rounds[:2] == before.rounds
    assert after.losses_distributed[:2] == before.losses_distributed
    assert {name: values[:2] for name, values in after.metrics_distributed.items()} == before.metrics_distributed
    assert [(r.fit_ok, len(r.fit_failures), r.evaluate_ok) for r in after.rounds[2:]] == [(2, 0, 2)] * 2
    assert "resuming after round 2 from" in second.log()
    assert "initial parameters" not in second.log()

    final = load_npz(checkpoints / f"parameters-round-{ROUNDS:04d}.npz")
    for mine, reference in zip(final, uninterrupted_fedavg(ROUNDS, [0, 1]), strict=True):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
    assert sorted(p.name for p in checkpoints.iterdir()) == ["history.json", "parameters-round-0004.npz"]
