"""Tensors and Scalars to and from the wire, exactly as flwr encodes them.

- A tensor is one complete .npy file written by ``numpy.save(..., allow_pickle=False)``;
  ``Parameters.tensor_type`` is ``"numpy.ndarray"``. Decoding reads the .npy header with
  ``numpy.lib.format`` and checks it before allocating anything: exactly one array (no .npz),
  no object dtype (no pickle), and exactly as many data bytes as the header announces.
- A Scalar is one of six kinds. Python ``bool`` -> bool, ``bytes`` -> bytes, ``float`` ->
  double, ``str`` -> string, ``int`` -> sint64 (uint64 above 2**63-1, as flwr does).
  NumPy scalars (``np.float32(0.5)``, ``np.int64(3)``, ``np.bool_``) are accepted and sent
  as the matching Python kind. Decoding gives bool, bytes, float, str or int (uint64 too).

Every failure is a :class:`CodecError` naming the field, e.g.
``FitIns.parameters.tensors[2]: object arrays are not accepted``.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fedproto.errors import FedprotoError
from fedproto.transport_pb2 import Parameters, Scalar

TENSOR_TYPE = "numpy.ndarray"

NPY_FORMAT = np.lib.format
NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive is a zip file

SINT64_MIN = -(2**63)
SINT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

ScalarValue = bool | bytes | float | int | str


class CodecError(FedprotoError, ValueError):
    """A value that cannot cross the wire; ``field`` says where, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


# ---------------------------------------------------------------------------- tensors


def ndarray_to_bytes(array: np.ndarray, field: str = "tensor") -> bytes:
    """One ndarray -> the bytes of one .npy file (what flwr puts in Parameters.tensors)."""
    if not isinstance(array, np.ndarray):
        raise CodecError(field, f"expected a numpy.ndarray, got {type(array).__name__}")
    if array.dtype.hasobject:
        raise CodecError(field, "object arrays are not accepted")
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def bytes_to_ndarray(data: bytes, field: str = "tensor") -> np.ndarray:
    """The bytes of one .npy file -> ndarray.

    The header is read (``numpy.lib.format``) and checked before any array memory is
    allocated: pickled (object) arrays, .npz archives, bad headers, truncated data and trailing
    bytes are all refused with a reason. The data is then copied out of ``data`` with
    ``numpy.frombuffer`` instead of handing the bytes to ``numpy.lib.format.read_array``, which
    would parse the header a second time (the parse dominates for small tensors: see
    ``bench/codec.py``). The result equals ``numpy.load``'s: dtype, shape, memory order,
    values, writable (``tests/test_codec.py::test_decoding_equals_numpy_load``).
    """
    if data.startswith(ZIP_MAGIC):  # what np.savez writes; np.load would accept it
        raise CodecError(field, "expected one .npy array, got an .npz archive")
    if not data.startswith(NPY_FORMAT.MAGIC_PREFIX):
        raise CodecError(
            field, f"not a .npy tensor (starts with {data[:6]!r}, expected {NPY_FORMAT.MAGIC_PREFIX!r})"
        )
    buffer = io.BytesIO(data)
    try:
        version = NPY_FORMAT.read_magic(buffer)
        if version not in NPY_VERSIONS:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        # 3.0 differs from 2.0 only in the header's text encoding (utf-8 field names),
        # which changes no size, so the 2.0 reader is enough for these checks.
        if version == (1, 0):
            shape, fortran_order, dtype = NPY_FORMAT.read_array_header_1_0(buffer)
        else:
            shape, fortran_order, dtype = NPY_FORMAT.read_array_header_2_0(buffer)
    except Exception as error:  # numpy's header parser raises ValueError, EOFError, TokenError...
        raise CodecError(field, f"bad .npy header ({type(error).__name__}: {error})") from None
    if dtype.hasobject:
        raise CodecError(field, "object arrays are not accepted (pickled .npy)")
    if any(size < 0 for size in shape):
        raise CodecError(field, f"bad .npy header (negative size in shape {shape})")
    expected = math.prod(shape) * dtype.itemsize
    available = len(data) - buffer.tell()
    if available < expected:
        raise CodecError(
            field, f"truncated .npy data: {dtype} {shape} needs {expected} bytes, got {available}"
        )
    if available > expected:
        raise CodecError(field, f"{available - expected} unexpected bytes after the .npy data")
    if expected == 0:  # no data to copy: numpy builds the empty array (rare, so parse again)
        buffer.seek(0)
        return NPY_FORMAT.read_array(buffer, allow_pickle=False)
    order = "F" if fortran_order else "C"
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=buffer.tell())
    return flat.reshape(shape, order=order).copy(order=order)


def ndarrays_to_parameters(
    arrays: Iterable[np.ndarray], field: str = "parameters", *, out: Parameters | None = None
) -> Parameters:
    """A list of ndarrays -> Parameters(tensors=[.npy, ...], tensor_type="numpy.ndarray").

    With ``out`` (e.g. ``reply.fit_res.parameters``) the tensors are written straight into
    that message, so each one is copied into protobuf once, not again when nesting it.
    """
    if isinstance(arrays, np.ndarray):
        raise CodecError(field, "expected a list of ndarrays, got a single ndarray")
    try:
        items = list(arrays)
    except TypeError:
        raise CodecError(field, f"expected a list of ndarrays, got {type(arrays).__name__}") from None
    parameters = Parameters() if out is None else out
    parameters.tensor_type = TENSOR_TYPE
    for i, array in enumerate(items):
        parameters.tensors.append(ndarray_to_bytes(array, f"{field}.tensors[{i}]"))
    return parameters


def parameters_to_ndarrays(parameters: Parameters, field: str = "parameters") -> list[np.ndarray]:
    """Parameters -> list of ndarrays. An empty Parameters() (no tensors) is an empty list."""
    if parameters.tensors and parameters.tensor_type != TENSOR_TYPE:
        raise CodecError(
            f"{field}.tensor_type",
            f"unknown tensor_type {parameters.tensor_type!r} (expected {TENSOR_TYPE!r})",
        )
    return [
        bytes_to_ndarray(data, f"{field}.tensors[{i}]")
        for i, data in enumerate(parameters.tensors)
    ]


# ---------------------------------------------------------------------------- scalars


def scalar_to_proto(value: object, field: str = "scalar") -> Scalar:
    """A Python value -> Scalar. bool is tested before int because bool is an int subclass."""
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, bool):
        return Scalar(bool=value)
    if isinstance(value, bytes):
        return Scalar(bytes=value)
    if isinstance(value, float):
        return Scalar(double=value)
    if isinstance(value, int):
        if SINT64_MIN <= value <= SINT64_MAX:
            return Scalar(sint64=value)
        if SINT64_MAX < value <= UINT64_MAX:
            return Scalar(uint64=value)
        raise CodecError(field, f"int {value} does not fit in sint64 or uint64")
    if isinstance(value, str):
        return Scalar(string=value)
    raise CodecError(
        field, f"{type(value).__name__} is not a Scalar kind (use bool, bytes, float, int or str)"
    )


def scalar_from_proto(scalar: Scalar, field: str = "scalar") -> ScalarValue:
    """Scalar -> Python value. A Scalar with no kind set is an error, not a silent None."""
    kind = scalar.WhichOneof("scalar")
    if kind is None:
        raise CodecError(field, "Scalar has no value set")
    return getattr(scalar, kind)


def scalars_to_proto(values: Mapping[str, object], field: str = "config") -> dict[str, Scalar]:
    """A dict of Python values -> dict of Scalars, ready for a protobuf map field."""
    if not isinstance(values, Mapping):
        raise CodecError(field, f"expected a dict of Scalars, got {type(values).__name__}")
    out = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise CodecError(field, f"key {key!r} is not a str")
        out[key] = scalar_to_proto(value, f"{field}[{key!r}]")
    return out


def scalars_from_proto(values: Mapping[str, Scalar], field: str = "config") -> dict[str, ScalarValue]:
    """A protobuf map of Scalars -> dict of Python values."""
    return {key: scalar_from_proto(value, f"{field}[{key!r}]") for key, value in values.items()}


def all_finite(arrays: Sequence[np.ndarray]) -> bool:
    """True if no floating-point tensor holds NaN or Inf (integer tensors always pass)."""
    return all(
        bool(np.isfinite(a).all()) for a in arrays if np.issubdtype(a.dtype, np.inexact)
    )
