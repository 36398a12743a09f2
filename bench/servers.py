"""The servers under test, each run with FedAvg and the same clock on its rounds.

    python -m fedproto.bench.servers flwr --address 127.0.0.1:8080 --clients 1000 --rounds 2 --report flwr.json
    python -m fedproto.bench.servers ours --address 127.0.0.1:8080 --clients 1000 --rounds 2 --report ours.json
    python -m fedproto.bench.servers floor --address 127.0.0.1:8080 --clients 1000 --rounds 2 --report floor.json

Both use FedAvg with fraction 1.0 and min fit/evaluate/available clients = N, starting from
the same model of zeros: a 1,000-parameter float32 vector, or with ``--side S`` one S x S float32
tensor (the model of ``bench.client_rss`` and ``bench.rounds``). The strategy is wrapped so that
each server times its own rounds the same way: a round starts when ``configure_fit`` returns
(the N clients are connected and sampled) and ends when ``aggregate_evaluate`` returns (fit and
evaluate of all N done and aggregated). Connecting the clients is timed separately and is not
part of a round. The report is written when the server returns, so a run that never finishes leaves none.
``floor`` is the bare grpc.aio server of ``bench.floor_server`` (no strategy: it sends the
instructions and counts the replies), timed at the same points.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time

import numpy as np

from fedproto.bench.loadgen import MODEL_SIZE, loopback_address, positive_int


class RoundClock:
    """Timestamps of the strategy calls that bound a round, the result counts, and the server process's
    CPU time (all its threads) within each round: steadier than the wall clock on a busy machine."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.rounds: list[dict] = []
        self._round_start = 0.0
        self._round_cpu_start = 0.0

    def fit_configured(self, server_round: int) -> None:
        self._round_start = time.monotonic()
        self._round_cpu_start = time.process_time()
        self.rounds.append({"round": server_round,
                            "started_s": round(self._round_start - self.started, 3)})

    def fit_aggregated(self, results: int, failures: int) -> None:
        self.rounds[-1].update(fit_results=results, fit_failures=failures)

    def evaluate_aggregated(self, results: int, failures: int, loss: float | None) -> None:
        self.rounds[-1].update(evaluate_results=results, evaluate_failures=failures, loss=loss,
                               seconds=round(time.monotonic() - self._round_start, 3),
                               cpu_seconds=round(time.process_time() - self._round_cpu_start, 3))

    def write(self, path: str, server: str, clients: int) -> None:
        with open(path, "w") as file:
            json.dump({"server": server, "clients": clients, "rounds": self.rounds}, file, indent=1)


class TimedAggregator:
    """Our server's per-round aggregator (results folded as they arrive), counted for the clock."""

    def __init__(self, aggregator, finished) -> None:
        self.aggregator, self.finished, self.results = aggregator, finished, 0

    def fold(self, client, res) -> None:
        self.aggregator.fold(client, res)
        self.results += 1

    def finish(self, failures):
        return self.finished(self.results, failures, lambda: self.aggregator.finish(failures))


def timed(fedavg: type, clock: RoundClock) -> type:
    """A subclass of ``fedavg`` (flwr's or ours) that reports to ``clock``.

    flwr's server hands aggregate_fit/aggregate_evaluate the round's list; ours folds each
    result into begin_fit's/begin_evaluate's aggregator as it arrives (overriding aggregate_fit
    there would make it collect the list instead), so each is timed where it aggregates.
    """

    def fit_finished(results, failures, finish):
        clock.fit_aggregated(results, len(failures))
        return finish()

    def evaluate_finished(results, failures, finish):
        aggregated = finish()
        clock.evaluate_aggregated(results, len(failures), aggregated[0])
        return aggregated

    class TimedFedAvg(fedavg):
        def configure_fit(self, server_round, parameters, client_manager):
            instructions = super().configure_fit(server_round, parameters, client_manager)
            clock.fit_configured(server_round)
            return instructions

        if hasattr(fedavg, "begin_fit"):  # ours
            def begin_fit(self, server_round, parameters):
                return TimedAggregator(super().begin_fit(server_round, parameters), fit_finished)

            def begin_evaluate(self, server_round):
                return TimedAggregator(super().begin_evaluate(server_round), evaluate_finished)
        else:  # flwr's
            def aggregate_fit(self, server_round, results, failures):
                return fit_finished(len(results), failures,
                                    lambda: super(TimedFedAvg, self).aggregate_fit(server_round, results, failures))

            def aggregate_evaluate(self, server_round, results, failures):
                return evaluate_finished(
                    len(results), failures,
                    lambda: super(TimedFedAvg, self).aggregate_evaluate(server_round, results, failures))

    return TimedFedAvg


def initial_model(side: int | None = None) -> list[np.ndarray]:
    if side is None:
        return [np.zeros(MODEL_SIZE, np.float32)]
    return [np.zeros((side, side), np.float32)]


def run_flwr(address: str, clients: int, rounds: int, report: str, side: int | None) -> None:
    """flwr's legacy ``start_server`` (thread-pool gRPC server) with a timed FedAvg."""
    os.environ["FLWR_TELEMETRY_ENABLED"] = "0"  # loopback only: no telemetry requests
    from flwr.common import ndarrays_to_parameters
    from flwr.server import ServerConfig, start_server
    from flwr.server.strategy import FedAvg

    clock = RoundClock()
    strategy = timed(FedAvg, clock)(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=clients,
        min_evaluate_clients=clients, min_available_clients=clients,
        initial_parameters=ndarrays_to_parameters(initial_model(side)),
    )
    start_server(server_address=address, config=ServerConfig(num_rounds=rounds), strategy=strategy)
    clock.write(report, "flwr", clients)


def run_ours(address: str, clients: int, rounds: int, report: str, side: int | None) -> None:
    """fedproto's reference server (grpc.aio) with a timed FedAvg."""
    from fedproto.server import FedAvg, run_server

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    clock = RoundClock()
    strategy = timed(FedAvg, clock)(
        fraction_fit=1.0, fraction_evaluate=1.0, min_fit_clients=clients,
        min_evaluate_clients=clients, min_available_clients=clients,
        initial_parameters=initial_model(side),
    )
    run_server(address=address, strategy=strategy, rounds=rounds)
    clock.write(report, "ours", clients)


def run_floor(address: str, clients: int, rounds: int, report: str, side: int | None) -> None:
    """The bare grpc.aio Join server (``bench.floor_server``): instructions out, replies counted."""
    from fedproto.bench import floor_server

    floor_server.run(address, clients, rounds, report, side)


RUNNERS = {"floor": run_floor, "ours": run_ours, "flwr": run_flwr}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedproto.bench.servers",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  python -m fedproto.bench.servers ours --address 127.0.0.1:8080 --clients 100 "
               "--rounds 2 --report ours.json",
    )
    parser.add_argument("server", choices=sorted(RUNNERS), help="which server to run")
    parser.add_argument("--address", type=loopback_address, required=True,
                        help="HOST:PORT to listen on, on this machine")
    parser.add_argument("--clients", type=positive_int, required=True,
                        help="N: min fit/evaluate/available")
    parser.add_argument("--rounds", type=positive_int, default=2, help="FedAvg rounds (default 2)")
    parser.add_argument("--report", required=True, help="write the round timings here (JSON)")
    parser.add_argument("--side", type=positive_int,
                        help="model: one SIDE x SIDE float32 tensor (default: a 1,000-parameter vector)")
    args = parser.parse_args(argv)
    RUNNERS[args.server](args.address, args.clients, args.rounds, args.report, args.side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
