"""Scores of a classifier on the test windows: accuracy, macro-F1, confusion matrix. NumPy only."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedproto.har.data import ACTIVITIES


@dataclass(frozen=True)
class Scores:
    loss: float  # mean cross-entropy
    accuracy: float
    macro_f1: float  # unweighted mean of the per-class F1 scores
    confusion: np.ndarray  # confusion[true, predicted], counts

    def as_dict(self) -> dict:
        return {"loss": self.loss, "accuracy": self.accuracy, "macro_f1": self.macro_f1,
                "confusion_matrix": self.confusion.tolist()}


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int = len(ACTIVITIES)) -> np.ndarray:
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (labels, predicted), 1)
    return matrix


def macro_f1(confusion: np.ndarray) -> float:
    true_positive = np.diag(confusion).astype(np.float64)
    predicted = confusion.sum(axis=0)
    actual = confusion.sum(axis=1)
    denominator = predicted + actual
    # F1 = 2TP / (predicted + actual); a class never predicted nor present scores 0.
    f1 = np.divide(2 * true_positive, denominator, out=np.zeros_like(true_positive), where=denominator > 0)
    return float(f1.mean())


def score(probabilities: np.ndarray, labels: np.ndarray) -> Scores:
    predicted = probabilities.argmax(axis=1)
    confusion = confusion_matrix(labels, predicted, probabilities.shape[1])
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-7, 1.0)
    return Scores(
        loss=float(-np.log(picked).mean()),
        accuracy=float((predicted == labels).mean()),
        macro_f1=macro_f1(confusion),
        confusion=confusion,
    )
