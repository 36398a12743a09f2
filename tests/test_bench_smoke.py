"""The scale benchmark's load generator against our server: one small round, exact counts.

A correctness check of the benchmark's parts (bench.loadgen, bench.servers), not a timing.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
from conftest import free_port

from bench.loadgen import main as loadgen_main

CLIENTS = 20


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def test_loadgen_clients_complete_one_round_on_our_server(spawn, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    rounds_report, load_report = tmp_path / "rounds.json", tmp_path / "loadgen.json"
    server = spawn("server", "-m", "bench.servers", "ours", "--address", address,
                   "--clients", str(CLIENTS), "--rounds", "1", "--report", str(rounds_report))
    wait_listening(port, timeout=10)
    loadgen = spawn("loadgen", "-m", "bench.loadgen", "--server", address, "--clients", str(CLIENTS),
                    "--processes", "2", "--streams-per-channel", "8", "--duration", "15",
                    "--report", str(load_report))

    assert server.wait(timeout=15) == 0, server.log()
    assert loadgen.wait(timeout=15) == 0, loadgen.log()

    (measured,) = json.loads(rounds_report.read_text())["rounds"]
    assert {key: measured[key] for key in ("round", "fit_results", "fit_failures",
                                           "evaluate_results", "evaluate_failures")} == {
        "round": 1, "fit_results": CLIENTS, "fit_failures": 0,
        "evaluate_results": CLIENTS, "evaluate_failures": 0}
    # Every client adds 0.01 to the zero model; each then evaluates the average as its loss.
    assert abs(measured["loss"] - 0.01) < 1e-6
    assert measured["seconds"] > 0

    load = json.loads(load_report.read_text())
    assert load["clients"] == load["done"] == CLIENTS
    assert load["answered"] == {"fit_ins": CLIENTS, "evaluate_ins": CLIENTS, "reconnect_ins": CLIENTS}
    assert load["stream_errors"] == {}
    assert load["joins"] == CLIENTS


@pytest.mark.parametrize("args, message", [
    (["--server", "10.0.0.1:8080", "--clients", "5"],
     "argument --server: loopback only (127.0.0.1, ::1, localhost), got '10.0.0.1'"),
    (["--server", "127.0.0.1", "--clients", "5"], "argument --server: expected HOST:PORT, got '127.0.0.1'"),
    (["--server", "127.0.0.1:8080", "--clients", "0"], "argument --clients: expected a whole number >= 1, got '0'"),
    (["--server", "127.0.0.1:8080", "--clients", "5", "--duration", "0"],
     "argument --duration: expected a number > 0, got 0"),
])
def test_loadgen_refuses_bad_arguments_before_connecting(args, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        loadgen_main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
