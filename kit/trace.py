"""fedproto-trace: a man-in-the-middle relay for FlowerService.Join that logs every message.

(``fedproto-trace --fleet`` relays the Fleet API of a flower-superlink instead: kit/fleet_trace.py.)

Clients connect to ``--listen``; for each Join stream the relay opens its own stream to
``--upstream`` and copies bytes both ways, unchanged. Every message is decoded on the side to
print one line: time, stream, direction, oneof, serialized size, tensor dtypes and shapes,
config/metric values, status, and for each reply the round trip since its instruction went out.
``--jsonl FILE`` writes the same as one JSON object per line (plus stream open/close events).

Fault injection, for tests of what clients and servers do when the wire misbehaves:
- ``--delay-ms N``: hold every message N ms before forwarding it.
- ``--drop-after N``: right after forwarding a stream's N-th message (both directions counted),
  cut it: the client gets status UNAVAILABLE, the upstream call is cancelled.
- ``--corrupt-rate P``: each message is, with probability P, cut short at a random byte, so the
  receiver's protobuf parser fails (a truncated message never parses). ``--seed`` fixes the draws.

Only plaintext gRPC on both sides; bytes are relayed without (de)serialization, so a message the
relay cannot decode is still forwarded, and logged as undecodable.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import itertools
import json
import logging
import random
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

import grpc
import numpy as np

from fedproto.codec import CodecError, read_npy_header, scalar_from_proto
from fedproto.dispatch import parse_instruction
from fedproto.errors import FedprotoError
from fedproto.server.endpoint import join_handler
from fedproto.server_role import enum_name, parse_reply
from fedproto.transport_pb2 import Code, Reason
from fedproto.wire import JOIN_METHOD, message_size_options

log = logging.getLogger("fedproto.trace")

TO_CLIENT = "server_to_client"
TO_SERVER = "client_to_server"
ARROWS = {TO_CLIENT: "S->C", TO_SERVER: "C->S"}


@dataclass(frozen=True)
class Faults:
    delay_ms: float = 0.0
    drop_after: int | None = None
    corrupt_rate: float = 0.0


class Dropped(Exception):
    """--drop-after reached: the relay cuts the stream."""


@dataclass
class StreamTrace:
    number: int
    peer: str
    messages: int = 0
    dropped: bool = False  # --drop-after reached: nothing more crosses
    # Instructions forwarded to the client and not answered yet: (oneof, time forwarded).
    pending: collections.deque = field(default_factory=collections.deque)


# ---------------------------------------------------------------------------- describing messages


def describe(data: bytes, direction: str) -> dict[str, Any]:
    """What a message holds, as JSON-ready values. Never raises: bad input is described as such."""
    # Parsed as the client (fedproto.dispatch) and the server (fedproto.server_role) parse them.
    parse = parse_instruction if direction == TO_CLIENT else parse_reply
    record: dict[str, Any] = {"message": "ServerMessage" if direction == TO_CLIENT else "ClientMessage",
                              "size": len(data)}
    try:
        message = parse(data)
    except FedprotoError as error:
        record["oneof"] = None
        record["error"] = str(error)
        return record
    kind = message.WhichOneof("msg")
    record["oneof"] = kind
    if kind is None:
        return record
    inner = getattr(message, kind)
    if kind == "reconnect_ins":
        record["seconds"] = inner.seconds
    if kind == "disconnect_res":
        record["reason"] = enum_name(Reason, inner.reason)
    if inner.DESCRIPTOR.fields_by_name.get("status"):
        record["status"] = {"code": enum_name(Code, inner.status.code), "message": inner.status.message}
    if inner.DESCRIPTOR.fields_by_name.get("parameters"):
        record["tensor_type"] = inner.parameters.tensor_type
        record["tensors"] = [_npy_header(t) for t in inner.parameters.tensors]
    if kind == "evaluate_res":
        record["loss"] = inner.loss
    if inner.DESCRIPTOR.fields_by_name.get("num_examples"):
        record["num_examples"] = inner.num_examples
    for name in ("config", "properties", "metrics"):
        if inner.DESCRIPTOR.fields_by_name.get(name):
            record[name] = _scalars(getattr(inner, name), name)
    return record


def _npy_header(data: bytes) -> dict[str, Any]:
    """dtype and shape from the .npy header, checked as the codec checks it (the data is not decoded)."""
    try:
        header = read_npy_header(data)
    except CodecError as error:
        return {"error": f"not a valid .npy tensor ({error.reason})", "size": len(data)}
    return {"dtype": header.dtype.str, "shape": list(header.shape), "size": len(data)}


def _scalars(values: Any, name: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, scalar in values.items():
        try:
            value = scalar_from_proto(scalar, f"{name}[{key!r}]")
        except CodecError:  # no kind set: shown as null, the message is still relayed
            value = None
        out[key] = {"bytes_hex": value.hex()} if isinstance(value, bytes) else value
    return dict(sorted(out.items()))


def format_values(name: str, values: dict[str, Any]) -> str:
    """``name={key=value, ...}``: config, properties or metrics on a console line."""
    return f"{name}={{" + ", ".join(f"{key}={value!r}" for key, value in values.items()) + "}"


def format_line(record: dict[str, Any]) -> str:
    """One human-readable console line for a message or stream event."""
    head = f"{record['elapsed_s']:9.3f}s  stream {record['stream']}"
    if "event" in record:
        rest = " ".join(f"{k}={v}" for k, v in record.items()
                        if k not in ("event", "elapsed_s", "stream", "time"))
        return f"{head}  ---- {record['event']} {rest}".rstrip()
    parts = [f"{head}  {ARROWS[record['direction']]}  {record['oneof'] or '?':<18} {record['size']:>9,} B"]
    if "error" in record:
        parts.append(record["error"])
    if "seconds" in record:
        parts.append(f"seconds={record['seconds']}")
    if "reason" in record:
        parts.append(f"reason={record['reason']}")
    if "status" in record:
        status = record["status"]
        parts.append(f"status={status['code']}" + (f" ({status['message']!r})" if status["code"] != "OK" else ""))
    if "tensors" in record:
        parts.append("tensors=[" + ", ".join(
            t.get("error") or f"{np.dtype(t['dtype']).name}{tuple(t['shape'])}" for t in record["tensors"]) + "]")
    if "loss" in record:
        parts.append(f"loss={record['loss']:.6g}")
    if "num_examples" in record:
        parts.append(f"num_examples={record['num_examples']}")
    for name in ("config", "properties", "metrics"):
        if name in record:
            parts.append(format_values(name, record[name]))
    if "rtt_ms" in record:
        parts.append(f"rtt={record['rtt_ms']:.1f} ms")
    if "fault" in record:
        parts.append(f"FAULT: {record['fault']}")
    return "  ".join(parts)


# ---------------------------------------------------------------------------- the relay


class TraceLog:
    """Where a relay's records go: one console line each and, with ``--jsonl``, one JSON object per line.

    Shared by the Join relay and the Fleet relay (kit/fleet_trace.py); safe to call from threads.
    """

    def __init__(self, console: TextIO, jsonl: TextIO | None) -> None:
        self.console, self.jsonl = console, jsonl
        self.started = time.monotonic()
        self.lock = threading.Lock()

    def write(self, record: dict[str, Any], format_record: Callable[[dict[str, Any]], str]) -> None:
        record = {"time": time.time(), "elapsed_s": round(time.monotonic() - self.started, 6), **record}
        with self.lock:
            print(format_record(record), file=self.console, flush=True)
            if self.jsonl is not None:
                self.jsonl.write(json.dumps(record) + "\n")
                self.jsonl.flush()


class Relay:
    def __init__(self, upstream: str, faults: Faults, seed: int | None,
                 console: TextIO, jsonl: TextIO | None) -> None:
        self.upstream = upstream
        self.faults = faults
        self.random = random.Random(seed)
        self.log = TraceLog(console, jsonl)
        self.numbers = itertools.count(1)

    def emit(self, stream: StreamTrace, record: dict[str, Any]) -> None:
        self.log.write({"stream": stream.number, **record}, format_line)

    async def join(self, request_iterator: Any, context: grpc.aio.ServicerContext) -> None:
        """One client stream: open our own stream upstream and pump both ways until it ends."""
        stream = StreamTrace(next(self.numbers), context.peer())
        self.emit(stream, {"event": "opened", "peer": stream.peer, "upstream": self.upstream})
        channel = grpc.aio.insecure_channel(self.upstream, options=message_size_options())
        call = channel.stream_stream(JOIN_METHOD)()  # raw bytes both ways
        upward = asyncio.create_task(self._client_to_server(context, call, stream))
        downward = asyncio.create_task(self._server_to_client(context, call, stream))
        try:
            pending = {upward, downward}
            while not downward.done():
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()  # re-raises Dropped or an upstream error
            self.emit(stream, {"event": "closed", "code": (await call.code()).name})
        except Dropped:
            self.emit(stream, {"event": "dropped", "after_messages": stream.messages})
            await context.abort(grpc.StatusCode.UNAVAILABLE,
                                f"fedproto-trace dropped the stream after {stream.messages} messages")
        except grpc.aio.AioRpcError as error:
            # Upstream failed: hand the client the same status it would have seen directly.
            self.emit(stream, {"event": "closed", "code": error.code().name, "details": error.details()})
            await context.abort(error.code(), error.details() or "")
        except asyncio.CancelledError:
            self.emit(stream, {"event": "cancelled by the client"})
            raise
        finally:
            upward.cancel()
            downward.cancel()
            call.cancel()
            await channel.close()

    async def _client_to_server(self, context: grpc.aio.ServicerContext, call: Any, stream: StreamTrace) -> None:
        while True:
            data = await context.read()
            if data is grpc.aio.EOF:
                self.emit(stream, {"event": "client half-closed"})
                await call.done_writing()
                return
            await call.write(await self._relay_one(stream, data, TO_SERVER))
            self._maybe_drop(stream)

    async def _server_to_client(self, context: grpc.aio.ServicerContext, call: Any, stream: StreamTrace) -> None:
        async for data in call:
            await context.write(await self._relay_one(stream, data, TO_CLIENT))
            self._maybe_drop(stream)

    def _maybe_drop(self, stream: StreamTrace) -> None:
        if self.faults.drop_after is not None and stream.messages >= self.faults.drop_after:
            stream.dropped = True
            raise Dropped

    async def _relay_one(self, stream: StreamTrace, data: bytes, direction: str) -> bytes:
        """Log one message, apply delay and corruption; returns the bytes to forward."""
        if stream.dropped:  # the other direction already cut the stream
            raise Dropped
        stream.messages += 1
        record = {"direction": direction, **describe(data, direction)}
        if direction == TO_SERVER and stream.pending:
            instruction, forwarded = stream.pending.popleft()
            record["rtt_ms"] = round((time.monotonic() - forwarded) * 1000, 3)
            record["reply_to"] = instruction
        if self.faults.corrupt_rate and len(data) > 1 and self.random.random() < self.faults.corrupt_rate:
            cut = self.random.randrange(1, len(data))
            record["fault"] = f"corrupted: cut to {cut} of {len(data)} bytes"
            data = data[:cut]
        self.emit(stream, record)
        if self.faults.delay_ms:
            await asyncio.sleep(self.faults.delay_ms / 1000)
        if direction == TO_CLIENT:  # rtt counts from here: the relay's own delay is not the client's
            stream.pending.append((record["oneof"], time.monotonic()))
        return data


async def serve(listen: str, relay: Relay) -> None:
    server = grpc.aio.server(options=message_size_options())
    server.add_generic_rpc_handlers([join_handler(relay.join)])
    if server.add_insecure_port(listen) == 0:
        raise OSError(f"cannot listen on {listen}")
    await server.start()
    log.info("relaying Join from %s to %s", listen, relay.upstream)
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(grace=1.0)


EPILOG = """\
Each line: seconds since start, stream number, direction (S->C server to client, C->S client
to server), oneof, serialized size, then what the message holds; replies carry rtt, the time
since the relay forwarded the instruction they answer.

examples:
  # watch a flwr server and its clients: point the clients at 9093 instead of 8080
  fedproto-trace --listen 127.0.0.1:9093 --upstream 127.0.0.1:8080 --jsonl trace.jsonl

  # a slow, lossy link: 200 ms per message, 5% of messages truncated, reproducible draws
  fedproto-trace --listen 127.0.0.1:9093 --upstream 127.0.0.1:8080 --delay-ms 200 \\
      --corrupt-rate 0.05 --seed 1

  # cut every stream after its 4th message
  fedproto-trace --listen 127.0.0.1:9093 --upstream 127.0.0.1:8080 --drop-after 4

  # the Fleet API of a flower-superlink instead of Join: see fedproto-trace --fleet --help
  fedproto-trace --fleet --listen 127.0.0.1:8001 --upstream 127.0.0.1:8000
"""


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-trace",
        description="Relay FlowerService.Join between any client and any server, logging every message.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where clients connect")
    parser.add_argument("--upstream", required=True, metavar="HOST:PORT", help="the real server")
    parser.add_argument("--jsonl", type=argparse.FileType("w", encoding="utf-8"), metavar="FILE",
                        help="also write one JSON object per message and stream event")
    parser.add_argument("--delay-ms", type=float, default=0.0, metavar="N",
                        help="hold every message N ms before forwarding it (default: 0)")
    parser.add_argument("--drop-after", type=int, metavar="N",
                        help="cut each stream (status UNAVAILABLE) after its N-th message")
    parser.add_argument("--corrupt-rate", type=_probability, default=0.0, metavar="P",
                        help="truncate each message with probability P (default: 0)")
    parser.add_argument("--seed", type=int, metavar="S", help="seed for --corrupt-rate draws")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--fleet" in argv:  # the Fleet API relay has its own flags (fedproto-trace --fleet --help)
        from fedproto.kit import fleet_trace

        return fleet_trace.main(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    faults = Faults(args.delay_ms, args.drop_after, args.corrupt_rate)
    relay = Relay(args.upstream, faults, args.seed, sys.stdout, args.jsonl)
    try:
        asyncio.run(serve(args.listen, relay))
    except OSError as error:
        print(f"fedproto-trace: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    finally:
        if args.jsonl is not None:
            args.jsonl.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
