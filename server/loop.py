"""The federated-learning loop: rounds of fit and evaluate over the connected clients.

One round, as flwr's ``Server.fit`` does it:

1. ``strategy.configure_fit`` picks clients and their FitIns; they are sent concurrently.
2. Every reply is decoded and checked (``fedproto.server_role``, once, from the bytes received)
   as soon as it arrives, before the strategy sees it. A reply counts as a result only if it is
   a FitRes with status OK, its tensors decode, are finite and shaped like the global model.
   Anything else is a :class:`~fedproto.server_role.Failure` saying why, and reaches no strategy.
3. Each result is folded into the round's aggregator (``strategy.begin_fit``) as it arrives and
   then dropped, so the server holds the running aggregate, not the N results; once every
   client has answered (or failed), ``finish`` gives the new global parameters. Decoding and
   folding run on the event loop, one reply at a time, in the order the replies arrive.
4. ``strategy.evaluate`` (centralized, on the server), then configure/send/aggregate evaluate
   the same way (``strategy.begin_evaluate``).
5. The round goes into the History; with a checkpoint directory, parameters + History are saved.
   The memory the round freed is given back to the system (``server.memory``: glibc keeps it).

Before the first round the parameters come from ``strategy.initialize_parameters`` or, if it
has none, from a GetParametersIns to one connected client (another is asked if that one fails,
or answers with no tensors or a non-numeric one; if all fail, :class:`NoInitialParameters`).
Each round ends with one log line; it is a WARNING ending "| 3 of 4 clients live" when clients
asked during the round have left by its end. The line says where each loss comes from
("distributed, N clients" or "centralized") and "model unchanged" when no FitRes went into the
model; the History lists those clients per round. A run in which no round aggregated a single
fit result ends with a WARNING summary (``ServerResult.learned`` is False; fedproto-server exits 5).

Tensor formats: each client is sent its FitIns/EvaluateIns in the ``tensor_type`` it writes
(:class:`ClientFormats`, learned from its last decoded FitRes or GetParametersRes), so .npy and
cpp_double clients (Flower's C++ SDK) train together. A client not heard from yet gets the
format of the initial model if a client gave it, else .npy (``LoopConfig.tensor_type`` fixes
it instead: fedproto-server --tensor-type). A cpp_double initial model is flat
1-D float64 (the format carries no shape), and every update is checked against it.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

from fedproto.codec import TENSOR_TYPE
from fedproto.server import checkpoint, memory
from fedproto.server.client_manager import ClientManager
from fedproto.server.history import History, RoundRecord
from fedproto.server.strategy import Strategy
from fedproto.server.transport import ClientProxy, write_order
from fedproto.server_role import (
    EvaluateIns,
    Failure,
    FitIns,
    NDArrays,
    ReplyError,
    decode_evaluate_res,
    decode_fit_reply,
    decode_get_parameters_res,
    encode_evaluate_ins,
    encode_fit_ins,
    encode_get_parameters_ins,
    encode_reconnect_ins,
    parse_reply,
    reply_tensor_type,
)
from fedproto.transport_pb2 import ClientMessage

log = logging.getLogger("fedproto.server")

# How long the closing ReconnectIns waits for each client's DisconnectRes.
DISCONNECT_TIMEOUT_SECONDS = 10.0


class ClientsUnavailable(TimeoutError):
    """Fewer clients than the strategy needs connected within ``wait_timeout``."""


class NoInitialParameters(ClientsUnavailable):
    """No connected client answered GetParametersIns with a usable model (and the strategy has none).

    The run cannot start: every update is checked against the global model, and an empty one
    would let any update (the first to arrive, or clients of different shapes) define it.
    """


@dataclass
class ServerResult:
    history: History
    parameters: NDArrays  # the final global parameters

    @property
    def learned(self) -> bool:
        """False if rounds ran and not one of them aggregated a fit result (the model never changed).

        A round counts by ``fit_clients``, the results that went into the model: results that
        decoded but were not aggregated (all with num_examples=0, or a failure with
        accept_failures=False) changed nothing.
        """
        return not self.history.rounds or any(record.fit_clients for record in self.history.rounds)


class ClientFormats:
    """The ``tensor_type`` each connected client writes, learned from its replies.

    ``default`` is for a client not heard from yet: ``tensor_type`` if given, else the initial
    model's format when a client gave it (its peers likely speak the same), else .npy, flwr's
    only format.
    """

    def __init__(self, tensor_type: str | None = None) -> None:
        self.fixed = tensor_type is not None
        self.default = tensor_type or TENSOR_TYPE
        self._by_client: dict[str, str] = {}

    def of(self, cid: str) -> str:
        return self._by_client.get(cid, self.default)

    def learn(self, cid: str, tensor_type: str | None) -> None:
        """Call with the tensor_type of a reply that decoded (one this server speaks), or None."""
        if tensor_type is not None:
            self._by_client[cid] = tensor_type

    def keep_only(self, connected: dict[str, Any]) -> None:
        """Forget clients that left (a client that rejoins gets a new id)."""
        for cid in [cid for cid in self._by_client if cid not in connected]:
            del self._by_client[cid]


@dataclass
class LoopConfig:
    rounds: int
    round_timeout: float | None = None
    wait_timeout: float | None = None
    history_path: Path | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False
    tensor_type: str | None = None  # for clients not heard from yet; None: the initial model's format


async def run_rounds(strategy: Strategy, clients: ClientManager, config: LoopConfig) -> ServerResult:
    """Run rounds until ``config.rounds`` are complete (counting resumed ones); see module doc."""
    restored = checkpoint.load(config.checkpoint_dir) if config.resume and config.checkpoint_dir else None
    formats = ClientFormats(config.tensor_type)
    if restored is not None:
        parameters, history = restored.parameters, restored.history
        strategy.restore(parameters, restored.strategy_state)
        log.info("resuming after round %d from %s", history.last_round, config.checkpoint_dir)
    else:
        if config.resume:
            log.info("no checkpoint in %s yet: starting from round 1", config.checkpoint_dir)
        history = History()
        parameters = await _initial_parameters(strategy, clients, config, formats)
        await _evaluate_centralized(strategy, 0, parameters, history)

    started, first_round = time.perf_counter(), history.last_round + 1
    for server_round in range(first_round, config.rounds + 1):
        parameters = await _run_round(strategy, clients, config, server_round, parameters, history, formats)
        await _save_round(config, server_round, parameters, history, strategy)
    if config.history_path is not None:  # also when a resumed run had no round left to run
        _write_history(config.history_path, history)
    log.info("finished: %d/%d rounds complete, %d run now in %.2f s", history.last_round, config.rounds,
             max(history.last_round - first_round + 1, 0), time.perf_counter() - started)
    result = ServerResult(history, parameters)
    if not result.learned:
        log.warning("nothing learned: none of the %d round(s) aggregated a fit result (%s); "
                    "the final model is the initial one", len(history.rounds), _why_nothing_learned(history))
    return result


async def _save_round(config: LoopConfig, server_round: int, parameters: NDArrays, history: History,
                      strategy: Strategy) -> None:
    # Off the event loop: fsyncing a large model must not stall the streams.
    if config.checkpoint_dir is not None:
        await asyncio.to_thread(checkpoint.save, config.checkpoint_dir, server_round, parameters,
                                history, strategy.state())
    if config.history_path is not None:
        await asyncio.to_thread(_write_history, config.history_path, history)


async def disconnect_all(clients: ClientManager) -> None:
    """Send ReconnectIns(seconds=0) to every connected client: "we are done, do not come back"."""
    message = encode_reconnect_ins(0)
    connected = cast(list[ClientProxy], list(clients.all().values()))  # the transport registers ClientProxy
    replies = await asyncio.gather(
        *(client.request(message, DISCONNECT_TIMEOUT_SECONDS, last=True) for client in connected),
        return_exceptions=True,
    )
    acknowledged = 0
    for client, reply in zip(connected, replies, strict=True):
        if isinstance(reply, ClientMessage) and reply.HasField("disconnect_res"):
            acknowledged += 1
        else:  # flwr's client, for one, closes its stream without answering
            log.debug("client %s did not answer ReconnectIns with DisconnectRes: %r", client.cid, reply)
    log.info("sent ReconnectIns(seconds=0) to %d client(s); %d answered DisconnectRes",
             len(connected), acknowledged)


async def _run_round(
    strategy: Strategy, clients: ClientManager, config: LoopConfig,
    server_round: int, parameters: NDArrays, history: History, formats: ClientFormats,
) -> NDArrays:
    started = time.perf_counter()
    record = RoundRecord(server_round)
    asked: set[str] = set()  # ids of the clients sent an instruction this round

    await _wait_for_clients(strategy, clients, config.wait_timeout)
    fit_instructions = strategy.configure_fit(server_round, parameters, clients)
    asked.update(client.cid for client, _ in fit_instructions)
    if fit_instructions:
        model = parameters  # the model every FitRes of this round answers
        fit = strategy.begin_fit(server_round, model)
        exchange = Exchange(server_round, "fit", formats)

        def settle_fit(client: ClientProxy, data: bytes) -> str | None:
            result = decode_fit_reply(data, model)
            fit.fold(client, result)
            return result.tensor_type

        await exchange.run(fit_instructions, encode_fit_ins, config.round_timeout, settle_fit)
        record.fit_ok, record.fit_failures = len(exchange.succeeded), exchange.failures
        aggregated, metrics = await asyncio.to_thread(fit.finish, exchange.failures)
        if aggregated is not None:
            parameters = aggregated
            record.fit_clients = exchange.succeeded
        history.add_metrics_distributed_fit(server_round, metrics)
    else:
        log.info("round %d: no clients selected for fit, keeping the parameters", server_round)

    centralized = await _evaluate_centralized(strategy, server_round, parameters, history)

    await _wait_for_clients(strategy, clients, config.wait_timeout)
    distributed_loss = None
    evaluate_instructions = strategy.configure_evaluate(server_round, parameters, clients)
    asked.update(client.cid for client, _ in evaluate_instructions)
    if evaluate_instructions:
        evaluation = strategy.begin_evaluate(server_round)
        exchange = Exchange(server_round, "evaluate", formats)

        def settle_evaluate(client: ClientProxy, data: bytes) -> None:  # None: it has no tensors
            evaluation.fold(client, decode_evaluate_res(parse_reply(data)))

        await exchange.run(evaluate_instructions, encode_evaluate_ins, config.round_timeout, settle_evaluate)
        record.evaluate_ok, record.evaluate_failures = len(exchange.succeeded), exchange.failures
        distributed_loss, metrics = await asyncio.to_thread(evaluation.finish, exchange.failures)
        if distributed_loss is not None:
            history.add_loss_distributed(server_round, distributed_loss)
            history.add_metrics_distributed(server_round, metrics)
            record.evaluate_clients = exchange.succeeded

    record.seconds = time.perf_counter() - started
    history.rounds.append(record)
    # Clients asked in this round that have left since (stream closed, timed out, aborted) are
    # gone from the pool: say so, so a round that ran short of clients does not look like a full one.
    connected = clients.all()
    formats.keep_only(connected)
    live = sum(cid in connected for cid in asked)
    shortfall = f" | {live} of {len(asked)} clients live" if live < len(asked) else ""
    # A round whose model did not change (every fit failed) is a warning too: it learned nothing.
    log.log(logging.WARNING if shortfall or not record.fit_clients else logging.INFO,
            "round %d/%d: fit %d ok %d failed | evaluate %d ok %d failed | loss %s | %.2f s%s",
            server_round, config.rounds, record.fit_ok, len(record.fit_failures),
            record.evaluate_ok, len(record.evaluate_failures),
            _describe_losses(distributed_loss, len(record.evaluate_clients), centralized, bool(record.fit_clients)),
            record.seconds, shortfall)
    # The round's replies and gRPC's buffers are freed: returned, not kept for the next round's peak.
    memory.release_freed_memory()
    return parameters


def _why_nothing_learned(history: History) -> str:
    """E.g. "2 fit failures: status" or "3 fit results not aggregated (see the round warnings)"."""
    failures = [f for record in history.rounds for f in record.fit_failures]
    unaggregated = sum(record.fit_ok for record in history.rounds)
    reasons = []
    if failures:
        reasons.append(f"{len(failures)} fit failures: {', '.join(sorted({f.kind.value for f in failures}))}")
    if unaggregated:
        reasons.append(f"{unaggregated} fit results not aggregated (see the round warnings)")
    return "; ".join(reasons) or "no client was asked to fit"


def _describe_losses(distributed: float | None, evaluated_by: int, centralized: float | None,
                     model_updated: bool) -> str:
    """E.g. "0.61 distributed (4 clients), 0.58 centralized" or "9.7e-15 distributed (2 clients), model unchanged"."""
    parts = []
    if distributed is not None:
        parts.append(f"{distributed:.6g} distributed ({evaluated_by} client{'s' if evaluated_by != 1 else ''})")
    if centralized is not None:
        parts.append(f"{centralized:.6g} centralized")
    if not model_updated:
        parts.append("model unchanged")
    return ", ".join(parts) or "-"


async def _wait_for_clients(strategy: Strategy, clients: ClientManager, timeout: float | None) -> None:
    wanted = strategy.min_available_clients
    if clients.num_available() < wanted:
        log.info("waiting for %d client(s) (%d connected)", wanted, clients.num_available())
    if not await clients.wait_for(wanted, timeout):
        raise ClientsUnavailable(
            f"{clients.num_available()} of the {wanted} required clients connected within {timeout:g} s")


async def _initial_parameters(
    strategy: Strategy, clients: ClientManager, config: LoopConfig, formats: ClientFormats | None = None
) -> NDArrays:
    """The strategy's parameters, or the first usable model a client gives; ``formats`` learns its format."""
    formats = formats if formats is not None else ClientFormats()
    parameters = strategy.initialize_parameters(clients)
    if parameters is not None:
        log.info("initial parameters from the strategy")
        return parameters
    await _wait_for_clients(strategy, clients, config.wait_timeout)
    message = encode_get_parameters_ins()
    candidates = cast(list[ClientProxy], clients.sample(clients.num_available()))  # as registered by the transport
    for client in candidates:
        try:
            reply = await client.request(message, config.round_timeout)
            parameters = decode_get_parameters_res(reply)
        except ReplyError as error:
            log.warning("initial parameters from client %s failed: %s: %s", client.cid,
                        error.kind.value, error.reason)
            continue
        formats.learn(client.cid, reply_tensor_type(reply))
        if not formats.fixed:  # the clients not heard from yet likely speak the same
            formats.default = formats.of(client.cid)
        log.info("initial parameters from client %s (%s)", client.cid, formats.of(client.cid))
        return parameters
    raise NoInitialParameters(f"none of the {len(candidates)} clients asked "
                              "gave usable initial parameters, and the strategy has none")


async def _evaluate_centralized(
    strategy: Strategy, server_round: int, parameters: NDArrays, history: History
) -> float | None:
    evaluated = await asyncio.to_thread(strategy.evaluate, server_round, parameters)
    if evaluated is None:
        return None
    loss, metrics = evaluated
    history.add_loss_centralized(server_round, loss)
    history.add_metrics_centralized(server_round, metrics)
    return loss


class Exchange:
    """One step of a round: send every instruction at once, settle each reply as it arrives.

    ``settle(client, data)`` decodes and checks a reply from the bytes received, folds it into the
    step's aggregator and returns the reply's tensor_type (None if it tells none); it raises
    :class:`ReplyError` for a reply that does not count, which then touched nothing.
    Afterwards ``succeeded`` holds the ids of the clients whose reply counted and ``failures``
    the others, both in the order the instructions were given.
    """

    def __init__(self, server_round: int, step: str, formats: ClientFormats) -> None:
        self.server_round = server_round
        self.step = step
        self.formats = formats
        self.succeeded: list[str] = []
        self.failures: list[Failure] = []

    async def run(
        self, instructions: Sequence[tuple[Any, FitIns | EvaluateIns]], encode: Callable[[Any, str], bytes],
        timeout: float | None, settle: Callable[[Any, bytes], str | None],
    ) -> None:
        # Strategies usually give every client the same Ins object: encode it once per format.
        encoded: dict[tuple[int, str], bytes] = {}
        for client, ins in instructions:
            key = (id(ins), self.formats.of(client.cid))
            if key not in encoded:
                encoded[key] = encode(ins, key[1])
        outcomes: list[Failure | None] = [None] * len(instructions)
        all_settled: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        outstanding = len(instructions)

        def one_settled() -> None:
            nonlocal outstanding
            outstanding -= 1
            if outstanding == 0 and not all_settled.done():
                all_settled.set_result(None)

        def failed(index: int, client: Any, error: ReplyError) -> None:
            log.warning("round %d %s: client %s failed: %s: %s",
                        self.server_round, self.step, client.cid, error.kind.value, error.reason)
            outcomes[index] = Failure(client.cid, error.kind, error.reason)
            one_settled()

        def replied(index: int, client: Any, data: bytes) -> None:
            try:
                tensor_type = settle(client, data)  # no await between arriving and folding: nothing piles up
            except ReplyError as error:
                failed(index, client, error)
                return
            except Exception as error:  # not the client's fault (a strategy's error, a bug): the step fails with it
                if not all_settled.done():
                    all_settled.set_exception(error)
                return
            self.formats.learn(client.cid, tensor_type)
            one_settled()

        # The connected streams' objects (thousands of coroutines, futures, gRPC calls) live across
        # rounds: frozen, the collector's full passes during the exchange skip them (they were
        # ~11% of the server's CPU at 10,000 clients). Unfrozen after, so what the round left
        # unreachable is still collected.
        async def ask(index: int, client: Any, data: bytes) -> None:
            try:
                reply = await client.request_bytes(data, timeout)
            except ReplyError as error:
                failed(index, client, error)
                return
            except Exception as error:
                if not all_settled.done():
                    all_settled.set_exception(error)
                return
            replied(index, client, reply)

        asking: list[asyncio.Task[None]] = []  # held: the event loop keeps only weak references to tasks
        gc.freeze()
        try:
            for index in write_order([client for client, _ in instructions]):
                client, ins = instructions[index]
                key = id(ins), self.formats.of(client.cid)
                if isinstance(client, ClientProxy):
                    client.submit(encoded[key], partial(replied, index, client), partial(failed, index, client),
                                  timeout)
                else:  # any other client object (a test double, another transport): an async request_bytes
                    asking.append(asyncio.create_task(ask(index, client, encoded[key])))
            encoded.clear()  # each message now lives until its last stream has written it, no longer
            if instructions:
                await all_settled
        finally:
            gc.unfreeze()
            for task in asking:
                task.cancel()
        for (client, _), failure in zip(instructions, outcomes, strict=True):
            if failure is None:
                self.succeeded.append(client.cid)
            else:
                self.failures.append(failure)


def _write_history(path: Path, history: History) -> None:
    text = history.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomically(path, lambda file: file.write(text.encode()))
