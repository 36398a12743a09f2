"""The federated-learning loop: rounds of fit and evaluate over the connected clients.

One round, as flwr's ``Server.fit`` does it:

1. ``strategy.configure_fit`` picks clients and their FitIns; they are sent concurrently.
2. Every reply is decoded and checked here, before the strategy sees it. A reply counts as a
   result only if it is a FitRes with status OK, its tensors are plain .npy, finite and shaped
   like the global model. Anything else is a :class:`~server.messages.Failure` saying why.
3. ``strategy.aggregate_fit`` turns the results into the new global parameters.
4. ``strategy.evaluate`` (centralized, on the server), then configure/send/aggregate evaluate.
5. The round goes into the History; with a checkpoint directory, parameters + History are saved.

Before the first round the parameters come from ``strategy.initialize_parameters`` or, if it
has none, from a GetParametersIns to one connected client (another is asked if that one fails).
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedproto.codec import (
    CodecError,
    all_finite,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
    scalars_from_proto,
    scalars_to_proto,
)
from fedproto.transport_pb2 import ClientMessage, Code, ServerMessage
from server import checkpoint
from server.client_manager import ClientManager
from server.history import History, RoundRecord
from server.messages import EvaluateIns, EvaluateRes, Failure, FailureKind, FitIns, FitRes, NDArrays
from server.strategy import Strategy
from server.transport import ClientProxy, ReplyError

log = logging.getLogger("fedproto.server")

# How long the closing ReconnectIns waits for each client's DisconnectRes.
DISCONNECT_TIMEOUT_SECONDS = 10.0


class ClientsUnavailable(TimeoutError):
    """Fewer clients than the strategy needs connected within ``wait_timeout``."""


@dataclass
class ServerResult:
    history: History
    parameters: NDArrays  # the final global parameters


@dataclass
class LoopConfig:
    rounds: int
    round_timeout: float | None = None
    wait_timeout: float | None = None
    history_path: Path | None = None
    checkpoint_dir: Path | None = None
    resume: bool = False


async def run_rounds(strategy: Strategy, clients: ClientManager, config: LoopConfig) -> ServerResult:
    """Run rounds until ``config.rounds`` are complete (counting resumed ones); see module doc."""
    restored = checkpoint.load(config.checkpoint_dir) if config.resume and config.checkpoint_dir else None
    if restored is not None:
        parameters, history = restored.parameters, restored.history
        strategy.restore(parameters, restored.strategy_state)
        log.info("resuming after round %d from %s", history.last_round, config.checkpoint_dir)
    else:
        if config.resume:
            log.info("no checkpoint in %s yet: starting from round 1", config.checkpoint_dir)
        history = History()
        parameters = await _initial_parameters(strategy, clients, config)
        await _evaluate_centralized(strategy, 0, parameters, history)

    started, first_round = time.perf_counter(), history.last_round + 1
    for server_round in range(first_round, config.rounds + 1):
        parameters = await _run_round(strategy, clients, config, server_round, parameters, history)
        # Off the event loop: fsyncing a large model must not stall the streams.
        if config.checkpoint_dir is not None:
            await asyncio.to_thread(checkpoint.save, config.checkpoint_dir, server_round, parameters,
                                    history, strategy.state())
        if config.history_path is not None:
            await asyncio.to_thread(_write_history, config.history_path, history)
    if config.history_path is not None:  # also when a resumed run had no round left to run
        _write_history(config.history_path, history)
    log.info("finished: %d/%d rounds complete, %d run now in %.2f s", history.last_round, config.rounds,
             max(history.last_round - first_round + 1, 0), time.perf_counter() - started)
    return ServerResult(history, parameters)


async def disconnect_all(clients: ClientManager) -> None:
    """Send ReconnectIns(seconds=0) to every connected client: "we are done, do not come back"."""
    message = ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=0)).SerializeToString()
    connected = list(clients.all().values())
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
    server_round: int, parameters: NDArrays, history: History,
) -> NDArrays:
    started = time.perf_counter()
    record = RoundRecord(server_round)

    await _wait_for_clients(strategy, clients, config.wait_timeout)
    instructions = strategy.configure_fit(server_round, parameters, clients)
    if instructions:
        replies = await _send_all(instructions, "fit_ins", config.round_timeout)
        results, failures = _sort_replies(
            server_round, "fit", instructions, replies, lambda reply: _decode_fit_res(reply, parameters))
        record.fit_ok, record.fit_failures = len(results), failures
        aggregated, metrics = await asyncio.to_thread(strategy.aggregate_fit, server_round, results, failures)
        if aggregated is not None:
            parameters = aggregated
        history.add_metrics_distributed_fit(server_round, metrics)
    else:
        log.info("round %d: no clients selected for fit, keeping the parameters", server_round)

    centralized = await _evaluate_centralized(strategy, server_round, parameters, history)

    await _wait_for_clients(strategy, clients, config.wait_timeout)
    distributed_loss = None
    instructions = strategy.configure_evaluate(server_round, parameters, clients)
    if instructions:
        replies = await _send_all(instructions, "evaluate_ins", config.round_timeout)
        results, failures = _sort_replies(server_round, "evaluate", instructions, replies, _decode_evaluate_res)
        record.evaluate_ok, record.evaluate_failures = len(results), failures
        distributed_loss, metrics = await asyncio.to_thread(
            strategy.aggregate_evaluate, server_round, results, failures)
        if distributed_loss is not None:
            history.add_loss_distributed(server_round, distributed_loss)
            history.add_metrics_distributed(server_round, metrics)

    record.seconds = time.perf_counter() - started
    history.rounds.append(record)
    log.info("round %d/%d: fit %d ok %d failed | evaluate %d ok %d failed | loss %s | %.2f s",
             server_round, config.rounds, record.fit_ok, len(record.fit_failures),
             record.evaluate_ok, len(record.evaluate_failures),
             _describe_losses(distributed_loss, centralized), record.seconds)
    return parameters


def _describe_losses(distributed: float | None, centralized: float | None) -> str:
    parts = []
    if distributed is not None:
        parts.append(f"{distributed:.6g} distributed")
    if centralized is not None:
        parts.append(f"{centralized:.6g} centralized")
    return ", ".join(parts) or "-"


async def _wait_for_clients(strategy: Strategy, clients: ClientManager, timeout: float | None) -> None:
    wanted = strategy.min_available_clients
    if clients.num_available() < wanted:
        log.info("waiting for %d client(s) (%d connected)", wanted, clients.num_available())
    if not await clients.wait_for(wanted, timeout):
        raise ClientsUnavailable(
            f"{clients.num_available()} of the {wanted} required clients connected within {timeout:g} s")


async def _initial_parameters(strategy: Strategy, clients: ClientManager, config: LoopConfig) -> NDArrays:
    parameters = strategy.initialize_parameters(clients)
    if parameters is not None:
        log.info("initial parameters from the strategy")
        return parameters
    await _wait_for_clients(strategy, clients, config.wait_timeout)
    message = ServerMessage(get_parameters_ins=ServerMessage.GetParametersIns()).SerializeToString()
    for client in clients.sample(clients.num_available()):
        try:
            reply = await client.request(message, config.round_timeout)
            parameters = _decode_get_parameters_res(reply)
        except ReplyError as error:
            log.warning("initial parameters from client %s failed: %s: %s", client.cid,
                        error.kind.value, error.reason)
            continue
        log.info("initial parameters from client %s", client.cid)
        return parameters
    log.warning("no client gave initial parameters: starting from empty parameters")
    return []


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


async def _send_all(
    instructions: list[tuple[Any, FitIns | EvaluateIns]], field: str, timeout: float | None
) -> list[ClientMessage | ReplyError]:
    """Send every instruction at once; each client's reply or the ReplyError that replaced it."""
    encoded: dict[int, bytes] = {}  # strategies usually give every client the same Ins object
    for _, ins in instructions:
        if id(ins) not in encoded:
            encoded[id(ins)] = _encode_ins(field, ins)

    async def ask(client: ClientProxy, ins: FitIns | EvaluateIns) -> ClientMessage | ReplyError:
        try:
            return await client.request(encoded[id(ins)], timeout)
        except ReplyError as error:
            return error

    return await asyncio.gather(*(ask(client, ins) for client, ins in instructions))


def _encode_ins(field: str, ins: FitIns | EvaluateIns) -> bytes:
    message_type = ServerMessage.FitIns if field == "fit_ins" else ServerMessage.EvaluateIns
    body = message_type(parameters=ndarrays_to_parameters(ins.parameters, f"{field}.parameters"),
                        config=scalars_to_proto(ins.config, f"{field}.config"))
    return ServerMessage(**{field: body}).SerializeToString()


def _sort_replies(server_round: int, step: str, instructions: list, replies: list, decode) -> tuple:
    """Split replies into (client, Res) results and Failures, logging each failure."""
    results, failures = [], []
    for (client, _), reply in zip(instructions, replies, strict=True):
        error = reply if isinstance(reply, ReplyError) else None
        if error is None:
            try:
                results.append((client, decode(reply)))
                continue
            except ReplyError as decode_error:
                error = decode_error
        log.warning("round %d %s: client %s failed: %s: %s",
                    server_round, step, client.cid, error.kind.value, error.reason)
        failures.append(Failure(client.cid, error.kind, error.reason))
    return results, failures


def _expect(reply: ClientMessage, field: str) -> Any:
    """The reply's ``field`` body, if it is that kind of reply and its status is OK."""
    kind = reply.WhichOneof("msg")
    if kind != field:
        raise ReplyError(FailureKind.WRONG_REPLY,
                         f"expected {field}, got {kind or 'a ClientMessage with nothing set'}")
    body = getattr(reply, field)
    if body.status.code != Code.OK:
        code = body.status.code
        name = Code.Name(code) if code in Code.values() else f"unknown code {code}"
        raise ReplyError(FailureKind.STATUS, f"{name}: {body.status.message}")
    return body


def _decode_parameters(parameters: Any, field: str) -> NDArrays:
    try:
        arrays = parameters_to_ndarrays(parameters, field)
    except CodecError as error:
        raise ReplyError(FailureKind.BAD_TENSOR, str(error)) from None
    for index, array in enumerate(arrays):
        if not all_finite([array]):
            raise ReplyError(FailureKind.NON_FINITE, f"{field}.tensors[{index}] holds NaN or Inf")
    return arrays


def _decode_metrics(metrics: Any, field: str) -> dict:
    try:
        return scalars_from_proto(metrics, field)
    except CodecError as error:
        raise ReplyError(FailureKind.MALFORMED, str(error)) from None


def _check_num_examples(num_examples: int, field: str) -> int:
    if num_examples < 0:
        raise ReplyError(FailureKind.MALFORMED, f"{field}.num_examples is negative ({num_examples})")
    return num_examples


def _decode_get_parameters_res(reply: ClientMessage) -> NDArrays:
    body = _expect(reply, "get_parameters_res")
    return _decode_parameters(body.parameters, "GetParametersRes.parameters")


def _decode_fit_res(reply: ClientMessage, global_parameters: NDArrays) -> FitRes:
    body = _expect(reply, "fit_res")
    parameters = _decode_parameters(body.parameters, "FitRes.parameters")
    if global_parameters:
        _check_shapes(parameters, global_parameters)
    return FitRes(parameters, _check_num_examples(body.num_examples, "FitRes"),
                  _decode_metrics(body.metrics, "FitRes.metrics"))


def _check_shapes(parameters: NDArrays, global_parameters: NDArrays) -> None:
    """A FitRes must be shaped like the global model, or averaging it would fail for everyone."""
    if len(parameters) != len(global_parameters):
        raise ReplyError(FailureKind.SHAPE_MISMATCH,
                         f"FitRes.parameters has {len(parameters)} tensors, the model has {len(global_parameters)}")
    for index, (array, reference) in enumerate(zip(parameters, global_parameters, strict=True)):
        if array.shape != reference.shape:
            raise ReplyError(FailureKind.SHAPE_MISMATCH,
                             f"FitRes.parameters.tensors[{index}] has shape {array.shape}, "
                             f"the model's is {reference.shape}")


def _decode_evaluate_res(reply: ClientMessage) -> EvaluateRes:
    body = _expect(reply, "evaluate_res")
    if not np.isfinite(body.loss):
        raise ReplyError(FailureKind.NON_FINITE, f"EvaluateRes.loss is {body.loss}")
    return EvaluateRes(float(body.loss), _check_num_examples(body.num_examples, "EvaluateRes"),
                       _decode_metrics(body.metrics, "EvaluateRes.metrics"))


def _write_history(path: Path, history: History) -> None:
    text = history.to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    checkpoint.write_atomically(path, lambda file: file.write(text.encode()))
