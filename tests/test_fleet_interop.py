"""fedproto's Fleet node against the real flwr 1.42 SuperLink: real processes over loopback.

Each test starts `flower-superlink`, our nodes (`python -m fedproto.client --superlink ... --app
superlink_app.handlers:make_client`) and `flwr run` of examples/superlink_app, whose ServerApp
writes the final global model and every reply it received. The expected model is computed here,
independently, from the handler's arithmetic (superlink_app/arithmetic.py). A node keeps serving
until SIGTERM, like flwr's SuperNode; every test ends its nodes that way and expects exit code 0.
"""

from __future__ import annotations

import json
import signal
import sys
import time

import numpy as np
import pytest

from superlink_harness import EXAMPLE_APP, Harness, Process

sys.path.insert(0, str(EXAMPLE_APP))
from superlink_app.arithmetic import (  # noqa: E402
    evaluate_examples,
    evaluate_loss,
    expected_fedavg,
    fit_examples,
)
from superlink_app.client_app import EVAL_LOSS_KEY, NUM_EXAMPLES_KEY  # noqa: E402

pytestmark = pytest.mark.timeout(240)

APP = "superlink_app.handlers:make_client"
RUN_TIMEOUT = 150.0
# The node's idle poll; flwr's SuperNode (and our default) waits 3 s between empty pulls.
NODE_ARGS = ["--poll-interval", "0.2"]
ERROR_CLIENT_APP_RAISED_EXCEPTION = 2  # flwr.common.constant.ErrorCode


def run_config(result_dir, **overrides) -> dict:
    return {"poll-interval": 0.2, "result-dir": str(result_dir), **overrides}


def start_nodes(harness: Harness, clients: list[int], transport: str = "http",
                env: dict[int, dict[str, str]] | None = None,
                extra_args: list[str] | None = None) -> list[Process]:
    return [
        harness.start_fedproto_node(
            f"node{client}", APP, env={"FLEET_CLIENT": str(client), **(env or {}).get(client, {})},
            extra_args=NODE_ARGS + (extra_args or []), transport=transport,
        )
        for client in clients
    ]


def stop_node(harness: Harness, node: Process, timeout: float = 30.0) -> int | None:
    """SIGTERM the node (the documented way to end it) and return its exit code."""
    node.popen.send_signal(signal.SIGTERM)
    code = node.wait(timeout)
    assert code is not None, f"{node.name} ignored SIGTERM for {timeout} s\n{harness.logs()}"
    return code


def run(harness: Harness, tmp_path, name: str, **config) -> tuple[dict, list[np.ndarray]]:
    """flwr run the example app to the end; returns (report, final arrays), status asserted."""
    result_dir = tmp_path / name
    outcome = harness.finish_run(
        harness.start_run(name, run_config=run_config(result_dir, **config)), RUN_TIMEOUT
    )
    assert outcome.status == "finished:completed", (
        f"run {outcome.run_id}: {outcome.status} ({outcome.details})\n{harness.logs()}"
    )
    report = json.loads((result_dir / "report.json").read_text())
    with np.load(result_dir / "final_arrays.npz") as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return report, arrays


def assert_arrays_equal(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def train_clients(report: dict, server_round: int) -> dict[int, int]:
    """{client index: node id} of the successful train replies of a round."""
    return {
        reply["metrics"]["client"]: reply["node"]
        for reply in report["replies"]["train"][str(server_round)]
        if reply["error"] is None
    }


def assert_message_api_replies(report: dict, clients: list[int], rounds: int) -> None:
    """Every round: one successful train and evaluate reply per client, from distinct nodes,
    with the handler's num-examples and the loss of the global model it was sent."""
    for server_round in range(1, rounds + 1):
        train = report["replies"]["train"][str(server_round)]
        assert sorted(r["metrics"]["client"] for r in train) == clients
        assert all(r["error"] is None for r in train)
        assert len({r["node"] for r in train}) == len(clients)
        for reply in train:
            client = reply["metrics"]["client"]
            assert reply["metrics"][NUM_EXAMPLES_KEY] == fit_examples(client)
            assert reply["metrics"]["round"] == server_round
        global_model = expected_fedavg([clients] * server_round)
        for reply in report["replies"]["evaluate"][str(server_round)]:
            client = reply["metrics"]["client"]
            assert reply["error"] is None
            assert reply["metrics"][NUM_EXAMPLES_KEY] == evaluate_examples(client)
            assert reply["metrics"][EVAL_LOSS_KEY] == pytest.approx(
                evaluate_loss(client, global_model), rel=1e-6
            )


def test_reference_run_two_flower_supernodes(superlink_harness, tmp_path):
    """The harness and the expected arithmetic, checked with flwr's own SuperNode and ClientApp."""
    harness = superlink_harness()
    harness.start_superlink()
    supernodes = [harness.start_supernode(f"supernode{c}", f"client={c}") for c in (0, 1)]
    report, arrays = run(harness, tmp_path, "reference", strategy="message", **{"num-rounds": 2})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]] * 2))
    assert_message_api_replies(report, [0, 1], rounds=2)
    for supernode in supernodes:
        supernode.stop()


def test_message_api_fedavg_three_rounds_two_nodes(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1])
    report, arrays = run(harness, tmp_path, "message", strategy="message", **{"num-rounds": 3})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]] * 3))
    assert [a.dtype for a in arrays] == [np.float64, np.float32]
    assert_message_api_replies(report, [0, 1], rounds=3)
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_legacy_fedavg_in_serverapp_three_rounds_two_nodes(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1])
    report, arrays = run(harness, tmp_path, "legacy", strategy="legacy", **{"num-rounds": 3})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]] * 3))
    for server_round in ("1", "2", "3"):
        train = report["replies"]["train"][server_round]
        assert sorted((r["metrics"]["client"], r["num_examples"]) for r in train) == [
            (0, fit_examples(0)), (1, fit_examples(1))
        ]
        evaluate = report["replies"]["evaluate"][server_round]
        assert sorted(r["num_examples"] for r in evaluate) == [evaluate_examples(0),
                                                               evaluate_examples(1)]
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_mixed_run_our_node_and_flower_supernode(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    [ours] = start_nodes(harness, [0])
    theirs = harness.start_supernode("supernode1", "client=1")
    report, arrays = run(harness, tmp_path, "mixed", strategy="message", **{"num-rounds": 2})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]] * 2))
    assert_message_api_replies(report, [0, 1], rounds=2)
    assert stop_node(harness, ours) == 0
    theirs.stop()


def test_handler_that_raises_is_a_failure_and_the_node_goes_on(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1], env={1: {"FLEET_FAIL_FIT_ROUND": "1"}})
    report, arrays = run(harness, tmp_path, "raises", strategy="message", **{"num-rounds": 2})
    round_1 = report["replies"]["train"]["1"]
    [failure] = [reply for reply in round_1 if reply["error"] is not None]
    assert failure["error"] == ERROR_CLIENT_APP_RAISED_EXCEPTION
    assert "client 1 refuses round 1" in failure["reason"]
    assert list(train_clients(report, 1)) == [0]
    assert failure["node"] == train_clients(report, 2)[1]  # the same node, serving round 2
    assert sorted(train_clients(report, 2)) == [0, 1]
    assert_arrays_equal(arrays, expected_fedavg([[0], [0, 1]]))
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_model_above_one_chunk_both_directions(superlink_harness, tmp_path):
    extra = 1_600_000  # float32: 6.4 MB of .npy data, two 5 MiB chunks each way
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1])
    report, arrays = run(harness, tmp_path, "large", strategy="message",
                         **{"num-rounds": 1, "extra-elements": extra})
    assert arrays[2].shape == (extra,) and arrays[2].nbytes > 5 * 1024 * 1024
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]], extra_elements=extra))
    assert sorted(train_clients(report, 1)) == [0, 1]
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_fit_outlasting_two_heartbeat_intervals(superlink_harness, tmp_path):
    # The SuperLink accepts heartbeat intervals in [10, 1800] s (flwr's HEARTBEAT_MIN/MAX_INTERVAL)
    # and counts a node offline 2 x interval after its last heartbeat. With the smallest interval
    # a fit of 22 s outlasts two: without heartbeats during fit, the node would be offline and its
    # reply would come back to the ServerApp as a NODE_UNAVAILABLE error.
    interval, fit_seconds = 10, 22.0
    harness = superlink_harness()
    harness.start_superlink()
    [node] = start_nodes(harness, [0], env={0: {"FLEET_FIT_SLEEP": str(fit_seconds)}},
                         extra_args=["--heartbeat-interval", str(interval)])
    started = time.monotonic()
    report, arrays = run(harness, tmp_path, "slow", strategy="message",
                         **{"num-rounds": 1, "min-nodes": 1})
    assert time.monotonic() - started > fit_seconds
    assert train_clients(report, 1) and report["replies"]["train"]["1"][0]["error"] is None
    assert_arrays_equal(arrays, expected_fedavg([[0]]))
    assert stop_node(harness, node) == 0


def test_grpc_rere_transport(superlink_harness, tmp_path):
    harness = superlink_harness(grpc_fleet=True)
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1], transport="grpc-rere")
    report, arrays = run(harness, tmp_path, "grpc", strategy="message", **{"num-rounds": 1})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]]))
    assert_message_api_replies(report, [0, 1], rounds=1)
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_tls(superlink_harness, tls_files, tmp_path):
    harness = superlink_harness(tls=tls_files)
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1])
    report, arrays = run(harness, tmp_path, "tls", strategy="message", **{"num-rounds": 1})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]]))
    assert_message_api_replies(report, [0, 1], rounds=1)
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_superlink_restart_mid_run_node_registers_again(superlink_harness, tmp_path):
    """The SuperLink (in-memory state) dies during a run and comes back on the same port.

    The new SuperLink does not know any node. flwr's SuperNode (1.42) then ends itself (exit code
    0, "SuperNode terminated gracefully", or killed by the SIGINT it sent itself); ours registers
    and activates again with the same key (fedproto/node.py, invariant 6) and serves the next run
    without a restart.
    """
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1])
    supernode = harness.start_supernode("supernode", "client=2")
    first = harness.start_run("interrupted", run_config=run_config(
        tmp_path / "interrupted", strategy="message", **{"num-rounds": 50, "min-nodes": 3}))
    deadline = time.monotonic() + RUN_TIMEOUT
    while "[ROUND 2/50]" not in first.log():
        assert time.monotonic() < deadline, f"round 1 never ended\n{harness.logs()}"
        assert first.popen.poll() is None, f"flwr run ended early\n{harness.logs()}"
        time.sleep(0.2)
    harness.restart_superlink(down_seconds=2.0)
    # flwr's SuperNode sends itself SIGINT on a 401 (http_retry.py); it then exits 0, unless that
    # interrupt lands in its own shutdown (flower_supernode.py stop_http_server), which ends it
    # by SIGINT (-2). Either way it ended on its own: the test never signals it.
    assert supernode.wait(60) in (0, -signal.SIGINT), harness.logs()
    assert all(node.popen.poll() is None for node in nodes), harness.logs()
    report, arrays = run(harness, tmp_path, "after_restart", strategy="message",
                         **{"num-rounds": 1})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]]))
    assert sorted(train_clients(report, 1)) == [0, 1]
    assert [stop_node(harness, node) for node in nodes] == [0, 0]
