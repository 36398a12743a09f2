"""Peak memory of a Fleet node: our node vs flwr's flower-supernode and its ClientApp processes.

    python -m fedproto.bench.fleet_rss                          # 1M parameters, 3 repeats per side
    python -m fedproto.bench.fleet_rss --params 10k --params 1M --repeats 1

Each run starts a real ``flower-superlink`` on a free loopback port, two nodes, and ``flwr run`` of
``examples/superlink_app`` (message-API FedAvg, 3 rounds, both nodes in every round); the
processes are started and stopped by ``tests/superlink_harness.py``, the interop tests' harness.
The two sides run one after the other, alternating, each with its own SuperLink:

- ours: two ``python -m fedproto.client --superlink 127.0.0.1:P --app
  superlink_app.handlers:make_client`` (one process per node);
- flwr: two ``flower-supernode`` running the app's ClientApp. A SuperNode starts one
  ``flower-superexec``, which starts one ``flwr-clientapp`` process per message (train or
  evaluate) and lets it exit after the reply.

Both sides run the same arithmetic (``superlink_app/arithmetic.py``), with the same defaults
(3 s between a node's empty pulls). The model is the app's (a 3x2 float64 and a 4-element float32
tensor) plus a float32 tensor of ``extra-elements`` (run config) that brings it to the chosen
parameter count. A run counts only if its status is ``finished:completed`` and the final global
model equals FedAvg computed here independently (1e-6); anything else is an error, not a number.

Measured per node: every process of the node (the process started and all its descendants) is
read every ``--sample-interval`` seconds from ``/proc/PID/status``; a process's peak is its
``VmHWM`` (the kernel's high-water mark of its resident set) at the last reading before it exits,
and the nodes are read once more after the run, before they are stopped. Per node the JSON has:
- ``processes``: each process's role (node, SuperNode, SuperExec, ClientApp) and peak;
- ``sum_kib``: the sum of the peaks of the processes that run side by side: ours the node alone;
  flwr's SuperNode + SuperExec + the largest ClientApp peak (its ClientApps run one at a time,
  except an occasional extra one: ``most_clientapps_at_once`` is what the readings saw);
- ``tree_peak_kib``: the largest sum of the node's processes' current ``VmRSS`` in one reading.
Peaks include the interpreter and its imports. A process whose resident set grows in the last
interval before it exits is under-read (a ClientApp is the SuperExec's child, so its rusage
cannot be read here when it exits: polling is the way to see it).

Seconds per round, the same measure for both sides: the time the ServerApp's strategy reports
for the whole run ("Strategy execution finished in X s", logged by flwr's message-API
``Strategy.start`` and streamed by ``flwr run --stream``) divided by the rounds. It spans the
rounds only (not starting the SuperLink, the nodes or the ServerApp); both kinds of node pull
every 3 s when idle, so most of a round is waiting for the nodes' next pull, and flwr's nodes
also start a ClientApp process per message.

``make bench`` runs this as its ``fleet`` part (``bench_run``: 1M and 10M, or 1M once with
--quick) and puts ``summary_section``'s table in summary.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from fedproto.bench.loadgen import positive_int
from fedproto.bench.rounds import spread

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "examples" / "superlink_app")]
# mypy checks the package alone: these two live outside it, found through the sys.path above.
from superlink_app.arithmetic import expected_fedavg  # type: ignore[import-not-found]  # noqa: E402
from superlink_harness import Harness, Process  # type: ignore[import-not-found]  # noqa: E402

log = logging.getLogger("fedproto.bench.fleet_rss")

PARAMS = {"10k": 10_000, "1M": 1_000_000, "10M": 10_000_000}
BASE_ELEMENTS = 10  # the app's model without extra-elements: 3x2 float64 + 4 float32
NODES = 2
SIDES = ("ours", "flwr")
OUR_APP = "superlink_app.handlers:make_client"
NODE_STOP_TIMEOUT = 30.0
# The ServerApp's own timing of its strategy (flwr/serverapp/strategy/strategy.py, Strategy.start).
STRATEGY_SECONDS = re.compile(r"Strategy execution finished in ([0-9.]+)s")
BENCH_LABELS, QUICK_BENCH_LABELS = ("1M", "10M"), ("1M",)
BENCH_ROUNDS, BENCH_TIMEOUT, BENCH_SAMPLE_INTERVAL = 3, 600.0, 0.02


class RunFailed(RuntimeError):
    """A run that did not complete its work: its numbers are not reported."""


def read_memory_kib(pid: int) -> tuple[int, int] | None:
    """(VmHWM, VmRSS) of a process in KiB, or None once it has exited (or is a zombie)."""
    values = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split()[:2]
                    values[key] = int(value)
    except OSError:
        return None
    if len(values) < 2:
        return None
    return values["VmHWM:"], values["VmRSS:"]


class NodeMemory:
    """The peak memory of every process of one node: the process started and its descendants."""

    def __init__(self, process: Process) -> None:
        self.name = process.name
        self.root = psutil.Process(process.popen.pid)
        self.peaks: dict[tuple[int, str], int] = {}  # (pid, role) -> VmHWM KiB
        self.tree_peak_kib = 0
        self.most_clientapps_at_once = 0

    def _role(self, proc: psutil.Process) -> str:
        """What a process is, from its command line. A child between fork and exec still shows
        its parent's command line, so it is "other" until it has become what it runs."""
        command = " ".join(proc.cmdline())
        if proc.pid == self.root.pid:
            return "SuperNode" if "flower-supernode" in command else "node"
        if "flwr-clientapp" in command:
            return "ClientApp"
        if "flower-superexec" in command and proc.ppid() == self.root.pid:
            return "SuperExec"
        return "other"

    def sample(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        tree_rss = clientapps = 0
        for proc in procs:
            try:
                role = self._role(proc)
            except psutil.Error:  # exited while being read
                continue
            memory = read_memory_kib(proc.pid)
            if memory is None or role == "other":
                continue
            hwm, rss = memory
            key = (proc.pid, role)
            self.peaks[key] = max(self.peaks.get(key, 0), hwm)
            tree_rss += rss
            clientapps += role == "ClientApp"
        self.tree_peak_kib = max(self.tree_peak_kib, tree_rss)
        self.most_clientapps_at_once = max(self.most_clientapps_at_once, clientapps)

    def result(self) -> dict:
        processes: list[dict[str, Any]] = [{"pid": pid, "role": role, "peak_kib": peak}
                                           for (pid, role), peak in sorted(self.peaks.items())]
        by_role: dict[str, list[int]] = {}
        for entry in processes:
            by_role.setdefault(entry["role"], []).append(entry["peak_kib"])
        # Processes that run side by side: one of each role (ClientApps run one at a time).
        total = sum(max(peaks) for peaks in by_role.values())
        return {"node": self.name, "processes": processes,
                "peak_kib_by_role": {role: max(peaks) for role, peaks in by_role.items()},
                "clientapp_processes": len(by_role.get("ClientApp", [])),
                "most_clientapps_at_once": self.most_clientapps_at_once,
                "sum_kib": total, "tree_peak_kib": self.tree_peak_kib}


def start_nodes(harness: Harness, side: str) -> list[Process]:
    if side == "ours":
        return [harness.start_fedproto_node(f"node{client}", OUR_APP, env={"FLEET_CLIENT": str(client)})
                for client in range(NODES)]
    return [harness.start_supernode(f"supernode{client}", f"client={client}") for client in range(NODES)]


def run_one(side: str, parameters: int, rounds: int, workdir: Path, timeout: float,
            sample_interval: float) -> dict:
    """One SuperLink, two nodes of one side and one flwr run; everything stopped before returning."""
    extra = parameters - BASE_ELEMENTS
    harness = Harness(workdir)
    result_dir = workdir / "result"
    started = time.monotonic()
    try:
        harness.start_superlink()
        nodes = start_nodes(harness, side)
        memories = [NodeMemory(node) for node in nodes]
        run = harness.start_run("run", run_config={
            "strategy": "message", "num-rounds": rounds, "min-nodes": NODES, "extra-elements": extra,
            "poll-interval": 0.2, "result-dir": str(result_dir)})
        deadline = started + timeout
        while run.popen.poll() is None:
            for memory in memories:
                memory.sample()
            if time.monotonic() > deadline:
                raise RunFailed(f"{side}: flwr run did not end within {timeout:.0f} s; logs in {workdir}")
            time.sleep(sample_interval)
        for memory in memories:
            memory.sample()
        try:
            outcome = harness.finish_run(run, timeout=10)
        except RuntimeError as error:
            raise RunFailed(f"{side}: {error}") from None
        if outcome.status != "finished:completed":
            raise RunFailed(f"{side}: run {outcome.run_id} is {outcome.status} ({outcome.details}); "
                            f"logs in {workdir}")
        _check_model(side, result_dir, rounds, extra)
        timed = STRATEGY_SECONDS.search(outcome.output)
        if timed is None:
            raise RunFailed(f"{side}: the ServerApp reported no strategy time; logs in {workdir}")
        for node in nodes:
            _stop_node(side, node)
    finally:
        harness.stop_all()
    return {"side": side, "parameters": parameters, "rounds": rounds,
            "wall_seconds": round(time.monotonic() - started, 1),
            "strategy_seconds": float(timed.group(1)), "seconds_per_round": float(timed.group(1)) / rounds,
            "nodes": [memory.result() for memory in memories]}


def _stop_node(side: str, node: Process) -> None:
    """SIGTERM, the documented way to end both kinds of node; ours must then exit 0."""
    if side == "flwr":
        node.stop()
        return
    node.popen.send_signal(signal.SIGTERM)
    code = node.wait(NODE_STOP_TIMEOUT)
    if code != 0:
        raise RunFailed(f"ours: {node.name} exited with {code} after SIGTERM; see {node.log_path}")


def _check_model(side: str, result_dir: Path, rounds: int, extra: int) -> None:
    """The ServerApp's final model must be FedAvg of both nodes in every round."""
    with np.load(result_dir / "final_arrays.npz") as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    expected = expected_fedavg([list(range(NODES))] * rounds, extra_elements=extra)
    if [a.shape for a in arrays] != [e.shape for e in expected] or not all(
            np.allclose(a, e, rtol=0, atol=1e-6) for a, e in zip(arrays, expected)):
        raise RunFailed(f"{side}: the final model is not the FedAvg of both nodes over {rounds} rounds")


def collect(labels: list[str], repeats: int, rounds: int, timeout: float, sample_interval: float,
            workdir: Path) -> dict:
    runs = []
    for label in labels:
        for repeat in range(repeats):
            for side in SIDES if repeat % 2 == 0 else reversed(SIDES):
                run = run_one(side, PARAMS[label], rounds, workdir / f"{label}-{repeat}-{side}", timeout,
                              sample_interval)
                runs.append({"label": label, "repeat": repeat, **run})
                log.info("%s #%d %s: per node sum %s MiB, %.2f s/round (%.0f s)", label, repeat + 1, side,
                         ", ".join(f"{node['sum_kib'] / 1024:.1f}" for node in run["nodes"]),
                         run["seconds_per_round"], run["wall_seconds"])
    return {"benchmark": "fleet", "nodes_per_run": NODES, "rounds": rounds, "repeats": repeats,
            "sample_interval": sample_interval, "runs": runs}


def bench_run(repeats: int, quick: bool) -> dict:
    """The ``fleet`` part of ``make bench`` (bench.run): 1M and 10M parameters (--quick: 1M, one
    repeat). Raises RuntimeError (RunFailed, or a process that did not start) with the logs kept."""
    labels = list(QUICK_BENCH_LABELS if quick else BENCH_LABELS)
    workdir = Path(tempfile.mkdtemp(prefix="fedproto-fleet-"))
    try:
        result = collect(labels, 1 if quick else repeats, BENCH_ROUNDS, BENCH_TIMEOUT, BENCH_SAMPLE_INTERVAL,
                         workdir)
    except RuntimeError as error:
        raise RuntimeError(f"{error}\nprocess logs kept in {workdir}") from None
    shutil.rmtree(workdir)
    return result


def _per_node(result: dict, label: str, side: str, value) -> list[float]:
    """value(node) in MiB for every node of every run of this label and side."""
    return [value(node) / 1024 for run in result["runs"] if run["label"] == label and run["side"] == side
            for node in run["nodes"]]


def format_table(result: dict) -> str:
    """Per node, median (min-max) over every node of every repeat, MiB."""
    lines = ["| parameters | ours: node | flwr: SuperNode | SuperExec | ClientApp (largest) "
             "| flwr sum | flwr sum / ours | flwr tree peak (sampled) | ClientApps per node |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(run["label"] for run in result["runs"]):
        ours = _per_node(result, label, "ours", lambda node: node["sum_kib"])
        role = {name: _per_node(result, label, "flwr", lambda node, n=name: node["peak_kib_by_role"].get(n, 0))
                for name in ("SuperNode", "SuperExec", "ClientApp")}
        flwr_sum = _per_node(result, label, "flwr", lambda node: node["sum_kib"])
        tree = _per_node(result, label, "flwr", lambda node: node["tree_peak_kib"])
        clientapps = sorted({node["clientapp_processes"] for run in result["runs"]
                             if run["label"] == label and run["side"] == "flwr" for node in run["nodes"]})
        lines.append(f"| {label} | {spread(ours, '.1f')} | {spread(role['SuperNode'], '.1f')} "
                     f"| {spread(role['SuperExec'], '.1f')} | {spread(role['ClientApp'], '.1f')} "
                     f"| {spread(flwr_sum, '.1f')} "
                     f"| {statistics.median(flwr_sum) / statistics.median(ours):.2f}x "
                     f"| {spread(tree, '.1f')} | {', '.join(map(str, clientapps))} |")
    return "\n".join(lines)


def bench_table(result: dict) -> str:
    """Per node: ours vs flwr's sum of processes, and seconds per round; median (min-max)."""
    lines = ["| parameters | ours peak RSS MiB | flwr sum MiB | flwr / ours | ours s/round | flwr s/round |",
             "|---|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(run["label"] for run in result["runs"]):
        rss = {side: _per_node(result, label, side, lambda node: node["sum_kib"]) for side in SIDES}
        per_round = {side: [run["seconds_per_round"] for run in result["runs"]
                            if run["label"] == label and run["side"] == side] for side in SIDES}
        lines.append(f"| {label} | {spread(rss['ours'], '.1f')} | {spread(rss['flwr'], '.1f')} "
                     f"| {statistics.median(rss['flwr']) / statistics.median(rss['ours']):.2f}x "
                     f"| {spread(per_round['ours'], '.2f')} "
                     f"| {spread(per_round['flwr'], '.2f')} |")
    return "\n".join(lines)


def summary_section(result: dict) -> str:
    """The ``fleet`` section of summary.md."""
    return "\n".join([
        "## Fleet node on flower-superlink: peak RSS and seconds per round",
        "",
        f"`bench.fleet_rss`: a real `flower-superlink`, {result['nodes_per_run']} nodes and `flwr run` of "
        f"`examples/superlink_app` (message-API FedAvg, {result['rounds']} rounds); the nodes are ours "
        "(`fedproto-client --superlink`, one process) or `flower-supernode`s (SuperNode + SuperExec + one "
        "`flwr-clientapp` process per message), each side with its own SuperLink, alternating. Peak RSS per node: "
        "ours the one process, flwr's the sum of SuperNode, SuperExec and the largest ClientApp (read from "
        "`/proc` every 20 ms), over every node of every repeat. s/round: the ServerApp's own strategy time "
        "divided by the rounds, per run; both kinds of node poll every 3 s when idle. Median (min-max).",
        "",
        bench_table(result),
    ])


def plot(result: dict, path: Path) -> None:
    """fleet.png: peak RSS per node and seconds per round, ours and flwr's; median, whiskers min-max."""
    from fedproto.bench import report  # here, not at the top: bench.report imports this module

    plt = report._pyplot()
    labels = list(dict.fromkeys(run["label"] for run in result["runs"]))
    rss = {side: [_per_node(result, label, side, lambda node: node["sum_kib"]) for label in labels]
           for side in SIDES}
    per_round = {side: [[run["seconds_per_round"] for run in result["runs"]
                         if run["label"] == label and run["side"] == side] for label in labels] for side in SIDES}
    figure, (rss_axis, time_axis) = plt.subplots(1, 2, figsize=(10, 4.2))
    names = [f"{label} parameters" for label in labels]
    report._bars(rss_axis, names, rss, "peak RSS per node (MiB)", "Fleet node memory (flwr: sum of processes)")
    report._bars(time_axis, names, per_round, "seconds per round", "Fleet rounds on flower-superlink")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.bench.fleet_rss", description=__doc__.split("\n\n")[0],
        epilog=__doc__.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", choices=PARAMS, action="append",
                        help="model size in parameters (repeatable; default: 1M)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="runs per size and side (default %(default)s)")
    parser.add_argument("--rounds", type=positive_int, default=3, help="FedAvg rounds per run (default %(default)s)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one run may take, start to end (default %(default)s)")
    parser.add_argument("--sample-interval", type=float, default=0.02, metavar="SECONDS",
                        help="seconds between two readings of /proc (default %(default)s)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "fleet_rss.json",
                        help="the JSON file to write (default bench/results/fleet_rss.json)")
    parser.add_argument("--keep-logs", type=Path, metavar="DIR",
                        help="keep every process log here instead of in a temporary directory")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    from fedproto.bench import report  # here, not at the top: bench.report imports this module

    command = " ".join(["python -m fedproto.bench.fleet_rss", *(argv if argv is not None else sys.argv[1:])])
    machine = report.machine()
    started = time.monotonic()
    labels = args.params or ["1M"]
    workdir = args.keep_logs or Path(tempfile.mkdtemp(prefix="fedproto-fleet-rss-"))
    try:
        result = collect(labels, args.repeats, args.rounds, args.timeout, args.sample_interval, workdir)
    except RuntimeError as error:  # RunFailed, or the harness: a process that did not start
        log.error("%s\nprocess logs kept in %s", error, workdir)
        return 1
    if not args.keep_logs:
        shutil.rmtree(workdir)
    result.update(machine=machine, command=command, seconds=round(time.monotonic() - started, 1))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"Peak RSS per Fleet node, MiB, median (min-max) over {NODES} nodes x {args.repeats} runs; "
          f"{args.rounds} rounds of message-API FedAvg on flower-superlink")
    print(format_table(result))
    print()
    print(bench_table(result))
    print(f"\nMeasured {report.describe(machine)}; `{command}`. Raw numbers: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
