"""Peak memory of our edge client next to flwr's own client, in one FedAvg run.

    python -m fedproto.bench.client_rss [--rounds 3] [--side 1000]

One flwr server (``examples/flwr_server.py``: ``flwr.server.start_server`` with FedAvg, starting
from zeros) and two clients in their own processes, started together and trained together:

- ours: ``python -m fedproto.client --app bench.client_rss:BenchHandler`` (fedproto's edge client);
- flwr's: ``flwr.client.start_client`` with a NumPyClient that delegates to the same handler.

The model is one SIDE x SIDE float32 tensor (1,000,000 parameters by default). Each fit adds
0.01 to it, so after R rounds the server's aggregate must be R * 0.01 everywhere: the run is
checked before any number is printed. Peak RSS is the kernel's high-water mark of each client
process, read by ``/usr/bin/time -v`` ("Maximum resident set size") when it exists, else from
``os.wait4``'s rusage (``ru_maxrss``, the same kernel number); the output says which.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
GNU_TIME = "/usr/bin/time"
STEP = np.float32(0.01)  # what each fit adds to every parameter
EXAMPLES = 100  # num_examples each client reports (equal, so FedAvg is a plain mean)
SIDE_ENV = "BENCH_RSS_SIDE"  # the tensor side, passed to the client processes
STARTUP_TIMEOUT = 60.0


class BenchHandler:
    """The work every client does: take the 1M parameters, nudge them, send them back."""

    def get_parameters(self, config):
        side = int(os.environ.get(SIDE_ENV, "1000"))
        return [np.zeros((side, side), np.float32)]

    def fit(self, parameters, config):
        return [parameters[0] + STEP], EXAMPLES, {}

    def evaluate(self, parameters, config):
        return float(np.abs(parameters[0]).mean()), EXAMPLES, {}


def serve_flwr_client(address: str) -> None:
    """flwr's own client around BenchHandler (runs in its own process)."""
    from flwr.client import NumPyClient, start_client

    handler = BenchHandler()

    class FlwrBenchClient(NumPyClient):
        def get_parameters(self, config):
            return handler.get_parameters(config)

        def fit(self, parameters, config):
            return handler.fit(parameters, config)

        def evaluate(self, parameters, config):
            return handler.evaluate(parameters, config)

    start_client(server_address=address, client=FlwrBenchClient().to_client())


@dataclass
class Measured:
    client: str
    exit_code: int
    peak_rss_kib: int
    wall_seconds: float
    log_path: Path


class MeasuredProcess:
    """A client process whose peak RSS is read when it is reaped."""

    def __init__(self, name: str, argv: list[str], workdir: Path, env: dict[str, str]) -> None:
        self.name = name
        self.log_path = workdir / f"{name}.log"
        self.time_path = workdir / f"{name}.time"
        if shutil.which(GNU_TIME):
            argv = [GNU_TIME, "-v", "-o", str(self.time_path), *argv]
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        self.result: Measured | None = None

    def poll(self) -> Measured | None:
        """Reap the process if it has exited (with os.wait4, to get its rusage)."""
        if self.result is None:
            pid, status, rusage = os.wait4(self.popen.pid, os.WNOHANG)
            if pid:
                wall = time.monotonic() - self.started
                self.popen.returncode = os.waitstatus_to_exitcode(status)  # Popen must not reap again
                self.result = Measured(self.name, self.popen.returncode, self._peak_kib(rusage), wall,
                                       self.log_path)
        return self.result

    def measured(self) -> Measured:
        """The result of a process :meth:`poll` has seen exit."""
        if self.result is None:
            raise RuntimeError(f"{self.name} has not exited")
        return self.result

    def _peak_kib(self, rusage) -> int:
        if self.time_path.exists():
            match = re.search(r"Maximum resident set size \(kbytes\): (\d+)", self.time_path.read_text())
            if match is None:
                raise RuntimeError(f"{self.time_path}: no 'Maximum resident set size' line")
            return int(match.group(1))
        return rusage.ru_maxrss  # KiB on Linux

    def kill(self) -> None:
        if self.popen.returncode is None:
            self.popen.kill()
            self.popen.wait()


def peak_rss_kib(pid: int) -> int | None:
    """The high-water mark of ``pid``'s resident set so far (``VmHWM``), or None once it has exited.

    For a process this one started, ``os.wait4``'s ``ru_maxrss`` is not usable: Linux keeps the
    largest of it and the spawning parent's memory across fork/vfork + exec, so a child of a
    large benchmark process reports at least the parent's size. ``VmHWM`` belongs to the new
    program's memory only; poll it while the process runs and keep the largest reading.
    """
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"the flwr server exited with {server.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"the flwr server did not listen on port {port} within {timeout} s")


def run(rounds: int, side: int, workdir: Path, timeout: float) -> list[Measured]:
    port = free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1", SIDE_ENV: str(side)}
    history_path = workdir / "history.json"
    record_dir = workdir / "rounds"
    server_argv = [sys.executable, "examples/flwr_server.py", "--address", address,
                   "--rounds", str(rounds), "--min-clients", "2", "--history", str(history_path),
                   "--record-dir", str(record_dir), "--initial-zeros", json.dumps([[side, side]])]
    clients: list[MeasuredProcess] = []
    with open(workdir / "server.log", "wb") as server_log:
        server = subprocess.Popen(server_argv, cwd=ROOT, env=env, stdout=server_log,
                                  stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, server, STARTUP_TIMEOUT)
        clients = [
            MeasuredProcess("fedproto edge client", [
                sys.executable, "-m", "fedproto.client", "--server", address,
                "--app", "fedproto.bench.client_rss:BenchHandler"], workdir, env),
            MeasuredProcess("flwr NumPyClient (start_client)", [
                sys.executable, "-m", "fedproto.bench.client_rss", "--serve-flwr-client", address],
                workdir, env),
        ]
        deadline = time.monotonic() + timeout
        while not all([c.poll() for c in clients]):  # a list: poll every client, each round
            if time.monotonic() > deadline:
                raise RuntimeError(f"the clients did not finish within {timeout} s; logs in {workdir}")
            time.sleep(0.05)
        server.wait(timeout=60)
    finally:
        for client in clients:
            client.kill()
        if server.poll() is None:
            server.kill()
            server.wait()
    results = [c.measured() for c in clients]  # every one exited: the loop above waited for it
    _check_run(results, server.returncode, history_path, record_dir, rounds, side, workdir)
    return results


def _check_run(results, server_code, history_path: Path, record_dir: Path, rounds: int, side: int,
               workdir: Path) -> None:
    """Numbers from a run that did not do the work are worthless: verify it did."""
    for result in results:
        if result.exit_code != 0:
            raise RuntimeError(f"{result.client} exited with {result.exit_code}; see {result.log_path}")
    if server_code != 0:
        raise RuntimeError(f"the flwr server exited with {server_code}; see {workdir / 'server.log'}")
    history = json.loads(history_path.read_text())
    failures = {r: f for r, f in history["failures"].items() if f}
    if failures or len(history["losses_distributed"]) != rounds:
        raise RuntimeError(f"the server saw failures {failures} or too few rounds: {history}")
    with np.load(record_dir / f"round_{rounds}.npz") as final:
        aggregate = final["arr_0"]
    expected = np.float32(0)
    for _ in range(rounds):
        expected = expected + STEP  # the same float32 additions the clients made
    if aggregate.shape != (side, side) or not np.allclose(aggregate, expected, atol=1e-6):
        raise RuntimeError(f"final aggregate is not {expected} everywhere (mean {aggregate.mean()})")


def report(results: list[Measured], rounds: int, side: int) -> str:
    method = ('/usr/bin/time -v, "Maximum resident set size"' if shutil.which(GNU_TIME)
              else "os.wait4 rusage ru_maxrss (GNU time not found)")
    ours, theirs = results
    lines = [
        f"model: 1 tensor {side}x{side} float32 = {side * side:,} parameters "
        f"({side * side * 4 / 2**20:.1f} MiB); {rounds} FedAvg rounds against flwr.server.start_server,",
        "both clients in the same run, each in its own process",
        f"peak RSS measured by {method}",
        "",
        f"{'client':34} {'peak RSS MiB':>12} {'wall s':>8}",
    ]
    lines += [f"{r.client:34} {r.peak_rss_kib / 1024:12.1f} {r.wall_seconds:8.1f}" for r in results]
    ratio = ours.peak_rss_kib / theirs.peak_rss_kib
    lines += ["", f"ratio fedproto / flwr peak RSS: {ratio:.2f} (flwr's client uses {1 / ratio:.1f}x as much)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.bench.client_rss",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m fedproto.bench.client_rss                 # 1M parameters, 3 rounds\n"
               "  python -m fedproto.bench.client_rss --side 2000     # 4M parameters\n"
               "  python -m fedproto.bench.client_rss --keep-logs /tmp/rss   # keep server/client logs",
    )
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds (default: %(default)s)")
    parser.add_argument("--side", type=int, default=1000,
                        help="the model is one SIDE x SIDE float32 tensor (default: %(default)s)")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for both clients (default: %(default)s)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="write logs here instead of a temporary directory")
    parser.add_argument("--serve-flwr-client", metavar="HOST:PORT",
                        help="internal: run flwr's client process of this benchmark")
    args = parser.parse_args(argv)
    if args.serve_flwr_client:
        serve_flwr_client(args.serve_flwr_client)
        return 0
    if args.keep_logs:
        args.keep_logs.mkdir(parents=True, exist_ok=True)
        results = run(args.rounds, args.side, args.keep_logs, args.timeout)
    else:
        with tempfile.TemporaryDirectory(prefix="client_rss_") as workdir:
            results = run(args.rounds, args.side, Path(workdir), args.timeout)
    print(report(results, args.rounds, args.side))
    return 0


if __name__ == "__main__":
    sys.exit(main())
