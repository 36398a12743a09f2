"""python -m fedproto.har: human-activity recognition on MotionSense, centralized vs local-only vs federated."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

from fedproto.har.client_app import parse_hidden_units
from fedproto.har.settings import Settings

log = logging.getLogger("har")

DEFAULTS = Settings()

EPILOG = """\
what it does:
  1. data: reads MotionSense's DeviceMotion recordings (--data), or, by default, generates a
     deterministic SYNTHETIC dataset in exactly that layout under OUT/synthetic-motionsense
     (this machine cannot download the real one). Windows of --window samples every --step
     samples, per-window features, train = trials 1-9, test = trials 11-16 (the second
     session: a recording never lands on both sides), standardization fitted on train only,
     subjects split into --clients contiguous groups (non-IID: one group of people per client).
  2. centralized: one model on all training windows.
  3. local-only: each client's model on its own subjects only, tested on everyone's test windows.
  4. federated: FedAvg server in this process and --clients edge client processes
     (python -m fedproto.client --app fedproto.har.client_app:make_client) over gRPC on 127.0.0.1;
     --rounds rounds of --local-epochs epochs; the server scores the global model on the
     common test set after every round. --server superlink: a real flower-superlink and a
     `flwr run` of har/superlink_app (message-API FedAvg, the ServerApp scores the global model);
     the same clients join as Fleet API nodes (python -m fedproto.client --superlink ...).
     --server fedproto,flwr,superlink runs the job on each and reports them side by side.
  Every paradigm gets the same budget: rounds x local epochs passes over its training data.
  Outputs in OUT: results.json, federated_accuracy.png, confusion_matrix.png, client logs.

examples:
  python -m fedproto.har                                   # the default run (make run)
  python -m fedproto.har --data ~/motionsense --out real   # a downloaded MotionSense copy: the folder
                                                  # holding A_DeviceMotion_data/ and
                                                  # data_subjects_info.csv
  python -m fedproto.har --clients 6 --rounds 20 --local-epochs 1
  python -m fedproto.har --server flwr                     # same clients against flwr's start_server
  python -m fedproto.har --server superlink                # same clients as Fleet nodes of flower-superlink
"""


def hidden_units(text: str) -> tuple[int, ...]:
    try:
        return parse_hidden_units(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


SERVERS = ("fedproto", "flwr", "superlink")


def server_list(text: str) -> tuple[str, ...]:
    kinds = tuple(text.split(","))
    unknown = [kind for kind in kinds if kind not in SERVERS]
    if unknown or len(set(kinds)) != len(kinds):
        raise argparse.ArgumentTypeError(f"expected distinct servers among {', '.join(SERVERS)}, got {text!r}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.har",
        description="Train an activity classifier (6 activities) from smartphone motion sensors three ways: "
                    "centralized, local-only and federated over fedproto's wire protocol, and compare them.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    data = parser.add_argument_group("data")
    data.add_argument("--data", type=Path, metavar="PATH",
                      help="a MotionSense copy (folder with A_DeviceMotion_data/ and data_subjects_info.csv); "
                           "default: generate the synthetic stand-in")
    data.add_argument("--window", type=int, default=DEFAULTS.window, metavar="SAMPLES",
                      help="window length in samples at 50 Hz (default: %(default)s = 2.56 s)")
    data.add_argument("--step", type=int, default=DEFAULTS.step, metavar="SAMPLES",
                      help="samples between window starts (default: %(default)s, 50%% overlap)")
    training = parser.add_argument_group("training")
    training.add_argument("--clients", type=int, default=DEFAULTS.clients, metavar="N",
                          help="edge clients, one group of subjects each (default: %(default)s)")
    training.add_argument("--rounds", type=int, default=DEFAULTS.rounds, metavar="R",
                          help="federated rounds (default: %(default)s)")
    training.add_argument("--local-epochs", type=int, default=DEFAULTS.local_epochs, metavar="E",
                          help="epochs per client per round (default: %(default)s); "
                               "centralized and local-only train R x E epochs")
    training.add_argument("--batch-size", type=int, default=DEFAULTS.batch_size, metavar="B",
                          help="minibatch size (default: %(default)s)")
    training.add_argument("--learning-rate", type=float, default=DEFAULTS.learning_rate, metavar="LR",
                          help="Adam learning rate (default: %(default)s)")
    training.add_argument("--hidden", type=hidden_units, default=DEFAULTS.hidden, metavar="UNITS",
                          help="hidden layer sizes, comma-separated (default: 64,32)")
    training.add_argument("--seed", type=int, default=DEFAULTS.seed,
                          help="seeds the initial weights and every shuffle (default: %(default)s)")
    run = parser.add_argument_group("run")
    run.add_argument("--server", type=server_list, default=("fedproto",), metavar="KIND[,KIND...]",
                     help="fedproto: our reference server (default); flwr: flwr.server.start_server, "
                          "an interop demo with the same edge clients; superlink: today's Flower, "
                          "flower-superlink + flwr run of har/superlink_app, the clients as Fleet nodes. "
                          "Several, comma-separated (e.g. fedproto,flwr,superlink): each runs the same "
                          "federated job and they are reported side by side; the first is the main one")
    run.add_argument("--port", type=int, default=0, help="server port on 127.0.0.1 (default: a free one)")
    run.add_argument("--out", type=Path, default=Path("results"), metavar="DIR",
                     help="output folder (default: %(default)s)")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    positive = {"--clients": args.clients, "--rounds": args.rounds, "--local-epochs": args.local_epochs,
                "--batch-size": args.batch_size, "--step": args.step}
    for flag, value in positive.items():
        if value < 1:
            raise ValueError(f"{flag} must be at least 1, got {value}")
    if args.window < 2:
        raise ValueError(f"--window must be at least 2, got {args.window}")
    if args.learning_rate <= 0:
        raise ValueError(f"--learning-rate must be positive, got {args.learning_rate}")
    return Settings(clients=args.clients, rounds=args.rounds, local_epochs=args.local_epochs,
                    batch_size=args.batch_size, learning_rate=args.learning_rate, hidden=args.hidden,
                    window=args.window, step=args.step, seed=args.seed)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        settings = _settings(args)
    except ValueError as error:
        parser.error(str(error))
    from fedproto.har.federated import FederatedError

    try:
        return run(args, settings)
    except ValueError as error:  # har.data.DataError included: the message names the file
        print(f"python -m fedproto.har: error: {error}", file=sys.stderr)
        return 2
    except FederatedError as error:
        print(f"python -m fedproto.har: federated run failed: {error}", file=sys.stderr)
        return 1


def run(args: argparse.Namespace, settings: Settings) -> int:
    from fedproto.har import data, synthetic

    began = time.perf_counter()
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if args.data is None:
        root = out / "synthetic-motionsense"
        log.info("data: generating the SYNTHETIC MotionSense stand-in in %s (pass --data for the real one)", root)
        synthetic.generate(root)
        source = "synthetic data"
    else:
        root, source = args.data, f"data from {args.data}"
    log.info("data: reading %s", root)
    prepared = data.prepare(root, clients=settings.clients, window=settings.window, step=settings.step)
    log.info("data: %d subjects, %d train / %d test windows, %d features; clients get subjects %s",
             len(prepared.subjects_info), len(prepared.train), len(prepared.test), prepared.train.x.shape[1],
             " | ".join(",".join(map(str, group)) for group in prepared.client_subjects))
    data_seconds = time.perf_counter() - began

    from fedproto.har import federated, paradigms, report

    start = paradigms.initial_weights(prepared.train.x.shape[1], settings)
    log.info("budget: %d epochs per paradigm (%d rounds x %d local epochs), batch %d, Adam lr %g, hidden %s",
             settings.epochs, settings.rounds, settings.local_epochs, settings.batch_size,
             settings.learning_rate, list(settings.hidden))

    clock = time.perf_counter()
    central = paradigms.centralized(prepared, settings, start)
    log.info("centralized: accuracy %.4f, macro-F1 %.4f", central.accuracy, central.macro_f1)
    local = paradigms.local_only(prepared, settings, start)
    baseline_seconds = time.perf_counter() - clock

    clock = time.perf_counter()
    outcomes = [  # several servers: each its own partitions and logs, in OUT/<server>/
        federated.run_federated(prepared, settings, start, out if len(args.server) == 1 else out / kind, kind,
                                paradigms.scorer(prepared, settings), port=args.port)
        for kind in args.server
    ]
    outcome = outcomes[0]
    federated_seconds = time.perf_counter() - clock

    data_summary = {
        "synthetic": args.data is None, "path": None if args.data is None else str(args.data),
        "subjects": len(prepared.subjects_info),
        "train_windows": len(prepared.train), "test_windows": len(prepared.test),
        "features": int(prepared.train.x.shape[1]), "test_trials": sorted({int(t) for t in prepared.test.trial}),
        "client_subjects": [[int(s) for s in group] for group in prepared.client_subjects],
    }
    document = report.results_document(data_summary, settings.as_dict(), central, local,
                                       prepared.client_subjects, outcomes)
    paths = [
        report.write_json(document, out),
        report.plot_accuracy(outcomes, central, local, out),
        report.plot_confusion(outcome.final.scores, out,
                              f"federated model after {settings.rounds} rounds ({source}, test set)"),
    ]
    print()
    print(f"HAR results ({source}, {len(prepared.test)} test windows, same budget: "
          f"{settings.epochs} epochs per paradigm)")
    print(report.table(central, local, prepared.client_subjects, outcomes, settings.epochs))
    final = outcome.final.scores
    local_mean = report.mean_scores(local)["accuracy"]
    print(f"\nfederated final vs centralized: {100 * (final.accuracy - central.accuracy):+.2f} accuracy points; "
          f"vs local-only mean: {100 * (final.accuracy - local_mean):+.2f} points")
    print(f"time: data {data_seconds:.1f} s, centralized + local-only {baseline_seconds:.1f} s, "
          f"federated {federated_seconds:.1f} s, total {time.perf_counter() - began:.1f} s")
    print("wrote " + ", ".join(str(p) for p in paths))
    return 0
