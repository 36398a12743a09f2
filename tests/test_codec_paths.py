"""The codec's two paths per direction, chosen by size, give the same bytes and the same arrays.

Encoding: ``framing.serialize`` frames a message in one pass from ``framing.FRAME_MIN_BYTES`` of
tensors up and lets protobuf serialize it below. Decoding: the edge client (``framing.read``,
``SPLIT_MIN_BYTES``) and the server (``server_role.decode_fit_reply``, ``IN_PLACE_DECODE_BYTES``)
read the tensors in place from their threshold up and let protobuf parse the message below.
Each path is forced in turn (the threshold set to 0 or beyond any message) on tensors sized
around the real threshold, and compared with a reference built without fedproto's encoders
(``numpy.save``, protobuf's ``SerializeToString``) or decoders (protobuf's parse, ``numpy.load``).

The .npy headers are parsed and written once per distinct header (``fedproto.npy``'s caches):
the cache is keyed by every byte of the header, bounded, and never holds a refusal.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedproto import framing, npy, server_role
from fedproto.codec import scalars_to_proto
from fedproto.dispatch import ClientSession
from fedproto.errors import CodecError
from fedproto.npy import HEADER_CACHE_ENTRIES, TENSOR_TYPE, bytes_to_ndarray, npy_pieces, read_npy_header
from fedproto.server_role import FitIns, decode_fit_reply, encode_fit_ins
from fedproto.text import bound_metrics
from fedproto.transport_pb2 import ClientMessage, Code, Parameters, Status

EXAMPLES = settings(max_examples=40, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
NEVER = 1 << 62  # a threshold no message reaches
DTYPES = [np.dtype(name) for name in ("<f4", ">f8", "<i2", "|u1", "<c8", "|b1")]

scalar_values = st.one_of(st.booleans(), st.binary(max_size=8), st.floats(allow_nan=False), st.text(max_size=8),
                          st.integers(-(2**63), 2**63 - 1))
scalar_maps = st.dictionaries(st.text(max_size=6), scalar_values, max_size=4)


@contextlib.contextmanager
def forced(module: Any, name: str, value: int) -> Iterator[None]:
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


@st.composite
def models(draw: Any, around: int) -> list[np.ndarray]:
    """One to three tensors whose bytes add up to within 256 of ``around`` (or are tiny)."""
    total = draw(st.sampled_from([draw(st.integers(0, 600)), around + draw(st.integers(-256, 256))]))
    dtypes = draw(st.lists(st.sampled_from(DTYPES), min_size=1, max_size=3))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = []
    for dtype in dtypes:
        count = max(total // len(dtypes) // dtype.itemsize, 0)
        if dtype.kind in "fc":  # finite values: the server refuses NaN and Inf
            array = rng.standard_normal(count).astype(dtype)
        else:
            raw = rng.integers(0, 256, count * dtype.itemsize, dtype=np.uint8)
            array = (raw & 1 if dtype.kind == "b" else raw).view(dtype)
        arrays.append(array.reshape(draw(st.sampled_from([(count,), (1, count)]))))
    if draw(st.booleans()) and arrays[0].ndim == 2:
        arrays[0] = np.asfortranarray(arrays[0].reshape(-1, 1))
    return arrays


def npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def reference_fit_res(arrays: list[np.ndarray], num_examples: int, metrics: dict[str, Any]) -> bytes:
    """The FitRes a NumPyClient sends, built by protobuf alone."""
    body = ClientMessage.FitRes(status=Status(code=Code.OK, message="Success"), num_examples=num_examples,
                                parameters=Parameters(tensors=[npy_bytes(a) for a in arrays], tensor_type=TENSOR_TYPE))
    for key, value in scalars_to_proto(metrics).items():
        body.metrics[key].CopyFrom(value)
    return ClientMessage(fit_res=body).SerializeToString()


class Recorder:
    """A handler that records what it is given and answers with a prepared FitRes."""

    def __init__(self, arrays: list[np.ndarray], num_examples: int, metrics: dict[str, Any]) -> None:
        self.reply = (arrays, num_examples, metrics)
        self.seen: list[tuple[list[np.ndarray], dict[str, Any]]] = []

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        self.seen.append((parameters, config))
        return self.reply


def same_arrays(got: list[np.ndarray], expected: list[np.ndarray]) -> bool:
    return len(got) == len(expected) and all(
        a.dtype == b.dtype and a.shape == b.shape and a.tobytes(order="A") == b.tobytes(order="A")
        and a.flags.f_contiguous == b.flags.f_contiguous for a, b in zip(got, expected, strict=True))


@EXAMPLES
@given(arrays=models(framing.FRAME_MIN_BYTES), num_examples=st.integers(0, 2**63 - 1), metrics=scalar_maps)
def test_both_encode_paths_write_protobufs_bytes(arrays, num_examples, metrics):
    expected = reference_fit_res(arrays, num_examples, metrics)
    fit_ins = encode_fit_ins(FitIns([np.zeros(1, np.float32)]))
    for threshold in (0, NEVER, framing.FRAME_MIN_BYTES):  # frame, protobuf, the size's own choice
        with forced(framing, "FRAME_MIN_BYTES", threshold):
            assert ClientSession(Recorder(arrays, num_examples, metrics)).receive_bytes(fit_ins) == expected


@EXAMPLES
@given(arrays=models(server_role.IN_PLACE_DECODE_BYTES), num_examples=st.integers(0, 2**63 - 1),
       metrics=scalar_maps)
def test_both_server_decode_paths_give_protobufs_parse(arrays, num_examples, metrics):
    data = reference_fit_res(arrays, num_examples, metrics)
    parsed = ClientMessage.FromString(data).fit_res
    expected = [np.load(io.BytesIO(tensor), allow_pickle=False) for tensor in parsed.parameters.tensors]
    for threshold in (0, NEVER, server_role.IN_PLACE_DECODE_BYTES):
        with forced(server_role, "IN_PLACE_DECODE_BYTES", threshold):
            result = decode_fit_reply(data, [])
        assert same_arrays(result.parameters, expected)
        assert result.num_examples == parsed.num_examples
        assert result.metrics == bound_metrics({key: getattr(value, value.WhichOneof("scalar"))
                                                for key, value in parsed.metrics.items()})
        assert result.tensor_type == (TENSOR_TYPE if arrays else None)


@EXAMPLES
@given(arrays=models(framing.SPLIT_MIN_BYTES), config=scalar_maps)
def test_both_client_decode_paths_give_the_handler_protobufs_parse(arrays, config):
    data = encode_fit_ins(FitIns(arrays, config))
    parsed = server_role.ServerMessage.FromString(data).fit_ins
    expected = [np.load(io.BytesIO(tensor), allow_pickle=False) for tensor in parsed.parameters.tensors]
    for threshold in (0, NEVER, framing.SPLIT_MIN_BYTES):
        handler = Recorder([np.zeros(1, np.float32)], 1, {})
        with forced(framing, "SPLIT_MIN_BYTES", threshold):
            ClientSession(handler).receive_bytes(data)
        [(parameters, seen_config)] = handler.seen
        assert same_arrays(parameters, expected)
        assert seen_config == config


def fit_res_of_length(length: int) -> bytes:
    """A FitRes of exactly ``length`` bytes (one uint8 tensor, sized to fit)."""
    count = length
    for _ in range(4):
        data = reference_fit_res([np.zeros(count, np.uint8)], 1, {})
        if len(data) == length:
            return data
        count += length - len(data)
    raise AssertionError(f"no FitRes of {length} bytes")


def fit_ins_of_length(length: int) -> bytes:
    count = length
    for _ in range(4):
        data = encode_fit_ins(FitIns([np.zeros(count, np.uint8)]))
        if len(data) == length:
            return data
        count += length - len(data)
    raise AssertionError(f"no FitIns of {length} bytes")


def test_the_thresholds_pick_the_path():
    """Just below a threshold protobuf does the work; from it up, the in-place path."""
    calls: list[str] = []
    frame, split = framing.frame, framing.split_tensors

    def counting_frame(*args: Any) -> bytes:
        calls.append("frame")
        return frame(*args)

    def counting_split(*args: Any) -> Any:
        calls.append("split")
        return split(*args)

    small_fit_ins = encode_fit_ins(FitIns([np.zeros(1, np.uint8)]))
    fit_ins = {length: fit_ins_of_length(length) for length in (framing.SPLIT_MIN_BYTES - 1, framing.SPLIT_MIN_BYTES)}
    header_bytes = len(npy_pieces(np.zeros(framing.FRAME_MIN_BYTES, np.uint8))[0])
    with forced(framing, "frame", counting_frame), forced(framing, "split_tensors", counting_split):
        for npy_file_bytes, expected in ((framing.FRAME_MIN_BYTES - 1, []), (framing.FRAME_MIN_BYTES, ["frame"])):
            calls.clear()
            tensor = np.zeros(npy_file_bytes - header_bytes, np.uint8)
            assert len(b"".join(npy_pieces(tensor))) == npy_file_bytes
            ClientSession(Recorder([tensor], 1, {})).receive_bytes(small_fit_ins)
            assert calls == expected, npy_file_bytes
        for length, expected in ((framing.SPLIT_MIN_BYTES - 1, []), (framing.SPLIT_MIN_BYTES, ["split"])):
            calls.clear()
            ClientSession(Recorder([np.zeros(1, np.uint8)], 1, {})).receive_bytes(fit_ins[length])
            assert calls == expected, length
        for length, expected in ((server_role.IN_PLACE_DECODE_BYTES - 1, []),
                                 (server_role.IN_PLACE_DECODE_BYTES, ["split"])):
            calls.clear()
            decode_fit_reply(fit_res_of_length(length), [])
            assert calls == expected, length


# ---------------------------------------------------------------------------- the .npy header caches


def test_a_header_is_parsed_once_then_found_by_its_bytes(monkeypatch):
    npy._parsed_header.cache_clear()
    parses: list[int] = []
    real = npy.NPY_FORMAT.read_array_header_1_0
    monkeypatch.setattr(npy.NPY_FORMAT, "read_array_header_1_0",
                        lambda f, *a, **k: parses.append(1) or real(f, *a, **k))
    data = npy_bytes(np.arange(250, dtype=np.float32))
    for _ in range(3):
        np.testing.assert_array_equal(bytes_to_ndarray(data), np.arange(250, dtype=np.float32))
    assert parses == [1]


def test_a_different_header_of_the_same_length_is_not_confused_with_a_cached_one():
    npy._parsed_header.cache_clear()
    good = npy_bytes(np.arange(250, dtype="<f8"))
    assert read_npy_header(good).shape == (250,)
    same_length = {  # each header as long as good's, one byte or more different
        "shape": (good.replace(b"(250,)", b"(125,)")[:-1000], np.dtype("<f8"), (125,)),
        "dtype": (good.replace(b"'<f8'", b"'<i8'"), np.dtype("<i8"), (250,)),
        "order": (good.replace(b"False", b"True "), np.dtype("<f8"), (250,)),
    }
    for name, (data, dtype, shape) in same_length.items():
        header = read_npy_header(data)
        assert header.data_offset == read_npy_header(good).data_offset, name  # the same header length
        assert (header.dtype, header.shape) == (dtype, shape), name
    assert read_npy_header(same_length["order"][0]).fortran_order
    hostile = good.replace(b"'<f8'", b"'|O8'")  # pickled objects, same length
    with pytest.raises(CodecError, match="object arrays are not accepted"):
        bytes_to_ndarray(hostile, "t")
    with pytest.raises(CodecError, match="object arrays are not accepted"):
        bytes_to_ndarray(hostile, "t")  # still refused: refusals are not cached
    assert read_npy_header(good).dtype == np.dtype("<f8")


def test_a_cached_header_still_checks_its_data_size():
    npy._parsed_header.cache_clear()
    data = npy_bytes(np.arange(10, dtype=np.int32))
    bytes_to_ndarray(data)
    with pytest.raises(CodecError, match="truncated .npy data"):
        bytes_to_ndarray(data[:-1], "t")
    with pytest.raises(CodecError, match="1 unexpected bytes after the .npy data"):
        bytes_to_ndarray(data + b"\0", "t")


def test_the_header_caches_are_bounded_and_hold_no_refusals():
    npy._parsed_header.cache_clear()
    for size in range(3 * HEADER_CACHE_ENTRIES):  # a peer sending ever-new headers
        read_npy_header(npy_bytes(np.zeros(size, np.uint8)))
    assert npy._parsed_header.cache_info().currsize == HEADER_CACHE_ENTRIES
    npy._parsed_header.cache_clear()
    for _ in range(3):
        with pytest.raises(CodecError):
            read_npy_header(npy_bytes(np.zeros(3, np.uint8)).replace(b"'|u1'", b"'|O8'"))
    assert npy._parsed_header.cache_info().currsize == 0
    for size in range(3 * HEADER_CACHE_ENTRIES):
        npy_pieces(np.zeros(size, np.uint8))
    assert npy._written_header.cache_info().currsize == HEADER_CACHE_ENTRIES


def test_written_headers_are_numpys_for_every_dtype_shape_and_order_also_when_cached():
    arrays = [np.zeros((2, 3), "<f4"), np.zeros((2, 3), ">f4"), np.zeros((3, 2), "<f4"),
              np.asfortranarray(np.zeros((2, 3), "<f4")), np.zeros((2, 3), "<f4")[:, ::2], np.zeros((), "|b1")]
    for _ in range(2):
        for array in arrays:
            assert b"".join(npy_pieces(array)) == npy_bytes(array), (array.dtype, array.shape, array.flags)
    with pytest.raises(CodecError, match="object arrays are not accepted"):
        npy_pieces(np.zeros(2, object), "t")
    with pytest.raises(CodecError, match="object arrays are not accepted"):
        npy_pieces(np.zeros(2, object), "t")
