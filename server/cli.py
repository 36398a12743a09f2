"""fedproto-server: run FedAvg for N rounds over FlowerService.Join (flwr's legacy wire)."""

from __future__ import annotations

import argparse
import functools
import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import cast

from fedproto import tensor_formats
from fedproto.server.app import run_server
from fedproto.server.checkpoint import CheckpointError, load_npz
from fedproto.server.loop import ClientsUnavailable
from fedproto.server.strategy import FedAdam, FedAvg, FedProx, weighted_metrics_average
from fedproto.server.transport import BindError
from fedproto.wire import MAX_MESSAGE_LENGTH

EXIT_OK = 0
EXIT_CHECKPOINT = 1  # the checkpoint directory or --initial-parameters file is unreadable
EXIT_USAGE = 2
EXIT_NO_CLIENTS = 3  # --wait-timeout passed with too few clients connected
EXIT_CANNOT_LISTEN = 4  # address in use, unknown host, unreadable TLS files
EXIT_NOTHING_LEARNED = 5  # rounds ran, but not one aggregated a fit result: the model is the initial one

EPILOG = """\
Any Flower client that speaks the legacy gRPC transport can join: fedproto's edge client
(fedproto-client / python -m fedproto.client), flwr's own (flwr.client.start_client) or Flower's C++ SDK.
Tensor formats hosted: numpy.ndarray (.npy) and cpp_double (the C++ SDK's flat float64); each
client is answered in the format it sends (a new one: --tensor-type, or else the initial
model's format). A mixed fleet with C++ clients: --tensor-type cpp_double (fedproto's edge
client reads it too; flwr's client does not). Every round
trains on max(int(connected * fraction-fit), min-clients) clients, averages their parameters
weighted by num_examples (flwr's FedAvg), then evaluates. The initial parameters come from
--initial-parameters, or else from one connected client (GetParametersIns).

Each round prints one line:
  round 2/5: fit 4 ok 1 failed | evaluate 4 ok 0 failed | loss 0.612 distributed (4 clients) | 0.41 s
("centralized" is the strategy's own evaluation; "model unchanged": no FitRes went into the model)
and each failed client one warning saying why (stream_closed, timeout, status, wrong_reply,
malformed, bad_tensor, non_finite, shape_mismatch, dtype_mismatch). Failed clients are left out
of the average. A round in which clients it asked have left ends with "| 3 of 4 clients live".

examples:
  # 3 rounds as soon as 2 clients are connected
  fedproto-server --address 0.0.0.0:8080 --rounds 3 --min-clients 2
  fedproto-client --server 127.0.0.1:8080 --app fedproto.client.demo:make_client      # twice

  # train on half of the clients each round, give up on a client silent for 60 s,
  # send {"lr": 0.1, "server_round": N} with every FitIns/EvaluateIns, save the History
  fedproto-server --rounds 10 --min-clients 4 --fraction-fit 0.5 --round-timeout 60 \\
      --config '{"lr": 0.1}' --history history.json

  # survive a crash: checkpoint every round, then restart the same command with --resume
  fedproto-server --rounds 20 --min-clients 4 --checkpoint-dir ckpt/
  fedproto-server --rounds 20 --min-clients 4 --checkpoint-dir ckpt/ --resume

  # FedAdam: the average is a pseudo-gradient for a server-side Adam step (needs a start)
  fedproto-server --strategy fedadam --server-learning-rate 0.05 --initial-parameters w0.npz
  # FedProx: FedAvg that sends proximal_mu in every fit config, for the clients' proximal term
  fedproto-server --strategy fedprox --proximal-mu 0.1

  # TLS: the CA certificate, the server's certificate and its private key (PEM)
  fedproto-server --certificates ca.pem server.pem server.key --rounds 3

exit codes: 0 done, 1 unreadable checkpoint or parameters file, 2 usage error,
            3 not enough clients within --wait-timeout, or no client gave a usable initial model
              (without --initial-parameters), 4 cannot listen (address, TLS files),
            5 nothing learned: rounds ran but none aggregated a single fit result (every fit
              failed, or every client reported num_examples=0), so the final model is the
              initial one (a WARNING says why)
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-server",
        description="A Flower server (FlowerService.Join) on grpc.aio: FedAvg, FedProx or FedAdam.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", default="0.0.0.0:8080", metavar="HOST:PORT",
                        help="where to listen (default: %(default)s; [::]:8080 for IPv6)")
    parser.add_argument("--rounds", type=int, default=3, metavar="N",
                        help="rounds to run, resumed ones included (default: %(default)s)")
    parser.add_argument("--min-clients", type=int, default=2, metavar="K",
                        help="clients that must be connected before a round starts, and the least "
                             "that train and evaluate in each (default: %(default)s)")
    parser.add_argument("--fraction-fit", type=float, default=1.0, metavar="F",
                        help="share of connected clients that train each round (default: %(default)s)")
    parser.add_argument("--fraction-evaluate", type=float, default=1.0, metavar="F",
                        help="share that evaluate each round; 0 turns evaluation off (default: %(default)s)")
    parser.add_argument("--strategy", choices=["fedavg", "fedprox", "fedadam"], default="fedavg",
                        help="how rounds are aggregated (default: %(default)s)")
    parser.add_argument("--proximal-mu", type=float, metavar="MU",
                        help="fedprox: proximal_mu sent in every fit config (required with fedprox)")
    parser.add_argument("--server-learning-rate", type=float, default=0.1, metavar="ETA",
                        help="fedadam: step size of the server's Adam update (default: %(default)s)")
    parser.add_argument("--round-timeout", type=float, metavar="SECONDS",
                        help="a client silent this long fails the round and is disconnected "
                             "(default: wait forever)")
    parser.add_argument("--wait-timeout", type=float, metavar="SECONDS",
                        help="give up (exit 3) if --min-clients are not connected in time "
                             "(default: wait forever)")
    parser.add_argument("--config", default="{}", metavar="JSON",
                        help="config sent with every FitIns and EvaluateIns, plus server_round, "
                             "e.g. '{\"lr\": 0.1, \"local_epochs\": 2}'")
    parser.add_argument("--initial-parameters", type=Path, metavar="NPZ",
                        help="start from these parameters (.npz of arr_0, arr_1, ..., e.g. a "
                             "checkpoint's parameters-round-*.npz) instead of asking a client")
    parser.add_argument("--certificates", nargs=3, type=Path, metavar=("CA", "CERT", "KEY"),
                        help="PEM files: CA certificate, server certificate, server private key; enables TLS")
    parser.add_argument("--history", type=Path, metavar="FILE",
                        help="write the History (losses, metrics, failures per round) here as JSON")
    parser.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                        help="save parameters and History after every round")
    parser.add_argument("--resume", action="store_true",
                        help="continue after the last round saved in --checkpoint-dir")
    parser.add_argument("--max-message-length", type=int, default=MAX_MESSAGE_LENGTH, metavar="BYTES",
                        help="largest message sent or accepted (default: %(default)s = 512 MiB, as flwr documents)")
    parser.add_argument("--tensor-type", choices=tensor_formats.registered(), metavar="FORMAT",
                        help="tensor format of the first instruction to a client not heard from yet: "
                             + " or ".join(tensor_formats.registered()) + " (default: the initial model's "
                             "format if a client gave it, else numpy.ndarray); afterwards each client is "
                             "answered in the format it writes")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _parse_config(text: str) -> dict:
    config = json.loads(text)
    if not isinstance(config, dict):
        raise ValueError("--config must be a JSON object")
    return config


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.resume and args.checkpoint_dir is None:
        parser.error("--resume needs --checkpoint-dir")
    if args.rounds < 0 or args.min_clients < 1:
        parser.error("--rounds must be >= 0 and --min-clients >= 1")
    try:
        config = _parse_config(args.config)
    except ValueError as error:
        parser.error(f"--config: {error}")
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("fedproto.server")

    try:
        initial = load_npz(args.initial_parameters) if args.initial_parameters else None
    except CheckpointError as error:
        log.error("%s", error)
        return EXIT_CHECKPOINT
    try:
        certificates = tuple(path.read_bytes() for path in args.certificates) if args.certificates else None
    except OSError as error:
        log.error("cannot read --certificates: %s", error)
        return EXIT_CANNOT_LISTEN

    def round_config(server_round: int) -> dict:
        return {**config, "server_round": server_round}

    if args.strategy == "fedprox" and args.proximal_mu is None:
        parser.error("--strategy fedprox needs --proximal-mu")
    if args.strategy == "fedadam" and args.initial_parameters is None:
        parser.error("--strategy fedadam needs --initial-parameters (its first step starts from them)")
    make_strategy: Callable[..., FedAvg]
    if args.strategy == "fedprox":
        make_strategy = functools.partial(FedProx, proximal_mu=args.proximal_mu)
    elif args.strategy == "fedadam":  # cast: mypy cannot see that initial is not None here (checked above)
        make_strategy = cast(Callable[..., FedAvg], functools.partial(FedAdam, eta=args.server_learning_rate))
    else:
        make_strategy = FedAvg
    try:
        strategy = make_strategy(
            fraction_fit=args.fraction_fit,
            fraction_evaluate=args.fraction_evaluate,
            min_fit_clients=args.min_clients,
            min_evaluate_clients=args.min_clients,
            min_available_clients=args.min_clients,
            on_fit_config_fn=round_config,
            on_evaluate_config_fn=round_config,
            initial_parameters=initial,
            fit_metrics_aggregation_fn=weighted_metrics_average,
            evaluate_metrics_aggregation_fn=weighted_metrics_average,
        )
    except ValueError as error:
        parser.error(str(error))

    try:
        result = run_server(
            address=args.address,
            strategy=strategy,
            rounds=args.rounds,
            round_timeout=args.round_timeout,
            certificates=certificates,
            history_path=args.history,
            checkpoint_dir=args.checkpoint_dir,
            resume=args.resume,
            max_message_length=args.max_message_length,
            wait_timeout=args.wait_timeout,
            tensor_type=args.tensor_type,
        )
    except BindError as error:
        log.error("%s", error)
        return EXIT_CANNOT_LISTEN
    except ClientsUnavailable as error:
        log.error("%s", error)
        return EXIT_NO_CLIENTS
    except CheckpointError as error:
        log.error("%s", error)
        return EXIT_CHECKPOINT
    except KeyboardInterrupt:
        return 130
    return EXIT_OK if result.learned else EXIT_NOTHING_LEARNED
