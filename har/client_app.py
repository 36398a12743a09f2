"""The HAR edge client handler: one person-group's windows, the Keras model, NumPyClient methods.

    HAR_PARTITION_FILE=results/partitions/client_1.npz HAR_HIDDEN_UNITS=64,32 \\
        python -m fedproto.client --server 127.0.0.1:8080 --app fedproto.har.client_app:make_client

The orchestrator (``python -m fedproto.har``) writes one partition file per client and starts each
client this way. Environment:

- ``HAR_PARTITION_FILE`` (required): .npz with ``x_train, y_train, x_test, y_test``
  (standardized features, activity indices) and ``partition`` (the client's number).
- ``HAR_HIDDEN_UNITS`` (default ``64,32``): hidden layer sizes, as the server's model.
- ``HAR_SEED`` (default 0): seeds TensorFlow; the client's partition number is added.

Config keys understood by ``fit``: ``local_epochs``, ``batch_size``, ``learning_rate``.
TensorFlow is imported when the handler is made, not when this module is imported.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from fedproto.har.metrics import score

DEFAULT_HIDDEN_UNITS = "64,32"


def parse_hidden_units(text: str) -> tuple[int, ...]:
    """'64,32' -> (64, 32); every size a positive int."""
    try:
        units = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise ValueError(f"hidden layer sizes must look like 64,32, got {text!r}") from None
    if not units or min(units) < 1:
        raise ValueError(f"hidden layer sizes must be positive, got {text!r}")
    return units


class HarClient:
    """flwr NumPyClient method names over a Keras model; no flwr import."""

    def __init__(self, partition_file: Path, hidden: tuple[int, ...], seed: int) -> None:
        (self.x_train, self.y_train, self.x_test, self.y_test), self.partition = read_partition(partition_file)
        from fedproto.har import model as keras_model  # TensorFlow, only once a client is really made

        self.keras = keras_model
        keras_model.configure(seed + self.partition)
        self.model = keras_model.build_model(self.x_train.shape[1], hidden, keras_model.DEFAULT_LEARNING_RATE)

    def get_properties(self, config):
        return {"partition": self.partition, "train_examples": len(self.y_train),
                "test_examples": len(self.y_test), "model": "keras-dense"}

    def get_parameters(self, config):
        return self.keras.get_weights(self.model)

    def fit(self, parameters, config):
        self.keras.set_weights(self.model, parameters)
        self.model.optimizer.learning_rate.assign(
            float(config.get("learning_rate", self.keras.DEFAULT_LEARNING_RATE)))
        metrics = self.keras.train(self.model, self.x_train, self.y_train,
                                   epochs=int(config.get("local_epochs", 1)),
                                   batch_size=int(config.get("batch_size", 32)))
        # "partition" lets the server sort results, so averaging is the same whatever the arrival order.
        return self.keras.get_weights(self.model), len(self.y_train), {**metrics, "partition": self.partition}

    def evaluate(self, parameters, config):
        """Scores the global model on this client's own test windows (its subjects only)."""
        self.keras.set_weights(self.model, parameters)
        scores = score(self.keras.predict(self.model, self.x_test), self.y_test)
        return scores.loss, len(self.y_test), {
            "accuracy": scores.accuracy, "macro_f1": scores.macro_f1,
            "partition": self.partition, "server_round": int(config.get("server_round", 0)),
        }


def make_client() -> HarClient:
    partition_file = os.environ.get("HAR_PARTITION_FILE")
    if not partition_file:
        raise ValueError("HAR_PARTITION_FILE is not set (the .npz written by python -m fedproto.har)")
    return HarClient(
        Path(partition_file),
        hidden=parse_hidden_units(os.environ.get("HAR_HIDDEN_UNITS", DEFAULT_HIDDEN_UNITS)),
        seed=int(os.environ.get("HAR_SEED", "0")),
    )


PARTITION_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def read_partition(path: Path) -> tuple[tuple[np.ndarray, ...], int]:
    """((x_train, y_train, x_test, y_test), partition number) from a file of ``write_partition``."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return tuple(data[name] for name in PARTITION_ARRAYS), int(data["partition"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise ValueError(f"HAR_PARTITION_FILE={path}: not a partition file written by python -m fedproto.har "
                         f"({error})") from None


def write_partition(path: Path, partition: int, x_train, y_train, x_test, y_test) -> None:
    """The file ``make_client`` reads (written by the orchestrator)."""
    np.savez(path, partition=np.int64(partition), x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
