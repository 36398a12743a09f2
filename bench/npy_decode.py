"""Tensor decoding: fedproto's codec vs numpy's own .npy reader vs flwr's decoder.

    python -m fedproto.bench.npy_decode [--repeat N]

fedproto's ``bytes_to_ndarray`` parses and checks the .npy header with ``numpy.lib.format``,
then views the data with ``numpy.frombuffer``; a header seen recently is not parsed again
(``fedproto.npy``'s header cache: every client of a round sends the same header), so it is timed
twice, with that header cached and with the cache emptied before every call. The library-only
way to do the same checks is to parse the header, then hand the bytes to
``numpy.lib.format.read_array``, which parses the header again. This benchmark times them all,
next to flwr's ``bytes_to_ndarray`` (``numpy.load``, no checks), for a small tensor (the
1k-parameter model of ``bench.scale``) and a large one, and verifies that all decode to
identical arrays. Exit 1 if they ever differ.
"""

from __future__ import annotations

import argparse
import io
import sys
import timeit

import numpy as np

from fedproto import npy
from fedproto.codec import NPY_FORMAT, bytes_to_ndarray, ndarray_to_bytes

CASES = {
    "1k float32 (32x32)": np.arange(1024, dtype=np.float32).reshape(32, 32),
    "1M float32 (1000x1000)": np.arange(1_000_000, dtype=np.float32).reshape(1000, 1000),
}


def checked_then_read_array(data: bytes) -> np.ndarray:
    """The same checks as fedproto's codec, then numpy's reader (a second header parse)."""
    buffer = io.BytesIO(data)
    NPY_FORMAT.read_magic(buffer)
    NPY_FORMAT.read_array_header_1_0(buffer)
    buffer.seek(0)
    return NPY_FORMAT.read_array(buffer, allow_pickle=False)


def flwr_bytes_to_ndarray(data: bytes) -> np.ndarray:
    from flwr.compat.common.parameter import bytes_to_ndarray as flwr_decode

    return flwr_decode(data)


def uncached_bytes_to_ndarray(data: bytes) -> np.ndarray:
    """fedproto's decoder as for a header it has not seen: the header cache emptied first."""
    npy._parsed_header.cache_clear()
    return bytes_to_ndarray(data)


DECODERS = {
    "fedproto codec (frombuffer)": bytes_to_ndarray,
    "fedproto codec, header not cached": uncached_bytes_to_ndarray,
    "header check + read_array": checked_then_read_array,
    "flwr (numpy.load, no checks)": flwr_bytes_to_ndarray,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.bench.npy_decode", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="timing repeats; the best is kept")
    args = parser.parse_args(argv)

    identical = True
    print(f"{'tensor':24} {'decoder':34} {'us per decode':>14} {'vs fedproto':>12}")
    for case, array in CASES.items():
        data = ndarray_to_bytes(array)
        number = max(1, 20_000_000 // max(len(data), 20_000))
        timings = {}
        for name, decode in DECODERS.items():
            decoded = decode(data)
            identical &= (decoded.dtype == array.dtype and decoded.shape == array.shape
                          and decoded.tobytes() == array.tobytes())
            best = min(timeit.repeat(lambda: decode(data), number=number, repeat=args.repeat))
            timings[name] = best / number * 1e6
        ours = timings["fedproto codec (frombuffer)"]
        for name, micros in timings.items():
            print(f"{case:24} {name:34} {micros:14.1f} {micros / ours:11.2f}x")
    print("all decoders returned identical arrays" if identical else "DECODERS DISAGREE")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
