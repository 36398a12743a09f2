"""The federated run: a FedAvg server in this process, N edge clients as separate processes.

Each client is the project's edge client (``python -m client --app har.client_app:make_client``)
talking ``FlowerService.Join`` over gRPC on loopback; its data is the partition file written
here. The server is ours (``server.run_server``) or, with ``--server flwr``, flwr's own
``start_server``: same clients, same strategy settings, same evaluation.

Averaging sums floating-point numbers, so its result depends on the order of the clients'
results, which is the order they happen to finish in. Both servers' FedAvg are given the
results sorted by the client's partition number, so two runs give the same model.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from har.client_app import write_partition
from har.data import Prepared
from har.metrics import Scores
from har.settings import Settings

log = logging.getLogger("har")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLIENT_APP = "har.client_app:make_client"
WAIT_FOR_CLIENTS_SECONDS = 120  # clients import TensorFlow before they join: allow for a busy machine
CLIENT_EXIT_SECONDS = 30


class FederatedError(RuntimeError):
    """The federated run did not complete; the message includes the failing client's log tail."""


@dataclass
class RoundScores:
    round: int
    scores: Scores  # centralized evaluation of the global model on the common test set
    seconds: float  # since the server started
    client_accuracy: dict[int, float] = field(default_factory=dict)  # each client's own test windows


@dataclass
class FederatedOutcome:
    server: str
    rounds: list[RoundScores]  # round 0 is the initial model

    @property
    def final(self) -> RoundScores:
        return self.rounds[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_partitions(prepared: Prepared, settings: Settings, directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for client in range(settings.clients):
        train, test = prepared.client_train(client), prepared.client_test(client)
        path = directory / f"client_{client + 1}.npz"
        write_partition(path, client + 1, train.x, train.label, test.x, test.label)
        paths.append(path)
    return paths


def start_clients(address: str, partitions: list[Path], settings: Settings, log_dir: Path) -> list[subprocess.Popen]:
    log_dir.mkdir(parents=True, exist_ok=True)
    processes = []
    for number, partition in enumerate(partitions, start=1):
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")])),
            "PYTHONUNBUFFERED": "1",
            "HAR_PARTITION_FILE": str(partition.resolve()),
            "HAR_HIDDEN_UNITS": ",".join(map(str, settings.hidden)),
            "HAR_SEED": str(settings.seed),
        }
        with open(log_dir / f"client_{number}.log", "wb") as log_file:
            processes.append(subprocess.Popen(
                [sys.executable, "-m", "client", "--server", address, "--app", CLIENT_APP],
                cwd=PROJECT_ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT,
            ))
    return processes


def _by_partition(results):
    """(client, FitRes) pairs in partition order; flwr's and ours both carry FitRes.metrics."""
    return sorted(results, key=lambda pair: pair[1].metrics["partition"])


def _client_accuracies(collected: dict[int, dict[int, float]]):
    """A metrics aggregation function that also records each client's accuracy per round.

    Clients echo the round number and their partition number in their evaluation metrics.
    """
    def aggregate(metrics: list[tuple[int, dict]]) -> dict:
        total = sum(n for n, _ in metrics)
        for _, m in metrics:
            collected.setdefault(int(m["server_round"]), {})[int(m["partition"])] = float(m["accuracy"])
        return {"accuracy": sum(n * float(m["accuracy"]) for n, m in metrics) / total}
    return aggregate


def run_federated(prepared: Prepared, settings: Settings, start: list[np.ndarray], out: Path, server_kind: str,
                  evaluate: Callable[[list[np.ndarray]], Scores], port: int = 0) -> FederatedOutcome:
    """R rounds of FedAvg with ``settings.clients`` edge client processes; returns per-round scores."""
    address = f"127.0.0.1:{port or free_port()}"
    partitions = write_partitions(prepared, settings, out / "partitions")
    rounds: list[RoundScores] = []
    client_accuracy: dict[int, dict[int, float]] = {}
    failures: list[str] = []
    started = time.perf_counter()

    def evaluate_fn(server_round: int, parameters, config):
        scores = evaluate(list(parameters))
        rounds.append(RoundScores(server_round, scores, time.perf_counter() - started))
        label = "initial model" if server_round == 0 else f"round {server_round}/{settings.rounds}"
        log.info("federated %s: test accuracy %.4f, macro-F1 %.4f, loss %.4f (%.1f s)", label,
                 scores.accuracy, scores.macro_f1, scores.loss, rounds[-1].seconds)
        return scores.loss, {"accuracy": scores.accuracy, "macro_f1": scores.macro_f1}

    def fit_config(server_round: int) -> dict:
        return {"local_epochs": settings.local_epochs, "batch_size": settings.batch_size,
                "learning_rate": settings.learning_rate, "server_round": server_round}

    log.info("federated: %s server on %s, starting %d edge clients (logs in %s)",
             server_kind, address, settings.clients, out / "logs")
    clients = start_clients(address, partitions, settings, out / "logs")
    try:
        serve = _serve_with_flwr if server_kind == "flwr" else _serve_with_fedproto
        try:
            serve(address, settings, start, evaluate_fn, fit_config, _client_accuracies(client_accuracy),
                  failures, clients)
        except Exception as error:  # the server gave up (e.g. clients never came): say why, with their logs
            raise FederatedError(f"{server_kind} server stopped: {type(error).__name__}: {error}"
                                 f"{_exited_clients(clients, out / 'logs')}") from error
        log.info("federated: server done; waiting for the edge clients to exit")
        _wait_for_clients(clients, out / "logs")
        log.info("federated: all %d edge clients exited with code 0", len(clients))
    finally:
        for process in clients:
            if process.poll() is None:
                process.kill()
                process.wait()
    if failures:
        raise FederatedError("client failures during the run (see the client logs in "
                             f"{out / 'logs'}):\n" + "\n".join(failures))
    for record in rounds:
        record.client_accuracy = client_accuracy.get(record.round, {})
    if len(rounds) != settings.rounds + 1:
        raise FederatedError(f"expected {settings.rounds + 1} evaluations (initial model and every round), "
                             f"got {len(rounds)}; see the client logs in {out / 'logs'}")
    return FederatedOutcome(server_kind, rounds)


def _ordered(fedavg: type, failures: list[str]) -> type:
    """A FedAvg subclass that averages in partition order and records every client failure."""

    class OrderedFedAvg(fedavg):
        def aggregate_fit(self, server_round, results, round_failures):
            failures.extend(f"round {server_round}: fit failed: {f!r}" for f in round_failures)
            return super().aggregate_fit(server_round, _by_partition(results), round_failures)

        def aggregate_evaluate(self, server_round, results, round_failures):
            failures.extend(f"round {server_round}: evaluate failed: {f!r}" for f in round_failures)
            return super().aggregate_evaluate(server_round, results, round_failures)

    return OrderedFedAvg


def _strategy_arguments(settings: Settings, evaluate_fn, fit_config, evaluate_metrics) -> dict:
    return dict(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=settings.clients,
        min_evaluate_clients=settings.clients, min_available_clients=settings.clients,
        evaluate_fn=evaluate_fn, on_fit_config_fn=fit_config,
        on_evaluate_config_fn=lambda server_round: {"server_round": server_round},
        evaluate_metrics_aggregation_fn=evaluate_metrics,
    )


def _serve_with_fedproto(address, settings, start, evaluate_fn, fit_config, evaluate_metrics, failures, clients):
    from server import FedAvg, run_server

    strategy = _ordered(FedAvg, failures)(
        initial_parameters=start, **_strategy_arguments(settings, evaluate_fn, fit_config, evaluate_metrics))
    run_server(address=address, strategy=strategy, rounds=settings.rounds, round_timeout=None,
               wait_timeout=WAIT_FOR_CLIENTS_SECONDS)


def _serve_with_flwr(address, settings, start, evaluate_fn, fit_config, evaluate_metrics, failures, clients):
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, SimpleClientManager, start_server
    from flwr.server.strategy import FedAvg
    from flwr.server.superlink.fleet.grpc_bidi.grpc_bridge import GrpcBridgeClosed

    logging.getLogger("flwr").propagate = False  # flwr prints its own log lines already

    def drop_bridge_closed(record: logging.LogRecord) -> bool:
        # flwr's Join servicer raises GrpcBridgeClosed when a client leaves after its
        # DisconnectRes; grpc logs that as an error with a traceback, once per client.
        return not (record.exc_info and isinstance(record.exc_info[1], GrpcBridgeClosed))

    logging.getLogger("grpc._server").addFilter(drop_bridge_closed)

    strategy = _ordered(FedAvg, failures)(
        initial_parameters=ndarrays_to_parameters(start),
        **_strategy_arguments(settings, evaluate_fn, fit_config, evaluate_metrics))

    class WatchfulClientManager(SimpleClientManager):
        """flwr waits a day for missing clients; stop waiting when one of ours has died or time is up."""

        def wait_for(self, num_clients: int, timeout: int = WAIT_FOR_CLIENTS_SECONDS) -> bool:
            deadline = time.monotonic() + min(timeout, WAIT_FOR_CLIENTS_SECONDS)
            while not super().wait_for(num_clients, timeout=1):
                if any(process.poll() is not None for process in clients) or time.monotonic() > deadline:
                    raise TimeoutError(f"{len(self)} of {num_clients} edge clients connected")
            return True

    start_server(server_address=address, config=ServerConfig(num_rounds=settings.rounds), strategy=strategy,
                 client_manager=WatchfulClientManager())


def _exited_clients(clients: list[subprocess.Popen], log_dir: Path) -> str:
    """The log tails of the clients that have already exited, for an error message."""
    parts = []
    for number, process in enumerate(clients, start=1):
        if process.poll() is not None:
            tail = (log_dir / f"client_{number}.log").read_text(errors="replace")[-2000:]
            parts.append(f"\nedge client {number} exited with code {process.returncode}; its log ends with:\n{tail}")
    return "".join(parts)


def _wait_for_clients(clients: list[subprocess.Popen], log_dir: Path) -> None:
    """Every client must leave with exit code 0 (the server ended the session)."""
    for number, process in enumerate(clients, start=1):
        try:
            code = process.wait(timeout=CLIENT_EXIT_SECONDS)
        except subprocess.TimeoutExpired:
            code = None
        if code != 0:
            tail = (log_dir / f"client_{number}.log").read_text(errors="replace")[-3000:]
            status = "did not exit" if code is None else f"exited with code {code}"
            raise FederatedError(f"edge client {number} {status}; last lines of its log:\n{tail}")
