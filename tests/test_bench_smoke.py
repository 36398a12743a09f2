"""The scale benchmark's load generator against our server: one small round, exact counts.

A correctness check of the benchmark's parts (bench.loadgen, bench.servers), not a timing.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from conftest import free_port
from fedproto.bench.loadgen import main as loadgen_main

CLIENTS = 20


def wait_listening(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on port {port} after {timeout} s")


def serve_load(spawn, tmp_path, server: str, rounds: int, processes: int) -> tuple[dict, dict]:
    """``bench.servers SERVER`` against the load generator (CLIENTS clients), both to their end:
    the server's rounds report and the load generator's report."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    rounds_report, load_report = tmp_path / "rounds.json", tmp_path / "loadgen.json"
    process = spawn("server", "-m", "fedproto.bench.servers", server, "--address", address,
                    "--clients", str(CLIENTS), "--rounds", str(rounds), "--report", str(rounds_report))
    wait_listening(port, timeout=10)
    loadgen = spawn("loadgen", "-m", "fedproto.bench.loadgen", "--server", address, "--clients", str(CLIENTS),
                    "--processes", str(processes), "--streams-per-channel", "8", "--duration", "15",
                    "--report", str(load_report))
    assert process.wait(timeout=15) == 0, process.log()
    assert loadgen.wait(timeout=15) == 0, loadgen.log()
    return json.loads(rounds_report.read_text()), json.loads(load_report.read_text())


def test_loadgen_clients_complete_one_round_on_our_server(spawn, tmp_path):
    report, load = serve_load(spawn, tmp_path, "ours", rounds=1, processes=2)

    (measured,) = report["rounds"]
    assert {key: measured[key] for key in ("round", "fit_results", "fit_failures",
                                           "evaluate_results", "evaluate_failures")} == {
        "round": 1, "fit_results": CLIENTS, "fit_failures": 0,
        "evaluate_results": CLIENTS, "evaluate_failures": 0}
    # Every client adds 0.01 to the zero model; each then evaluates the average as its loss.
    assert abs(measured["loss"] - 0.01) < 1e-6
    assert measured["seconds"] > 0

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


# ---------------------------------------------------------------------------- make bench (bench.run)


def test_rounds_runs_ours_and_flwr_with_four_clients_and_checks_the_aggregate(tmp_path):
    """One round of each side, a 10x10 model: four fits and evaluates, loss 0.01, or RunFailed."""
    from fedproto.bench import rounds

    for server in rounds.SERVERS:
        run = rounds.run_one(server, side=10, rounds=1, timeout=90, workdir=tmp_path)
        assert (run["server"], run["parameters"], len(run["round_seconds"])) == (server, 100, 1)
        assert len(run["client_peak_rss_mb"]) == rounds.CLIENTS
        assert run["server_peak_rss_mb"] > 0


def test_rounds_refuses_a_run_with_a_missing_result():
    from fedproto.bench import rounds

    measured = [{"fit_results": 4, "fit_failures": 0, "evaluate_results": 3, "evaluate_failures": 1,
                 "loss": 0.01, "seconds": 0.1}]
    with pytest.raises(rounds.RunFailed, match=r"round 1 counted .* = \[4, 0, 3, 1\]"):
        rounds._check("ours-10", measured, 1)


def test_bench_run_writes_json_plot_and_summary(tmp_path, monkeypatch):
    """``python -m fedproto.bench.run --only codec``: our FitRes bytes equal flwr's, both decoders agree."""
    from fedproto.bench import codec
    from fedproto.bench.run import main as run_main

    monkeypatch.setattr(codec, "SIZES", {"1KB": 1_000})  # the path of 40 MB, in a fraction of a second
    assert run_main(["--only", "codec", "--repeats", "2", "--out", str(tmp_path)]) == 0
    result = json.loads((tmp_path / "codec.json").read_text())
    (case,) = result["cases"]
    assert case["identical_wire_bytes"] and case["decoders_agree"]
    assert {len(case["seconds"][op][name]) for op, name in
            (("encode", "ours"), ("encode", "flwr"), ("decode", "ours"), ("decode", "flwr"),
             ("memcpy", "numpy copy"))} == {2}
    assert result["machine"]["cores"] and result["machine"]["flwr"] == "1.42.0"
    assert (tmp_path / "codec.png").stat().st_size > 0
    summary = (tmp_path / "summary.md").read_text()
    assert "## Codec" in summary and "| 1KB | encode |" in summary and "| 1KB | decode |" in summary


def test_summary_shows_median_spread_and_a_run_that_did_not_complete():
    from fedproto.bench.report import scale_table

    def run(server, seconds, rss, repeat=0, completed=True):
        return {"server": server, "clients": 5000, "completed": completed, "seconds_per_round": seconds,
                "peak_rss_mb": rss, "cpu_seconds": 1.0, "repeat": repeat,
                "note": "" if completed else "did not complete in 60 s (x)"}

    table = scale_table({"runs": [run("floor", 4.0, 200, 0), run("floor", 4.0, 200, 1), run("floor", 5.0, 210, 2),
                                  run("ours", 5.0, 280, 0), run("ours", 4.0, 300, 1), run("ours", 6.5, 290, 2),
                                  run("flwr", None, 190, completed=False)]})
    # ours / floor: the median of the three repeats' own ratios (1.25, 1.0, 1.3), not a ratio of medians
    assert ("| 5000 | 4.000 (4.000-5.000) | 5.000 (4.000-6.500) | did not complete in 60 s | 1.25x (1.00-1.30) "
            "| — | 200 (200-210) | 290 (280-300) | 190 |") in table


def test_scale_table_leaves_the_floor_ratio_out_when_the_floor_did_not_complete():
    from fedproto.bench.report import scale_table

    runs = [{"server": "floor", "clients": 100, "completed": False, "seconds_per_round": None, "peak_rss_mb": 50,
             "cpu_seconds": 1.0, "repeat": 0, "note": "did not complete in 90 s"},
            {"server": "ours", "clients": 100, "completed": True, "seconds_per_round": 0.1, "peak_rss_mb": 60,
             "cpu_seconds": 1.0, "repeat": 0, "note": ""}]
    assert "| 100 | did not complete in 90 s | 0.100 | not run | — | — |" in scale_table({"runs": runs})
