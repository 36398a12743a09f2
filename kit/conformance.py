"""fedproto-conformance: drive one Flower client through every message and edge case.

It is a gRPC server for ``FlowerService.Join`` that waits for one client, runs a fixed script
on it and prints a table with a verdict for every step (PASS, FAIL or SKIP); exit code 0 only if
no step failed.

The script (one row of the table per step; ``--skip``/``--only`` take the number or the name)
-------------------------------------------------------------------------------------------------
Required: what every client that trains must do
  1  join                  the client opens a Join stream
  2  get_parameters        GetParametersIns                      -> the client's model, used below
  3  fit                   FitIns with the model, config {"server_round": 1}
  4  evaluate              EvaluateIns with the model
  5  reconnect             ReconnectIns(seconds=1)
  6  close                 the client closes the stream and sends nothing more
  7  rejoin                the same host joins again, no sooner than 1 s after its DisconnectRes
  8  get_parameters_again  GetParametersIns again: the shapes of step 2
Edge cases, last, so that a client that fails them still gets a verdict on everything above
  9  get_properties        GetPropertiesIns, one config value of every Scalar kind
 10  fit_every_scalar      FitIns with the model, one config value of every Scalar kind
 11  fit_empty             FitIns with empty parameters (no tensors)
 12  fit_zero_size         FitIns with zero-size tensors, shapes (0,) and (2, 0, 3)
 13  evaluate_empty        EvaluateIns with empty parameters
Goodbye
 14  goodbye               ReconnectIns(seconds=0)
 15  close_goodbye         the client closes the stream and sends nothing more
 16  stays_away            the client does not come back (watched for 2 s)

A client that ends its stream instead of replying (it closed it, cancelled it or crashed: all
read "client ended the stream instead of replying"), or that does not reply within
``--timeout`` (the runner then ends the stream), fails that step; the runner then waits up to
``--timeout`` for the client to join again and goes on with the next step on the new stream.
So one step a client cannot handle hides nothing, as long as the client comes back (Flower's
C++ SDK aborts on GetPropertiesIns; under a supervisor that restarts it, every other step still
gets its verdict). A client that does not come back leaves the remaining steps FAIL "not run",
which is why the edge cases come after the required steps. ``--skip STEP`` leaves a step out,
with the steps that need it (fit and evaluate need get_parameters; close and rejoin need
reconnect; close_goodbye and stays_away need goodbye: each ReconnectIns goes with the steps
after it, all or none); ``--only STEP`` runs just that step plus join and what it needs.
Skipped steps read SKIP and do not fail the run.

The contract: what a conforming client must do
----------------------------------------------
Only what any correct client satisfies, whatever it trains:
- Every instruction gets exactly one reply, of the matching kind (FitIns -> FitRes...), in
  order, within ``--timeout`` seconds, as a valid ClientMessage.
- Status is OK, or the method's own ``*_NOT_IMPLEMENTED`` code where allowed below (that code is
  also how a client reports a handler error). Any other code fails.
- Tensors decode in the format ``tensor_type`` names (``fedproto.tensor_formats``: .npy, or the
  C++ SDK's flat float64 "cpp_double", shaped like the model sent); Scalars have a kind set.
  The runner writes its instructions in the format of the client's GetParametersRes (.npy until
  then). Each reply is decoded by the reference server's own rules, ``fedproto.server_role``.
- The model steps (2, 3, 4, 8, 10) must succeed (status OK): a client that cannot answer for its
  own model cannot train. FitRes holds as many tensors as were sent, with the same shapes and
  dtypes, and ``num_examples >= 1`` (FedAvg weighs results by it; zero would divide by zero).
  EvaluateRes has a finite loss and ``num_examples >= 1``. Step 8 returns the shapes of step 2.
- Step 9 and the empty/zero-size steps (11, 12, 13) may be declined with ``*_NOT_IMPLEMENTED``;
  if answered with OK, FitRes tensors must decode, and in step 12 have the shapes sent.
- ReconnectIns(seconds > 0) is answered with DisconnectRes(reason=RECONNECT), the stream is
  closed, and the client joins again after that many seconds. ReconnectIns(seconds = 0) is
  answered with DisconnectRes(reason=ACK) and the client stays away.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import grpc
import numpy as np

from fedproto.codec import TENSOR_TYPE, ScalarValue
from fedproto.kit.make_vectors import EVERY_SCALAR
from fedproto.server.endpoint import join_handler
from fedproto.server_role import (
    EvaluateIns,
    FailureKind,
    FitIns,
    ReplyError,
    check_update,
    decode_scalars,
    decode_tensors,
    encode_evaluate_ins,
    encode_fit_ins,
    encode_get_parameters_ins,
    encode_get_properties_ins,
    encode_reconnect_ins,
    enum_name,
    parse_reply,
    reply_of_kind,
    reply_tensor_type,
)
from fedproto.transport_pb2 import ClientMessage, Code, Reason
from fedproto.wire import message_size_options

log = logging.getLogger("fedproto.conformance")

RECONNECT_SECONDS = 1
NO_REJOIN_WINDOW = 2.0  # seconds we watch for an unwanted rejoin after ReconnectIns(seconds=0)
REJOIN_TOLERANCE = 0.05  # seconds: timer granularity between the client's sleep and our clock

ROUND_CONFIG: dict[str, ScalarValue] = {"server_round": 1}  # what a FedAvg server sends with every FitIns
SCALAR_CONFIG = cast(dict[str, ScalarValue], EVERY_SCALAR)  # one value of every Scalar kind
ZERO_SIZE_TENSORS = [np.zeros((0,), np.float32), np.zeros((2, 0, 3), np.float32)]

ENDED = "client ended the stream instead of replying"  # one wording, however it ended


@dataclass(frozen=True)
class Step:
    name: str  # for --skip / --only
    title: str  # the table's text
    needs: tuple[str, ...] = ()  # steps it cannot run without


STEPS = [
    Step("join", "client opens a Join stream"),
    Step("get_parameters", "GetParametersIns"),
    Step("fit", "FitIns with the client's model", ("get_parameters",)),
    Step("evaluate", "EvaluateIns with the client's model", ("get_parameters",)),
    Step("reconnect", f"ReconnectIns(seconds={RECONNECT_SECONDS})"),
    Step("close", "client closes the stream after DisconnectRes(RECONNECT)"),
    Step("rejoin", "client rejoins on a new stream after the pause"),
    Step("get_parameters_again", "GetParametersIns after the rejoin"),
    Step("get_properties", "GetPropertiesIns, every Scalar kind in config"),
    Step("fit_every_scalar", "FitIns with the model, every Scalar kind", ("get_parameters",)),
    Step("fit_empty", "FitIns with empty parameters"),
    Step("fit_zero_size", "FitIns with zero-size tensors"),
    Step("evaluate_empty", "EvaluateIns with empty parameters"),
    Step("goodbye", "ReconnectIns(seconds=0)"),
    Step("close_goodbye", "client closes the stream after DisconnectRes(ACK)"),
    Step("stays_away", "client stays away after seconds=0"),
]
STEP_NAMES = [step.name for step in STEPS]
# Steps that run together or not at all: a ReconnectIns, the close it asks for, what follows.
GROUPS = [("reconnect", "close", "rejoin"), ("goodbye", "close_goodbye", "stays_away")]

EXIT_ALL_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CheckFailed(Exception):
    """One step's reply broke the contract; the text says how."""


@dataclass
class Row:
    step: str
    result: str  # PASS, FAIL or SKIP
    detail: str

    @property
    def passed(self) -> bool:
        return self.result != "FAIL"


def number(name: str, steps: list[Step] | None = None) -> int:
    return [step.name for step in (steps or STEPS)].index(name) + 1


def selected_steps(skip: Sequence[str] = (), only: Sequence[str] = ()) -> dict[str, str]:
    """Step name -> why it is skipped, for every step left out by ``skip`` / ``only`` (names)."""
    if "join" in skip:
        raise ValueError("step 1 (join) cannot be skipped: every other step needs a client")
    return select(STEPS, GROUPS, "join", skip, only)


def select(steps: list[Step], groups: Sequence[tuple[str, ...]], first: str, skip: Iterable[str] = (),
           only: Iterable[str] = ()) -> dict[str, str]:
    """Step name -> why it is skipped: ``skip``/``only`` (names) with the steps' needs and groups.

    Shared by the Join and the Fleet runner; ``first`` is the step every other one needs.
    """
    names = [step.name for step in steps]
    asked, skip, only = set(skip), _with_groups(skip, groups), _with_groups(only, groups)
    skipped: dict[str, str] = {}
    if only:
        wanted = {first, *only}
        for step in reversed(steps):  # a step's needs come before it
            if step.name in wanted:
                wanted.update(step.needs)
        wanted = _with_groups(wanted, groups)
        skipped = {step.name: "skipped (--only)" for step in steps if step.name not in wanted}
    for step in steps:
        if step.name in asked:
            skipped[step.name] = "skipped (--skip)"
        elif step.name in skip:
            partner = next(name for name in names if name in asked and _with_groups([name], groups) >= {step.name})
            skipped[step.name] = f"skipped: runs only with step {number(partner, steps)} ({partner})"
        else:
            missing = [need for need in step.needs if need in skipped]
            if missing and step.name not in skipped:
                skipped[step.name] = f"skipped: needs step {number(missing[0], steps)} ({missing[0]})"
    return skipped


def _with_groups(names: Iterable[str], groups: Sequence[tuple[str, ...]]) -> set[str]:
    """``names`` plus the rest of every group one of them belongs to."""
    names = set(names)
    for group in groups:
        if names & set(group):
            names.update(group)
    return names


# ---------------------------------------------------------------------------- one Join stream


class Stream:
    """One Join stream. The session sends and reads through it; the RPC's handler does the I/O.

    ``replies`` yields each ClientMessage's bytes, then ENDED once the stream is over (the
    client closed or cancelled it, or it broke). ``close()`` ends it from the server's side.
    """

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.opened_at = time.monotonic()
        self.replies: asyncio.Queue[bytes | str] = asyncio.Queue()
        self.outbox: asyncio.Queue[bytes | None] = asyncio.Queue()

    def send(self, data: bytes) -> None:
        self.outbox.put_nowait(data)

    def close(self) -> None:
        self.outbox.put_nowait(None)

    async def serve(self, context: grpc.aio.ServicerContext) -> None:
        """The handler: write what the session sends until it closes the stream."""
        reader = asyncio.ensure_future(self._read(context))
        try:
            while (data := await self.outbox.get()) is not None:
                await context.write(data)
        except Exception:  # the call broke under the write: the client is gone, as the reader sees
            log.debug("writing to the stream failed", exc_info=True)
        finally:  # also on CancelledError: how grpc.aio reports a client that cancelled its call
            reader.cancel()
            self.replies.put_nowait(ENDED)

    async def _read(self, context: grpc.aio.ServicerContext) -> None:
        try:
            while (data := await context.read()) is not grpc.aio.EOF:
                self.replies.put_nowait(data)
        except Exception:  # a broken call reads like a closed one: the client is gone
            log.debug("reading the stream failed", exc_info=True)
        self.replies.put_nowait(ENDED)


# ---------------------------------------------------------------------------- the scripted session


@dataclass
class Conformance:
    """The scripted session: one instance per run, fed every Join stream the server accepts."""

    timeout: float
    skipped: dict[str, str] = field(default_factory=dict)  # step name -> why
    rows: dict[str, Row] = field(default_factory=dict)
    arrivals: asyncio.Queue[Stream] = field(default_factory=asyncio.Queue)
    stream: Stream | None = None  # the stream the script runs on
    first_host: str = ""
    model: list[np.ndarray] | None = None
    tensor_type: str = TENSOR_TYPE  # the client's format, from its GetParametersRes
    left_at: float | None = None  # when the client answered ReconnectIns(seconds=1), or left instead
    stream_ended: bool = False  # the client ended the stream while a ReconnectIns waited for its reply
    gone: str = ""  # set when the client left and did not come back: why the rest is not run

    # ------------------------------------------------------------------ bookkeeping

    @property
    def live(self) -> Stream:
        """The stream the current step runs on (a step that talks runs only while there is one)."""
        assert self.stream is not None, "a step runs on a stream"
        return self.stream

    @property
    def held_model(self) -> list[np.ndarray]:
        """The client's model (the model steps run only once GetParametersIns gave one)."""
        assert self.model is not None, "model steps run only with a model"
        return self.model

    def record(self, step: str, passed: bool, detail: str) -> None:
        result = "PASS" if passed else "FAIL"
        self.rows[step] = Row(step, result, detail)
        log.info("[%2d/%d] %s  %s: %s", number(step), len(STEPS), result, step, detail)

    def table(self) -> list[Row]:
        return [self.rows.get(step.name, Row(step.name, "FAIL", "not run")) for step in STEPS]

    async def join(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        stream = Stream(context.peer())
        self.arrivals.put_nowait(stream)
        await stream.serve(context)

    # ------------------------------------------------------------------ the script

    async def run_script(self) -> None:
        for step in STEPS:
            if step.name in self.skipped:
                self.rows[step.name] = Row(step.name, "SKIP", self.skipped[step.name])
                log.info("[%2d/%d] SKIP  %s: %s", number(step.name), len(STEPS), step.name, self.skipped[step.name])
            elif self.gone:
                self.record(step.name, False, f"not run: {self.gone}")
            else:
                await getattr(self, f"_{step.name}")(step.name)
        if self.stream is not None:
            self.stream.close()

    async def _join(self, step: str) -> None:
        self.stream = await self._next_stream(self.timeout)
        if self.stream is None:
            self.record(step, False, f"no client joined within {self.timeout:g} s")
            self.gone = "no client joined"
            return
        self.first_host = _host(self.stream.peer)
        self.record(step, True, f"peer {self.stream.peer}")

    async def _get_parameters(self, step: str) -> None:
        await self._exchange(step, encode_get_parameters_ins(), "get_parameters_res", self._check_model)

    async def _fit(self, step: str) -> None:
        await self._model_step(step, lambda: self._exchange(
            step, encode_fit_ins(FitIns(self.held_model, ROUND_CONFIG), self.tensor_type), "fit_res",
            _check_fit(self.model, decline_allowed=False, min_examples=1)))

    async def _evaluate(self, step: str) -> None:
        await self._model_step(step, lambda: self._exchange(
            step, encode_evaluate_ins(EvaluateIns(self.held_model), self.tensor_type), "evaluate_res",
            _check_evaluate(decline_allowed=False, min_examples=1)))

    async def _reconnect(self, step: str) -> None:
        await self._say_goodbye(step, RECONNECT_SECONDS, Reason.RECONNECT)
        self.left_at = time.monotonic()  # the client's pause starts now

    async def _close(self, step: str) -> None:
        await self._expect_close(step)

    async def _rejoin(self, step: str) -> None:
        window = RECONNECT_SECONDS + self.timeout
        self.stream = await self._next_stream(window)
        if self.stream is None:
            self.record(step, False, f"no new stream within {window:g} s")
            self.gone = f"the client did not join again after step {number('reconnect')}"
            return
        waited = self.stream.opened_at - (self.left_at or self.stream.opened_at)
        host = _host(self.stream.peer)
        problems = []
        if host != self.first_host:
            problems.append(f"joined from {host}, stream 1 came from {self.first_host}")
        if waited < RECONNECT_SECONDS - REJOIN_TOLERANCE:
            problems.append(f"came back after {waited:.2f} s, asked to wait {RECONNECT_SECONDS} s")
        self.record(step, not problems, "; ".join(problems) or f"after {waited:.2f} s from {host}")

    async def _get_parameters_again(self, step: str) -> None:
        expected = _shapes(self.model) if self.model is not None else None
        await self._exchange(step, encode_get_parameters_ins(), "get_parameters_res",
                             self._check_same_model(expected))

    async def _get_properties(self, step: str) -> None:
        await self._exchange(step, encode_get_properties_ins(SCALAR_CONFIG), "get_properties_res",
                             self._check_properties)

    async def _fit_every_scalar(self, step: str) -> None:
        await self._model_step(step, lambda: self._exchange(
            step, encode_fit_ins(FitIns(self.held_model, SCALAR_CONFIG), self.tensor_type), "fit_res",
            _check_fit(self.model, decline_allowed=False, min_examples=1)))

    async def _fit_empty(self, step: str) -> None:
        await self._exchange(step, encode_fit_ins(FitIns([]), self.tensor_type), "fit_res",
                             _check_fit(None, decline_allowed=True, min_examples=0))

    async def _fit_zero_size(self, step: str) -> None:
        await self._exchange(step, encode_fit_ins(FitIns(ZERO_SIZE_TENSORS), self.tensor_type), "fit_res",
                             _check_fit(ZERO_SIZE_TENSORS, decline_allowed=True, min_examples=0))

    async def _evaluate_empty(self, step: str) -> None:
        await self._exchange(step, encode_evaluate_ins(EvaluateIns([]), self.tensor_type), "evaluate_res",
                             _check_evaluate(decline_allowed=True, min_examples=0))

    async def _goodbye(self, step: str) -> None:
        await self._say_goodbye(step, 0, Reason.ACK)

    async def _close_goodbye(self, step: str) -> None:
        await self._expect_close(step)

    async def _stays_away(self, step: str) -> None:
        stream = await self._next_stream(NO_REJOIN_WINDOW)
        if stream is None:
            self.record(step, True, f"no new stream within {NO_REJOIN_WINDOW:g} s")
        else:
            self.record(step, False, f"a new Join stream arrived from {stream.peer}")
            stream.close()

    # ------------------------------------------------------------------ one exchange

    async def _model_step(self, step: str, run: Callable[[], Any]) -> None:
        if self.model is None:
            self.record(step, False, "not run: no model from GetParametersIns")
        else:
            await run()

    async def _exchange(self, step: str, message: bytes, reply_kind: str, check: Callable[[Any], str]) -> None:
        """Send one instruction, read one reply, record the check; if the stream ended, await a rejoin."""
        started = time.monotonic()
        self.live.send(message)
        data = await self._read(step)
        elapsed_ms = (time.monotonic() - started) * 1000
        if data is None:
            await self._await_rejoin(step)
            return
        try:
            summary = check(reply_of_kind(parse_reply(data), reply_kind))
        except (ReplyError, CheckFailed) as failure:
            self.record(step, False, str(failure))
            return
        self.record(step, True, f"{summary} ({elapsed_ms:.0f} ms)")

    async def _read(self, step: str) -> bytes | None:
        """The next reply's bytes; None if the stream ended or stayed silent (both recorded)."""
        try:
            data = await asyncio.wait_for(self.live.replies.get(), self.timeout)
        except asyncio.TimeoutError:
            self.record(step, False, f"no reply within {self.timeout:g} s (the runner ended the stream)")
            self._drop_stream()
            return None
        if isinstance(data, str):  # ENDED
            self.record(step, False, ENDED)
            self._drop_stream()
            return None
        return data

    async def _await_rejoin(self, step: str) -> None:
        """After the stream ended at ``step``: go on with the client's next stream, if it comes."""
        left = time.monotonic()
        self.stream = await self._next_stream(self.timeout)
        row = self.rows[step]
        if self.stream is None:
            row.detail += f"; it did not join again within {self.timeout:g} s"
            self.gone = f"the client left at step {number(step)} ({step}) and did not join again"
        else:
            row.detail += f"; it joined again after {self.stream.opened_at - left:.2f} s, the script goes on"
        log.info("[%2d/%d] %s  %s: %s", number(step), len(STEPS), row.result, step, row.detail)

    async def _say_goodbye(self, step: str, seconds: int, reason: int) -> None:
        """ReconnectIns(seconds): a stream that ends instead of DisconnectRes fails only this step."""
        self.stream_ended = False
        started = time.monotonic()
        self.live.send(encode_reconnect_ins(seconds))
        try:
            data = await asyncio.wait_for(self.live.replies.get(), self.timeout)
        except asyncio.TimeoutError:
            self.record(step, False, f"no reply within {self.timeout:g} s")
            return
        if isinstance(data, str):  # ENDED
            # It left without answering; it may still behave right afterwards, so keep going.
            self.stream_ended = True
            self.record(step, False, "client ended the stream without sending disconnect_res")
            return
        try:
            summary = _check_reason(reason)(reply_of_kind(parse_reply(data), "disconnect_res"))
        except (ReplyError, CheckFailed) as failure:
            self.record(step, False, str(failure))
            return
        self.record(step, True, f"{summary} ({(time.monotonic() - started) * 1000:.0f} ms)")

    async def _expect_close(self, step: str) -> None:
        if self.stream_ended:
            self.record(step, True, "stream ended by the client (no DisconnectRes sent)")
        else:
            try:
                data = await asyncio.wait_for(self.live.replies.get(), self.timeout)
            except asyncio.TimeoutError:
                data = None
            if data == ENDED:
                self.record(step, True, "stream ended by the client")
            elif data is None:
                self.record(step, False, f"the stream was still open after {self.timeout:g} s")
            else:
                self.record(step, False, f"client sent {len(data)} more bytes after DisconnectRes")
        self._drop_stream()

    def _drop_stream(self) -> None:
        self.live.close()
        self.stream = None

    async def _next_stream(self, seconds: float) -> Stream | None:
        try:
            return await asyncio.wait_for(self.arrivals.get(), seconds)
        except asyncio.TimeoutError:
            return None

    # ------------------------------------------------------------------ checks needing state

    def _check_properties(self, res: ClientMessage.GetPropertiesRes) -> str:
        declined = _status(res.status, Code.GET_PROPERTIES_NOT_IMPLEMENTED)
        if declined:
            return declined
        properties = decode_scalars(res.properties, "GetPropertiesRes.properties")
        return f"OK, properties {_brief(properties)}"

    def _check_model(self, res: ClientMessage.GetParametersRes) -> str:
        _status(res.status, None)
        arrays = decode_tensors(res.parameters, "GetParametersRes.parameters")
        if not arrays:
            raise CheckFailed("OK but no tensors: there is no model to train")
        self.model = arrays
        self.tensor_type = reply_tensor_type(ClientMessage(get_parameters_res=res)) or TENSOR_TYPE
        return f"OK, {_describe(arrays)}{_format_note(res.parameters.tensor_type)}"

    def _check_same_model(self, expected: list[tuple[int, ...]] | None) -> Callable[[Any], str]:
        def check(res: ClientMessage.GetParametersRes) -> str:
            _status(res.status, None)
            arrays = decode_tensors(res.parameters, "GetParametersRes.parameters")
            if expected is not None and _shapes(arrays) != expected:
                raise CheckFailed(f"shapes {_shapes(arrays)}, before the rejoin {expected}")
            return f"OK, {_describe(arrays)}{_format_note(res.parameters.tensor_type)}"
        return check


# ---------------------------------------------------------------------------- checks


def _status(status: Any, decline_code: int | None) -> str:
    """'' for OK; a summary if the client declined with ``decline_code``; CheckFailed otherwise."""
    if status.code == Code.OK:
        return ""
    name = enum_name(Code, status.code)
    if decline_code is not None and status.code == decline_code:
        return f"declined: {name} ({_clip(status.message)!r})"
    expected = "OK" if decline_code is None else f"OK or {Code.Name(decline_code)}"
    raise CheckFailed(f"status {name} ({_clip(status.message)!r}), expected {expected}")


def _examples(count: int, minimum: int) -> None:
    if count < minimum:
        raise CheckFailed(f"num_examples={count}, expected >= {minimum}")


def _check_fit(sent: list[np.ndarray] | None, decline_allowed: bool,
               min_examples: int) -> Callable[[Any], str]:
    def check(res: ClientMessage.FitRes) -> str:
        declined = _status(res.status, Code.FIT_NOT_IMPLEMENTED if decline_allowed else None)
        if declined:
            return declined
        # A shapeless format (cpp_double) takes the shapes of what was sent, as on the server.
        like = sent if sent and len(res.parameters.tensors) == len(sent) else None
        arrays = decode_tensors(res.parameters, "FitRes.parameters", like)
        if sent is not None:
            _check_returned(arrays, sent)
        _examples(res.num_examples, min_examples)
        metrics = decode_scalars(res.metrics, "FitRes.metrics")
        return f"OK, {_describe(arrays)}, num_examples={res.num_examples}, metrics {_brief(metrics)}"
    return check


def _check_returned(arrays: list[np.ndarray], sent: list[np.ndarray]) -> None:
    """The server's own update check (fedproto.server_role.check_update), told as the kit tells it."""
    try:
        check_update(arrays, sent)
    except ReplyError as error:
        if error.kind is FailureKind.SHAPE_MISMATCH:
            raise CheckFailed(f"returned shapes {_shapes(arrays)}, sent {_shapes(sent)}") from None
        raise


def _check_evaluate(decline_allowed: bool, min_examples: int) -> Callable[[Any], str]:
    def check(res: ClientMessage.EvaluateRes) -> str:
        declined = _status(res.status, Code.EVALUATE_NOT_IMPLEMENTED if decline_allowed else None)
        if declined:
            return declined
        if not math.isfinite(res.loss):
            raise CheckFailed(f"loss={res.loss}, expected a finite number")
        _examples(res.num_examples, min_examples)
        metrics = decode_scalars(res.metrics, "EvaluateRes.metrics")
        return f"OK, loss={res.loss:.4g}, num_examples={res.num_examples}, metrics {_brief(metrics)}"
    return check


def _check_reason(expected: int) -> Callable[[Any], str]:
    def check(res: ClientMessage.DisconnectRes) -> str:
        if res.reason != expected:
            raise CheckFailed(f"reason {enum_name(Reason, res.reason)}, expected {Reason.Name(expected)}")
        return f"DisconnectRes(reason={Reason.Name(expected)})"
    return check


# ---------------------------------------------------------------------------- formatting


def _shapes(arrays: list[np.ndarray]) -> list[tuple[int, ...]]:
    return [tuple(a.shape) for a in arrays]


def _describe(arrays: list[np.ndarray]) -> str:
    if not arrays:
        return "0 tensors"
    return f"{len(arrays)} tensors " + ", ".join(f"{a.dtype}{tuple(a.shape)}" for a in arrays)


def _format_note(tensor_type: str) -> str:
    return "" if tensor_type == TENSOR_TYPE else f" as {tensor_type}"


def _brief(values: dict[str, Any], limit: int = 60) -> str:
    text = "{" + ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())) + "}"
    return text if len(text) <= limit else text[: limit - 4] + "...}"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _host(peer: str) -> str:
    """'ipv4:127.0.0.1:51234' -> 'ipv4:127.0.0.1' (the port changes on every connection)."""
    return peer.rsplit(":", 1)[0]


def format_table(rows: list[Row], steps: list[Step] | None = None) -> str:
    """The verdict table (one row per step, in ``steps`` order) and a summary line; both runners print it."""
    steps = steps or STEPS
    width = max(len(step.title) + len(step.name) + 3 for step in steps)
    lines = [f" #  {'check':<{width}}  result  detail", f"--  {'-' * width}  ------  {'-' * 6}"]
    for index, row in enumerate(rows):
        check = f"{steps[index].title} [{row.step}]"
        lines.append(f"{index + 1:2d}  {check:<{width}}  {row.result:<6}  {row.detail}")
    failed = [f"{number(r.step, steps)} {r.step}" for r in rows if r.result == "FAIL"]
    skipped = sum(r.result == "SKIP" for r in rows)
    ran = len(rows) - skipped
    summary = (f"{len(failed)} of {ran} checks FAILED: " + "; ".join(failed)) if failed else f"all {ran} checks passed"
    lines.append(summary + (f" ({skipped} skipped)" if skipped else ""))
    return "\n".join(lines)


def write_json(path: str, rows: list[Row], steps: list[Step] | None = None) -> None:
    """The verdicts for a porter's CI: {"passed": bool, "steps": [{number, name, title, result, detail}]}."""
    steps = steps or STEPS
    verdicts = [{"number": index, "name": row.step, "title": step.title, "result": row.result, "detail": row.detail}
                for index, (step, row) in enumerate(zip(steps, rows), 1)]
    with open(path, "w", encoding="utf-8") as out:
        json.dump({"passed": all(row.passed for row in rows), "steps": verdicts}, out, indent=2)
        out.write("\n")


# ---------------------------------------------------------------------------- running


async def run(address: str, timeout: float, skipped: dict[str, str] | None = None) -> list[Row]:
    """Serve one scripted session on ``address``; returns the table rows."""
    conformance = Conformance(timeout, skipped or {})
    # Raw bytes (join_handler): an invalid reply is a named failure, not a gRPC crash.
    server = grpc.aio.server(options=message_size_options())
    server.add_generic_rpc_handlers([join_handler(conformance.join)])
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info("waiting for a client on %s (timeout %g s per step)", address, timeout)
    try:
        await conformance.run_script()
    finally:
        await server.stop(grace=1.0)
    return conformance.table()


EPILOG = f"""\
The script: the required steps first (GetParametersIns, FitIns/EvaluateIns with the client's
model, ReconnectIns(seconds={RECONNECT_SECONDS}) and the client's rejoin, GetParametersIns again), then the edge
cases (GetPropertiesIns and FitIns with every Scalar kind, FitIns with empty parameters and with
zero-size tensors, EvaluateIns with empty parameters), then ReconnectIns(seconds=0). A client that
ends its stream instead of replying fails that step; the runner waits up to --timeout for it to
join again and goes on. The contract each reply is checked against is in docs/PROTOCOL.md.

steps (for --skip / --only, by number or name):
""" + "\n".join(f"  {i:2d} {step.name:<21} {step.title}" for i, step in enumerate(STEPS, 1)) + """

examples:
  fedproto-conformance --address 127.0.0.1:9092 &
  fedproto-client --server 127.0.0.1:9092 --app fedproto.client.demo:make_client

  # any other client: flwr's, or your port
  fedproto-conformance --address 0.0.0.0:9092 --timeout 120

  # a port without GetProperties that dies on it (Flower's C++ SDK): leave the step out
  fedproto-conformance --address 0.0.0.0:9092 --skip get_properties
  # just the model round trip (join and get_parameters come with it)
  fedproto-conformance --address 0.0.0.0:9092 --only fit --only evaluate

exit codes: 0 no check failed (skipped ones aside), 1 some check failed (named in the table),
            2 usage error
"""


def step_type(names: list[str]) -> Callable[[str], str]:
    """argparse type for --skip/--only: a step by number (1, 2, ...) or by one of ``names``."""
    def step_name(text: str) -> str:
        if text.isdigit() and 1 <= int(text) <= len(names):
            return names[int(text) - 1]
        if text in names:
            return text
        raise argparse.ArgumentTypeError(f"no step {text!r}: use 1-{len(names)} or one of {', '.join(names)}")
    return step_name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-conformance",
        description="Wait for one Flower client, drive it through every message and edge case, "
                    "print a table with a verdict for every step.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", required=True, metavar="HOST:PORT",
                        help="where to listen, e.g. 127.0.0.1:9092 or [::]:9092")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="longest wait for the client to join, for each reply, and for the client "
                             "to join again after it ended its stream (default: %(default)s)")
    choice = parser.add_mutually_exclusive_group()
    choice.add_argument("--skip", type=step_type(STEP_NAMES), action="append", default=[], metavar="STEP",
                        help="leave this step out (and the steps that need it); repeatable")
    choice.add_argument("--only", type=step_type(STEP_NAMES), action="append", default=[], metavar="STEP",
                        help="run only this step, with join and the steps it needs; repeatable")
    parser.add_argument("--json", metavar="FILE", help="also write the verdicts to FILE as JSON (for CI)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--fleet", action="store_true",
                        help="grade a Fleet API node instead (the runner plays a SuperLink): "
                             "see fedproto-conformance --fleet --help")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    own_flags = argv[: argv.index("--")] if "--" in argv else argv  # what follows "--" is the node's command
    if "--fleet" in own_flags:
        from fedproto.kit import fleet_conformance  # needs the [fleet] extra (cryptography)

        return fleet_conformance.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        skipped = selected_steps(args.skip, args.only)
    except ValueError as error:
        parser.error(str(error))
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rows = asyncio.run(run(args.address, args.timeout, skipped))
    except OSError as error:
        print(f"fedproto-conformance: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    print(format_table(rows), flush=True)
    if args.json:
        write_json(args.json, rows)
    return EXIT_ALL_PASSED if all(r.passed for r in rows) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
