"""The federated run: a FedAvg server in this process, N edge clients as separate processes.

Each client is the project's edge client (``python -m fedproto.client --app fedproto.har.client_app:make_client``)
talking ``FlowerService.Join`` over gRPC on loopback; its data is the partition file written
here. The server is ours (``server.run_server``) or, with ``--server flwr``, flwr's own
``start_server``: same clients, same strategy settings, same evaluation.

With ``--server superlink`` the server is today's Flower: a real ``flower-superlink`` and a
``flwr run`` of the ServerApp in ``har/superlink_app`` (message-API FedAvg, centralized
evaluation in the ServerApp), and the same clients join it as Fleet API nodes
(``python -m fedproto.client --superlink ...``); see :func:`run_on_superlink`.

Averaging sums floating-point numbers, so its result depends on the order of the clients'
results, which is the order they happen to finish in. Both servers' FedAvg are given the
results sorted by the client's partition number, so two runs give the same model.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedproto.har.client_app import write_partition
from fedproto.har.data import Prepared
from fedproto.har.metrics import Scores
from fedproto.har.settings import Settings

log = logging.getLogger("har")

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLIENT_APP = "fedproto.har.client_app:make_client"
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


def start_clients(address: str, partitions: list[Path], settings: Settings, log_dir: Path,
                  connect: str = "--server") -> list[subprocess.Popen]:
    """One edge client process per partition; ``connect`` is --server (Join) or --superlink (Fleet)."""
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
                [sys.executable, "-m", "fedproto.client", connect, address, "--app", CLIENT_APP],
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
    if server_kind == "superlink":
        return run_on_superlink(prepared, settings, start, out)
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
    from fedproto.server import FedAvg, run_server

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


SUPERLINK_APP = PROJECT_ROOT / "har" / "superlink_app"
SUPERLINK_RUN_SECONDS = 1800  # the whole flwr run; the default job takes about a minute
VENV_BIN = Path(sys.executable).parent


def run_on_superlink(prepared: Prepared, settings: Settings, start: list[np.ndarray], out: Path) -> FederatedOutcome:
    """The same edge clients as Fleet nodes of a real flower-superlink, in a real ``flwr run``.

    The ServerApp runs in flwr's own process, so it gets its inputs from a job file (initial
    weights, test set, settings) and writes per-round scores to ``outcome.json`` beside it.
    Every process started here is stopped before returning; the nodes must exit 0 on SIGTERM.
    """
    out = out.resolve()  # flwr run and flwr ls run in `work`: a relative --out would point elsewhere
    work = out / "superlink"
    home = work / "flwr_home"
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    address = f"127.0.0.1:{port}"
    (home / "config.toml").write_text(
        f'[superlink]\ndefault = "local"\n\n[superlink.local]\naddress = "{address}"\ninsecure = true\n')
    job_file = (work / "job.npz").resolve()
    np.savez(job_file, **{f"start_{i}": w for i, w in enumerate(start)}, start_count=np.int64(len(start)),
             x_test=prepared.test.x, y_test=prepared.test.label, settings=np.array(json.dumps(settings.as_dict())))
    (work / "outcome.json").unlink(missing_ok=True)
    run_config = work / "run_config.toml"
    run_config.write_text(f'"job-file" = {json.dumps(str(job_file))}\n')
    env = {**os.environ, "FLWR_HOME": str(home.resolve()), "FLWR_TELEMETRY_ENABLED": "0",
           "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))}
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    partitions = write_partitions(prepared, settings, out / "partitions")
    started: list[subprocess.Popen] = []

    def spawn(name: str, args: list[str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "wb") as log_file:
            started.append(subprocess.Popen(args, cwd=work, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                                            start_new_session=True))
        return started[-1]

    log.info("federated: flower-superlink on %s, %d Fleet nodes, flwr run of %s (logs in %s)",
             address, settings.clients, SUPERLINK_APP, logs)
    began = time.perf_counter()
    try:
        superlink = spawn("superlink", [str(VENV_BIN / "flower-superlink"), "--insecure", "--host", "127.0.0.1",
                                        "--port", str(port), "--disable-runtime-dependency-installation"])
        _wait_listening(port, superlink, logs / "superlink.log")
        clients = start_clients(address, partitions, settings, logs, connect="--superlink")
        started += clients
        flwr_run = spawn("flwr_run", [str(VENV_BIN / "flwr"), "run", str(SUPERLINK_APP), "local", "--stream",
                                      "--run-config", str(run_config)])
        deadline = time.monotonic() + SUPERLINK_RUN_SECONDS
        while flwr_run.poll() is None:  # a node that dies would leave the ServerApp waiting for it
            if any(process.poll() is not None for process in clients) or time.monotonic() > deadline:
                raise FederatedError(f"flwr run did not complete; see {logs / 'flwr_run.log'}"
                                     f"{_exited_clients(clients, logs)}")
            time.sleep(0.5)
        status = _run_status(logs / "flwr_run.log", env, work)
        if status != "finished:completed":
            raise FederatedError(f"the SuperLink run ended {status}; its ServerApp log is in {logs / 'flwr_run.log'}"
                                 f"{_exited_clients(clients, logs)}")
        for process in clients:  # Fleet nodes serve until told to stop, like flwr's SuperNode
            process.send_signal(signal.SIGTERM)
        _wait_for_clients(clients, logs)
        log.info("federated: all %d Fleet nodes exited with code 0", len(clients))
    finally:
        for process in reversed(started):
            _stop_tree(process)
    outcome = json.loads((work / "outcome.json").read_text())
    if outcome["failures"]:
        raise FederatedError("client failures during the run (see the client logs in "
                             f"{logs}):\n" + "\n".join(outcome["failures"]))
    rounds = [RoundScores(r["round"], Scores(r["loss"], r["accuracy"], r["macro_f1"], np.array(r["confusion_matrix"])),
                          r["seconds"], {int(k): v for k, v in r["client_accuracy"].items()})
              for r in outcome["rounds"]]
    for record in rounds:
        label = "initial model" if record.round == 0 else f"round {record.round}/{settings.rounds}"
        log.info("federated %s: test accuracy %.4f, macro-F1 %.4f, loss %.4f", label,
                 record.scores.accuracy, record.scores.macro_f1, record.scores.loss)
    log.info("federated: SuperLink run done in %.1f s", time.perf_counter() - began)
    if len(rounds) != settings.rounds + 1:
        raise FederatedError(f"expected {settings.rounds + 1} evaluations, got {len(rounds)}; see {logs}")
    return FederatedOutcome("superlink", rounds)


def _wait_listening(port: int, process: subprocess.Popen, log_path: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise FederatedError(f"flower-superlink did not start listening on {port}; its log:\n"
                         f"{log_path.read_text(errors='replace')[-2000:]}")


def _run_status(flwr_run_log: Path, env: dict, work: Path) -> str:
    """The run's status as the SuperLink reports it (`flwr run` exits 0 even if the ServerApp failed)."""
    match = re.search(r"Successfully started run (\d+)", flwr_run_log.read_text(errors="replace"))
    if match is None:
        raise FederatedError(f"flwr run started no run; see {flwr_run_log}")
    listed = subprocess.run([str(VENV_BIN / "flwr"), "ls", "local", "--run-id", match.group(1), "--format", "json"],
                            cwd=work, env=env, capture_output=True, text=True, timeout=60)
    try:
        return json.loads(listed.stdout)["runs"][0]["status"]
    except (ValueError, KeyError, IndexError):
        raise FederatedError(f"flwr ls gave no status:\n{listed.stdout}\n{listed.stderr}") from None


def _stop_tree(process: subprocess.Popen) -> None:
    """SIGTERM a process started in its own session and everything in that session, then SIGKILL.

    flower-superlink starts flower-superexec and flwr-serverapp in sessions of their own; they
    watch their parent's pid and exit when it is gone.
    """
    if process.poll() is None:
        try:
            os.killpg(process.pid, signal.SIGTERM)
        except ProcessLookupError:  # it ended between poll() and now
            return
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
