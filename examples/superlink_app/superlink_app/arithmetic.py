"""The model and the client arithmetic, shared by the ClientApp and fedproto's handler.

Everything a client returns is a function of (client index, server round), so a test can compute
independently what FedAvg must aggregate. Values are multiples of 1/16 and stay small, so float32
sums are exact and the weighted mean only rounds at the final division.
"""

from __future__ import annotations

import time

import numpy as np


def initial_arrays(extra_elements: int = 0) -> list[np.ndarray]:
    arrays = [np.zeros((3, 2), np.float64), np.zeros(4, np.float32)]
    if extra_elements:
        arrays.append(np.zeros(extra_elements, np.float32))
    return arrays


def fit_delta(client: int, server_round: int, shape: tuple[int, ...], dtype) -> np.ndarray:
    """What client ``client`` adds to a tensor of this shape in round ``server_round``."""
    size = int(np.prod(shape))
    pattern = (np.arange(size) % 7 - 3) * (client + 1) * server_round / 16
    return pattern.reshape(shape).astype(dtype)


def fit_examples(client: int) -> int:
    return 10 * (client + 1) ** 2  # 10, 40, 90...: clients weigh differently in FedAvg


def evaluate_examples(client: int) -> int:
    return 5 + client


def evaluate_loss(client: int, parameters: list[np.ndarray]) -> float:
    return float(sum(np.abs(p.astype(np.float64)).sum() for p in parameters)) + client


def expected_fedavg(
    clients_per_round: list[list[int]], extra_elements: int = 0
) -> list[np.ndarray]:
    """The global model after FedAvg over the given participating clients of each round."""
    arrays = [a.astype(np.float64) for a in initial_arrays(extra_elements)]
    for server_round, clients in enumerate(clients_per_round, start=1):
        total = sum(fit_examples(c) for c in clients)
        arrays = [
            sum(
                fit_examples(c) * (a + fit_delta(c, server_round, a.shape, np.float64))
                for c in clients
            )
            / total
            for a in arrays
        ]
    return arrays


class ArithmeticClient:
    """A NumPyClient-style handler (no flwr import): fit adds ``fit_delta`` to the parameters.

    ``fail_fit_round``: fit raises RuntimeError in that round. ``fit_sleep``: fit sleeps that many
    seconds first (to outlast heartbeat intervals).
    """

    def __init__(self, client: int, fail_fit_round: int = 0, fit_sleep: float = 0.0) -> None:
        self.client = client
        self.fail_fit_round = fail_fit_round
        self.fit_sleep = fit_sleep

    def get_parameters(self, config):
        return initial_arrays()

    def fit(self, parameters, config):
        server_round = int(config["server-round"])
        if server_round == self.fail_fit_round:
            raise RuntimeError(f"client {self.client} refuses round {server_round}")
        if self.fit_sleep:
            time.sleep(self.fit_sleep)
        updated = [
            p + fit_delta(self.client, server_round, p.shape, p.dtype) for p in parameters
        ]
        return updated, fit_examples(self.client), {"client": self.client, "round": server_round}

    def evaluate(self, parameters, config):
        loss = evaluate_loss(self.client, parameters)
        return loss, evaluate_examples(self.client), {"client": self.client}


class InPlaceClient(ArithmeticClient):
    """Trains in place (``parameter += delta``), as most NumPy training code does, and keeps a
    reference to every array it was given or returned: each call checks that nothing has
    changed them since, so a library that hands out shared or reused buffers fails the round."""

    def __init__(self, client: int, fail_fit_round: int = 0, fit_sleep: float = 0.0) -> None:
        super().__init__(client, fail_fit_round, fit_sleep)
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []  # (array, a copy of its values then)

    def fit(self, parameters, config):
        self._check_kept()
        server_round = int(config["server-round"])
        for parameter in parameters:
            parameter += fit_delta(self.client, server_round, parameter.shape, parameter.dtype)
        self.kept += [(parameter, parameter.copy()) for parameter in parameters]
        return parameters, fit_examples(self.client), {"client": self.client, "round": server_round}

    def evaluate(self, parameters, config):
        self._check_kept()
        self.kept += [(parameter, parameter.copy()) for parameter in parameters]
        return super().evaluate(parameters, config)

    def _check_kept(self) -> None:
        for array, values in self.kept:
            if not np.array_equal(array, values):
                raise RuntimeError("an array this handler kept was changed behind its back")
