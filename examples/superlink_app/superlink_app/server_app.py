"""FedAvg ServerApp that records what it aggregated, for tests to compare with their own arithmetic.

Run config ``strategy`` picks the strategy: ``"message"`` runs flwr.serverapp.strategy.FedAvg,
``"legacy"`` runs flwr.server.strategy.FedAvg inside ``ServerApp(server_fn=...)``. This module
imports only what flwr 1.20 already has (``flwr.common``, ``flwr.server``), so the legacy
strategy runs on SuperLinks 1.20 and later; the message-API strategies arrived in 1.21 and live
in :mod:`superlink_app.message_api`, imported only when the run asks for them. When
``result-dir`` is set, the ServerApp writes there
- ``final_arrays.npz``: the final global model (arr_0, arr_1, ... in model order);
- ``report.json``: per round and phase ("train" / "evaluate"), every reply it received: the sending
  node, whether it was an error (and its code), and the reply's metrics; plus the aggregated metrics.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.common import Context, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import Grid, ServerApp, ServerAppComponents, ServerConfig
from flwr.server import strategy as legacy_strategy

from superlink_app.arithmetic import initial_arrays

app = ServerApp()


class PollingGrid(Grid):
    """The run's Grid, pulling replies every ``poll_interval`` seconds instead of flwr's 3 s.

    Only the ServerApp's waiting changes (tests finish sooner); what travels is the same.
    """

    def __init__(self, grid: Grid, poll_interval: float) -> None:
        self.grid = grid
        self.poll_interval = poll_interval

    def set_run(self, run):
        self.grid.set_run(run)

    @property
    def run(self):
        return self.grid.run

    def create_message(self, content, message_type, dst_node_id, group_id, ttl=None):
        return self.grid.create_message(content, message_type, dst_node_id, group_id, ttl)

    def get_node_ids(self):
        return self.grid.get_node_ids()

    def push_messages(self, messages):
        return self.grid.push_messages(messages)

    def pull_messages(self, message_ids):
        return self.grid.pull_messages(message_ids)

    def send_and_receive(self, messages, *, timeout=None):
        pending = set(self.push_messages(messages))
        deadline = time.monotonic() + (timeout if timeout is not None else 0.0)
        replies = []
        while timeout is None or time.monotonic() < deadline:
            pulled = list(self.pull_messages(pending))
            replies.extend(pulled)
            pending.difference_update(msg.metadata.reply_to_message_id for msg in pulled)
            if not pending:
                break
            time.sleep(self.poll_interval)
        return replies


class RecordingLegacyFedAvg(legacy_strategy.FedAvg):
    """Legacy FedAvg that also records results, failures and the latest global parameters."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: dict[str, dict[int, list[dict]]] = {"train": {}, "evaluate": {}}
        self.latest = None

    def aggregate_fit(self, server_round, results, failures):
        self.replies["train"][server_round] = self._describe(results, failures)
        parameters, metrics = super().aggregate_fit(server_round, results, failures)
        if parameters is not None:
            self.latest = parameters
        return parameters, metrics

    def aggregate_evaluate(self, server_round, results, failures):
        self.replies["evaluate"][server_round] = self._describe(results, failures)
        return super().aggregate_evaluate(server_round, results, failures)

    @staticmethod
    def _describe(results, failures) -> list[dict]:
        described = [
            {"node": proxy.node_id, "error": None, "metrics": dict(res.metrics),
             "num_examples": res.num_examples}
            for proxy, res in results
        ]
        described += [{"node": None, "error": "failure", "reason": repr(f)} for f in failures]
        return described


def _round_config(server_round: int) -> dict:
    return {"server-round": server_round}


def _run_legacy(grid: Grid, context: Context, config: dict) -> tuple[list[np.ndarray], dict]:
    nodes = int(config["min-nodes"])
    strategy = RecordingLegacyFedAvg(
        min_fit_clients=nodes,
        min_evaluate_clients=nodes,
        min_available_clients=nodes,
        initial_parameters=ndarrays_to_parameters(initial_arrays(int(config["extra-elements"]))),
        on_fit_config_fn=_round_config,
        on_evaluate_config_fn=_round_config,
    )
    server_config = ServerConfig(
        num_rounds=int(config["num-rounds"]), round_timeout=float(config["round-timeout"])
    )
    legacy = ServerApp(
        server_fn=lambda _: ServerAppComponents(strategy=strategy, config=server_config)
    )
    legacy(grid, context)
    if strategy.latest is None:
        raise RuntimeError("legacy FedAvg aggregated no round")
    return parameters_to_ndarrays(strategy.latest), {"replies": strategy.replies}


@app.main()
def main(grid: Grid, context: Context) -> None:
    config = dict(context.run_config)
    grid = PollingGrid(grid, float(config["poll-interval"]))
    if config["strategy"] == "message":
        from superlink_app.message_api import run_message_api  # flwr 1.21+

        arrays, report = run_message_api(grid, config)
    elif config["strategy"] == "legacy":
        arrays, report = _run_legacy(grid, context, config)
    else:
        raise ValueError(f"unknown strategy {config['strategy']!r}")
    if config["result-dir"]:
        out = Path(str(config["result-dir"]))
        out.mkdir(parents=True, exist_ok=True)
        np.savez(out / "final_arrays.npz", *arrays)
        (out / "report.json").write_text(json.dumps(report, indent=1, default=str))
