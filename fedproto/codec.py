"""Parameters and Scalars to and from the wire, exactly as flwr encodes them.

- Parameters: :func:`ndarrays_to_parameters` and :func:`parameters_to_ndarrays` write and read
  ``Parameters`` in the format its ``tensor_type`` names (:mod:`fedproto.tensor_formats`); the
  default is flwr's, one .npy file per tensor (:mod:`fedproto.npy`, which says which tensors are
  accepted and how a hostile header is refused).
- A Scalar is one of six kinds. Python ``bool`` -> bool, ``bytes`` -> bytes, ``float`` ->
  double, ``str`` -> string, ``int`` -> sint64 (uint64 above 2**63-1, as flwr does).
  NumPy scalars (``np.float32(0.5)``, ``np.int64(3)``, ``np.bool_``) are accepted and sent
  as the matching Python kind. Decoding gives bool, bytes, float, str or int (uint64 too).

Every failure is a :class:`~fedproto.errors.CodecError` naming the field, e.g.
``FitIns.parameters.tensors[2]: object arrays are not accepted`` or
``config['lr']: NoneType is not a Scalar kind (use bool, bytes, float, int or str)``.

``CodecError`` (:mod:`fedproto.errors`) and the .npy names a caller needs (``TENSOR_TYPE``,
``ndarray_to_bytes``, ``bytes_to_ndarray``, from :mod:`fedproto.npy`) are importable from here too.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np

from fedproto.errors import CodecError
from fedproto.npy import (
    NPY_FORMAT,
    TENSOR_TYPE,
    bytes_to_ndarray,
    dtype_refusal,
    ndarray_to_bytes,
    read_npy_header,
    shape_refusal,
)
from fedproto.tensor_formats import decode_parameters, encode_parameters
from fedproto.transport_pb2 import Parameters, Scalar

__all__ = [
    "SINT64_MAX", "SINT64_MIN", "UINT64_MAX", "ScalarValue", "all_finite", "ndarrays_to_parameters",
    "parameters_to_ndarrays", "scalar_from_proto", "scalar_to_proto", "scalars_from_proto", "scalars_to_proto",
    # defined in fedproto.errors and fedproto.npy, importable from here too
    "TENSOR_TYPE", "CodecError", "bytes_to_ndarray", "ndarray_to_bytes",
    # still imported from here by fedproto.handler, kit/trace.py and bench/npy_decode.py; their home is fedproto.npy
    "NPY_FORMAT", "dtype_refusal", "read_npy_header", "shape_refusal",
]

SINT64_MIN = -(2**63)
SINT64_MAX = 2**63 - 1
UINT64_MAX = 2**64 - 1

ScalarValue = bool | bytes | float | int | str


# ---------------------------------------------------------------------------- parameters


def ndarrays_to_parameters(
    arrays: Iterable[np.ndarray], field: str = "parameters", *, out: Parameters | None = None,
    tensor_type: str = TENSOR_TYPE,
) -> Parameters:
    """A list of ndarrays -> Parameters in format ``tensor_type`` (default .npy, "numpy.ndarray").

    With ``out`` (e.g. ``reply.fit_res.parameters``) the tensors are written straight into
    that message, so each one is copied into protobuf once, not again when nesting it. The
    formats are those of :mod:`fedproto.tensor_formats`.
    """
    return encode_parameters(arrays, tensor_type, field, out=out)


def parameters_to_ndarrays(
    parameters: Parameters, field: str = "parameters", like: Sequence[np.ndarray] | None = None
) -> list[np.ndarray]:
    """Parameters -> list of ndarrays, in the format its ``tensor_type`` names.

    An empty Parameters() (no tensors) is an empty list. ``like`` (the global model) gives a
    shapeless format such as "cpp_double" its shapes and dtypes (:mod:`fedproto.tensor_formats`).
    """
    return decode_parameters(parameters, field, like)


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
    value: ScalarValue = getattr(scalar, kind)
    return value


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
    # kind f or c is numpy's inexact (floating, complex): the dtype's kind is cheaper to ask per reply.
    return all(bool(np.isfinite(a).all()) for a in arrays if a.dtype.kind in "fc")
