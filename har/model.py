"""The Keras model of the tutorial: the only module of the project that imports TensorFlow.

A Sequential dense network (ReLU hidden layers, softmax over the 6 activities, Adam). Its
weights, as ``model.get_weights()`` returns them, are exactly the list of ndarrays that
travels in ``Parameters``: kernel and bias of each layer, in order, float32.
"""

from __future__ import annotations

import os

# Quiet and reproducible TensorFlow; these must be set before it is imported.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_DETERMINISTIC_OPS"] = "1"

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from fedproto.har.data import ACTIVITIES  # noqa: E402

DEFAULT_LEARNING_RATE = 1e-3
_configured = False


def configure(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow; deterministic single-threaded ops (2-core machine)."""
    global _configured
    if not _configured:  # thread settings can only change before TensorFlow runs anything
        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        tf.config.experimental.enable_op_determinism()
        _configured = True
    tf.keras.utils.set_random_seed(seed)


def build_model(features: int, hidden: tuple[int, ...], learning_rate: float) -> tf.keras.Sequential:
    """Dense(h, relu) for h in ``hidden``, then Dense(6, softmax); Adam on cross-entropy."""
    layers = [tf.keras.Input(shape=(features,))]
    layers += [tf.keras.layers.Dense(units, activation="relu") for units in hidden]
    layers.append(tf.keras.layers.Dense(len(ACTIVITIES), activation="softmax"))
    model = tf.keras.Sequential(layers)
    model.compile(optimizer=tf.keras.optimizers.Adam(learning_rate=learning_rate),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def get_weights(model: tf.keras.Model) -> list[np.ndarray]:
    return [np.asarray(w, dtype=np.float32) for w in model.get_weights()]


def set_weights(model: tf.keras.Model, weights: list[np.ndarray]) -> None:
    expected = [tuple(w.shape) for w in model.get_weights()]
    received = [tuple(np.shape(w)) for w in weights]
    if received != expected:
        raise ValueError(f"parameters do not fit the model: got shapes {received}, expected {expected}")
    model.set_weights(weights)


def train(model: tf.keras.Model, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int) -> dict[str, float]:
    """``epochs`` passes over (x, y), shuffled; returns the last epoch's loss and accuracy."""
    history = model.fit(x, y, epochs=epochs, batch_size=batch_size, shuffle=True, verbose=0)
    return {"train_loss": float(history.history["loss"][-1]),
            "train_accuracy": float(history.history["accuracy"][-1])}


def predict(model: tf.keras.Model, x: np.ndarray) -> np.ndarray:
    """Class probabilities, (n, 6)."""
    return np.asarray(model(x, training=False))  # one call: the test sets are small
