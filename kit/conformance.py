"""fedproto-conformance: drive one Flower client through every message and edge case.

It is a gRPC server for ``FlowerService.Join`` that waits for one client, runs a fixed script
on it and prints a pass/fail table; exit code 0 only if every check passed.

The script (one row of the table per step)
------------------------------------------
Stream 1
  1  the client opens a Join stream
  2  GetPropertiesIns, one config value of every Scalar kind
  3  GetParametersIns                      -> the client's model, used below
  4  FitIns with the model, every Scalar kind in config
  5  EvaluateIns with the model
  6  FitIns with empty parameters (no tensors)
  7  FitIns with zero-size tensors, shapes (0,) and (2, 0, 3)
  8  EvaluateIns with empty parameters
  9  ReconnectIns(seconds=1)
 10  the client closes the stream and sends nothing more
Stream 2
 11  the same host joins again, no sooner than 1 s after its DisconnectRes
 12  GetParametersIns again
 13  ReconnectIns(seconds=0)
 14  the client closes the stream and sends nothing more
 15  the client does not come back (watched for 2 s)

The contract: what a conforming client must do
----------------------------------------------
Only what any correct client satisfies, whatever it trains:
- Every instruction gets exactly one reply, of the matching kind (FitIns -> FitRes...), in
  order, within ``--timeout`` seconds, as a valid ClientMessage.
- Status is OK, or the method's own ``*_NOT_IMPLEMENTED`` code where allowed below (that code is
  also how a client reports a handler error). Any other code fails.
- Tensors are valid .npy (``tensor_type`` "numpy.ndarray"), Scalars have a kind set. (Each
  reply is decoded by the reference server's own rules, ``fedproto.server_role``.)
- The model steps (3, 4, 5, 12) must succeed (status OK): a client that cannot answer for its
  own model cannot train. FitRes holds as many tensors as were sent, with the same shapes, and
  ``num_examples >= 1`` (FedAvg weighs results by it; zero would divide by zero). EvaluateRes
  has a finite loss and ``num_examples >= 1``. Step 12 returns the shapes of step 3.
- The edge steps (2, 6, 7, 8) may be declined with ``*_NOT_IMPLEMENTED``; if answered with OK,
  FitRes tensors must be valid, and in step 7 have the shapes sent.
- ReconnectIns(seconds > 0) is answered with DisconnectRes(reason=RECONNECT), the stream is
  closed, and the client joins again after that many seconds. ReconnectIns(seconds = 0) is
  answered with DisconnectRes(reason=ACK) and the client stays away.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

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
)
from fedproto.transport_pb2 import ClientMessage, Code, Reason
from fedproto.wire import message_size_options
from kit.make_vectors import EVERY_SCALAR
from server.endpoint import join_handler

log = logging.getLogger("fedproto.conformance")

RECONNECT_SECONDS = 1
NO_REJOIN_WINDOW = 2.0  # seconds we watch for an unwanted rejoin after ReconnectIns(seconds=0)
REJOIN_TOLERANCE = 0.05  # seconds: timer granularity between the client's sleep and our clock

ZERO_SIZE_TENSORS = [np.zeros((0,), np.float32), np.zeros((2, 0, 3), np.float32)]

STEPS = [
    "client opens a Join stream",
    "GetPropertiesIns, every Scalar kind in config",
    "GetParametersIns",
    "FitIns with the client's model, every Scalar kind",
    "EvaluateIns with the client's model",
    "FitIns with empty parameters",
    "FitIns with zero-size tensors",
    "EvaluateIns with empty parameters",
    f"ReconnectIns(seconds={RECONNECT_SECONDS})",
    "client closes stream 1 after DisconnectRes",
    "client rejoins on a new stream after the pause",
    "GetParametersIns after the rejoin",
    "ReconnectIns(seconds=0)",
    "client closes stream 2 after DisconnectRes",
    "client stays away after seconds=0",
]

RECONNECT_STEPS = [STEPS[8], STEPS[12]]  # per stream: the ReconnectIns step...
CLOSE_STEPS = [STEPS[9], STEPS[13]]  # ...and the step that waits for the client to close

EXIT_ALL_PASSED = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class CheckFailed(Exception):
    """One step's reply broke the contract; the text says how."""


class StreamOver(Exception):
    """The stream can carry no more steps (closed, cancelled or silent)."""


@dataclass
class Row:
    step: str
    passed: bool
    detail: str


@dataclass
class Conformance:
    """The scripted session: one instance per run, shared by every Join stream it accepts."""

    timeout: float
    rows: dict[str, Row] = field(default_factory=dict)
    streams: int = 0
    model: list[np.ndarray] | None = None
    first_peer: str = ""
    current_step: str = ""  # the step waiting for the client, for a cancellation mid-step
    # Per stream: when the client answered ReconnectIns (or ended the stream instead).
    left_at: list[float | None] = field(default_factory=lambda: [None, None])
    stream_opened: list[asyncio.Event] = field(default_factory=lambda: [asyncio.Event() for _ in range(3)])
    stream_closed: list[asyncio.Event] = field(default_factory=lambda: [asyncio.Event() for _ in range(2)])

    # ------------------------------------------------------------------ bookkeeping

    def record(self, step: str, passed: bool, detail: str) -> None:
        self.rows[step] = Row(step, passed, detail)
        number = STEPS.index(step) + 1
        log.info("[%2d/%d] %s  %s: %s", number, len(STEPS), "PASS" if passed else "FAIL", step, detail)

    def table(self) -> list[Row]:
        return [self.rows.get(step, Row(step, False, "not run: an earlier step ended the session"))
                for step in STEPS]

    # ------------------------------------------------------------------ the Join handler

    async def join(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        index = min(self.streams, 2)
        self.streams += 1
        self.stream_opened[index].set()
        if index == 2:
            self.record(STEPS[14], False, f"a new Join stream arrived from {context.peer()}")
            return
        try:
            await (self._first_stream(context) if index == 0 else self._second_stream(context))
        except StreamOver:
            pass
        except asyncio.CancelledError:
            # A client may end its call by cancelling it (flwr's closes its channel).
            if self.current_step:
                self._ended(self.current_step, "cancelled")
            raise
        finally:
            self.stream_closed[index].set()

    async def _first_stream(self, context: grpc.aio.ServicerContext) -> None:
        self.first_peer = context.peer()
        self.record(STEPS[0], True, f"peer {self.first_peer}")
        await self._step(context, STEPS[1], encode_get_properties_ins(EVERY_SCALAR),
                         "get_properties_res", self._check_properties)
        await self._step(context, STEPS[2], encode_get_parameters_ins(), "get_parameters_res", self._check_model)
        if self.model is None:
            for step in STEPS[3:5]:
                self.record(step, False, "not run: no model from GetParametersIns")
        else:
            await self._step(context, STEPS[3], encode_fit_ins(FitIns(self.model, EVERY_SCALAR)), "fit_res",
                             _check_fit(self.model, decline_allowed=False, min_examples=1))
            await self._step(context, STEPS[4], encode_evaluate_ins(EvaluateIns(self.model)), "evaluate_res",
                             _check_evaluate(decline_allowed=False, min_examples=1))
        await self._step(context, STEPS[5], encode_fit_ins(FitIns([])), "fit_res",
                         _check_fit(None, decline_allowed=True, min_examples=0))
        await self._step(context, STEPS[6], encode_fit_ins(FitIns(ZERO_SIZE_TENSORS)), "fit_res",
                         _check_fit(ZERO_SIZE_TENSORS, decline_allowed=True, min_examples=0))
        await self._step(context, STEPS[7], encode_evaluate_ins(EvaluateIns([])), "evaluate_res",
                         _check_evaluate(decline_allowed=True, min_examples=0))
        await self._step(context, STEPS[8], encode_reconnect_ins(RECONNECT_SECONDS), "disconnect_res",
                         _check_reason(Reason.RECONNECT))
        self.left_at[0] = time.monotonic()  # the client's pause starts now
        await self._expect_close(context, STEPS[9])

    async def _second_stream(self, context: grpc.aio.ServicerContext) -> None:
        waited = time.monotonic() - (self.left_at[0] or time.monotonic())
        host, first_host = _host(context.peer()), _host(self.first_peer)
        problems = []
        if host != first_host:
            problems.append(f"joined from {host}, stream 1 came from {first_host}")
        if waited < RECONNECT_SECONDS - REJOIN_TOLERANCE:
            problems.append(f"came back after {waited:.2f} s, asked to wait {RECONNECT_SECONDS} s")
        self.record(STEPS[10], not problems, "; ".join(problems) or f"after {waited:.2f} s from {host}")
        expected = _shapes(self.model) if self.model is not None else None
        await self._step(context, STEPS[11], encode_get_parameters_ins(), "get_parameters_res",
                         self._check_same_model(expected))
        await self._step(context, STEPS[12], encode_reconnect_ins(0), "disconnect_res", _check_reason(Reason.ACK))
        self.left_at[1] = time.monotonic()
        await self._expect_close(context, STEPS[13])

    # ------------------------------------------------------------------ one exchange

    async def _step(self, context: grpc.aio.ServicerContext, step: str, message: bytes,
                    reply_kind: str, check: Callable[[Any], str]) -> None:
        """Send one instruction, read one reply, record the check. StreamOver if nothing came."""
        started = time.monotonic()
        await context.write(message)
        data = await self._read(context, step)
        elapsed_ms = (time.monotonic() - started) * 1000
        if data is grpc.aio.EOF:
            self._ended(step, "closed")
            raise StreamOver
        try:
            summary = check(reply_of_kind(parse_reply(data), reply_kind))
        except (ReplyError, CheckFailed) as failure:
            self.record(step, False, str(failure))
            return
        self.record(step, True, f"{summary} ({elapsed_ms:.0f} ms)")

    async def _read(self, context: grpc.aio.ServicerContext, step: str) -> Any:
        self.current_step = step
        try:
            data = await asyncio.wait_for(context.read(), self.timeout)
        except asyncio.TimeoutError:
            self.record(step, False, f"no reply within {self.timeout:g} s")
            raise StreamOver from None
        self.current_step = ""
        return data

    async def _expect_close(self, context: grpc.aio.ServicerContext, step: str) -> None:
        data = await self._read(context, step)
        if data is grpc.aio.EOF:
            self._ended(step, "closed")
        else:
            self.record(step, False, f"client sent {len(data)} more bytes after DisconnectRes")

    def _ended(self, step: str, how: str) -> None:
        """The client ended the stream (``how``: closed or cancelled) while we waited on ``step``."""
        if step in CLOSE_STEPS:
            self.record(step, True, f"stream {how} by the client")
        elif step in RECONNECT_STEPS:
            # It left without answering; it may still behave right afterwards, so keep going.
            stream = RECONNECT_STEPS.index(step)
            self.left_at[stream] = time.monotonic()
            self.record(step, False, f"client {how} the stream without sending disconnect_res")
            self.record(CLOSE_STEPS[stream], True, f"stream {how} by the client (no DisconnectRes sent)")
        else:
            self.record(step, False, f"client {how} the stream instead of replying")

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
        return f"OK, {_describe(arrays)}"

    def _check_same_model(self, expected: list[tuple[int, ...]] | None) -> Callable[[Any], str]:
        def check(res: ClientMessage.GetParametersRes) -> str:
            _status(res.status, None)
            arrays = decode_tensors(res.parameters, "GetParametersRes.parameters")
            if expected is not None and _shapes(arrays) != expected:
                raise CheckFailed(f"shapes {_shapes(arrays)}, before the rejoin {expected}")
            return f"OK, {_describe(arrays)}"
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
        arrays = decode_tensors(res.parameters, "FitRes.parameters")
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


def _brief(values: dict[str, Any], limit: int = 60) -> str:
    text = "{" + ", ".join(f"{k}={v!r}" for k, v in sorted(values.items())) + "}"
    return text if len(text) <= limit else text[: limit - 4] + "...}"


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _host(peer: str) -> str:
    """'ipv4:127.0.0.1:51234' -> 'ipv4:127.0.0.1' (the port changes on every connection)."""
    return peer.rsplit(":", 1)[0]


def format_table(rows: list[Row]) -> str:
    width = max(len(r.step) for r in rows)
    lines = [f" #  {'check':<{width}}  result  detail", f"--  {'-' * width}  ------  {'-' * 6}"]
    for number, row in enumerate(rows, 1):
        lines.append(f"{number:2d}  {row.step:<{width}}  {'PASS' if row.passed else 'FAIL':<6}  {row.detail}")
    failed = [r.step for r in rows if not r.passed]
    if failed:
        lines.append(f"{len(failed)} of {len(rows)} checks FAILED: " + "; ".join(failed))
    else:
        lines.append(f"all {len(rows)} checks passed")
    return "\n".join(lines)


# ---------------------------------------------------------------------------- running


async def run(address: str, timeout: float) -> list[Row]:
    """Serve one scripted session on ``address``; returns the table rows."""
    conformance = Conformance(timeout)
    # Raw bytes (join_handler): an invalid reply is a named failure, not a gRPC crash.
    server = grpc.aio.server(options=message_size_options())
    server.add_generic_rpc_handlers([join_handler(conformance.join)])
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info("waiting for a client on %s (timeout %g s per step)", address, timeout)
    try:
        await _session(conformance, timeout)
    finally:
        await server.stop(grace=1.0)
    return conformance.table()


async def _session(conformance: Conformance, timeout: float) -> None:
    opened, closed = conformance.stream_opened, conformance.stream_closed
    if not await _within(opened[0], timeout):
        conformance.record(STEPS[0], False, f"no client joined within {timeout:g} s")
        return
    await closed[0].wait()  # every step inside has its own timeout
    if conformance.left_at[0] is None:
        return
    if not await _within(opened[1], RECONNECT_SECONDS + timeout):
        conformance.record(STEPS[10], False, f"no new stream within {RECONNECT_SECONDS + timeout:g} s")
        return
    await closed[1].wait()
    if conformance.left_at[1] is None:
        return
    if not await _within(opened[2], NO_REJOIN_WINDOW):
        conformance.record(STEPS[14], True, f"no new stream within {NO_REJOIN_WINDOW:g} s")


async def _within(event: asyncio.Event, seconds: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), seconds)
    except asyncio.TimeoutError:
        return False
    return True


EPILOG = f"""\
The script: GetPropertiesIns, GetParametersIns, FitIns/EvaluateIns with the client's model,
FitIns with empty parameters and with zero-size tensors, EvaluateIns with empty parameters,
ReconnectIns(seconds={RECONNECT_SECONDS}) and the client's rejoin, ReconnectIns(seconds=0). Every Scalar kind
travels in a config. The contract each reply is checked against is in docs/PROTOCOL.md.

examples:
  fedproto-conformance --address 127.0.0.1:9092 &
  fedproto-client --server 127.0.0.1:9092 --app client.demo:make_client

  # any other client: flwr's, or your port
  fedproto-conformance --address 0.0.0.0:9092 --timeout 120

exit codes: 0 every check passed, 1 some check failed (named in the table), 2 usage error
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-conformance",
        description="Wait for one Flower client, drive it through every message and edge case, "
                    "print a pass/fail table.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--address", required=True, metavar="HOST:PORT",
                        help="where to listen, e.g. 127.0.0.1:9092 or [::]:9092")
    parser.add_argument("--timeout", type=float, default=60.0, metavar="S",
                        help="longest wait for the client to join and for each reply (default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        rows = asyncio.run(run(args.address, args.timeout))
    except OSError as error:
        print(f"fedproto-conformance: {error}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130
    print(format_table(rows), flush=True)
    return EXIT_ALL_PASSED if all(r.passed for r in rows) else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
