"""Codec throughput: the edge client's FitRes reply and the server's decode of it, ours vs flwr's serde.

    python -m fedproto.bench.codec                       # 1 KB, 10 KB, 100 KB, 1 MB, 40 MB, 400 MB of float32
    python -m fedproto.bench.codec --sizes 1KB 40MB --repeats 5
    python -m fedproto.bench.codec --paths               # each of our two paths forced, around the thresholds

For each payload size, one float32 tensor of that many bytes is

- encoded, as an edge client does it (column "encode"): the bytes of a FitIns (carrying one
  float) -> the instruction decoded -> the handler's ``fit``, which returns the tensor -> the
  wire bytes of ``ClientMessage(fit_res=...)``. Ours is ``ClientSession(handler).receive_bytes``;
  flwr's does the same work through its serde: ``ServerMessage.FromString`` ->
  ``serde.fit_ins_from_proto`` -> ``parameters_to_ndarrays`` -> ``fit`` ->
  ``ndarrays_to_parameters`` -> ``serde.fit_res_to_proto`` -> ``SerializeToString`` (flwr's
  client also builds a ``Message`` and a ``RecordDict`` on the way, left out here, so flwr's
  figure is a lower bound of what its client spends);
- decoded, as the server does it: wire bytes -> ndarrays. Ours is
  ``server_role.decode_fit_reply`` (protobuf's parse below ``IN_PLACE_DECODE_BYTES``, read-only
  views of the tensors in the received bytes from there up), header checks included; flwr's is
  ``ClientMessage.FromString`` -> ``serde.fit_res_from_proto`` -> ``parameters_to_ndarrays``;
- copied with ``numpy.ndarray.copy`` (allocation included), the memcpy reference measured in
  the same run.

Throughput is payload bytes / seconds. Each repeat times a batch of calls (enough for about
0.2 s) of every implementation in turn, so load from elsewhere on the machine hits all of them,
and keeps the time per call; the table shows the median of the repeats and their min-max.
Before timing, both decoders must read both encoders' bytes back to the same array, and both
encoders must write the same bytes (exit 1 otherwise).

``--paths`` times our two encode paths (``framing.frame`` and protobuf's serializer) and two
decode paths (``framing.split_tensors`` and protobuf's parse), each forced, at sizes around
``framing.FRAME_MIN_BYTES``, ``framing.SPLIT_MIN_BYTES`` and ``server_role.IN_PLACE_DECODE_BYTES``:
how the thresholds were chosen.
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from fedproto import framing, server_role
from fedproto.dispatch import ClientSession
from fedproto.server_role import FitIns, decode_fit_reply, encode_fit_ins

SIZES = {"1KB": 1_000, "10KB": 10_000, "100KB": 100_000, "1MB": 1_000_000, "40MB": 40_000_000,
         "400MB": 400_000_000}
QUICK_SIZES = ("1KB", "10KB", "100KB", "1MB", "40MB")
PATH_SIZES = (1_000, 4_000, 16_000, 32_000, 64_000, 128_000, 256_000, 512_000, 1_000_000)
BATCH_SECONDS = 0.2  # each repeat times enough calls to last about this long
EXAMPLES = 1


class ReturnsTensor:
    """The edge client's handler: ``fit`` returns the prepared tensor, no compute."""

    def __init__(self, tensor: np.ndarray) -> None:
        self.tensor = tensor

    def fit(self, parameters: Any, config: Any) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        return [self.tensor], EXAMPLES, {}


def fit_ins_bytes(model: np.ndarray) -> bytes:
    return encode_fit_ins(FitIns([model]))


def ours_encoder(tensor: np.ndarray, fit_ins: bytes) -> Callable[[], bytes]:
    handler = ReturnsTensor(tensor)
    return lambda: ClientSession(handler).receive_bytes(fit_ins)


def ours_decode(wire: bytes) -> list[np.ndarray]:
    return decode_fit_reply(wire, []).parameters


def flwr_encoder(tensor: np.ndarray, fit_ins: bytes) -> Callable[[], bytes]:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays, serde
    from flwr.proto.transport_pb2 import ClientMessage, ServerMessage

    handler = ReturnsTensor(tensor)

    def answer() -> bytes:
        ins = serde.fit_ins_from_proto(ServerMessage.FromString(fit_ins).fit_ins)
        arrays, examples, metrics = handler.fit(parameters_to_ndarrays(ins.parameters), ins.config)
        res = FitRes(Status(Code.OK, "Success"), ndarrays_to_parameters(arrays), examples, metrics)
        return bytes(ClientMessage(fit_res=serde.fit_res_to_proto(res)).SerializeToString())

    return answer


def flwr_decode(wire: bytes) -> list[np.ndarray]:
    from flwr.common import parameters_to_ndarrays, serde
    from flwr.proto.transport_pb2 import ClientMessage

    arrays: list[np.ndarray] = parameters_to_ndarrays(serde.fit_res_from_proto(ClientMessage.FromString(wire).fit_res)
                                                      .parameters)
    return arrays


def time_interleaved(calls: Mapping[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each of ``calls``, one value per repeat; a repeat runs a batch of each
    (lasting ~BATCH_SECONDS) in turn."""
    numbers = {}
    for name, call in calls.items():
        started = time.perf_counter()
        call()  # warm-up, and the size of a batch
        numbers[name] = max(1, int(BATCH_SECONDS / max(time.perf_counter() - started, 1e-7)))
    seconds: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            gc.collect()
            started = time.perf_counter()
            for _ in range(numbers[name]):
                call()
            seconds[name].append((time.perf_counter() - started) / numbers[name])
    return seconds


def _same(arrays: list[np.ndarray], tensor: np.ndarray) -> bool:
    return (len(arrays) == 1 and arrays[0].dtype == tensor.dtype and arrays[0].shape == tensor.shape
            and np.array_equal(arrays[0], tensor))


def measure_size(label: str, repeats: int) -> dict[str, Any]:
    """Every timing of one payload size: {"operation": {"implementation": [seconds, ...]}}."""
    payload = SIZES[label]
    tensor = np.linspace(-1, 1, payload // 4, dtype=np.float32)
    fit_ins = fit_ins_bytes(np.zeros(1, np.float32))
    encoders = {"ours": ours_encoder(tensor, fit_ins), "flwr": flwr_encoder(tensor, fit_ins)}
    decoders = {"ours": ours_decode, "flwr": flwr_decode}
    wires = {name: encode() for name, encode in encoders.items()}
    agree = all(_same(decode(wire), tensor) for decode in decoders.values() for wire in wires.values())
    memcpy = time_interleaved({"numpy copy": tensor.copy}, repeats)
    encode = time_interleaved(encoders, repeats)
    decode = time_interleaved({name: functools.partial(decoder, wires[name]) for name, decoder in decoders.items()},
                              repeats)
    return {"size": label, "payload_bytes": payload, "wire_bytes": {k: len(v) for k, v in wires.items()},
            "identical_wire_bytes": wires["ours"] == wires["flwr"], "decoders_agree": agree,
            "seconds": {"memcpy": memcpy, "encode": encode, "decode": decode}}


def collect(repeats: int, sizes: list[str]) -> dict[str, Any]:
    return {"benchmark": "codec", "repeats": repeats, "pid": os.getpid(),
            "cases": [measure_size(label, repeats) for label in sizes]}


# ---------------------------------------------------------------------------- the thresholds

NEVER = 1 << 62  # a threshold no message reaches: the protobuf path always


def _forced(module: Any, name: str, value: int, call: Callable[[], object]) -> Callable[[], object]:
    """``call`` with ``module.name`` set to ``value`` for its duration (one of our two paths forced)."""

    def forced() -> object:
        saved = getattr(module, name)
        setattr(module, name, value)
        try:
            return call()
        finally:
            setattr(module, name, saved)

    return forced


def path_cases(payload: int) -> dict[str, dict[str, Callable[[], object]]]:
    """For one tensor size: each choice by size, as {choice: {path: call}}."""
    tensor = np.linspace(-1, 1, payload // 4, dtype=np.float32)
    small = np.zeros(1, np.float32)
    reply = ours_encoder(tensor, fit_ins_bytes(small))
    instruction = ours_encoder(small, fit_ins_bytes(tensor))
    wire = reply()
    decode = functools.partial(decode_fit_reply, wire, [])
    return {
        "client reply encode (FRAME_MIN_BYTES)": {
            "frame": _forced(framing, "FRAME_MIN_BYTES", 0, reply),
            "protobuf": _forced(framing, "FRAME_MIN_BYTES", NEVER, reply)},
        "client instruction decode (SPLIT_MIN_BYTES)": {
            "split": _forced(framing, "SPLIT_MIN_BYTES", 0, instruction),
            "protobuf": _forced(framing, "SPLIT_MIN_BYTES", NEVER, instruction)},
        "server reply decode (IN_PLACE_DECODE_BYTES)": {
            "split": _forced(server_role, "IN_PLACE_DECODE_BYTES", 0, decode),
            "protobuf": _forced(server_role, "IN_PLACE_DECODE_BYTES", NEVER, decode)},
    }


def measure_paths(repeats: int, sizes: tuple[int, ...] = PATH_SIZES) -> str:
    """Markdown: per choice and tensor size, each path's µs per call, median (min-max), and the ratio."""
    lines = ["| choice | tensor bytes | in place µs | protobuf µs | protobuf / in place |",
             "|---|---:|---:|---:|---:|"]
    rows: dict[str, list[str]] = {}
    for payload in sizes:
        for choice, paths in path_cases(payload).items():
            seconds = time_interleaved(paths, repeats)
            in_place, protobuf = (seconds[name] for name in paths)
            rows.setdefault(choice, []).append(
                f"| {choice} | {payload:,} | {_micro(in_place)} | {_micro(protobuf)} "
                f"| {statistics.median(protobuf) / statistics.median(in_place):.2f} |")
    for choice_rows in rows.values():
        lines += choice_rows
    return "\n".join(lines)


def _micro(seconds: list[float]) -> str:
    return f"{1e6 * statistics.median(seconds):.1f} ({1e6 * min(seconds):.1f}-{1e6 * max(seconds):.1f})"


def _percent(fraction: float) -> str:
    """12%, 0.19%, 120% (a decode that returns views of the wire bytes can beat a copy)."""
    return f"{100 * fraction:.2g}%" if fraction < 1 else f"{100 * fraction:.0f}%"


def format_table(result: dict) -> str:
    """Markdown: one row per size and operation, GB/s as median (min-max), % of memcpy, flwr/ours."""
    lines = ["| payload | operation | ours GB/s | flwr GB/s | memcpy GB/s | ours % of memcpy "
             "| flwr % of memcpy | ours speed / flwr |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for case in result["cases"]:
        payload = case["payload_bytes"]
        memcpy = statistics.median(case["seconds"]["memcpy"]["numpy copy"])
        for operation in ("encode", "decode"):
            ours, flwr = (case["seconds"][operation][name] for name in ("ours", "flwr"))
            median_ours, median_flwr = statistics.median(ours), statistics.median(flwr)
            lines.append(
                f"| {case['size']} | {operation} | {_rate(payload, ours)} | {_rate(payload, flwr)} "
                f"| {payload / memcpy / 1e9:.3g} | {_percent(memcpy / median_ours)} | {_percent(memcpy / median_flwr)} "
                f"| {median_flwr / median_ours:.2f}x |")
    return "\n".join(lines)


def _rate(payload: int, seconds: list[float]) -> str:
    """GB/s of the median repeat, with the range over the repeats."""
    return (f"{payload / statistics.median(seconds) / 1e9:.3g} "
            f"({payload / max(seconds) / 1e9:.3g}-{payload / min(seconds) / 1e9:.3g})")


def plot(result: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    labels = [case["size"] for case in result["cases"]]
    x = np.arange(len(labels))
    for axis, operation in zip(axes, ("encode", "decode"), strict=True):
        bars = [("ours", operation), ("flwr", operation), ("numpy copy", "memcpy")]
        for offset, (name, source) in zip((-0.27, 0, 0.27), bars, strict=True):
            rates = [np.array([case["payload_bytes"] / s / 1e9 for s in case["seconds"][source][name]])
                     for case in result["cases"]]
            medians = [np.median(r) for r in rates]
            errors = [[m - r.min() for m, r in zip(medians, rates, strict=True)],
                      [r.max() - m for m, r in zip(medians, rates, strict=True)]]
            axis.bar(x + offset, medians, 0.27, yerr=errors, capsize=3,
                     label=name if source != "memcpy" else "memcpy (numpy copy)")
        axis.set(xticks=x, xticklabels=labels, yscale="log", xlabel="float32 payload",
                 title=f"{operation} a FitRes ClientMessage")
        axis.grid(True, axis="y", which="both", alpha=0.3)
        axis.legend(fontsize=8)
    axes[0].set_ylabel("GB/s (median, bars: min-max of repeats)")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.bench.codec", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", choices=list(SIZES), default=list(SIZES),
                        help="payload sizes (default: all; 400MB needs about 3 GB of memory)")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per case (default 5)")
    parser.add_argument("--paths", action="store_true",
                        help="time each of our encode and decode paths forced, at 1 KB to 1 MB, instead")
    args = parser.parse_args(argv)
    if args.paths:
        print(measure_paths(args.repeats))
        return 0
    result = collect(args.repeats, args.sizes)
    print(format_table(result))
    agree = all(case["decoders_agree"] for case in result["cases"])
    same = all(case["identical_wire_bytes"] for case in result["cases"])
    print("both decoders read both encoders' bytes back exactly" if agree else "DECODERS DISAGREE")
    print("both encoders wrote the same bytes" if same else "ENCODERS DIFFER")
    return 0 if agree and same else 1


if __name__ == "__main__":
    sys.exit(main())
