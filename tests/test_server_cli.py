"""fedproto-server's command line and the in-process Python API (run_server)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np

from conftest import ROOT, free_port
from fedproto.client.demo import SoftmaxClient
from fedproto.server import FedAvg, History, ServerResult, run_server


def wait_for_log(proc, text: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while text not in proc.log():
        assert proc.popen.poll() is None, f"{proc.name} exited early:\n{proc.log()}"
        assert time.monotonic() < deadline, f"{text!r} not in {proc.name}'s log:\n{proc.log()}"
        time.sleep(0.05)


def test_help_teaches_with_examples_and_exit_codes():
    run = subprocess.run([sys.executable, "-m", "fedproto.server", "--help"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 0
    for text in ("examples:", "fedproto-server --address 0.0.0.0:8080 --rounds 3 --min-clients 2",
                 "--checkpoint-dir ckpt/ --resume", "--certificates CA CERT KEY", "exit codes:"):
        assert text in run.stdout


def test_resume_needs_a_checkpoint_dir():
    run = subprocess.run([sys.executable, "-m", "fedproto.server", "--resume"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 2 and "--resume needs --checkpoint-dir" in run.stderr


def test_a_second_server_on_a_busy_port_fails_loudly_and_the_first_keeps_serving(spawn, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    first = spawn("first", "-m", "fedproto.server", "--address", address, "--rounds", "1", "--min-clients", "1")
    wait_for_log(first, "listening on")
    second = spawn("second", "-m", "fedproto.server", "--address", address, "--rounds", "1", "--min-clients", "1")
    assert second.wait(30) == 4
    assert f"cannot listen on {address}" in second.log()
    client = spawn("client", "-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
    assert first.wait(30) == 0, first.log()
    assert client.wait(30) == 0
    assert "round 1/1: fit 1 ok 0 failed | evaluate 1 ok 0 failed" in first.log()


def test_wait_timeout_gives_up_with_exit_3(spawn):
    server = spawn("server", "-m", "fedproto.server", "--address", f"127.0.0.1:{free_port()}",
                   "--min-clients", "2", "--wait-timeout", "0.5")
    assert server.wait(30) == 3
    assert "0 of the 2 required clients connected within 0.5 s" in server.log()


def test_fit_results_that_all_report_zero_examples_are_nothing_learned_exit_5(spawn):
    """Every FitRes decodes, but FedAvg aggregates none of them (num_examples=0 everywhere):
    the model never changes, so the run ends as one in which every fit failed."""
    address = f"127.0.0.1:{free_port()}"
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "2", "--min-clients", "2")
    clients = [spawn(f"client{p}", "-m", "fedproto.client", "--server", address,
                     "--app", "tests.server_clients:ZeroExamplesClient") for p in (0, 1)]
    assert server.wait(60) == 5, server.log()
    assert all(client.wait(30) == 0 for client in clients)
    log = server.log()
    assert log.count("every client reported num_examples=0: no aggregation") == 2
    assert "round 2/2: fit 2 ok 0 failed" in log and "model unchanged" in log
    assert ("nothing learned: none of the 2 round(s) aggregated a fit result "
            "(4 fit results not aggregated (see the round warnings))") in log


def test_accept_failures_false_with_one_failing_client_learns_nothing(spawn):
    """One FitRes decodes, the other client fails: with accept_failures=False the round aggregates
    nothing, so ServerResult.learned is False although a fit result arrived."""
    address = f"127.0.0.1:{free_port()}"
    initial = SoftmaxClient().get_parameters({})
    strategy = FedAvg(min_fit_clients=2, min_evaluate_clients=2, min_available_clients=2,
                      accept_failures=False, initial_parameters=initial)
    outcome: list[ServerResult] = []
    thread = threading.Thread(target=lambda: outcome.append(
        run_server(address=address, strategy=strategy, rounds=1, wait_timeout=30)))
    thread.start()
    clients = [spawn(name, "-m", "fedproto.client", "--server", address, "--app", app)
               for name, app in (("good", "fedproto.client.demo:make_client"),
                                 ("raising", "tests.server_clients:RaisingClient"))]
    thread.join(60)
    assert not thread.is_alive() and all(client.wait(30) == 0 for client in clients)
    (result,) = outcome
    (record,) = result.history.rounds
    assert (record.fit_ok, len(record.fit_failures), record.fit_clients) == (1, 1, [])
    assert not result.learned
    for mine, start in zip(result.parameters, initial, strict=True):
        np.testing.assert_array_equal(mine, start)


def test_python_api_runs_in_process_with_config_and_centralized_evaluation(spawn, tmp_path):
    address = f"127.0.0.1:{free_port()}"
    reference = SoftmaxClient(partition=0)
    evaluated: list[int] = []

    def evaluate_fn(server_round, parameters, config):
        evaluated.append(server_round)
        loss, _, metrics = reference.evaluate(parameters, config)
        return loss, metrics

    strategy = FedAvg(min_fit_clients=1, min_evaluate_clients=1, min_available_clients=1,
                      fraction_evaluate=0.0, evaluate_fn=evaluate_fn,
                      on_fit_config_fn=lambda server_round: {"lr": 0.1, "local_epochs": server_round},
                      initial_parameters=reference.get_parameters({}))
    outcome: list[ServerResult] = []
    history_path = tmp_path / "not" / "yet" / "there" / "history.json"
    thread = threading.Thread(target=lambda: outcome.append(
        run_server(address=address, strategy=strategy, rounds=2, wait_timeout=30, history_path=history_path)))
    thread.start()
    client = spawn("client", "-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
    thread.join(60)
    assert not thread.is_alive() and client.wait(30) == 0
    (result,) = outcome

    expected = reference.get_parameters({})
    for server_round in (1, 2):
        expected = reference.fit(expected, {"lr": 0.1, "local_epochs": server_round})[0]
    for mine, theirs in zip(result.parameters, expected, strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=1e-6)
    assert evaluated == [0, 1, 2]
    assert [r for r, _ in result.history.losses_centralized] == [0, 1, 2]
    assert result.history.losses_centralized[2][1] == reference.evaluate(expected, {})[0]
    assert result.history.losses_distributed == []  # fraction_evaluate=0: no client evaluation
    assert [(r.fit_ok, r.evaluate_ok) for r in result.history.rounds] == [(1, 0), (1, 0)]
    assert History.from_json(history_path.read_text()) == result.history


def test_fedadam_from_the_command_line_keeps_its_moments_in_the_checkpoint(spawn, tmp_path):
    from fedproto.server.checkpoint import load, save_npz
    from fedproto.server.strategy import FedAdam
    from fedproto.server_role import FitRes

    address = f"127.0.0.1:{free_port()}"
    initial = SoftmaxClient().get_parameters({})
    save_npz(tmp_path / "w0.npz", initial)
    server = spawn("server", "-m", "fedproto.server", "--address", address, "--rounds", "2", "--min-clients", "2",
                   "--strategy", "fedadam", "--server-learning-rate", "0.05",
                   "--initial-parameters", str(tmp_path / "w0.npz"), "--checkpoint-dir", str(tmp_path / "ckpt"))
    clients = [spawn(f"client{p}", "-m", "fedproto.client", "--server", address,
                     "--app", "fedproto.client.demo:make_client", env={"DEMO_PARTITION": str(p)}) for p in (0, 1)]
    assert server.wait(60) == 0, server.log()
    assert all(client.wait(30) == 0 for client in clients)
    assert "FedAdam(eta=0.05, beta_1=0.9, beta_2=0.99, tau=1e-09, fraction_fit=1.0" in server.log()

    reference = FedAdam(initial_parameters=initial, eta=0.05)
    parameters = initial
    for server_round in (1, 2):
        fits = [SoftmaxClient(partition=p).fit(parameters, {"server_round": server_round})
                for p in (0, 1)]
        parameters, _ = reference.aggregate_fit(
            server_round, [(None, FitRes(arrays, n, metrics)) for arrays, n, metrics in fits], [])
    restored = load(tmp_path / "ckpt")
    for mine, expected in zip(restored.parameters, parameters, strict=True):
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-6)
    assert sorted(restored.strategy_state) == ["m_t", "v_t"]
    for mine, expected in zip(restored.strategy_state["m_t"], reference.m_t, strict=True):
        np.testing.assert_allclose(mine, expected, rtol=0, atol=1e-6)


def test_fedprox_needs_proximal_mu_and_fedadam_needs_a_start():
    for arguments, message in ((["--strategy", "fedprox"], "--strategy fedprox needs --proximal-mu"),
                               (["--strategy", "fedadam"], "--strategy fedadam needs --initial-parameters")):
        run = subprocess.run([sys.executable, "-m", "fedproto.server", *arguments], cwd=ROOT, capture_output=True,
                             text=True, timeout=60)
        assert run.returncode == 2 and message in run.stderr
