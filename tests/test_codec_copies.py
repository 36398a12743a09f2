"""How many copies of a 40 MB model the codec makes: peak memory, not time.

Each check measures the peak memory a call needs above what was resident before it, as a
multiple of the payload (10M float32 = 40 MB), the result included: an encoder that writes
the wire bytes in one pass peaks at 1x (its result) plus whatever it copies on the way.

Two meters, because neither sees everything:
- tracemalloc sees Python objects and numpy's data buffers, but not protobuf's upb arenas
  (plain malloc), where upb copies every bytes field it is given or parses;
- the process's resident-set high-water mark (Linux ``VmHWM``, reset through
  ``/proc/self/clear_refs``) sees every page touched, upb's included. Blocks this large are
  mmap'ed and returned on free, so the peak is not hidden by memory freed earlier.
The larger of the two is checked. ``test_meter_sees_one_numpy_copy_as_one`` shows both read
a plain 40 MB copy as 1x.

Each measurement runs in a fresh interpreter (this file run as a script, ``python
tests/test_codec_copies.py CASE``), so heap memory freed by earlier tests in the same pytest
process cannot be reused by the measured call and hide its pages from the resident-set meter.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from fedproto.dispatch import ClientSession
from fedproto.server_role import FitIns, decode_fit_reply, encode_fit_ins

PARAMETERS = 10_000_000
PAYLOAD = PARAMETERS * 4  # float32 bytes
LIMIT = 2.0  # the result plus at most one copy on the way
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")

pytestmark = pytest.mark.skipif(not CLEAR_REFS.exists(), reason="needs Linux /proc/self/clear_refs")
ROOT = Path(__file__).resolve().parent.parent


def _status_bytes(key: str) -> int:
    for line in PROC_STATUS.read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024  # reported in kB
    raise AssertionError(f"no {key} in {PROC_STATUS}")


def peak_multiples(call: Callable[[], object]) -> tuple[float, float, object]:
    """(tracemalloc peak, resident-set peak) above the level before ``call``, in payloads."""
    gc.collect()
    CLEAR_REFS.write_text("5")  # VmHWM := VmRSS
    rss_before = _status_bytes("VmRSS")
    tracemalloc.start()
    try:
        traced_before = tracemalloc.get_traced_memory()[0]
        result = call()
        traced_peak = tracemalloc.get_traced_memory()[1] - traced_before
    finally:
        tracemalloc.stop()
    rss_peak = _status_bytes("VmHWM") - rss_before
    return traced_peak / PAYLOAD, rss_peak / PAYLOAD, result


class ReturnsModel:
    """An edge client's handler whose fit returns the 40 MB model it was built with."""

    def __init__(self, model: np.ndarray) -> None:
        self.model = model

    def fit(self, parameters, config):
        return [self.model], 1, {}


class KeepsParameters:
    """An edge client's handler that keeps what it is given alive, as a real fit does."""

    def __init__(self) -> None:
        self.received: list[np.ndarray] = []

    def fit(self, parameters, config):
        self.received.extend(parameters)
        return [], 1, {}


def small_fit_ins() -> bytes:
    return encode_fit_ins(FitIns([np.zeros(1, np.float32)]))


def measure(case: str) -> dict:
    """Run in a fresh interpreter: the model and inputs are built first, then the call is measured."""
    model = np.linspace(-1, 1, PARAMETERS, dtype=np.float32)
    if case == "numpy_copy":
        call, check = model.copy, lambda copy: copy.nbytes == PAYLOAD
    elif case == "client_encode_fit_res":
        session, fit_ins = ClientSession(ReturnsModel(model)), small_fit_ins()
        call, check = (lambda: session.receive_bytes(fit_ins)), (lambda wire: len(wire) > PAYLOAD)
    elif case == "server_encode_fit_ins":
        call, check = (lambda: encode_fit_ins(FitIns([model]))), (lambda wire: len(wire) > PAYLOAD)
    elif case == "server_decode_fit_res":
        wire = ClientSession(ReturnsModel(model)).receive_bytes(small_fit_ins())
        call = lambda: decode_fit_reply(wire, [model])  # noqa: E731  the function server/loop.py calls

        def check(fit_res) -> bool:  # right, and read in place: the tensor is a view of the reply's bytes
            [tensor] = fit_res.parameters
            return np.array_equal(tensor, model) and np.shares_memory(tensor, np.frombuffer(wire, np.uint8))
    elif case == "client_decode_fit_ins":
        handler, wire = KeepsParameters(), encode_fit_ins(FitIns([model]))
        call = lambda: ClientSession(handler).receive_bytes(wire)  # noqa: E731
        check = lambda _: np.array_equal(handler.received[0], model)  # noqa: E731
    else:
        raise ValueError(case)
    traced, resident, result = peak_multiples(call)
    return {"traced": traced, "resident": resident, "correct": bool(check(result))}


def measured(case: str) -> dict:
    """``measure(case)`` in a fresh interpreter."""
    done = subprocess.run([sys.executable, __file__, case], capture_output=True, text=True, cwd=ROOT,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["correct"], f"{case}: the measured call gave a wrong result"
    return result


def check_at_most_twice(case: str) -> None:
    result = measured(case)
    traced, resident = result["traced"], result["resident"]
    assert max(traced, resident) <= LIMIT, (
        f"peak {max(traced, resident):.2f}x the payload (tracemalloc {traced:.2f}x, "
        f"resident set {resident:.2f}x), limit {LIMIT}x")


def test_meter_sees_one_numpy_copy_as_one():
    result = measured("numpy_copy")
    assert 0.95 <= result["traced"] <= 1.05
    assert 0.95 <= result["resident"] <= 1.05


def test_edge_client_encodes_fit_res_in_at_most_two_payloads():
    check_at_most_twice("client_encode_fit_res")


def test_server_encodes_fit_ins_in_at_most_two_payloads():
    check_at_most_twice("server_encode_fit_ins")


def test_server_decodes_fit_res_in_at_most_two_payloads():
    """The server's decoder, ``server_role.decode_fit_reply``, as the FL loop calls it: a reply of
    256 KiB or more (``IN_PLACE_DECODE_BYTES``) is read in place, its tensors views of its bytes, no
    copy (the measured call checks that). (A smaller reply is parsed whole by protobuf,
    parse_reply + decode_fit_res, which copies the tensors twice: into upb's arena, then into bytes.)"""
    check_at_most_twice("server_decode_fit_res")


def test_edge_client_decodes_fit_ins_in_at_most_two_payloads():
    check_at_most_twice("client_decode_fit_ins")


if __name__ == "__main__":
    print(json.dumps(measure(sys.argv[1])))
