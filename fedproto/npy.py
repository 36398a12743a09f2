"""The .npy tensor format, exactly as flwr writes it, and what any model tensor may be.

A tensor is one complete .npy file written by ``numpy.save(..., allow_pickle=False)``;
``Parameters.tensor_type`` is :data:`TENSOR_TYPE`, ``"numpy.ndarray"``, flwr's default.
The headers are numpy's own (``numpy.lib.format``); hand-written here are the checks a hostile
header gets before anything is allocated (:func:`read_npy_header`): exactly one array (no .npz),
an allowed dtype, a bounded shape, and exactly as many data bytes as the header announces; and
the two fast paths that view an array's memory instead of copying it (:func:`npy_pieces` on
the way out, :func:`bytes_to_ndarray` on the way in).

The one rule for tensors: any input either decodes to a plain numeric/bool ndarray of at most
``MAX_MESSAGE_LENGTH`` bytes, or raises :class:`~fedproto.errors.CodecError` naming the field,
whatever numpy would have raised (ValueError, OverflowError, TypeError, tokenize.TokenError,
SyntaxError, MemoryError, ...). :func:`dtype_refusal` and :func:`shape_refusal` are that rule;
:mod:`fedproto.tensor_formats` applies it to every registered format's output too. The dtypes a model may
carry (:data:`ALLOWED_DTYPE_KINDS`), in either byte order:

- bool (``b1``), signed and unsigned ints of 1, 2, 4 or 8 bytes, float16/32/64;
- complex64 and complex128: fixed-size pairs of IEEE floats that numpy averages like any other
  number (a porter reads them as two floats), so nothing about them is unsafe;
- refused: float128/longdouble and complex256 (their layout is the platform's: 80-bit x87
  padded to 16 bytes on x86, IEEE quad on aarch64, absent on MSVC, so the same bytes mean
  different numbers on different peers), sub-array and structured/void dtypes, zero-itemsize
  dtypes, bytes/unicode strings, datetime/timedelta and object (pickle). Encoding refuses the
  same dtypes, so what fedproto sends it also accepts.

Every failure is a CodecError naming the field, e.g.
``FitIns.parameters.tensors[2]: object arrays are not accepted``.
"""

from __future__ import annotations

import functools
import io
import math
from typing import Literal, NamedTuple

import numpy as np

from fedproto.errors import CodecError, FedprotoError
from fedproto.text import bound_text
from fedproto.wire import MAX_MESSAGE_LENGTH

TENSOR_TYPE = "numpy.ndarray"  # the Parameters.tensor_type of .npy tensors

NPY_FORMAT = np.lib.format
NPY_VERSIONS = ((1, 0), (2, 0), (3, 0))
ZIP_MAGIC = b"PK\x03\x04"  # an .npz archive is a zip file

# dtype kind -> the item sizes a model tensor may have (bool, int, uint, float, complex).
ALLOWED_DTYPE_KINDS = {
    "b": (1,),
    "i": (1, 2, 4, 8),
    "u": (1, 2, 4, 8),
    "f": (2, 4, 8),
    "c": (8, 16),
}
MAX_DIMENSIONS = 32  # numpy 1.x's limit (2.x allows 64); no model tensor comes near it
# magic + version + header length + numpy's largest accepted header (max_header_size=10,000
# characters, up to 4 bytes each in a 3.0 header's UTF-8)
NPY_HEADER_PREFIX = 6 + 2 + 4 + 4 * 10_000
# Parsed headers kept, keyed by the header's bytes (magic to the data): every client of a round
# sends the same header, and numpy's parser (``ast.literal_eval``) was 9% of the server's time at
# 10,000 clients. Also how many written headers are kept per (dtype, shape, order). Bounded
# (least recently used out), so a peer sending ever-new headers costs parses, not memory.
HEADER_CACHE_ENTRIES = 64


class _Refused(FedprotoError):
    """A refusal that does not know its field yet (raised inside the caches, never cached)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NpyHeader(NamedTuple):
    """What a checked .npy header announces; the data starts at ``data_offset``."""

    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int


def dtype_refusal(dtype: np.dtype) -> str | None:
    """Why ``dtype`` may not carry a model tensor, or None if it may."""
    if dtype.hasobject:
        return "object arrays are not accepted"
    if dtype.subdtype is not None:
        return f"sub-array dtype {dtype.str} {dtype.shape} is not accepted"
    if dtype.names is not None:
        return f"structured dtype {dtype.descr} is not accepted"
    sizes = ALLOWED_DTYPE_KINDS.get(dtype.kind)
    if sizes is None:
        return f"dtype {dtype.str} is not accepted (only bool, int, uint, float, complex)"
    if dtype.itemsize not in sizes:
        return f"dtype {dtype.str} is not accepted (item size {dtype.itemsize} not in {list(sizes)})"
    return None


def shape_refusal(shape: tuple[int, ...], itemsize: int) -> str | None:
    """Why an array of ``shape`` may not be built, or None; checked before anything is allocated.

    The product of the non-zero dimensions bounds every dimension, so an empty array such as
    ``(0, 10**30)`` is refused too (numpy would raise "array is too big").
    """
    if len(shape) > MAX_DIMENSIONS:
        return f"{len(shape)} dimensions (at most {MAX_DIMENSIONS})"
    nbytes = itemsize
    for size in shape:
        if type(size) is not int or size < 0:  # bool is an int to numpy's header check
            return f"shape {shape} is not a tuple of non-negative ints"
        nbytes *= max(size, 1)
        if nbytes > MAX_MESSAGE_LENGTH:
            return f"shape {shape} is over the {MAX_MESSAGE_LENGTH}-byte message limit"
    return None


def npy_pieces(array: np.ndarray, field: str = "tensor") -> list[bytes | memoryview]:
    """One ndarray -> the pieces of its .npy file, whose concatenation is what ``numpy.save`` writes.

    ``[header, data]``: the header from numpy's own writer (``numpy.lib.format``; version 1.0, as
    ``numpy.save`` picks for any shape of at most ``MAX_DIMENSIONS`` dimensions) and the data as a
    flat memoryview of the array's bytes, no copy: a C-contiguous array as is, a Fortran-ordered
    one through its ``.T`` (its header says ``fortran_order``), as ``numpy.save`` does. Only an
    array that is neither (e.g. a strided slice) is copied, once, into C order.
    """
    if not isinstance(array, np.ndarray):
        raise CodecError(field, f"expected a numpy.ndarray, got {type(array).__name__}")
    flags = array.flags
    fortran_order = not flags.c_contiguous and flags.f_contiguous  # numpy.save's choice
    try:
        header = _written_header(array.dtype, array.shape, fortran_order)
    except _Refused as refused:
        raise CodecError(field, refused.reason) from None
    if flags.c_contiguous:
        data = array
    elif fortran_order:
        data = array.T
    else:
        data = np.ascontiguousarray(array)
    return [header, data.reshape(-1).view(np.uint8).data]


@functools.lru_cache(maxsize=HEADER_CACHE_ENTRIES)
def _written_header(dtype: np.dtype, shape: tuple[int, ...], fortran_order: bool) -> bytes:
    """The checked .npy 1.0 header of an array (numpy's writer), kept: a model's shapes repeat."""
    refusal = dtype_refusal(dtype) or shape_refusal(shape, dtype.itemsize)
    if refusal:
        raise _Refused(refusal)
    header = io.BytesIO()
    NPY_FORMAT.write_array_header_1_0(
        header, {"descr": NPY_FORMAT.dtype_to_descr(dtype), "fortran_order": fortran_order, "shape": shape})
    return header.getvalue()


def ndarray_to_bytes(array: np.ndarray, field: str = "tensor") -> bytes:
    """One ndarray -> the bytes of one .npy file (what flwr puts in Parameters.tensors)."""
    return b"".join(npy_pieces(array, field))


def read_npy_header(data: bytes | memoryview, field: str = "tensor") -> NpyHeader:
    """Check one .npy file (bytes or a view of them) without building its array or copying its data.

    Every refusal is a CodecError. Only the header's bytes (at most the first
    ``NPY_HEADER_PREFIX``: numpy refuses a longer header anyway, its ``max_header_size``) are
    read as a header, and a header seen recently is not parsed again (:data:`HEADER_CACHE_ENTRIES`).

    Checked in order: not an .npz archive, the magic, the format version, the header parse
    (whatever numpy raises on a crafted header becomes a CodecError), the dtype
    (:func:`dtype_refusal`), that exactly the announced number of data bytes follows the header,
    and the shape (:func:`shape_refusal`).
    """
    view = memoryview(data)
    try:
        header, data_bytes, shape_refused = _parsed_header(view[:_header_end(view)].tobytes())
    except _Refused as refused:
        raise CodecError(field, refused.reason) from None
    available = view.nbytes - header.data_offset
    if available < data_bytes:
        raise CodecError(
            field, f"truncated .npy data: {header.dtype} {header.shape} needs {data_bytes} bytes, got {available}"
        )
    if available > data_bytes:
        raise CodecError(field, f"{available - data_bytes} unexpected bytes after the .npy data")
    if shape_refused:  # e.g. (0, 10**30): no data, yet unbuildable
        raise CodecError(field, f"bad .npy header ({shape_refused})")
    return header


def _header_end(view: memoryview) -> int:
    """Where the header of the .npy file in ``view`` ends, from its length field; NPY_HEADER_PREFIX
    if that cannot be read (then the parse says what is wrong). Only an end: numpy reads the header."""
    if view.format != "B" or view.ndim != 1 or view.nbytes < 12 or view[:6].tobytes() != NPY_FORMAT.MAGIC_PREFIX:
        return NPY_HEADER_PREFIX
    if view[6] == 1:  # version 1.0: a 2-byte little-endian length; 2.0 and 3.0: 4 bytes
        end = 10 + (view[8] | view[9] << 8)
    else:
        end = 12 + int.from_bytes(view[8:12], "little")
    return min(end, NPY_HEADER_PREFIX)


@functools.lru_cache(maxsize=HEADER_CACHE_ENTRIES)
def _parsed_header(prefix: bytes) -> tuple[NpyHeader, int, str | None]:
    """The checked header at the start of ``prefix``, its data's size in bytes, and the shape's
    refusal (reported after the data size, as the order above says). A refusal raises, uncached.

    Cached by its bytes: the key is everything numpy reads, so a different header (of the same
    length or not) is a different entry; ``prefix`` must end where the header does to be found again.
    """
    if prefix.startswith(ZIP_MAGIC):  # what np.savez writes; np.load would accept it
        raise _Refused("expected one .npy array, got an .npz archive")
    if not prefix.startswith(NPY_FORMAT.MAGIC_PREFIX):
        raise _Refused(f"not a .npy tensor (starts with {prefix[:6]!r}, expected {NPY_FORMAT.MAGIC_PREFIX!r})")
    buffer = io.BytesIO(prefix)
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
    except Exception as error:  # ValueError, EOFError, TokenError, SyntaxError, MemoryError...
        # numpy quotes the header (up to 10,000 peer-chosen chars) in its message: bounded.
        raise _Refused(f"bad .npy header ({type(error).__name__}: {bound_text(str(error))})") from None
    if dtype.hasobject:
        raise _Refused("object arrays are not accepted (pickled .npy)")
    refusal = dtype_refusal(dtype)
    if refusal:
        raise _Refused(refusal)
    if any(size < 0 for size in shape):
        raise _Refused(f"bad .npy header (negative size in shape {shape})")
    data_bytes = math.prod(shape) * dtype.itemsize  # a Python int: no overflow
    return NpyHeader(dtype, shape, fortran_order, buffer.tell()), data_bytes, shape_refusal(shape, dtype.itemsize)


def bytes_to_ndarray(data: bytes | memoryview, field: str = "tensor") -> np.ndarray:
    """The bytes of one .npy file (or a view of them) -> a read-only ndarray viewing them.

    :func:`read_npy_header` checks everything first. The array is then a view of ``data``'s
    memory (``numpy.frombuffer``): no copy, and read-only, so writing into it raises ValueError
    instead of changing the received message (``.copy()`` gives a writable array). Otherwise it
    equals ``numpy.load``'s result: dtype, shape, memory order, values
    (``tests/test_codec.py::test_decoding_equals_numpy_load``).
    """
    header = read_npy_header(data, field)
    dtype, shape = header.dtype, header.shape
    count = (memoryview(data).nbytes - header.data_offset) // dtype.itemsize  # checked: exactly the data
    try:
        if count == 0:  # no data: numpy builds the empty array (strides as numpy.load's)
            array = NPY_FORMAT.read_array(io.BytesIO(bytes(data)), allow_pickle=False)
        else:
            order: Literal["C", "F"] = "F" if header.fortran_order else "C"
            flat = np.frombuffer(data, dtype=dtype, count=count, offset=header.data_offset)
            array = flat.reshape(shape, order=order)
        array.flags.writeable = False  # also when ``data`` is a writable buffer
        return array
    except Exception as error:  # the header was checked; this is a numpy limit we did not foresee
        raise CodecError(field, f"cannot build the array ({type(error).__name__}: {error})") from None
