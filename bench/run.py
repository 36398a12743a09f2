"""``make bench``: every benchmark, each side by side with flwr 1.42, in one run.

    python -m fedproto.bench.run                          # all five, 3 repeats each (about 25 minutes)
    python -m fedproto.bench.run --quick                  # smaller: no 400 MB codec case, N <= 1000, 2 rounds,
                                                          # the Fleet node at 1M once
    python -m fedproto.bench.run --only codec --repeats 5
    python -m fedproto.bench.run --only rounds --only scale --out /tmp/bench

The benchmarks (``python -m fedproto.bench.<module> --help`` for each one's own options and method):

  codec   the edge client's FitIns -> FitRes work and the server's FitRes decode, 1 KB / 10 KB /
          100 KB / 1 MB / 40 MB / 400 MB of float32: ours vs flwr's serde doing the same work, with
          numpy's memcpy measured in the same run (bench.codec)
  client  edge client peak RSS at 1M and 10M parameters against flwr's server: our client vs
          flwr's start_client in the same run (bench.client_rss)
  rounds  4 clients, FedAvg, 10k / 1M / 10M parameters: our server + clients vs flwr's server +
          clients; seconds per round and server peak RSS (bench.rounds)
  scale   N = 100, 1000, 5000, 10000 concurrent clients, 1k parameters: seconds per round, server
          peak RSS and CPU, our server vs flwr's start_server, and both against a bare grpc.aio
          server that only sends the instructions and counts the replies (the floor; bench.scale)
  fleet   a Fleet node on a real flower-superlink, 1M and 10M parameters: peak RSS and seconds per
          round, our node vs flower-supernode + SuperExec + ClientApp (bench.fleet_rss)

Every repeat is a separate measurement (for client, rounds and scale a separate set of
processes); ours and flwr's alternate, so load from elsewhere on the machine hits both. A run
that does not do its work (wrong aggregate, missing results, decoders disagreeing, our wire
bytes differing from flwr's for the same FitRes) is an error, never a number. flwr's server,
which admits at most 1,000 streams, runs once per N above that.

Output, in --out (default bench/results/), each benchmark's files replaced when it runs:
  NAME.json    raw numbers of every repeat, the machine and the command
  NAME.png     the plot (median, whiskers min-max)
  summary.md   markdown tables of every NAME.json present: median (min-max), ratios to flwr,
               the machine each ran on (CPU, cores, memory, Python/numpy/grpcio/protobuf/flwr)
Exit status 0 if every selected benchmark ran and passed its checks, else 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from fedproto.bench import client_rss, codec, fleet_rss, report, rounds, scale
from fedproto.bench.loadgen import positive_int

log = logging.getLogger("fedproto.bench.run")

ROOT = Path(__file__).resolve().parents[1]
BENCHMARKS = ("codec", "client", "rounds", "scale", "fleet")
CLIENT_SIDES = {"1M": 1000, "10M": 3163}  # the model: one SIDE x SIDE float32 tensor
SCALE_CLIENTS, QUICK_SCALE_CLIENTS = (100, 1000, 5000, 10000), (100, 1000)
FLWR_STREAM_CAP = 1000  # flwr's legacy server: a 1,000-thread pool, maximum_concurrent_rpcs=1000
FLWR_CAPPED_TIMEOUT = 60.0  # above the cap it never completes; one run shows it
LOADGEN_PROCESSES, STREAMS_PER_CHANNEL = 2, 100
RUN_TIMEOUT = 300.0  # seconds for one client or rounds run


class BenchmarkFailed(RuntimeError):
    """A benchmark whose run did not pass its checks."""


def run_codec(repeats: int, quick: bool) -> dict:
    sizes = [label for label in codec.SIZES if not quick or label in codec.QUICK_SIZES]
    result = codec.collect(repeats, sizes)
    wrong = [case["size"] for case in result["cases"] if not case["decoders_agree"]]
    if wrong:
        raise BenchmarkFailed(f"codec: the decoders disagree at {wrong}")
    different = [case["size"] for case in result["cases"] if not case["identical_wire_bytes"]]
    if different:  # the same FitRes has one protobuf encoding; ours must be it
        raise BenchmarkFailed(f"codec: our wire bytes differ from flwr's at {different}")
    return result


def run_client(repeats: int, quick: bool) -> dict:
    rounds_per_run = 2 if quick else 3
    runs = []
    with tempfile.TemporaryDirectory(prefix="fedproto-client-rss-") as workdir:
        for label, side in CLIENT_SIDES.items():
            for repeat in range(repeats):
                try:
                    measured = client_rss.run(rounds_per_run, side, Path(workdir), RUN_TIMEOUT)
                except RuntimeError as error:
                    raise BenchmarkFailed(f"client {label}: {error}") from None
                for server, result in zip(report.SERVERS, measured, strict=True):
                    runs.append({"label": label, "parameters": side * side, "repeat": repeat, "server": server,
                                 "client": result.client, "peak_rss_mib": result.peak_rss_kib / 1024,
                                 "wall_seconds": result.wall_seconds})
                log.info("client %s #%d: ours %.1f MiB, flwr %.1f MiB", label, repeat + 1,
                         runs[-2]["peak_rss_mib"], runs[-1]["peak_rss_mib"])
    return {"benchmark": "client", "rounds": rounds_per_run, "repeats": repeats, "runs": runs}


def run_rounds(repeats: int, quick: bool) -> dict:
    try:
        return rounds.collect(list(rounds.PARAMS), repeats, 2 if quick else 3, RUN_TIMEOUT)
    except rounds.RunFailed as error:
        raise BenchmarkFailed(f"rounds: {error}") from None


def run_scale(repeats: int, quick: bool) -> dict:
    rounds_per_run = 2 if quick else 3
    log_dir = Path(tempfile.mkdtemp(prefix="fedproto-scale-"))
    log.info("scale: process logs in %s", log_dir)
    runs = []
    for clients in QUICK_SCALE_CLIENTS if quick else SCALE_CLIENTS:
        for repeat in range(repeats):
            for server in scale.SERVERS:
                capped = server == "flwr" and clients > FLWR_STREAM_CAP
                if capped and repeat > 0:
                    continue
                timeout = FLWR_CAPPED_TIMEOUT if capped else scale.default_timeout(clients)
                run = scale.run_one(server, clients, rounds_per_run, timeout, LOADGEN_PROCESSES,
                                    STREAMS_PER_CHANNEL, log_dir)
                runs.append({**asdict(run), "repeat": repeat})
                log.info("scale N=%d %s #%d: %s, peak RSS %.0f MB", clients, server, repeat + 1,
                         f"{run.seconds_per_round:.3f} s/round" if run.completed else run.note, run.peak_rss_mb)
    result = {"benchmark": "scale", "rounds": rounds_per_run, "repeats": repeats, "processes": LOADGEN_PROCESSES,
              "streams_per_channel": STREAMS_PER_CHANNEL, "flwr_capped_timeout": FLWR_CAPPED_TIMEOUT, "runs": runs}
    incomplete = [f"{run['server']} N={run['clients']}" for run in runs
                  if run["server"] in scale.MUST_COMPLETE and not run["completed"]]
    if incomplete:
        write_outputs("scale", result, Path(tempfile.mkdtemp(prefix="fedproto-scale-failed-")))
        raise BenchmarkFailed(f"scale: did not complete: {', '.join(incomplete)}; logs in {log_dir}")
    return result


def run_fleet(repeats: int, quick: bool) -> dict:
    try:
        return fleet_rss.bench_run(repeats, quick)
    except RuntimeError as error:  # a run that failed its checks, or a process that did not start (logs kept)
        raise BenchmarkFailed(f"fleet: {error}") from None


RUNNERS = {"codec": run_codec, "client": run_client, "rounds": run_rounds, "scale": run_scale, "fleet": run_fleet}


def write_outputs(name: str, result: dict, out: Path) -> None:
    (out / f"{name}.json").write_text(json.dumps(result, indent=1))
    report.PLOTS[name](result, out / f"{name}.png")


def load_results(out: Path) -> dict[str, dict]:
    """Every benchmark's JSON in ``out`` that bench.run wrote (other files there are left alone)."""
    results = {}
    for name in BENCHMARKS:
        path = out / f"{name}.json"
        if path.exists():
            data = json.loads(path.read_text())
            if data.get("benchmark") == name and "machine" in data:
                results[name] = data
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.bench.run", description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (repeatable; default: all five)")
    parser.add_argument("--repeats", type=positive_int, default=3,
                        help="measurements per case and side (default %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a faster run: codec without 400 MB, scale N = 100 and 1000, 2 rounds per run")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="folder for the JSON, PNG and summary.md files (default bench/results)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args.out.mkdir(parents=True, exist_ok=True)

    command = " ".join(["python -m fedproto.bench.run", *(argv if argv is not None else sys.argv[1:])])
    failed = []
    for name in args.only or BENCHMARKS:
        log.info("=== %s ===", name)
        started = time.monotonic()
        machine = report.machine()
        try:
            result = RUNNERS[name](args.repeats, args.quick)
        except BenchmarkFailed as error:
            log.error("%s", error)
            failed.append(name)
            continue
        result.update(machine=machine, command=command, seconds=round(time.monotonic() - started, 1))
        write_outputs(name, result, args.out)
        log.info("=== %s: %.0f s, wrote %s ===", name, result["seconds"], args.out / f"{name}.json")
    text = report.summary(load_results(args.out))
    (args.out / "summary.md").write_text(text)
    print(text)
    if failed:
        log.error("benchmarks that did not pass their checks: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
