"""Message-API FedAvg for the HAR job, scoring the global model on the common test set each round.

``python -m fedproto.har --server superlink`` writes a job file (.npz) and passes its path as run config
``job-file``: the initial weights, the test set, the settings (clients, rounds, training config,
hidden units) and where to write the outcome. The outcome (``outcome.json`` next to the job file)
holds, per round (0 = initial model), the centralized scores and each client's accuracy on its own
test windows, as the other two servers of the job report them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedproto.har import model as keras_model
from fedproto.har.metrics import score

app = ServerApp()


class HarFedAvg(FedAvg):
    """FedAvg that averages in partition order (same model whatever the arrival order), tells
    clients the round in ``server_round`` (the key the HAR handler reads) and records each
    client's evaluation accuracy."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.client_accuracy: dict[int, dict[int, float]] = {}
        self.failures: list[str] = []

    def _with_round(self, messages, server_round):
        messages = list(messages)
        for msg in messages:
            msg.content["config"]["server_round"] = server_round
        return messages

    def configure_train(self, server_round, arrays, config, grid):
        return self._with_round(super().configure_train(server_round, arrays, config, grid), server_round)

    def configure_evaluate(self, server_round, arrays, config, grid):
        return self._with_round(super().configure_evaluate(server_round, arrays, config, grid), server_round)

    def _valid(self, server_round, phase, replies):
        valid = []
        for msg in replies:
            if msg.has_error():
                self.failures.append(f"round {server_round}: {phase} failed on node "
                                     f"{msg.metadata.src_node_id}: {msg.error.reason}")
            else:
                valid.append(msg)
        return sorted(valid, key=lambda msg: _metrics(msg)["partition"])

    def aggregate_train(self, server_round, replies):
        return super().aggregate_train(server_round, self._valid(server_round, "train", replies))

    def aggregate_evaluate(self, server_round, replies):
        valid = self._valid(server_round, "evaluate", replies)
        self.client_accuracy[server_round] = {
            int(_metrics(msg)["partition"]): float(_metrics(msg)["accuracy"]) for msg in valid
        }
        return super().aggregate_evaluate(server_round, valid)


def _metrics(msg) -> MetricRecord:
    [record] = msg.content.metric_records.values()
    return record


@app.main()
def main(grid: Grid, context: Context) -> None:
    job_file = Path(str(context.run_config["job-file"]))
    with np.load(job_file, allow_pickle=False) as job:
        settings = json.loads(str(job["settings"]))
        start = [job[f"start_{i}"] for i in range(int(job["start_count"]))]
        x_test, y_test = job["x_test"], job["y_test"]

    keras_model.configure(settings["seed"])
    model = keras_model.build_model(x_test.shape[1], tuple(settings["hidden"]), settings["learning_rate"])
    began = time.perf_counter()
    rounds = []

    def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
        keras_model.set_weights(model, arrays.to_numpy_ndarrays())
        scores = score(keras_model.predict(model, x_test), y_test)
        rounds.append({"round": server_round, "seconds": time.perf_counter() - began, **scores.as_dict()})
        return MetricRecord({"loss": scores.loss, "accuracy": scores.accuracy, "macro_f1": scores.macro_f1})

    clients = int(settings["clients"])
    strategy = HarFedAvg(min_train_nodes=clients, min_evaluate_nodes=clients, min_available_nodes=clients)
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord(start),
        num_rounds=int(settings["rounds"]),
        train_config=ConfigRecord({"local_epochs": settings["local_epochs"],
                                   "batch_size": settings["batch_size"],
                                   "learning_rate": settings["learning_rate"]}),
        evaluate_fn=evaluate,
    )
    for record in rounds:
        record["client_accuracy"] = strategy.client_accuracy.get(record["round"], {})
    outcome = {"rounds": rounds, "failures": strategy.failures}
    (job_file.parent / "outcome.json").write_text(json.dumps(outcome, indent=1))
