"""Deterministic handlers for the edge-client interop tests (``--app interop_handlers:...``).

Everything a handler returns is a function of (client index, server round), so a test can
compute by hand what flwr's FedAvg must aggregate. Environment variables:
  HANDLER_CLIENT          this client's index: 0, 1, ... (default 0)
  HANDLER_RECORD          a file to append one JSON line to per instruction received
  HANDLER_FAIL_FIT_ROUND  fit raises RuntimeError in this round
"""

from __future__ import annotations

import json
import os

import numpy as np


def initial_parameters() -> list[np.ndarray]:
    return [np.zeros((3, 2), np.float64), np.zeros(4, np.float32)]


def fit_delta(client: int, server_round: int) -> list[np.ndarray]:
    """What client ``client`` adds to each tensor in round ``server_round``."""
    return [
        np.arange(6, dtype=np.float64).reshape(3, 2) * (client + 1) * server_round / 8,
        np.full(4, (client + 1) / 4 - server_round / 16, np.float32),
    ]


def fit_examples(client: int) -> int:
    return 10 * (client + 1) ** 2  # 10, 40, 90...: clients weigh differently in FedAvg


def evaluate_examples(client: int) -> int:
    return 5 + client


def fit_metrics(client: int, server_round: int) -> dict:
    """One metric of every Scalar kind."""
    return {
        "client": client,
        "round": server_round,
        "negative": -1000 * (client + 1),
        "ratio": 0.125 * (client + 1),
        "flag": client == 0,
        "name": f"client-{client} é",
        "raw": bytes([client, 0, 255]),
    }


def evaluate_loss(client: int, parameters: list[np.ndarray]) -> float:
    return float(sum(p.astype(np.float64).sum() for p in parameters)) + client


class DeltaClient:
    """fit adds ``fit_delta`` to the parameters; no get_properties (answered NOT_IMPLEMENTED)."""

    def __init__(self, client: int, record: str | None, fail_fit_round: int | None) -> None:
        self.client = client
        self.record = record
        self.fail_fit_round = fail_fit_round

    def get_parameters(self, config):
        self._record("get_parameters", config)
        return initial_parameters()

    def fit(self, parameters, config):
        self._record("fit", config)
        server_round = config["server_round"]
        if server_round == self.fail_fit_round:
            raise RuntimeError(f"client {self.client} refuses round {server_round}")
        updated = [p + d.astype(p.dtype) for p, d in zip(parameters, fit_delta(self.client, server_round))]
        return updated, fit_examples(self.client), fit_metrics(self.client, server_round)

    def evaluate(self, parameters, config):
        self._record("evaluate", config)
        loss = evaluate_loss(self.client, parameters)
        return loss, evaluate_examples(self.client), {"client": self.client, "loss_copy": loss}

    def _record(self, method: str, config: dict) -> None:
        if self.record:
            kinds = {key: [type(value).__name__, repr(value)] for key, value in sorted(config.items())}
            with open(self.record, "a") as out:
                out.write(json.dumps({"method": method, "config": kinds}) + "\n")


class PropertiesClient(DeltaClient):
    """DeltaClient that also answers GetPropertiesIns, echoing the config it was sent."""

    def get_properties(self, config):
        self._record("get_properties", config)
        return {"client": self.client, "has_gpu": False, "memory_mb": 64.5, "echo": repr(config)}


class InPlaceClient(DeltaClient):
    """DeltaClient that trains in place (``parameter += delta``) and keeps a reference to every
    array it was given or returned; each call checks that nothing has changed them since."""

    def __init__(self, client: int, record: str | None, fail_fit_round: int | None) -> None:
        super().__init__(client, record, fail_fit_round)
        self.kept: list[tuple[np.ndarray, np.ndarray]] = []  # (array, a copy of its values then)

    def fit(self, parameters, config):
        self._check_kept()
        self._record("fit", config)
        for parameter, delta in zip(parameters, fit_delta(self.client, config["server_round"])):
            parameter += delta.astype(parameter.dtype)
        self.kept += [(parameter, parameter.copy()) for parameter in parameters]
        return parameters, fit_examples(self.client), fit_metrics(self.client, config["server_round"])

    def evaluate(self, parameters, config):
        self._check_kept()
        self.kept += [(parameter, parameter.copy()) for parameter in parameters]
        return super().evaluate(parameters, config)

    def _check_kept(self) -> None:
        for array, values in self.kept:
            if not np.array_equal(array, values):
                raise RuntimeError("an array this handler kept was changed behind its back")


def _from_environment(cls):
    fail_round = os.environ.get("HANDLER_FAIL_FIT_ROUND")
    return cls(
        client=int(os.environ.get("HANDLER_CLIENT", "0")),
        record=os.environ.get("HANDLER_RECORD"),
        fail_fit_round=int(fail_round) if fail_round else None,
    )


def delta_client() -> DeltaClient:
    return _from_environment(DeltaClient)


def properties_client() -> PropertiesClient:
    return _from_environment(PropertiesClient)


def in_place_client() -> InPlaceClient:
    return _from_environment(InPlaceClient)
