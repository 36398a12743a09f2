"""Centralized and local-only training, the two baselines the federated run is compared with.

Both start from the same initial weights as the federated run and get the same budget:
``settings.epochs`` passes over their training data (federated: rounds x local epochs).
"""

from __future__ import annotations

import logging

import numpy as np

from fedproto.har import model as keras_model
from fedproto.har.data import Prepared
from fedproto.har.metrics import Scores, score
from fedproto.har.settings import Settings

log = logging.getLogger("har")


def initial_weights(features: int, settings: Settings) -> list[np.ndarray]:
    """The seeded starting point every paradigm (and every federated client) shares."""
    keras_model.configure(settings.seed)
    return keras_model.get_weights(keras_model.build_model(features, settings.hidden, settings.learning_rate))


def train_and_score(x: np.ndarray, y: np.ndarray, prepared: Prepared, settings: Settings,
                    start: list[np.ndarray]) -> Scores:
    """A fresh model from ``start``, ``settings.epochs`` epochs on (x, y), scored on the common test set."""
    keras_model.configure(settings.seed)
    model = keras_model.build_model(x.shape[1], settings.hidden, settings.learning_rate)
    keras_model.set_weights(model, start)
    keras_model.train(model, x, y, epochs=settings.epochs, batch_size=settings.batch_size)
    return score(keras_model.predict(model, prepared.test.x), prepared.test.label)


def centralized(prepared: Prepared, settings: Settings, start: list[np.ndarray]) -> Scores:
    return train_and_score(prepared.train.x, prepared.train.label, prepared, settings, start)


def local_only(prepared: Prepared, settings: Settings, start: list[np.ndarray]) -> list[Scores]:
    """Each client alone on its own subjects' windows, every model tested on all subjects."""
    results = []
    for client in range(settings.clients):
        own = prepared.client_train(client)
        results.append(train_and_score(own.x, own.label, prepared, settings, start))
        log.info("local-only client %d/%d (%d windows): accuracy %.4f, macro-F1 %.4f",
                 client + 1, settings.clients, len(own), results[-1].accuracy, results[-1].macro_f1)
    return results


def scorer(prepared: Prepared, settings: Settings):
    """(parameters) -> Scores on the common test set: the server's centralized evaluation."""
    model = keras_model.build_model(prepared.test.x.shape[1], settings.hidden, settings.learning_rate)

    def evaluate(parameters: list[np.ndarray]) -> Scores:
        keras_model.set_weights(model, parameters)
        return score(keras_model.predict(model, prepared.test.x), prepared.test.label)

    return evaluate
