"""Tensor formats keyed on ``Parameters.tensor_type``: one small registry, sans-IO, numpy only.

``Parameters.tensor_type`` names how each entry of ``Parameters.tensors`` is encoded. Two
formats are built in:

- ``"numpy.ndarray"`` (:data:`~fedproto.npy.TENSOR_TYPE`, the default): each tensor is one .npy
  file, as flwr writes it. It carries its own dtype and shape; :mod:`fedproto.npy` encodes and
  checks it.
- ``"cpp_double"`` (:data:`CPP_DOUBLE`): each tensor is the raw bytes of a flat array of
  IEEE-754 float64, **little-endian**, 8 bytes per element, no header. This is what the
  ``quickstart-cpp`` client of Flower's C++ SDK sends (it writes the memory of a
  ``std::vector<double>``, i.e. host byte order, which is little-endian on x86 and ARM; the
  example's Python strategy reads it with ``struct`` native order): see ``docs/cpp-sdk.md``.
  The format has no shape and no dtype, so they come from the global model: decoding with a
  reference array ``like`` gives an array of ``like``'s shape and dtype (a float64 value is
  rounded to ``like``'s float dtype, as the global model keeps its dtype); without ``like``
  it gives the flat float64 array. Encoding accepts float16/32/64 arrays of any shape and
  writes their elements in C (row-major) order. float64 round-trips bit for bit (NaN payloads
  included); float16/32 values round-trip exactly too, except that a signaling NaN arrives as
  a quiet NaN (converting it to a double sets the quiet bit).

A porter adds a format with :func:`register`::

    register("my_format", encode, decode)

``encode(array, field) -> bytes`` and ``decode(data, field, like) -> ndarray`` (``like`` is the
global model's tensor at the same position, or None). Whatever a format's decoder does with
hostile bytes, :func:`decode_parameters` hands back plain numeric/bool arrays within the size
limit (:func:`~fedproto.npy.dtype_refusal`, :func:`~fedproto.npy.shape_refusal`) or raises
:class:`~fedproto.errors.CodecError` naming the field: an exception other than CodecError, or a
result that is not such an array, becomes a CodecError.

NaN and Inf are values like any other to every format (as for .npy); the server checks
finiteness separately (``fedproto.codec.all_finite``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import NamedTuple, TypeVar

import numpy as np

from fedproto.errors import CodecError
from fedproto.npy import TENSOR_TYPE, bytes_to_ndarray, dtype_refusal, ndarray_to_bytes, npy_pieces, shape_refusal
from fedproto.transport_pb2 import Parameters
from fedproto.wire import MAX_MESSAGE_LENGTH

CPP_DOUBLE = "cpp_double"

CPP_DOUBLE_DTYPE = np.dtype("<f8")  # the byte order is fixed here, not left to the host

Encoder = Callable[[np.ndarray, str], bytes]
Decoder = Callable[[bytes, str, "np.ndarray | None"], np.ndarray]
# One tensor's bytes as pieces whose concatenation is what its Encoder returns (views, not copies).
Pieces = list[bytes | memoryview]
PiecesEncoder = Callable[[np.ndarray, str], Pieces]  # array, field -> pieces


@dataclass(frozen=True)
class TensorFormat:
    """One way of putting a tensor into the bytes of ``Parameters.tensors``.

    ``pieces`` (built-in formats) gives a tensor's bytes as pieces that view the array, so that
    :mod:`fedproto.framing` copies them once, into the message; a format without it is encoded
    with ``encode``. A built-in decoder also reads a memoryview of the received message in
    place; a registered one gets ``bytes``.
    """

    name: str
    encode: Encoder
    decode: Decoder
    pieces: PiecesEncoder | None = None

    def encode_pieces(self, array: np.ndarray, field: str) -> Pieces:
        return self.pieces(array, field) if self.pieces else [self.encode(array, field)]


_FORMATS: dict[str, TensorFormat] = {}


def register(name: str, encode: Encoder, decode: Decoder, pieces: PiecesEncoder | None = None) -> TensorFormat:
    """Add a format under ``name`` (the ``tensor_type`` its peers send). Names are unique."""
    if not isinstance(name, str) or not name:
        raise ValueError(f"a tensor format needs a non-empty str name, got {name!r}")
    if name in _FORMATS:
        raise ValueError(f"tensor format {name!r} is already registered")
    tensor_format = TensorFormat(name, encode, decode, pieces)
    _FORMATS[name] = tensor_format
    return tensor_format


def unregister(name: str) -> None:
    """Remove a format added with :func:`register` (the built-in ones stay)."""
    if name in (TENSOR_TYPE, CPP_DOUBLE):
        raise ValueError(f"the built-in tensor format {name!r} cannot be removed")
    del _FORMATS[name]


def registered() -> tuple[str, ...]:
    """The ``tensor_type`` names this process can decode, built-in ones first."""
    return tuple(_FORMATS)


def get_format(tensor_type: str, field: str = "parameters") -> TensorFormat:
    """The format named ``tensor_type``; an unknown name is a CodecError on ``field.tensor_type``."""
    try:
        return _FORMATS[tensor_type]
    except (KeyError, TypeError):
        known = ", ".join(repr(name) for name in _FORMATS)
        raise CodecError(
            f"{field}.tensor_type", f"unknown tensor_type {tensor_type!r} (expected one of {known})"
        ) from None


# ---------------------------------------------------------------------------- parameters


class EncodedTensors(NamedTuple):
    """The tensors of one Parameters, checked and ready to be written: per tensor, its pieces."""

    tensor_type: str
    tensors: list[Pieces]


def encode_tensors(
    arrays: Iterable[np.ndarray], tensor_type: str = TENSOR_TYPE, field: str = "parameters"
) -> EncodedTensors:
    """A list of ndarrays -> their bytes in format ``tensor_type``, as pieces (views where possible).

    Every refusal is a CodecError naming the tensor, raised here, before anything is written.
    """
    tensor_format = get_format(tensor_type, field)
    if isinstance(arrays, np.ndarray):
        raise CodecError(field, "expected a list of ndarrays, got a single ndarray")
    try:
        items = list(arrays)
    except TypeError:
        raise CodecError(field, f"expected a list of ndarrays, got {type(arrays).__name__}") from None
    tensors = []
    for i, array in enumerate(items):
        tensor_field = f"{field}.tensors[{i}]"
        if not isinstance(array, np.ndarray):
            raise CodecError(tensor_field, f"expected a numpy.ndarray, got {type(array).__name__}")
        tensors.append(_call(tensor_format.encode_pieces, tensor_format.name, tensor_field, array, tensor_field))
    return EncodedTensors(tensor_type, tensors)


def encode_parameters(
    arrays: Iterable[np.ndarray], tensor_type: str = TENSOR_TYPE, field: str = "parameters",
    *, out: Parameters | None = None,
) -> Parameters:
    """A list of ndarrays -> Parameters in format ``tensor_type``.

    With ``out`` (e.g. ``reply.fit_res.parameters``) the tensors are written straight into that
    message. Every refusal is a CodecError naming the tensor. (To get a message's wire bytes,
    :func:`fedproto.framing.frame` writes the tensors with one copy fewer.)
    """
    encoded = encode_tensors(arrays, tensor_type, field)
    parameters = Parameters() if out is None else out
    parameters.tensor_type = tensor_type
    parameters.tensors.extend(b"".join(pieces) for pieces in encoded.tensors)
    return parameters


def decode_parameters(
    parameters: Parameters, field: str = "parameters", like: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Parameters -> list of ndarrays, in the format its ``tensor_type`` names (:func:`decode_tensors`)."""
    return decode_tensors(parameters.tensors, parameters.tensor_type, field, like)


def decode_tensors(
    tensors: Sequence[bytes | memoryview], tensor_type: str, field: str = "parameters",
    like: Sequence[np.ndarray] | None = None,
) -> list[np.ndarray]:
    """The entries of ``Parameters.tensors`` (bytes, or views of a received message) -> ndarrays.

    ``like`` is the global model: its i-th array gives a shapeless format the shape and dtype of
    tensor i, so it must then have exactly as many arrays as there are tensors. No tensors
    (whatever the tensor_type) is an empty list. A .npy tensor decodes to a read-only view of its
    bytes (:func:`fedproto.npy.bytes_to_ndarray`); cpp_double to a new array.
    """
    if not tensors:
        return []
    tensor_format = get_format(tensor_type, field)
    if like is not None and len(like) != len(tensors):
        raise CodecError(f"{field}.tensors", f"{len(tensors)} tensors, the global model has {len(like)}")
    if tensor_format.name == TENSOR_TYPE:  # the usual format, its decoder called directly: once per reply at scale
        return [bytes_to_ndarray(data, f"{field}.tensors[{i}]") for i, data in enumerate(tensors)]
    built_in = tensor_format.name == CPP_DOUBLE
    arrays = []
    for i, data in enumerate(tensors):
        tensor_field = f"{field}.tensors[{i}]"
        reference = None if like is None else like[i]
        if not built_in and not isinstance(data, bytes):
            data = bytes(data)  # a registered decoder is promised bytes
        array = _call(tensor_format.decode, tensor_format.name, tensor_field, data, tensor_field, reference)
        # A built-in decoder's result meets the rule by construction (.npy: its header was checked;
        # cpp_double: float64 within the limit); checking it again is a per-tensor cost of nothing.
        arrays.append(array if built_in else _checked(array, tensor_format.name, tensor_field))
    return arrays


Result = TypeVar("Result")


def _call(function: Callable[..., Result], format_name: str, field: str, *args: object) -> Result:
    """Run a format's encoder or decoder; whatever it raises becomes a CodecError on ``field``."""
    try:
        return function(*args)
    except CodecError:
        raise
    except Exception as error:  # a porter's format, or a numpy limit nobody foresaw
        raise CodecError(field, f"{format_name}: {type(error).__name__}: {error}") from None


def _checked(array: object, format_name: str, field: str) -> np.ndarray:
    """A decoder's result, refused unless it is a plain numeric/bool ndarray within the limit."""
    if not isinstance(array, np.ndarray):
        raise CodecError(field, f"{format_name} decoder returned {type(array).__name__}, not an ndarray")
    refusal = dtype_refusal(array.dtype) or shape_refusal(array.shape, array.dtype.itemsize)
    if refusal:
        raise CodecError(field, f"{format_name} decoder: {refusal}")
    return array


# ---------------------------------------------------------------------------- numpy.ndarray


def _decode_npy(data: bytes | memoryview, field: str, like: np.ndarray | None) -> np.ndarray:
    # A .npy tensor describes itself; comparing it with the global model is the server's check.
    return bytes_to_ndarray(data, field)


# ---------------------------------------------------------------------------- cpp_double


def _encode_cpp_double(array: np.ndarray, field: str) -> bytes:
    if array.dtype.kind != "f" or array.dtype.itemsize not in (2, 4, 8):
        raise CodecError(field, f"cpp_double carries float64 only; dtype {array.dtype.str} is not a float16/32/64")
    if array.size * CPP_DOUBLE_DTYPE.itemsize > MAX_MESSAGE_LENGTH:
        raise CodecError(field, f"{array.size} doubles are over the {MAX_MESSAGE_LENGTH}-byte message limit")
    with np.errstate(invalid="ignore"):  # a float16 NaN converts to a NaN, quietly
        return array.astype(CPP_DOUBLE_DTYPE).tobytes(order="C")


def _cpp_double_pieces(array: np.ndarray, field: str) -> Pieces:
    """A little-endian float64 C-contiguous array is written as is; any other is converted (one copy)."""
    if array.dtype == CPP_DOUBLE_DTYPE and array.flags.c_contiguous:
        if array.size * CPP_DOUBLE_DTYPE.itemsize > MAX_MESSAGE_LENGTH:
            raise CodecError(field, f"{array.size} doubles are over the {MAX_MESSAGE_LENGTH}-byte message limit")
        return [array.reshape(-1).view(np.uint8).data]
    return [_encode_cpp_double(array, field)]


def _decode_cpp_double(data: bytes | memoryview, field: str, like: np.ndarray | None) -> np.ndarray:
    data = memoryview(data).cast("B")
    if len(data) > MAX_MESSAGE_LENGTH:
        raise CodecError(field, f"{len(data)} bytes are over the {MAX_MESSAGE_LENGTH}-byte message limit")
    if len(data) % CPP_DOUBLE_DTYPE.itemsize:
        raise CodecError(field, f"cpp_double data of {len(data)} bytes is not a whole number of 8-byte doubles")
    count = len(data) // CPP_DOUBLE_DTYPE.itemsize
    if like is not None:
        if like.dtype.kind != "f":
            raise CodecError(field, f"cpp_double carries float64; the global model's tensor is {like.dtype.str}")
        if count != like.size:
            raise CodecError(
                field, f"cpp_double data holds {count} doubles; the global model's tensor {like.shape} has {like.size}"
            )
    flat = np.frombuffer(data, dtype=CPP_DOUBLE_DTYPE).astype(np.float64)  # a native, writable copy
    if like is None:
        return flat
    # A double beyond float32's range becomes Inf, which the server's finiteness check refuses.
    with np.errstate(over="ignore", invalid="ignore"):
        return flat.astype(like.dtype).reshape(like.shape)


register(TENSOR_TYPE, ndarray_to_bytes, _decode_npy, npy_pieces)
register(CPP_DOUBLE, _encode_cpp_double, _decode_cpp_double, _cpp_double_pieces)
