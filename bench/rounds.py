"""4-client FedAvg rounds with a large model: our server and clients vs flwr's server and clients.

    python -m fedproto.bench.rounds                              # 10k, 1M and 10M parameters
    python -m fedproto.bench.rounds --params 10M --repeats 1

Each run is one server process (``bench.servers ours|flwr --side S``) and four client processes,
all on this machine:

- ours: our server (``run_server`` + FedAvg) and four fedproto edge clients
  (``python -m fedproto.client --app bench.client_rss:BenchHandler``);
- flwr: ``flwr.server.start_server`` (FedAvg) and four ``flwr.client.start_client`` clients with
  a NumPyClient around the same handler.

The model is one S x S float32 tensor of zeros; each fit adds 0.01 and does no other work, each
evaluate returns the mean absolute parameter, so after round r the loss must be r * 0.01: a run
is checked (4 fit and 4 evaluate results per round, that loss) before it counts. Measured per
run: seconds per round (the server's own clock, ``bench.servers``: configure_fit returned ->
aggregate_evaluate returned; the clients' connecting is not included) and the server process's
peak RSS (its ``VmHWM``, read every 50 ms while it runs: interpreter and imports included).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from fedproto.bench.client_rss import SIDE_ENV, MeasuredProcess, free_port, peak_rss_kib, wait_for_port
from fedproto.bench.loadgen import positive_int

log = logging.getLogger("fedproto.bench.rounds")

ROOT = Path(__file__).resolve().parents[1]
PARAMS = {"10k": 100, "1M": 1000, "10M": 3163}  # label -> side of the S x S tensor
CLIENTS = 4
SERVERS = ("ours", "flwr")
STEP = 0.01
STARTUP_TIMEOUT = 60.0


class RunFailed(RuntimeError):
    """A run that did not do the work, or did not finish: its numbers are not reported."""


def client_argv(server: str, address: str) -> list[str]:
    if server == "ours":
        return [sys.executable, "-m", "fedproto.client", "--server", address,
                "--app", "fedproto.bench.client_rss:BenchHandler"]
    return [sys.executable, "-m", "fedproto.bench.client_rss", "--serve-flwr-client", address]


def run_one(server: str, side: int, rounds: int, timeout: float, workdir: Path) -> dict:
    """One server and its four clients, always all stopped before returning."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    tag = f"{server}-{side}"
    report = workdir / f"{tag}.rounds.json"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1", SIDE_ENV: str(side)}
    started = time.monotonic()
    with open(workdir / f"{tag}.server.log", "wb") as server_log:
        server_proc = subprocess.Popen(
            [sys.executable, "-m", "fedproto.bench.servers", server, "--address", address, "--clients", str(CLIENTS),
             "--rounds", str(rounds), "--report", str(report), "--side", str(side)],
            cwd=ROOT, env=env, stdout=server_log, stderr=subprocess.STDOUT)
    clients: list[MeasuredProcess] = []
    try:
        wait_for_port(port, server_proc, STARTUP_TIMEOUT)
        clients = [MeasuredProcess(f"{tag}-client{i}", client_argv(server, address), workdir, env)
                   for i in range(CLIENTS)]
        deadline = started + timeout
        server_peak_kib = 0
        while True:
            server_peak_kib = max(server_peak_kib, peak_rss_kib(server_proc.pid) or 0)
            waited, status, usage = os.wait4(server_proc.pid, os.WNOHANG)
            if waited:
                server_proc.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap again
                break
            if time.monotonic() > deadline:
                raise RunFailed(f"{tag}: not done within {timeout:.0f} s; logs in {workdir}")
            time.sleep(0.05)
        while not all([client.poll() for client in clients]):
            if time.monotonic() > deadline:
                raise RunFailed(f"{tag}: clients still running {timeout:.0f} s after start; logs in {workdir}")
            time.sleep(0.05)
    finally:
        for client in clients:
            client.kill()
        if server_proc.poll() is None:
            server_proc.kill()
            server_proc.wait()
    if server_proc.returncode != 0:
        raise RunFailed(f"{tag}: server exited with {server_proc.returncode}; see {workdir}/{tag}.server.log")
    measured = json.loads(report.read_text())["rounds"]
    _check(tag, measured, rounds)
    seconds = [entry["seconds"] for entry in measured]
    return {"server": server, "side": side, "parameters": side * side, "rounds": rounds,
            "round_seconds": seconds, "seconds_per_round": sum(seconds) / len(seconds),
            "server_peak_rss_mb": server_peak_kib / 1024,
            "server_cpu_seconds": usage.ru_utime + usage.ru_stime,
            "client_peak_rss_mb": [client.measured().peak_rss_kib / 1024 for client in clients],
            "wall_seconds": time.monotonic() - started}


def _check(tag: str, measured: list[dict], rounds: int) -> None:
    if len(measured) != rounds:
        raise RunFailed(f"{tag}: {len(measured)} rounds reported, expected {rounds}: {measured}")
    for number, entry in enumerate(measured, start=1):
        counts = [entry.get(key) for key in ("fit_results", "fit_failures", "evaluate_results", "evaluate_failures")]
        if counts != [CLIENTS, 0, CLIENTS, 0]:
            raise RunFailed(f"{tag}: round {number} counted (fit, failed, evaluate, failed) = {counts}")
        if abs(entry["loss"] - number * STEP) > 1e-4:
            raise RunFailed(f"{tag}: round {number} loss {entry['loss']}, expected {number * STEP}")


def collect(params: list[str], repeats: int, rounds: int, timeout: float) -> dict:
    """Every run, ours and flwr's alternating so that load on the machine hits both alike."""
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedproto-rounds-") as workdir:
        for label in params:
            for repeat in range(repeats):
                for server in SERVERS:
                    run = run_one(server, PARAMS[label], rounds, timeout, Path(workdir))
                    run.update(label=label, repeat=repeat)
                    log.info("%s %s #%d: %.3f s/round %s, server peak RSS %.0f MB", label, server, repeat + 1,
                             run["seconds_per_round"], run["round_seconds"], run["server_peak_rss_mb"])
                    runs.append(run)
    return {"benchmark": "rounds", "clients": CLIENTS, "rounds": rounds, "repeats": repeats, "runs": runs}


def format_table(result: dict) -> str:
    lines = ["| parameters | ours s/round | flwr s/round | flwr / ours | ours server peak RSS MB "
             "| flwr server peak RSS MB | flwr / ours RSS |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(run["label"] for run in result["runs"]):
        values = {(server, key): [run[key] for run in result["runs"]
                                  if run["label"] == label and run["server"] == server]
                  for server in SERVERS for key in ("seconds_per_round", "server_peak_rss_mb")}
        time_ours, time_flwr = values["ours", "seconds_per_round"], values["flwr", "seconds_per_round"]
        rss_ours, rss_flwr = values["ours", "server_peak_rss_mb"], values["flwr", "server_peak_rss_mb"]
        lines.append(f"| {label} | {spread(time_ours, '.3f')} | {spread(time_flwr, '.3f')} "
                     f"| {statistics.median(time_flwr) / statistics.median(time_ours):.2f}x "
                     f"| {spread(rss_ours, '.0f')} | {spread(rss_flwr, '.0f')} "
                     f"| {statistics.median(rss_flwr) / statistics.median(rss_ours):.2f}x |")
    return "\n".join(lines)


def spread(values: list[float], spec: str) -> str:
    """median (min-max) of the repeats; just the value when there is one."""
    median = format(statistics.median(values), spec)
    if len(values) == 1:
        return median
    return f"{median} ({format(min(values), spec)}-{format(max(values), spec)})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.bench.rounds", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", nargs="+", choices=list(PARAMS), default=list(PARAMS),
                        help="model sizes (default: all)")
    parser.add_argument("--repeats", type=positive_int, default=3, help="runs per size and side (default 3)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="FedAvg rounds per run (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a run is abandoned")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        result = collect(args.params, args.repeats, args.rounds, args.timeout)
    except RunFailed as error:
        log.error("%s", error)
        return 1
    print(format_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
