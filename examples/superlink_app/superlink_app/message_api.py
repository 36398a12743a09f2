"""The message-API FedAvg run of :mod:`superlink_app.server_app` (flwr.serverapp.strategy: flwr 1.21+)."""

from __future__ import annotations

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg

from superlink_app.arithmetic import initial_arrays


def _describe_reply(msg) -> dict:
    if msg.has_error():
        return {"node": msg.metadata.src_node_id, "error": msg.error.code, "reason": msg.error.reason}
    metrics = {}
    for record in msg.content.metric_records.values():
        metrics.update({key: value for key, value in record.items()})
    return {"node": msg.metadata.src_node_id, "error": None, "metrics": metrics}


class RecordingFedAvg(FedAvg):
    """Message-API FedAvg that also records every reply it is given."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.replies: dict[str, dict[int, list[dict]]] = {"train": {}, "evaluate": {}}

    def aggregate_train(self, server_round, replies):
        replies = list(replies)
        self.replies["train"][server_round] = [_describe_reply(msg) for msg in replies]
        return super().aggregate_train(server_round, replies)

    def aggregate_evaluate(self, server_round, replies):
        replies = list(replies)
        self.replies["evaluate"][server_round] = [_describe_reply(msg) for msg in replies]
        return super().aggregate_evaluate(server_round, replies)


def run_message_api(grid: Grid, config: dict) -> tuple[list[np.ndarray], dict]:
    nodes = int(config["min-nodes"])
    strategy = RecordingFedAvg(
        min_train_nodes=nodes, min_evaluate_nodes=nodes, min_available_nodes=nodes
    )
    result = strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(initial_arrays(int(config["extra-elements"]))),
        num_rounds=int(config["num-rounds"]),
        timeout=float(config["round-timeout"]),
        train_config=ConfigRecord(),
    )
    aggregated = {
        "train": {r: dict(m) for r, m in result.train_metrics_clientapp.items()},
        "evaluate": {r: dict(m) for r, m in result.evaluate_metrics_clientapp.items()},
    }
    return result.arrays.to_numpy_ndarrays(), {"replies": strategy.replies, "aggregated": aggregated}
