"""Strategies: what the server does with a round's clients and their results.

:class:`Strategy` mirrors flwr's ``flwr.server.strategy.Strategy`` method for method, but on
NumPy arrays: parameters are ``list[np.ndarray]``, configs and metrics are dicts, and failures
are :class:`~fedproto.server_role.Failure` records. :class:`FedAvg` is flwr's FedAvg.

Results are aggregated as they arrive. Each step of a round has an aggregator:
``begin_fit(round, parameters)`` returns a :class:`FitAggregator`; the loop calls its ``fold``
with each checked FitRes as soon as that client's reply is decoded, drops the result, and after
the last reply calls ``finish(failures)`` once. FedAvg's aggregator keeps only a running
float64 sum per tensor (:class:`WeightedSum`), so a round holds O(1) models whatever the number
of clients. Evaluate likewise (``begin_evaluate``: a running weighted loss).

flwr's all-at-once methods, ``aggregate_fit`` and ``aggregate_evaluate``, are still there: a
strategy written that way (only those methods, or a FedAvg subclass that overrides one of
them) gets a collecting aggregator that hands it the whole list of the round, as flwr does.
That works, and holds every result of the round in memory until the list is complete.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import numpy as np

from fedproto.server.client_manager import Client, ClientManager
from fedproto.server_role import (
    Config,
    EvaluateIns,
    EvaluateRes,
    Failure,
    FitIns,
    FitRes,
    Metrics,
    NDArrays,
    check_update,
)

log = logging.getLogger("fedproto.server")

MetricsAggregationFn = Callable[[list[tuple[int, Metrics]]], Metrics]
EvaluateFn = Callable[[int, NDArrays, Config], "tuple[float, Metrics] | None"]

# Elements per step of the running sum: a tensor is folded in slices through one float64
# scratch buffer of this many elements (512 KiB, cache-sized), so folding a 40 MB update
# allocates nothing of its size.
FOLD_CHUNK = 1 << 16


class FitAggregator(ABC):
    """One round's fit results, taken one at a time as they arrive, then finished once."""

    @abstractmethod
    def fold(self, client: Client, res: FitRes) -> None:
        """Take one client's checked result; the caller drops it afterwards.

        May raise :class:`~fedproto.server_role.ReplyError` to refuse it (it then counts as
        that client's failure and has changed nothing).
        """

    @abstractmethod
    def finish(self, failures: list[Failure]) -> tuple[NDArrays | None, Metrics]:
        """New global parameters (None keeps the old ones) and metrics, after the last fold."""


class EvaluateAggregator(ABC):
    """One round's evaluate results, taken one at a time as they arrive, then finished once."""

    @abstractmethod
    def fold(self, client: Client, res: EvaluateRes) -> None:
        """Take one client's checked result."""

    @abstractmethod
    def finish(self, failures: list[Failure]) -> tuple[float | None, Metrics]:
        """One loss (None: no loss this round) and metrics, after the last fold."""


class CollectedFit(FitAggregator):
    """Keeps every result and hands the round's list to ``aggregate_fit`` (flwr's way).

    Holds all of the round's results in memory until ``finish``.
    """

    def __init__(self, aggregate_fit: Callable, server_round: int) -> None:
        self.aggregate_fit = aggregate_fit
        self.server_round = server_round
        self.results: list[tuple[Client, FitRes]] = []

    def fold(self, client: Client, res: FitRes) -> None:
        self.results.append((client, res))

    def finish(self, failures: list[Failure]) -> tuple[NDArrays | None, Metrics]:
        results, self.results = self.results, []
        return self.aggregate_fit(self.server_round, results, failures)


class CollectedEvaluate(EvaluateAggregator):
    """Keeps every result and hands the round's list to ``aggregate_evaluate`` (flwr's way)."""

    def __init__(self, aggregate_evaluate: Callable, server_round: int) -> None:
        self.aggregate_evaluate = aggregate_evaluate
        self.server_round = server_round
        self.results: list[tuple[Client, EvaluateRes]] = []

    def fold(self, client: Client, res: EvaluateRes) -> None:
        self.results.append((client, res))

    def finish(self, failures: list[Failure]) -> tuple[float | None, Metrics]:
        results, self.results = self.results, []
        return self.aggregate_evaluate(self.server_round, results, failures)


class Strategy(ABC):
    """The decisions of a federated run; the FL loop (``server.loop``) does the talking.

    The loop waits until ``min_available_clients`` are connected before asking for instructions
    (``configure_*``), because, unlike flwr's, ``ClientManager.sample`` does not block. It
    aggregates through ``begin_fit`` / ``begin_evaluate``; their default collects the round's
    results for ``aggregate_fit`` / ``aggregate_evaluate``.
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

    def begin_fit(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        """The aggregator of this round's fit results; ``parameters`` is the global model they answer."""
        return CollectedFit(self.aggregate_fit, server_round)

    @abstractmethod
    def aggregate_fit(
        self, server_round: int, results: list[tuple[Client, FitRes]], failures: list[Failure]
    ) -> tuple[NDArrays | None, Metrics]:
        """New global parameters from all the results at once (None keeps the old ones), plus metrics."""

    @abstractmethod
    def configure_evaluate(
        self, server_round: int, parameters: NDArrays, client_manager: ClientManager
    ) -> list[tuple[Client, EvaluateIns]]:
        """Which clients evaluate this round, and with what. [] skips it."""

    def begin_evaluate(self, server_round: int) -> EvaluateAggregator:
        """The aggregator of this round's evaluate results."""
        return CollectedEvaluate(self.aggregate_evaluate, server_round)

    @abstractmethod
    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[Client, EvaluateRes]], failures: list[Failure]
    ) -> tuple[float | None, Metrics]:
        """One loss (None: no loss this round) and metrics from all the clients' evaluations at once."""

    @abstractmethod
    def evaluate(self, server_round: int, parameters: NDArrays) -> tuple[float, Metrics] | None:
        """Centralized evaluation on the server; None if there is none."""

    def state(self) -> dict[str, NDArrays]:
        """Arrays a checkpoint must keep besides the global parameters (an optimizer's moments)."""
        return {}

    def restore(self, parameters: NDArrays, state: dict[str, NDArrays]) -> None:
        """Continue from a checkpoint: the global parameters and what :meth:`state` returned."""


class WeightedSum:
    """A running example-weighted sum of models, for their mean (flwr's FedAvg rule).

    Sums in float64 (complex128 for complex tensors) whatever the tensors' dtype; :meth:`mean`
    casts each mean to the dtype of the model (integer tensors rounded to the nearest integer
    first). Every model added must match ``like`` (or the first one added) in tensor count,
    shapes and dtypes: :func:`~fedproto.server_role.check_update` refuses it otherwise,
    before anything is added. The sums are allocated by the first :meth:`add`, not before:
    while a round's instructions are still being sent, they would only add to its peak.
    """

    def __init__(self, like: NDArrays | None = None) -> None:
        self.total = 0  # sum of the weights
        self.count = 0  # models added
        # Zero-size stand-ins carry the shapes and dtypes (byte order included) check_update compares.
        self._like = [np.broadcast_to(np.zeros((), array.dtype), array.shape) for array in like] if like else None
        self._sums: list[np.ndarray] = []
        self._scratch: dict[np.dtype, np.ndarray] = {}

    def add(self, arrays: NDArrays, weight: int) -> None:
        """Add ``weight`` times ``arrays``; raises ReplyError, having added nothing, if they do not match."""
        if self._like is None:
            self._like = [np.broadcast_to(np.zeros((), array.dtype), array.shape) for array in arrays]
        check_update(arrays, self._like)
        if not self._sums:
            self._sums = [np.zeros(like.shape, np.result_type(like.dtype, np.float64)) for like in self._like]
            for summed in self._sums:
                if summed.dtype not in self._scratch:
                    self._scratch[summed.dtype] = np.empty(FOLD_CHUNK, summed.dtype)
        if weight:
            for array, total in zip(arrays, self._sums, strict=True):
                self._add_scaled(array.reshape(-1), weight, total.reshape(-1))
        self.total += weight
        self.count += 1

    def _add_scaled(self, values: np.ndarray, weight: int, total: np.ndarray) -> None:
        """``total += values * weight`` in ``total``'s dtype, a slice at a time through the scratch buffer."""
        dtype = total.dtype
        scratch = self._scratch[dtype]
        if values.size <= FOLD_CHUNK:  # one slice: no loop, no slicing of the sum (10,000 times a round at scale)
            product = scratch[:values.size]
            np.multiply(values, weight, out=product, dtype=dtype)
            np.add(total, product, out=total)
            return
        # Slices that run past the end stop there: no min() per chunk.
        for start in range(0, values.size, FOLD_CHUNK):
            chunk = values[start:start + FOLD_CHUNK]
            product = scratch[:chunk.size]
            np.multiply(chunk, weight, out=product, dtype=dtype)
            part = total[start:start + FOLD_CHUNK]
            np.add(part, product, out=part)

    def mean(self) -> NDArrays:
        """The weighted mean in the model's dtypes. Consumes the sums: call once, with ``total > 0``."""
        like, sums, self._sums = self._like or [], self._sums, []
        averaged = []
        for reference in like:
            summed = sums.pop(0)  # dropped before the next tensor's cast: one float64 sum at a time
            summed /= self.total
            if np.issubdtype(reference.dtype, np.integer):
                np.rint(summed, out=summed)
            averaged.append(summed.astype(reference.dtype, copy=False))
        return averaged


def weighted_average(results: list[tuple[NDArrays, int]]) -> NDArrays:
    """Example-weighted mean of each tensor (flwr's FedAvg rule), through :class:`WeightedSum`.

    Sums in float64 whatever the tensors' dtype, then casts each mean back to the dtype of the
    first result's tensor (integer tensors are rounded to the nearest integer first).
    """
    running = WeightedSum()
    for arrays, num_examples in results:
        running.add(arrays, num_examples)
    return running.mean()


class FedAvgFit(FitAggregator):
    """FedAvg's fit aggregator: a running weighted sum, and the metrics if they are aggregated."""

    def __init__(self, strategy: FedAvg, server_round: int, parameters: NDArrays | None) -> None:
        self.strategy = strategy
        self.server_round = server_round
        self.running = WeightedSum(parameters)
        self.metrics: list[tuple[int, Metrics]] = []  # small: kept per client, only if aggregated

    def fold(self, client: Client, res: FitRes) -> None:
        self.running.add(res.parameters, res.num_examples)
        if self.strategy.fit_metrics_aggregation_fn is not None:
            self.metrics.append((res.num_examples, res.metrics))

    def finish(self, failures: list[Failure]) -> tuple[NDArrays | None, Metrics]:
        strategy, server_round = self.strategy, self.server_round
        if not self.running.count:
            return None, {}
        if failures and not strategy.accept_failures:
            log.warning("round %d: %d fit failures and accept_failures=False: no aggregation",
                        server_round, len(failures))
            return None, {}
        if self.running.total == 0:
            log.warning("round %d: every client reported num_examples=0: no aggregation", server_round)
            return None, {}
        parameters = strategy.update_model(server_round, self.running.mean())
        metrics: Metrics = {}
        if strategy.fit_metrics_aggregation_fn is not None:
            metrics = strategy.fit_metrics_aggregation_fn(self.metrics)
        return parameters, metrics


class FedAvgEvaluate(EvaluateAggregator):
    """FedAvg's evaluate aggregator: a running example-weighted loss sum (flwr's weighted_loss_avg)."""

    def __init__(self, strategy: FedAvg, server_round: int) -> None:
        self.strategy = strategy
        self.server_round = server_round
        self.count = 0
        self.total = 0
        self.weighted_loss = 0.0
        self.metrics: list[tuple[int, Metrics]] = []

    def fold(self, client: Client, res: EvaluateRes) -> None:
        self.count += 1
        self.total += res.num_examples
        self.weighted_loss += res.num_examples * res.loss
        if self.strategy.evaluate_metrics_aggregation_fn is not None:
            self.metrics.append((res.num_examples, res.metrics))

    def finish(self, failures: list[Failure]) -> tuple[float | None, Metrics]:
        strategy, server_round = self.strategy, self.server_round
        if not self.count:
            return None, {}
        if failures and not strategy.accept_failures:
            log.warning("round %d: %d evaluate failures and accept_failures=False: no aggregation",
                        server_round, len(failures))
            return None, {}
        if self.total == 0:
            log.warning("round %d: every client reported num_examples=0: no loss", server_round)
            return None, {}
        metrics: Metrics = {}
        if strategy.evaluate_metrics_aggregation_fn is not None:
            metrics = strategy.evaluate_metrics_aggregation_fn(self.metrics)
        return self.weighted_loss / self.total, metrics


def _overrides(strategy: Any, method: str) -> bool:
    """True if ``strategy``'s class replaced FedAvg's ``method`` (a subclass written flwr's way)."""
    return getattr(type(strategy), method) is not getattr(FedAvg, method)


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

    def begin_fit(self, server_round: int, parameters: NDArrays) -> FitAggregator:
        if _overrides(self, "aggregate_fit"):  # a subclass that wants the round's list gets it
            return super().begin_fit(server_round, parameters)
        return FedAvgFit(self, server_round, parameters)

    def aggregate_fit(
        self, server_round: int, results: list[tuple[Client, FitRes]], failures: list[Failure]
    ) -> tuple[NDArrays | None, Metrics]:
        """flwr's all-at-once form: the results folded one by one, as the loop does as they arrive."""
        aggregator = FedAvgFit(self, server_round, None)
        for client, res in results:
            aggregator.fold(client, res)
        return aggregator.finish(failures)

    def update_model(self, server_round: int, average: NDArrays) -> NDArrays:
        """The new global parameters from the round's FedAvg average: the average itself."""
        return average

    def begin_evaluate(self, server_round: int) -> EvaluateAggregator:
        if _overrides(self, "aggregate_evaluate"):
            return super().begin_evaluate(server_round)
        return FedAvgEvaluate(self, server_round)

    def aggregate_evaluate(
        self, server_round: int, results: list[tuple[Client, EvaluateRes]], failures: list[Failure]
    ) -> tuple[float | None, Metrics]:
        """flwr's all-at-once form of :meth:`begin_evaluate`."""
        aggregator = FedAvgEvaluate(self, server_round)
        for client, res in results:
            aggregator.fold(client, res)
        return aggregator.finish(failures)


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

    def update_model(self, server_round: int, average: NDArrays) -> NDArrays:
        """One Adam step from the current parameters, with ``average - current`` as the gradient."""
        delta = [a.astype(np.float64) - c.astype(np.float64) for a, c in zip(average, self.current, strict=True)]
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
        return self.current

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
