"""What happened in a run: losses and metrics per round (flwr's History) plus each round's failures.

Losses are ``[(round, value), ...]``; metrics are ``{name: [(round, value), ...]}``, as in
flwr. ``rounds`` adds what flwr's History leaves out: how many clients answered each step,
which ones (``fit_clients`` made the model, ``evaluate_clients`` the distributed loss), and
why the others did not.

A History holds text that clients chose, so it is bounded (``fedproto.text``) before it is
stored or written:

- each ``add_metrics_*`` call keeps at most ``MAX_METRICS`` (64) entries; past that the first
  64 keys in sorted order are kept and one entry ``"(dropped metrics)"`` holds how many were
  cut. Keys are cut to 100 characters, str values to 200, bytes values to their first 100
  bytes (the JSON says how many were left out), all escaped onto one line (``\\n``, ``\\x1b``);
- a failure's ``cid`` and ``reason`` are bounded the same way (200 characters) when written.

``to_json`` is strict JSON (``allow_nan=False``): JSON has no NaN or Infinity, so a non-finite
float (a loss or a metric) is written as ``{"float": "NaN"}``, ``{"float": "Infinity"}`` or
``{"float": "-Infinity"}``; a bytes value as ``{"bytes_hex": "..."}`` (plus
``"dropped_bytes": N`` when it was cut). ``from_json`` reads both back, so a History whose
values are within the bounds round-trips exactly (NaN stays NaN).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, cast

from fedproto.codec import ScalarValue
from fedproto.server_role import Failure, FailureKind, Metrics
from fedproto.text import BYTES_LIMIT, bound_metrics, bound_text

Losses = list[tuple[int, float]]
MetricsHistory = dict[str, list[tuple[int, ScalarValue]]]


@dataclass
class RoundRecord:
    """One round: clients that delivered a usable reply, and the failures, per step.

    ``fit_clients`` are the ids of the clients whose FitRes went into the new model;
    ``evaluate_clients`` those whose EvaluateRes make up the round's distributed loss (the
    centralized loss is the server's own). Histories written before these fields read as [].
    """

    server_round: int
    fit_ok: int = 0
    fit_failures: list[Failure] = field(default_factory=list)
    evaluate_ok: int = 0
    evaluate_failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    fit_clients: list[str] = field(default_factory=list)
    evaluate_clients: list[str] = field(default_factory=list)


@dataclass
class History:
    losses_distributed: Losses = field(default_factory=list)
    losses_centralized: Losses = field(default_factory=list)
    metrics_distributed_fit: MetricsHistory = field(default_factory=dict)
    metrics_distributed: MetricsHistory = field(default_factory=dict)
    metrics_centralized: MetricsHistory = field(default_factory=dict)
    rounds: list[RoundRecord] = field(default_factory=list)

    @property
    def last_round(self) -> int:
        """The last round completed (0 before the first)."""
        return self.rounds[-1].server_round if self.rounds else 0

    def round(self, server_round: int) -> RoundRecord:
        for record in self.rounds:
            if record.server_round == server_round:
                return record
        raise KeyError(f"no round {server_round} in this history")

    def add_loss_distributed(self, server_round: int, loss: float) -> None:
        self.losses_distributed.append((server_round, loss))

    def add_loss_centralized(self, server_round: int, loss: float) -> None:
        self.losses_centralized.append((server_round, loss))

    def add_metrics_distributed_fit(self, server_round: int, metrics: Metrics) -> None:
        _add_metrics(self.metrics_distributed_fit, server_round, metrics)

    def add_metrics_distributed(self, server_round: int, metrics: Metrics) -> None:
        _add_metrics(self.metrics_distributed, server_round, metrics)

    def add_metrics_centralized(self, server_round: int, metrics: Metrics) -> None:
        _add_metrics(self.metrics_centralized, server_round, metrics)

    def to_json(self, indent: int | None = 1) -> str:
        return json.dumps({
            "losses_distributed": _losses_to_json(self.losses_distributed),
            "losses_centralized": _losses_to_json(self.losses_centralized),
            "metrics_distributed_fit": _metrics_to_json(self.metrics_distributed_fit),
            "metrics_distributed": _metrics_to_json(self.metrics_distributed),
            "metrics_centralized": _metrics_to_json(self.metrics_centralized),
            "rounds": [_round_to_json(record) for record in self.rounds],
        }, indent=indent, allow_nan=False)

    @classmethod
    def from_json(cls, text: str) -> History:
        data = json.loads(text)
        return cls(
            losses_distributed=_losses_from_json(data["losses_distributed"]),
            losses_centralized=_losses_from_json(data["losses_centralized"]),
            metrics_distributed_fit=_metrics_from_json(data["metrics_distributed_fit"]),
            metrics_distributed=_metrics_from_json(data["metrics_distributed"]),
            metrics_centralized=_metrics_from_json(data["metrics_centralized"]),
            rounds=[_round_from_json(record) for record in data["rounds"]],
        )


def _add_metrics(target: MetricsHistory, server_round: int, metrics: Metrics) -> None:
    for name, value in bound_metrics(metrics).items():  # each value keeps its type: a ScalarValue
        target.setdefault(name, []).append((server_round, cast(ScalarValue, value)))


NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}


def _float_to_json(value: float) -> Any:
    if math.isfinite(value):
        return value
    return {"float": "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")}


def _value_to_json(value: ScalarValue) -> Any:
    if isinstance(value, bytes):
        if len(value) <= BYTES_LIMIT:
            return {"bytes_hex": value.hex()}
        return {"bytes_hex": value[:BYTES_LIMIT].hex(), "dropped_bytes": len(value) - BYTES_LIMIT}
    if isinstance(value, float):
        return _float_to_json(value)
    return value


def _value_from_json(value: Any) -> ScalarValue:
    if isinstance(value, dict) and "float" in value:
        return NON_FINITE[value["float"]]
    return bytes.fromhex(value["bytes_hex"]) if isinstance(value, dict) else value


def _losses_to_json(losses: Losses) -> list[Any]:
    return [[r, _float_to_json(loss)] for r, loss in losses]


def _losses_from_json(data: list[Any]) -> Losses:
    return [(r, cast(float, _value_from_json(loss))) for r, loss in data]  # _losses_to_json wrote floats


def _metrics_to_json(metrics: MetricsHistory) -> dict[str, list[Any]]:
    return {name: [[r, _value_to_json(v)] for r, v in values] for name, values in metrics.items()}


def _metrics_from_json(data: dict[str, list[Any]]) -> MetricsHistory:
    return {name: [(r, _value_from_json(v)) for r, v in values] for name, values in data.items()}


def _failure_to_json(failure: Failure) -> dict[str, str]:
    return {"cid": bound_text(failure.cid), "kind": failure.kind.value, "reason": bound_text(failure.reason)}


def _failure_from_json(data: dict[str, str]) -> Failure:
    return Failure(data["cid"], FailureKind(data["kind"]), data["reason"])


def _round_to_json(record: RoundRecord) -> dict[str, Any]:
    return {
        "round": record.server_round,
        "fit_ok": record.fit_ok,
        "fit_failures": [_failure_to_json(f) for f in record.fit_failures],
        "evaluate_ok": record.evaluate_ok,
        "evaluate_failures": [_failure_to_json(f) for f in record.evaluate_failures],
        "seconds": record.seconds,
        "fit_clients": [bound_text(cid) for cid in record.fit_clients],
        "evaluate_clients": [bound_text(cid) for cid in record.evaluate_clients],
    }


def _round_from_json(data: dict[str, Any]) -> RoundRecord:
    return RoundRecord(
        server_round=data["round"],
        fit_ok=data["fit_ok"],
        fit_failures=[_failure_from_json(f) for f in data["fit_failures"]],
        evaluate_ok=data["evaluate_ok"],
        evaluate_failures=[_failure_from_json(f) for f in data["evaluate_failures"]],
        seconds=data["seconds"],
        fit_clients=data.get("fit_clients", []),
        evaluate_clients=data.get("evaluate_clients", []),
    )
