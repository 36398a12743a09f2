"""Scale: N concurrent clients through FedAvg rounds: the floor, our server and flwr's side by side.

    python -m fedproto.bench.scale                                  # N = 100, 1000, 5000, 10000
    python -m fedproto.bench.scale --clients 100 1000 --rounds 1    # a quick look

For every N, each server (``bench.servers``) runs in its own subprocess against the same load
generator (``bench.loadgen``, N streams in ``--processes`` worker processes), one server
after the other so they never share the CPU. The floor (``bench.floor_server``) is a bare
grpc.aio Join server that only sends the same instructions and counts the replies: *ours /
floor* is what our server's own machinery costs on top of gRPC's. Measured per run:

- seconds per round: the mean of the server's own round clock (configure_fit returned ->
  aggregate_evaluate returned, N fit and N evaluate results), connection time excluded;
- peak RSS of the server process, its ``VmHWM`` read every 0.2 s while it runs (interpreter and
  imports included), and its CPU time (user + system, ``os.wait4``) for the whole run: start,
  connecting, rounds, goodbye.

A run still going after its timeout is killed and reported as "did not complete in T s":
flwr's legacy server serves at most 1,000 streams (its thread pool) and refuses the rest with
RESOURCE_EXHAUSTED, so with more clients it waits forever for the N it was told to expect.
Results go to ``OUT/scale.json`` and ``OUT/scale.png``; process logs to a temporary folder.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from fedproto.bench.client_rss import peak_rss_kib
from fedproto.bench.loadgen import positive_float, positive_int

log = logging.getLogger("fedproto.bench.scale")

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CLIENTS = (100, 1000, 5000, 10000)
SERVERS = ("floor", "ours", "flwr")  # bench.servers names; floor: bench.floor_server
MUST_COMPLETE = ("floor", "ours")  # flwr's legacy server cannot complete past 1,000 streams
POLL_SECONDS = 0.2
LOADGEN_MARGIN_SECONDS = 2.0  # the load generator's deadline comes this long before the server's
LOADGEN_EXIT_GRACE_SECONDS = 30.0  # time it may take to stop after its deadline or the last round


@dataclass
class Run:
    server: str
    clients: int
    completed: bool
    seconds_per_round: float | None  # mean over the rounds; None unless every round completed
    round_seconds: list[float]
    round_cpu_seconds: list[float]  # the server process's CPU time within each round (all threads)
    peak_rss_mb: float
    cpu_seconds: float  # server process user + system time, whole run (connecting included)
    wall_seconds: float
    timeout: float
    note: str  # why a run did not complete, or the failures it counted


def default_timeout(clients: int) -> float:
    """Generous for our server at any N (connecting 10,000 streams on 2 cores takes a while)."""
    return max(90.0, clients / 40)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_one(server: str, clients: int, rounds: int, timeout: float, processes: int,
            streams_per_channel: int, log_dir: Path) -> Run:
    """One server against one load generator; both are always stopped before returning."""
    port = free_port()
    address = f"127.0.0.1:{port}"
    tag = f"{server}-{clients}"
    report = log_dir / f"{tag}.rounds.json"
    load_report = log_dir / f"{tag}.loadgen.json"
    python = sys.executable
    started = time.monotonic()
    deadline = started + timeout
    load_proc = None
    with open(log_dir / f"{tag}.server.log", "wb") as server_log, \
         open(log_dir / f"{tag}.loadgen.log", "wb") as load_log:
        server_proc = subprocess.Popen(
            [python, "-m", "fedproto.bench.servers", server, "--address", address, "--clients", str(clients),
             "--rounds", str(rounds), "--report", str(report)],
            cwd=ROOT, stdout=server_log, stderr=subprocess.STDOUT)
        try:
            if _wait_listening(port, server_proc.pid, deadline):
                # The load generator stops itself just before the server would be killed, so its
                # report describes what the clients saw while the server was still up.
                duration = max(1.0, deadline - time.monotonic() - LOADGEN_MARGIN_SECONDS)
                load_proc = subprocess.Popen(
                    [python, "-m", "fedproto.bench.loadgen", "--server", address, "--clients", str(clients),
                     "--processes", str(processes), "--streams-per-channel", str(streams_per_channel),
                     "--duration", f"{duration:.1f}", "--report", str(load_report)],
                    cwd=ROOT, stdout=load_log, stderr=subprocess.STDOUT,
                    start_new_session=True)  # its own group: its worker processes stop with it
            status, rusage, peak_kib = _wait_or_kill(server_proc.pid, deadline)
            wall = time.monotonic() - started
            if load_proc is not None:
                try:
                    load_proc.wait(timeout=LOADGEN_EXIT_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    log.warning("%s: load generator did not stop by itself; killing it", tag)
        finally:
            if load_proc is not None:
                _kill_group(load_proc)
            if _alive(server_proc.pid):
                server_proc.kill()
                os.wait4(server_proc.pid, 0)
    usage = (peak_kib / 1024, rusage.ru_utime + rusage.ru_stime)
    return _summarize(server, clients, rounds, timeout, status, wall, usage, report, load_report)


def _wait_listening(port: int, pid: int, deadline: float) -> bool:
    """True once something accepts connections on ``port``; False if the server exited first."""
    while time.monotonic() < deadline:
        # WNOWAIT: only look, so _wait_or_kill can still collect the exit status and rusage.
        if os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None:
            return False
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(POLL_SECONDS)
    return False


def _wait_or_kill(pid: int, deadline: float) -> tuple[int | None, resource.struct_rusage, int]:
    """(exit status or None if killed at the deadline, resource usage, peak RSS in KiB)."""
    peak_kib = 0
    while time.monotonic() < deadline:
        peak_kib = max(peak_kib, peak_rss_kib(pid) or 0)
        waited, status, rusage = os.wait4(pid, os.WNOHANG)
        if waited == pid:
            return status, rusage, peak_kib
        time.sleep(POLL_SECONDS)
    peak_kib = max(peak_kib, peak_rss_kib(pid) or 0)
    os.kill(pid, signal.SIGKILL)
    _, _, rusage = os.wait4(pid, 0)
    return None, rusage, peak_kib


def _alive(pid: int) -> bool:
    try:
        waited, _, _ = os.wait4(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # already reaped by _wait_or_kill
    return waited == 0


def _kill_group(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _summarize(server: str, clients: int, rounds: int, timeout: float, status: int | None,
               wall: float, usage: tuple[float, float], report: Path, load_report: Path) -> Run:
    peak_rss_mb, cpu_seconds = usage
    load = json.loads(load_report.read_text()) if load_report.exists() else {}
    errors = load.get("stream_errors", {})
    if status is None:
        note = f"did not complete in {timeout:.0f} s"
        if errors:  # the most frequent one says why, e.g. flwr's RESOURCE_EXHAUSTED past 1,000
            text, count = max(errors.items(), key=lambda item: item[1])
            note += f" (clients saw {count}x {text})"
        return Run(server, clients, False, None, [], [], peak_rss_mb, cpu_seconds, wall, timeout, note)
    if not report.exists():
        note = f"server exited with status {os.waitstatus_to_exitcode(status)} without a report"
        return Run(server, clients, False, None, [], [], peak_rss_mb, cpu_seconds, wall, timeout, note)
    measured = json.loads(report.read_text())["rounds"]
    seconds = [entry["seconds"] for entry in measured if "seconds" in entry]
    round_cpu = [entry["cpu_seconds"] for entry in measured if "cpu_seconds" in entry]
    complete = len(seconds) == rounds and all(
        entry["fit_results"] == clients and entry["evaluate_results"] == clients for entry in measured)
    failures = sum(entry.get("fit_failures", 0) + entry.get("evaluate_failures", 0) for entry in measured)
    note = "" if complete else f"incomplete rounds: {measured}"
    if failures:
        note = f"{failures} client failures counted; {note}".rstrip("; ")
    mean = round(sum(seconds) / len(seconds), 3) if complete else None
    return Run(server, clients, complete, mean, seconds, round_cpu, peak_rss_mb, cpu_seconds, wall, timeout, note)


def format_table(runs: list[Run]) -> str:
    """Markdown table: one row per N, the servers side by side; ours / floor below 1.15 is the target."""
    by_key = {(run.server, run.clients): run for run in runs}
    lines = ["| N | floor s/round | ours s/round | flwr s/round | ours / floor | flwr / ours | floor peak RSS "
             "| ours peak RSS | flwr peak RSS | floor CPU s | ours CPU s | flwr CPU s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in sorted({run.clients for run in runs}):
        floor, ours, flwr = (by_key.get((server, clients)) for server in SERVERS)
        lines.append(f"| {clients} | {_cell(floor)} | {_cell(ours)} | {_cell(flwr)} | {_ratio(ours, floor, 2)} "
                     f"| {_ratio(flwr, ours, 1)} | {_rss(floor)} | {_rss(ours)} | {_rss(flwr)} "
                     f"| {_cpu(floor)} | {_cpu(ours)} | {_cpu(flwr)} |")
    return "\n".join(lines)


def _ratio(numerator: Run | None, denominator: Run | None, digits: int) -> str:
    """numerator / denominator seconds per round, or a dash unless both completed (a mean is set iff so)."""
    if (numerator is None or denominator is None or numerator.seconds_per_round is None
            or denominator.seconds_per_round is None):
        return "—"
    return f"{numerator.seconds_per_round / denominator.seconds_per_round:.{digits}f}x"


def _cell(run: Run | None) -> str:
    if run is None:
        return "not run"
    if run.completed:
        return f"{run.seconds_per_round:.3f}"
    return run.note.split(" (")[0]


def _rss(run: Run | None) -> str:
    return f"{run.peak_rss_mb:.0f} MB" if run else "not run"


def _cpu(run: Run | None) -> str:
    return f"{run.cpu_seconds:.1f}" if run else "not run"


def plot(runs: list[Run], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    figure, (time_axis, rss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, marker in zip(SERVERS, ("^", "o", "s"), strict=True):
        mine = sorted((run for run in runs if run.server == server), key=lambda run: run.clients)
        done = [run for run in mine if run.completed]
        if done:
            time_axis.plot([run.clients for run in done], [run.seconds_per_round for run in done],
                           marker=marker, label=server)
        stuck = [run for run in mine if not run.completed]
        if stuck:
            time_axis.scatter([run.clients for run in stuck], [run.timeout for run in stuck],
                              marker="x", color="red", zorder=3,
                              label=f"{server}: did not complete (plotted at the timeout)")
        if done:
            rss_axis.plot([run.clients for run in done], [run.peak_rss_mb for run in done],
                          marker=marker, label=server)
        if stuck:
            rss_axis.scatter([run.clients for run in stuck], [run.peak_rss_mb for run in stuck],
                             marker="x", color="red", zorder=3, label=f"{server}: did not complete")
    time_axis.set(xscale="log", yscale="log", xlabel="concurrent clients N",
                  ylabel="seconds per FedAvg round (fit + evaluate)", title="Round time")
    rss_axis.set(xscale="log", xlabel="concurrent clients N", ylabel="server peak RSS (MB)",
                 title="Server memory")
    time_axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))  # 0.5, not 5x10^-1
    time_axis.yaxis.set_minor_formatter(NullFormatter())
    for axis in (time_axis, rss_axis):
        axis.xaxis.set_major_formatter(FormatStrFormatter("%d"))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.bench.scale",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n"
               "  python -m fedproto.bench.scale\n"
               "  python -m fedproto.bench.scale --clients 100 1000 --rounds 1 --out /tmp/scale\n"
               "  python -m fedproto.bench.scale --clients 10000 --servers ours --timeout 300",
    )
    parser.add_argument("--clients", type=positive_int, nargs="+", default=list(DEFAULT_CLIENTS),
                        help="values of N (default: %(default)s)")
    parser.add_argument("--servers", nargs="+", choices=SERVERS, default=list(SERVERS),
                        help="servers to run, in this order for every N (default: floor ours flwr)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="FedAvg rounds per run (default 3)")
    parser.add_argument("--timeout", type=positive_float,
                        help="seconds before a run is killed (default: max(90, N/40))")
    parser.add_argument("--processes", type=positive_int, default=2,
                        help="load generator worker processes (default 2: one per core)")
    parser.add_argument("--streams-per-channel", type=positive_int, default=100,
                        help="Join streams per client channel / TCP connection (default 100)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="folder for scale.json and scale.png (default bench/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    args.out.mkdir(parents=True, exist_ok=True)
    log_dir = Path(tempfile.mkdtemp(prefix="fedproto-scale-"))
    log.info("process logs in %s", log_dir)
    runs: list[Run] = []
    for clients in args.clients:
        for server in args.servers:
            timeout = args.timeout or default_timeout(clients)
            log.info("N=%d %s: starting (timeout %.0f s)", clients, server, timeout)
            run = run_one(server, clients, args.rounds, timeout, args.processes,
                          args.streams_per_channel, log_dir)
            runs.append(run)
            outcome = (f"{run.seconds_per_round:.3f} s/round {run.round_seconds}, CPU s {run.round_cpu_seconds}"
                       if run.completed
                       else run.note)
            log.info("N=%d %s: %s, peak RSS %.0f MB", clients, server, outcome, run.peak_rss_mb)

    table = format_table(runs)
    print(table)
    results = {
        "machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0]},
        "rounds": args.rounds, "processes": args.processes,
        "streams_per_channel": args.streams_per_channel,
        "runs": [asdict(run) for run in runs], "table": table,
    }
    (args.out / "scale.json").write_text(json.dumps(results, indent=1))
    plot(runs, args.out / "scale.png")
    log.info("wrote %s and %s", args.out / "scale.json", args.out / "scale.png")
    return 0 if all(run.completed for run in runs if run.server in MUST_COMPLETE) else 1


if __name__ == "__main__":
    sys.exit(main())
