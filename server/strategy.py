"""Strategies: what the server does with a round's clients and their results.

:class:`Strategy` mirrors flwr's ``flwr.server.strategy.Strategy`` method for method, but on
NumPy arrays: parameters are ``list[np.ndarray]``, configs and metrics are dicts, and failures
are :class:`~fedproto.server_role.Failure` records. :class:`FedAvg` is flwr's FedAvg.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable

import numpy as np

from fedproto.server_role import Config, EvaluateIns, EvaluateRes, Failure, FitIns, FitRes, Metrics, NDArrays
from fedproto.server.client_manager import Client, ClientManager

log = logging.getLogger("fedproto.server")

MetricsAggregationFn = Callable[[list[tuple[int, Metrics]]], Metrics]
EvaluateFn = Callable[[int, NDArrays, Config], "tuple[float, Metrics] | None"]


class Strategy(ABC):
    """The decisions of a federated run; the FL loop (``server.loop``) does the talking.

    The loop waits until ``min_available_clients`` are connected before asking for instructions
    (``configure_*``), because, unlike flwr's, ``ClientManager.sample`` does not block.
    """

    min_available_clients: int = 1

    @abstractmethod
    def initialize_parameters(self, client_manager: ClientManager) -> NDArrays | None:
        """Initial global parameters; None asks one connected client for its own."""

    @abstractmethod
    def configure_fit(
        self, server_round: int, parameters: NDArrays, client_manager: ClientManager
    ) -> list[tuple[Client, FitIns]]:
        """Which clients train this round, and with what. [] skips training this round."""

    @abstractmethod
    def aggregate_fit(
        self, server_round: int, results: list[tuple[Client, FitRes]], failures: list[Failure]
    ) -> tuple[NDArrays | None, Metrics]:
        """New global parameters from the results (None keeps the old ones), plus metrics."""

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, parameters: NDArrays, client_manager: ClientManager
    ) -> list[tuple[Client, EvaluateIns]]:
        """Which clients evaluate this round, and with what. [] skips it."""

    @abstractmethod
    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[Client, EvaluateRes]], failures: list[Failure]
    ) -> tuple[float | None, Metrics]:
        """One loss (None: no loss this round) and metrics from the clients' evaluations."""

    @abstractmethod
    def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics] | None:
        """Centralized evaluation on the server; None if there is none."""

    def state(self) -> dict[str, NDArrays]:
        """Arrays a checkpoint must keep besides the global parameters (an optimizer's moments)."""
        return {}

    def restore(self, parameters: NDArrays, state: dict[str, NDArrays]) -> None:
        """Continue from a checkpoint: the global parameters and what :meth:`state` returned."""


def weighted_average(results: list[tuple[NDArrays, int]]) -> NDArrays:
    """Example-weighted mean of each tensor (flwr's FedAvg rule).

    Sums in float64 whatever the tensors' dtype, then casts each mean back to the dtype of the
    first result's tensor (integer tensors are rounded to the nearest integer first).
    """
    total = sum(num_examples for _, num_examples in results)
    averaged = []
    for layers in zip(*(arrays for arrays, _ in results), strict=True):
        accumulator = np.zeros(layers[0].shape, np.float64)
        for layer, (_, num_examples) in zip(layers, results, strict=True):
            accumulator += layer.astype(np.float64, copy=False) * num_examples
        mean = accumulator / total
        dtype = layers[0].dtype
        if np.issubdtype(dtype, np.integer):
            mean = np.rint(mean)
        averaged.append(mean.astype(dtype))
    return averaged


def weighted_loss_average(results: list[tuple[int, float]]) -> float:
    total = sum(num_examples for num_examples, _ in results)
    return sum(num_examples * loss for num_examples, loss in results) / total


class FedAvg(Strategy):
    """Federated averaging, with flwr's FedAvg arguments and sampling rule.

    Each round trains on ``max(int(available * fraction_fit), min_fit_clients)`` clients drawn
    at random and averages their parameters weighted by ``num_examples``; evaluation likewise
    with ``fraction_evaluate`` (0 turns distributed evaluation off).
    """

    def __init__(
        self,
        *,
        fraction_fit: float = 1.0,
        fraction_evaluate: float = 1.0,
        min_fit_clients: int = 2,
        min_evaluate_clients: int = 2,
        min_available_clients: int = 2,
        evaluate_fn: EvaluateFn | None = None,
        on_fit_config_fn: Callable[[int], Config] | None = None,
        on_evaluate_config_fn: Callable[[int], Config] | None = None,
        accept_failures: bool = True,
        initial_parameters: NDArrays | None = None,
        fit_metrics_aggregation_fn: MetricsAggregationFn | None = None,
        evaluate_metrics_aggregation_fn: MetricsAggregationFn | None = None,
    ) -> None:
        if not 0.0 <= fraction_fit <= 1.0 or not 0.0 <= fraction_evaluate <= 1.0:
            raise ValueError("fraction_fit and fraction_evaluate must be between 0 and 1")
        if min_fit_clients > min_available_clients or min_evaluate_clients > min_available_clients:
            log.warning("min_fit_clients or min_evaluate_clients exceeds min_available_clients; "
                        "rounds will be skipped until that many clients are connected")
        self.fraction_fit = fraction_fit
        self.fraction_evaluate = fraction_evaluate
        self.min_fit_clients = min_fit_clients
        self.min_evaluate_clients = min_evaluate_clients
        self.min_available_clients = min_available_clients
        self.evaluate_fn = evaluate_fn
        self.on_fit_config_fn = on_fit_config_fn
        self.on_evaluate_config_fn = on_evaluate_config_fn
        self.accept_failures = accept_failures
        self.initial_parameters = initial_parameters
        self.fit_metrics_aggregation_fn = fit_metrics_aggregation_fn
        self.evaluate_metrics_aggregation_fn = evaluate_metrics_aggregation_fn

    def __repr__(self) -> str:
        return (f"FedAvg(fraction_fit={self.fraction_fit}, fraction_evaluate={self.fraction_evaluate}, "
                f"min_available_clients={self.min_available_clients}, "
                f"accept_failures={self.accept_failures})")

    def num_fit_clients(self, num_available: int) -> tuple[int, int]:
        """(sample size, clients that must be connected), as flwr computes them."""
        return max(int(num_available * self.fraction_fit), self.min_fit_clients), self.min_available_clients

    def num_evaluation_clients(self, num_available: int) -> tuple[int, int]:
        return (max(int(num_available * self.fraction_evaluate), self.min_evaluate_clients),
                self.min_available_clients)

    def initialize_parameters(self, client_manager: ClientManager) -> NDArrays | None:
        parameters, self.initial_parameters = self.initial_parameters, None  # not kept in memory
        return parameters

    def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics] | None:
        if self.evaluate_fn is None:
            return None
        return self.evaluate_fn(server_round, parameters, {})

    def configure_fit(
        self, server_round: int, parameters: NDArrays, client_manager: ClientManager
    ) -> list[tuple[Client, FitIns]]:
        config = self.on_fit_config_fn(server_round) if self.on_fit_config_fn else {}
        fit_ins = FitIns(parameters, config)  # one object for all: the loop encodes it once
        sample_size, min_num_clients = self.num_fit_clients(client_manager.num_available())
        clients = client_manager.sample(sample_size, min_num_clients)
        return [(client, fit_ins) for client in clients]

    def configure_evaluate(
        self, server_round: int, parameters: NDArrays, client_manager: ClientManager
    ) -> list[tuple[Client, EvaluateIns]]:
        if self.fraction_evaluate == 0.0:
            return []
        config = self.on_evaluate_config_fn(server_round) if self.on_evaluate_config_fn else {}
        evaluate_ins = EvaluateIns(parameters, config)
        sample_size, min_num_clients = self.num_evaluation_clients(client_manager.num_available())
        clients = client_manager.sample(sample_size, min_num_clients)
        return [(client, evaluate_ins) for client in clients]

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Client, FitRes]], failures: list[Failure]
    ) -> tuple[NDArrays | None, Metrics]:
        if not results:
            return None, {}
        if failures and not self.accept_failures:
            log.warning("round %d: %d fit failures and accept_failures=False: no aggregation",
                        server_round, len(failures))
            return None, {}
        if sum(res.num_examples for _, res in results) == 0:
            log.warning("round %d: every client reported num_examples=0: no aggregation", server_round)
            return None, {}
        parameters = weighted_average([(res.parameters, res.num_examples) for _, res in results])
        metrics: Metrics = {}
        if self.fit_metrics_aggregation_fn is not None:
            metrics = self.fit_metrics_aggregation_fn([(res.num_examples, res.metrics) for _, res in results])
        return parameters, metrics

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[Client, EvaluateRes]], failures: list[Failure]
    ) -> tuple[float | None, Metrics]:
        if not results:
            return None, {}
        if failures and not self.accept_failures:
            log.warning("round %d: %d evaluate failures and accept_failures=False: no aggregation",
                        server_round, len(failures))
            return None, {}
        if sum(res.num_examples for _, res in results) == 0:
            log.warning("round %d: every client reported num_examples=0: no loss", server_round)
            return None, {}
        loss = weighted_loss_average([(res.num_examples, res.loss) for _, res in results])
        metrics: Metrics = {}
        if self.evaluate_metrics_aggregation_fn is not None:
            metrics = self.evaluate_metrics_aggregation_fn(
                [(res.num_examples, res.metrics) for _, res in results])
        return loss, metrics


class FedProx(FedAvg):
    """FedAvg that also sends ``proximal_mu`` in every fit config, as flwr's FedProx does.

    The proximal term is the client's business: its loss adds
    ``proximal_mu / 2 * ||w - w_global||^2``. The server side is FedAvg.
    """

    def __init__(self, *, proximal_mu: float, **fedavg_arguments) -> None:
        super().__init__(**fedavg_arguments)
        self.proximal_mu = proximal_mu

    def __repr__(self) -> str:
        return f"FedProx(proximal_mu={self.proximal_mu}, {super().__repr__()[len('FedAvg('):]}"

    def configure_fit(
        self, server_round: int, parameters: NDArrays, client_manager: ClientManager
    ) -> list[tuple[Client, FitIns]]:
        instructions = super().configure_fit(server_round, parameters, client_manager)
        if not instructions:
            return []
        shared = instructions[0][1]
        fit_ins = FitIns(shared.parameters, {**shared.config, "proximal_mu": self.proximal_mu})
        return [(client, fit_ins) for client, _ in instructions]


class FedAdam(FedAvg):
    """FedAvg's average taken as a pseudo-gradient for a server-side Adam step (flwr's FedAdam).

    Each round, with ``delta = fedavg_average - current``:
    ``m = beta_1 m + (1 - beta_1) delta``, ``v = beta_2 v + (1 - beta_2) delta**2``,
    ``current += eta * sqrt(1 - beta_2**(t+1)) / (1 - beta_1**(t+1)) * m / (sqrt(v) + tau)``.
    Needs ``initial_parameters``. The moments are computed in float64 and, with the
    parameters, kept in checkpoints, so a resumed run continues the same trajectory.
    """

    def __init__(self, *, initial_parameters: NDArrays, eta: float = 1e-1, beta_1: float = 0.9,
                 beta_2: float = 0.99, tau: float = 1e-9, **fedavg_arguments) -> None:
        super().__init__(initial_parameters=initial_parameters, **fedavg_arguments)
        self.current = [np.array(p) for p in initial_parameters]
        self.eta, self.beta_1, self.beta_2, self.tau = eta, beta_1, beta_2, tau
        self.m_t: NDArrays = []
        self.v_t: NDArrays = []

    def __repr__(self) -> str:
        return (f"FedAdam(eta={self.eta}, beta_1={self.beta_1}, beta_2={self.beta_2}, tau={self.tau}, "
                f"{super().__repr__()[len('FedAvg('):]}")

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Client, FitRes]], failures: list[Failure]
    ) -> tuple[NDArrays | None, Metrics]:
        averaged, metrics = super().aggregate_fit(server_round, results, failures)
        if averaged is None:
            return None, {}
        delta = [a.astype(np.float64) - c.astype(np.float64) for a, c in zip(averaged, self.current, strict=True)]
        if not self.m_t:
            self.m_t = [np.zeros_like(d) for d in delta]
            self.v_t = [np.zeros_like(d) for d in delta]
        self.m_t = [self.beta_1 * m + (1 - self.beta_1) * d for m, d in zip(self.m_t, delta, strict=True)]
        self.v_t = [self.beta_2 * v + (1 - self.beta_2) * d * d for v, d in zip(self.v_t, delta, strict=True)]
        eta_norm = (self.eta * np.sqrt(1 - self.beta_2 ** (server_round + 1.0))
                    / (1 - self.beta_1 ** (server_round + 1.0)))
        self.current = [
            (c.astype(np.float64) + eta_norm * m / (np.sqrt(v) + self.tau)).astype(c.dtype)
            for c, m, v in zip(self.current, self.m_t, self.v_t, strict=True)
        ]
        return self.current, metrics

    def state(self) -> dict[str, NDArrays]:
        return {"m_t": self.m_t, "v_t": self.v_t}

    def restore(self, parameters: NDArrays, state: dict[str, NDArrays]) -> None:
        self.current = [np.array(p) for p in parameters]
        self.m_t, self.v_t = list(state.get("m_t", [])), list(state.get("v_t", []))


def weighted_metrics_average(metrics: list[tuple[int, Metrics]]) -> Metrics:
    """Example-weighted mean of every numeric metric the clients reported (bools, str skipped).

    A ready-made ``fit_metrics_aggregation_fn`` / ``evaluate_metrics_aggregation_fn``.
    """
    averaged: Metrics = {}
    names = sorted({name for _, values in metrics for name in values})
    for name in names:
        pairs = [(n, values[name]) for n, values in metrics if name in values]
        numeric = [(n, v) for n, v in pairs if isinstance(v, (int, float)) and not isinstance(v, bool)]
        total = sum(n for n, _ in numeric)
        if numeric and len(numeric) == len(pairs) and total > 0:
            averaged[name] = sum(n * float(v) for n, v in numeric) / total
    return averaged
