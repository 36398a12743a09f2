"""Run flwr's own legacy server (flwr.server.start_server, FedAvg) and dump its History as JSON.

This is the "real thing" our edge client is tested against. flwr is a test dependency only.

    python examples/flwr_server.py --address 127.0.0.1:8080 --rounds 3 --min-clients 2 \
        --history history.json [--config-json '{"lr": 0.5}'] [--certificates CA CERT KEY]
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import numpy as np
from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import ServerConfig, start_server
from flwr.server.strategy import FedAvg


def weighted(metrics):
    """Example-weighted mean of every numeric metric, plus the raw per-client values."""
    total = sum(n for n, _ in metrics)
    out = {}
    for key in {k for _, m in metrics for k in m}:
        values = [(n, m[key]) for n, m in metrics if key in m]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for _, v in values):
            out[key] = sum(n * v for n, v in values) / total
    out["per_client"] = json.dumps(sorted(json.dumps([n, {k: repr(v) for k, v in m.items()}], sort_keys=True) for n, m in metrics))
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
    return f"status {int(res.status.code)}: {res.status.message}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--min-clients", type=int, default=2)
    parser.add_argument("--history", type=Path, required=True, help="write History + failures here (JSON)")
    parser.add_argument("--record-dir", type=Path, help="save aggregated parameters per round (.npz)")
    parser.add_argument("--config-json", default="{}", help="FitIns/EvaluateIns config, as JSON")
    parser.add_argument("--bytes-config", action="append", default=[], metavar="KEY=HEX",
                        help="a bytes config value (JSON has no bytes), hex-encoded")
    parser.add_argument("--initial-zeros", metavar="SHAPES_JSON",
                        help="start from zero tensors of these shapes instead of asking a client")
    parser.add_argument("--certificates", nargs=3, type=Path, metavar=("CA", "CERT", "KEY"))
    parser.add_argument("--round-timeout", type=float)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)

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
        fit_metrics_aggregation_fn=weighted,
        evaluate_metrics_aggregation_fn=weighted,
    )
    certificates = tuple(p.read_bytes() for p in args.certificates) if args.certificates else None
    history = start_server(
        server_address=args.address,
        config=ServerConfig(num_rounds=args.rounds, round_timeout=args.round_timeout),
        strategy=strategy,
        certificates=certificates,
    )
    args.history.write_text(json.dumps({
        "losses_distributed": history.losses_distributed,
        "metrics_distributed_fit": history.metrics_distributed_fit,
        "metrics_distributed": history.metrics_distributed,
        "failures": strategy.failures,
    }, indent=1, default=repr))


if __name__ == "__main__":
    main()
