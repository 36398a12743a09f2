"""A small NumPy-only handler for trying the edge client: softmax regression on generated data.

    fedproto-client --server 127.0.0.1:8080 --app fedproto.client.demo:make_client

``make_client`` reads its partition from the environment so several processes can share one
command line: DEMO_PARTITION (default 0) of DEMO_PARTITIONS (default 2). All partitions draw
from the same class centres, each with its own label skew, so federated averaging helps.
Config keys understood by ``fit``: ``local_epochs`` (int, default 1), ``lr`` (float, default 0.5).
"""

from __future__ import annotations

import os

import numpy as np

FEATURES = 20
CLASSES = 4
EXAMPLES_PER_PARTITION = 400


class SoftmaxClient:
    def __init__(self, partition: int = 0, partitions: int = 2, seed: int = 0) -> None:
        centres = np.random.default_rng(seed).normal(0.0, 1.0, (CLASSES, FEATURES))
        rng = np.random.default_rng(seed + 1 + partition)
        # Label skew: partition p sees class p (mod CLASSES) three times as often as the others.
        weights = np.ones(CLASSES)
        weights[partition % CLASSES] = 3.0
        labels = rng.choice(CLASSES, EXAMPLES_PER_PARTITION, p=weights / weights.sum())
        self.x = (centres[labels] + rng.normal(0.0, 1.5, (len(labels), FEATURES))).astype(np.float32)
        self.y = labels
        self.partition, self.partitions = partition, partitions

    def get_properties(self, config):
        return {"partition": self.partition, "partitions": self.partitions, "model": "softmax"}

    def get_parameters(self, config):
        return [np.zeros((FEATURES, CLASSES), np.float32), np.zeros(CLASSES, np.float32)]

    def fit(self, parameters, config):
        weights, bias = (p.copy() for p in parameters)
        lr = float(config.get("lr", 0.5))
        for _ in range(int(config.get("local_epochs", 1))):
            probabilities = self._predict(weights, bias)
            probabilities[np.arange(len(self.y)), self.y] -= 1.0  # d(cross-entropy)/d(logits)
            weights -= lr * (self.x.T @ probabilities) / len(self.y)
            bias -= lr * probabilities.mean(axis=0)
        loss, _ = self._loss_accuracy(weights, bias)
        return [weights, bias], len(self.y), {"train_loss": loss}

    def evaluate(self, parameters, config):
        loss, accuracy = self._loss_accuracy(*parameters)
        return loss, len(self.y), {"accuracy": accuracy}

    def _predict(self, weights, bias):
        logits = self.x @ weights + bias
        logits -= logits.max(axis=1, keepdims=True)
        exp = np.exp(logits)
        return exp / exp.sum(axis=1, keepdims=True)

    def _loss_accuracy(self, weights, bias):
        probabilities = self._predict(weights, bias)
        loss = -np.log(probabilities[np.arange(len(self.y)), self.y] + 1e-12).mean()
        return float(loss), float((probabilities.argmax(axis=1) == self.y).mean())


def make_client() -> SoftmaxClient:
    return SoftmaxClient(
        partition=int(os.environ.get("DEMO_PARTITION", "0")),
        partitions=int(os.environ.get("DEMO_PARTITIONS", "2")),
    )
