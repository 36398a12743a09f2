"""Codec throughput: a FitRes-carrying ClientMessage encoded and decoded, ours vs flwr's serde.

    python -m fedproto.bench.codec                       # 1 KB, 1 MB, 40 MB, 400 MB of float32
    python -m fedproto.bench.codec --sizes 1KB 40MB --repeats 5

For each payload size, one float32 tensor of that many bytes is

- encoded: ndarrays -> the wire bytes of ``ClientMessage(fit_res=...)``. Ours is the edge
  client's real path, ``ClientSession(handler).receive_bytes(FitIns)`` with a handler whose
  ``fit`` returns the tensor (the FitIns it answers carries one float, so its decoding is
  negligible from 1 MB up); flwr's is ``ndarrays_to_parameters`` -> ``serde.fit_res_to_proto``
  -> ``ClientMessage(fit_res=...).SerializeToString()``;
- decoded: wire bytes -> ndarrays. Ours is the server's path, ``server_role.decode_fit_res_bytes``
  (header checks, then read-only views of the tensors in the received bytes: no copy); flwr's is
  ``ClientMessage.FromString`` -> ``serde.fit_res_from_proto`` -> ``parameters_to_ndarrays``;
- copied with ``numpy.ndarray.copy`` (allocation included), the memcpy reference measured in
  the same run.

Throughput is payload bytes / seconds. Each repeat times a batch of calls (enough for about
0.2 s) and keeps the time per call; the table shows the median of the repeats and their
min-max. Before timing, both decoders must read both encoders' bytes back to the same array
(exit 1 otherwise).
"""

from __future__ import annotations

import argparse
import functools
import gc
import os
import statistics
import sys
import time
from collections.abc import Callable

import numpy as np

from fedproto.dispatch import ClientSession
from fedproto.server_role import FitIns, decode_fit_res_bytes, encode_fit_ins

SIZES = {"1KB": 1_000, "1MB": 1_000_000, "40MB": 40_000_000, "400MB": 400_000_000}
QUICK_SIZES = ("1KB", "1MB", "40MB")
BATCH_SECONDS = 0.2  # each repeat times enough calls to last about this long
EXAMPLES = 1


class ReturnsTensor:
    """The edge client's handler: ``fit`` returns the prepared tensor, no compute."""

    def __init__(self, tensor: np.ndarray) -> None:
        self.tensor = tensor

    def fit(self, parameters, config):
        return [self.tensor], EXAMPLES, {}


def ours_encoder(tensor: np.ndarray) -> Callable[[], bytes]:
    fit_ins = encode_fit_ins(FitIns([np.zeros(1, np.float32)]))
    handler = ReturnsTensor(tensor)
    return lambda: ClientSession(handler).receive_bytes(fit_ins)


def ours_decode(wire: bytes) -> list[np.ndarray]:
    return decode_fit_res_bytes(wire, []).parameters


def flwr_encoder(tensor: np.ndarray) -> Callable[[], bytes]:
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, serde
    from flwr.proto.transport_pb2 import ClientMessage

    def encode() -> bytes:
        res = FitRes(Status(Code.OK, "Success"), ndarrays_to_parameters([tensor]), EXAMPLES, {})
        return ClientMessage(fit_res=serde.fit_res_to_proto(res)).SerializeToString()

    return encode


def flwr_decode(wire: bytes) -> list[np.ndarray]:
    from flwr.common import parameters_to_ndarrays, serde
    from flwr.proto.transport_pb2 import ClientMessage

    return parameters_to_ndarrays(serde.fit_res_from_proto(ClientMessage.FromString(wire).fit_res).parameters)


def time_per_call(call: Callable[[], object], repeats: int) -> list[float]:
    """Seconds per call, one value per repeat (each a batch of calls lasting ~BATCH_SECONDS)."""
    started = time.perf_counter()
    call()  # warm-up, and the size of a batch
    first = time.perf_counter() - started
    number = max(1, int(BATCH_SECONDS / max(first, 1e-7)))
    seconds = []
    for _ in range(repeats):
        gc.collect()
        started = time.perf_counter()
        for _ in range(number):
            call()
        seconds.append((time.perf_counter() - started) / number)
    return seconds


def _same(arrays: list[np.ndarray], tensor: np.ndarray) -> bool:
    return (len(arrays) == 1 and arrays[0].dtype == tensor.dtype and arrays[0].shape == tensor.shape
            and np.array_equal(arrays[0], tensor))


def measure_size(label: str, repeats: int) -> dict:
    """Every timing of one payload size: {"operation": {"implementation": [seconds, ...]}}."""
    payload = SIZES[label]
    tensor = np.linspace(-1, 1, payload // 4, dtype=np.float32)
    encoders = {"ours": ours_encoder(tensor), "flwr": flwr_encoder(tensor)}
    decoders = {"ours": ours_decode, "flwr": flwr_decode}
    wires = {name: encode() for name, encode in encoders.items()}
    agree = all(_same(decode(wire), tensor) for decode in decoders.values() for wire in wires.values())
    timings = {
        "memcpy": {"numpy copy": time_per_call(tensor.copy, repeats)},
        "encode": {name: time_per_call(encode, repeats) for name, encode in encoders.items()},
        "decode": {name: time_per_call(functools.partial(decode, wires[name]), repeats)
                   for name, decode in decoders.items()},
    }
    return {"size": label, "payload_bytes": payload, "wire_bytes": {k: len(v) for k, v in wires.items()},
            "identical_wire_bytes": wires["ours"] == wires["flwr"], "decoders_agree": agree,
            "seconds": timings}


def collect(repeats: int, sizes: list[str]) -> dict:
    return {"benchmark": "codec", "repeats": repeats, "pid": os.getpid(),
            "cases": [measure_size(label, repeats) for label in sizes]}


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
    args = parser.parse_args(argv)
    result = collect(args.repeats, args.sizes)
    print(format_table(result))
    agree = all(case["decoders_agree"] for case in result["cases"])
    print("both decoders read both encoders' bytes back exactly" if agree else "DECODERS DISAGREE")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())
