"""Run flwr's own legacy server (flwr.server.start_server, FedAvg) and dump its History as JSON.

This is the "real thing" our edge client is tested against. flwr is a test dependency only.

    python examples/flwr_server.py --address 127.0.0.1:8080 --rounds 3 --min-clients 2 \\
        --history history.json [--config-json '{"lr": 0.5}'] [--certificates CA CERT KEY]

Optional behaviours exercise the less common instructions of the protocol:
  --ask-properties           send GetPropertiesIns to every client before round 1
  --reconnect-after-round N  after fitting round N, send ReconnectIns(seconds=S) to every
                             client (S = --reconnect-seconds); flwr's client manager then
                             waits for them to rejoin before the round's evaluation
  --per-client-metrics       keep each client's metrics in History, not only the averages

The History JSON holds flwr's distributed losses and metrics, the failures FedAvg saw in
each fit round, and what the optional behaviours got back ("properties", "reconnects").
"""

from __future__ import annotations

import argparse
import json
import time
from functools import partial
from pathlib import Path

import numpy as np
from flwr.common import GetPropertiesIns, ReconnectIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Server, ServerConfig, SimpleClientManager, start_server
from flwr.server.server import reconnect_clients
from flwr.server.strategy import FedAvg


def weighted(metrics, per_client=False):
    """Example-weighted mean of every numeric metric; with per_client, each client's metrics too.

    History holds Scalars only, so the per-client metrics travel as one JSON string of
    [num_examples, {key: repr(value)}] pairs; repr keeps the kind (True vs 1, b'a' vs 'a').
    """
    out = {}
    for key in sorted({k for _, m in metrics for k in m}):
        values = [(n, m[key]) for n, m in metrics if key in m]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in values):
            out[key] = sum(n * v for n, v in values) / sum(n for n, _ in values)
    if per_client:
        clients = [[n, {k: repr(v) for k, v in sorted(m.items())}] for n, m in metrics]
        out["per_client"] = json.dumps(sorted(clients, key=json.dumps))
    return out


class RecordingFedAvg(FedAvg):
    """FedAvg that also records the aggregated parameters and the failures of each round."""

    def __init__(self, *args, record_dir: Path | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.record_dir = record_dir
        self.failures: dict[int, list[str]] = {}

    def aggregate_fit(self, server_round, results, failures):
        self.failures[server_round] = [_failure_text(f) for f in failures]
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if self.record_dir is not None and parameters is not None:
            arrays = parameters_to_ndarrays(parameters)
            np.savez(self.record_dir / f"round_{server_round}.npz", *arrays)
        return parameters, metrics


def _failure_text(failure) -> str:
    if isinstance(failure, BaseException):
        return f"{type(failure).__name__}: {failure}"
    _, res = failure
    return f"{res.status.code.name}: {res.status.message}"


class InstructingServer(Server):
    """flwr's Server, plus GetPropertiesIns before round 1 and ReconnectIns after a round."""

    def __init__(self, *, strategy, min_clients, ask_properties, reconnect_after_round, reconnect_seconds):
        super().__init__(client_manager=SimpleClientManager(), strategy=strategy)
        self.min_clients = min_clients
        self.ask_properties = ask_properties
        self.reconnect_after_round = reconnect_after_round
        self.reconnect_seconds = reconnect_seconds
        self.properties: list[dict] = []
        self.reconnects: list[dict] = []

    def fit_round(self, server_round, timeout):
        if server_round == 1 and self.ask_properties:
            self._ask_properties(timeout)
        result = super().fit_round(server_round, timeout)
        if server_round == self.reconnect_after_round:
            self._reconnect_all(server_round, timeout)
        return result

    def _ask_properties(self, timeout):
        self.client_manager().wait_for(self.min_clients)
        ins = GetPropertiesIns(config={"asked_by": "flwr_server.py"})
        for proxy in self.client_manager().all().values():
            res = proxy.get_properties(ins, timeout=timeout, group_id=0)
            self.properties.append({
                "code": res.status.code.name,
                "message": res.status.message,
                "properties": {k: repr(v) for k, v in sorted(res.properties.items())},
            })
        self.properties.sort(key=json.dumps)

    def _reconnect_all(self, server_round, timeout):
        proxies = list(self.client_manager().all().values())
        ins = ReconnectIns(seconds=self.reconnect_seconds)
        results, failures = reconnect_clients([(p, ins) for p in proxies], max_workers=None, timeout=timeout)
        # A client that answered DisconnectRes still counts as available until its stream
        # ends; measure how long that takes, so a client that lingers shows up in the record.
        started = time.monotonic()
        while any(p.cid in self.client_manager().all() for p in proxies) and time.monotonic() - started < 30:
            time.sleep(0.01)
        self.reconnects.append({
            "round": server_round,
            "seconds": self.reconnect_seconds,
            "reasons": sorted(res.reason for _, res in results),
            "failures": [_failure_text(f) for f in failures],
            "streams_closed_after_s": round(time.monotonic() - started, 3),
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, metavar="HOST:PORT", help="where flwr's server listens")
    parser.add_argument("--rounds", type=int, default=3, help="FedAvg rounds (default: %(default)s)")
    parser.add_argument("--min-clients", type=int, default=2,
                        help="clients FedAvg waits for, fits and evaluates each round (default: %(default)s)")
    parser.add_argument("--history", type=Path, required=True, help="write History + failures here (JSON)")
    parser.add_argument("--record-dir", type=Path, help="save aggregated parameters per round (.npz)")
    parser.add_argument("--config-json", default="{}", help="FitIns/EvaluateIns config, as JSON")
    parser.add_argument("--bytes-config", action="append", default=[], metavar="KEY=HEX",
                        help="a bytes config value (JSON has no bytes), hex-encoded")
    parser.add_argument("--initial-zeros", metavar="SHAPES_JSON",
                        help="start from zero tensors of these shapes instead of asking a client")
    parser.add_argument("--certificates", nargs=3, type=Path, metavar=("CA", "CERT", "KEY"),
                        help="enable TLS: CA certificate, server certificate and key (PEM)")
    parser.add_argument("--round-timeout", type=float, metavar="SECONDS", help="flwr's round_timeout")
    parser.add_argument("--per-client-metrics", action="store_true",
                        help="keep every client's fit/evaluate metrics in History, as 'per_client'")
    parser.add_argument("--ask-properties", action="store_true",
                        help="send GetPropertiesIns to every client before round 1")
    parser.add_argument("--reconnect-after-round", type=int, metavar="N",
                        help="after fitting round N, send ReconnectIns to every client")
    parser.add_argument("--reconnect-seconds", type=int, default=2, metavar="S",
                        help="the seconds field of that ReconnectIns (default: %(default)s)")
    args = parser.parse_args()

    config = json.loads(args.config_json)
    for item in args.bytes_config:
        key, _, hex_value = item.partition("=")
        config[key] = bytes.fromhex(hex_value)
    initial = None
    if args.initial_zeros:
        shapes = json.loads(args.initial_zeros)
        initial = ndarrays_to_parameters([np.zeros(s, np.float32) for s in shapes])
    if args.record_dir:
        args.record_dir.mkdir(parents=True, exist_ok=True)

    strategy = RecordingFedAvg(
        record_dir=args.record_dir,
        min_fit_clients=args.min_clients,
        min_evaluate_clients=args.min_clients,
        min_available_clients=args.min_clients,
        on_fit_config_fn=lambda rnd: {**config, "server_round": rnd},
        on_evaluate_config_fn=lambda rnd: {**config, "server_round": rnd},
        initial_parameters=initial,
        fit_metrics_aggregation_fn=partial(weighted, per_client=args.per_client_metrics),
        evaluate_metrics_aggregation_fn=partial(weighted, per_client=args.per_client_metrics),
    )
    server = InstructingServer(
        strategy=strategy,
        min_clients=args.min_clients,
        ask_properties=args.ask_properties,
        reconnect_after_round=args.reconnect_after_round,
        reconnect_seconds=args.reconnect_seconds,
    )
    certificates = tuple(p.read_bytes() for p in args.certificates) if args.certificates else None
    history = start_server(
        server_address=args.address,
        server=server,
        config=ServerConfig(num_rounds=args.rounds, round_timeout=args.round_timeout),
        certificates=certificates,
    )
    args.history.write_text(json.dumps({
        "losses_distributed": history.losses_distributed,
        # History.metrics_distributed_fit is missing in older releases (flwr 1.0 among them)
        "metrics_distributed_fit": getattr(history, "metrics_distributed_fit", {}),
        "metrics_distributed": history.metrics_distributed,
        "failures": strategy.failures,
        "properties": server.properties,
        "reconnects": server.reconnects,
    }, indent=1, default=repr))


if __name__ == "__main__":
    main()
