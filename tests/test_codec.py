"""The codec encodes every message exactly as flwr does, decodes what flwr encodes, and refuses
bad input with a CodecError that names the field and the reason.

Server messages are built with fedproto.codec on one side and flwr's serde + flwr.common on
the other. Client messages come from fedproto's ClientSession on one side and from flwr's own
NumPyClient machinery (``to_client()`` + serde) on the other, both running the same handler.
Messages are compared as ``SerializeToString(deterministic=True)`` (maps sorted by key).
"""

from __future__ import annotations

import io

import flwr.common as flwr_common
import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.client.message_handler.message_handler import _reconnect as flwr_reconnect
from flwr.common import serde
from flwr.proto import transport_pb2 as flwr_pb2

from fedproto.codec import (
    ndarrays_to_parameters,
    parameters_to_ndarrays,
    scalar_from_proto,
    scalar_to_proto,
    scalars_from_proto,
    scalars_to_proto,
)
from fedproto.dispatch import ClientSession
from fedproto.errors import CodecError
from fedproto.npy import TENSOR_TYPE, NpyHeader, bytes_to_ndarray, ndarray_to_bytes, read_npy_header
from fedproto.transport_pb2 import Parameters, Reason, Scalar, ServerMessage

# Every Scalar kind, and the int boundaries where sint64 turns into uint64.
CONFIG = {
    "lr": 0.5,
    "zero_float": 0.0,
    "epochs": 3,
    "zero": 0,
    "offset": -7,
    "sint64_max": 2**63 - 1,
    "sint64_min": -(2**63),
    "uint64_low": 2**63,
    "uint64_max": 2**64 - 1,
    "flag": True,
    "off": False,
    "name": "héllo wörld",
    "empty_str": "",
    "blob": b"\x00\xff\x80data",
    "empty_bytes": b"",
}
EXPECTED_KINDS = {
    "lr": "double", "zero_float": "double", "epochs": "sint64", "zero": "sint64",
    "offset": "sint64", "sint64_max": "sint64", "sint64_min": "sint64", "uint64_low": "uint64",
    "uint64_max": "uint64", "flag": "bool", "off": "bool", "name": "string",
    "empty_str": "string", "blob": "bytes", "empty_bytes": "bytes",
}

TENSORS = {
    "float32_2d": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "float64_3d": np.linspace(-1.0, 1.0, 8).reshape(2, 2, 2),
    "int32": np.array([-(2**31), -1, 0, 1, 2**31 - 1], dtype=np.int32),
    "uint8_2d": np.arange(16, dtype=np.uint8).reshape(4, 4),
    "bool": np.array([True, False, True]),
    "float32_0d": np.array(3.5, dtype=np.float32),
    "float32_empty": np.zeros(0, dtype=np.float32),
    "float64_empty_2d": np.zeros((0, 3), dtype=np.float64),
    "big_endian_f4": np.arange(6, dtype=">f4").reshape(2, 3),
    "fortran_order": np.asfortranarray(np.arange(6, dtype=np.float32).reshape(2, 3)),
}
ARRAYS = list(TENSORS.values())
LOSS = 0.123456789  # not exact in float32: both sides must round it the same way
NUM_EXAMPLES = 42


def wire(message) -> bytes:
    return message.SerializeToString(deterministic=True)


def npy(array: np.ndarray, **save_options) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, **save_options)
    return buffer.getvalue()


# ------------------------------------------------------------- byte-for-byte equality


class FixedHandler(NumPyClient):
    """The same answers for flwr's NumPyClient machinery and for our ClientSession."""

    def get_properties(self, config):
        return dict(CONFIG)

    def get_parameters(self, config):
        return list(ARRAYS)

    def fit(self, parameters, config):
        return list(ARRAYS), NUM_EXAMPLES, dict(CONFIG)

    def evaluate(self, parameters, config):
        return LOSS, NUM_EXAMPLES, dict(CONFIG)


def ours_server(kind: str, seconds: int = 0) -> ServerMessage:
    if kind == "reconnect_ins":
        return ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=seconds))
    config = scalars_to_proto(CONFIG)
    if kind == "get_properties_ins":
        return ServerMessage(get_properties_ins=ServerMessage.GetPropertiesIns(config=config))
    if kind == "get_parameters_ins":
        return ServerMessage(get_parameters_ins=ServerMessage.GetParametersIns(config=config))
    parameters = ndarrays_to_parameters(ARRAYS)
    if kind == "fit_ins":
        return ServerMessage(fit_ins=ServerMessage.FitIns(parameters=parameters, config=config))
    return ServerMessage(evaluate_ins=ServerMessage.EvaluateIns(parameters=parameters, config=config))


def flwr_server(kind: str, seconds: int | None = 0) -> flwr_pb2.ServerMessage:
    if kind == "reconnect_ins":
        ins = serde.reconnect_ins_to_proto(flwr_common.ReconnectIns(seconds=seconds))
        return flwr_pb2.ServerMessage(reconnect_ins=ins)
    if kind == "get_properties_ins":
        ins = serde.get_properties_ins_to_proto(flwr_common.GetPropertiesIns(config=dict(CONFIG)))
        return flwr_pb2.ServerMessage(get_properties_ins=ins)
    if kind == "get_parameters_ins":
        ins = serde.get_parameters_ins_to_proto(flwr_common.GetParametersIns(config=dict(CONFIG)))
        return flwr_pb2.ServerMessage(get_parameters_ins=ins)
    parameters = flwr_common.ndarrays_to_parameters(ARRAYS)
    if kind == "fit_ins":
        ins = serde.fit_ins_to_proto(flwr_common.FitIns(parameters=parameters, config=dict(CONFIG)))
        return flwr_pb2.ServerMessage(fit_ins=ins)
    ins = serde.evaluate_ins_to_proto(flwr_common.EvaluateIns(parameters=parameters, config=dict(CONFIG)))
    return flwr_pb2.ServerMessage(evaluate_ins=ins)


@pytest.mark.parametrize("kind", ["get_properties_ins", "get_parameters_ins", "fit_ins", "evaluate_ins"])
def test_server_message_bytes_equal_flwr(kind):
    ours, theirs = wire(ours_server(kind)), wire(flwr_server(kind))
    assert len(ours) > 100  # the config (and the tensors) are really in there
    assert ours == theirs


@pytest.mark.parametrize("seconds", [0, 5, 3600])
def test_reconnect_ins_bytes_equal_flwr(seconds):
    assert wire(ours_server("reconnect_ins", seconds)) == wire(flwr_server("reconnect_ins", seconds))


def test_reconnect_ins_zero_is_flwr_end_of_training():
    # flwr's server ends training with ReconnectIns(seconds=None): on the wire, seconds = 0.
    assert wire(flwr_server("reconnect_ins", None)) == wire(ours_server("reconnect_ins", 0)) == b"\n\x00"


def flwr_client_reply(kind: str) -> flwr_pb2.ClientMessage:
    client = FixedHandler().to_client()
    parameters = flwr_common.ndarrays_to_parameters(ARRAYS)
    if kind == "get_properties_ins":
        res = client.get_properties(flwr_common.GetPropertiesIns(config=dict(CONFIG)))
        return flwr_pb2.ClientMessage(get_properties_res=serde.get_properties_res_to_proto(res))
    if kind == "get_parameters_ins":
        res = client.get_parameters(flwr_common.GetParametersIns(config=dict(CONFIG)))
        return flwr_pb2.ClientMessage(get_parameters_res=serde.get_parameters_res_to_proto(res))
    if kind == "fit_ins":
        res = client.fit(flwr_common.FitIns(parameters=parameters, config=dict(CONFIG)))
        return flwr_pb2.ClientMessage(fit_res=serde.fit_res_to_proto(res))
    res = client.evaluate(flwr_common.EvaluateIns(parameters=parameters, config=dict(CONFIG)))
    return flwr_pb2.ClientMessage(evaluate_res=serde.evaluate_res_to_proto(res))


@pytest.mark.parametrize("kind", ["get_properties_ins", "get_parameters_ins", "fit_ins", "evaluate_ins"])
def test_client_message_bytes_equal_flwr(kind):
    ours = ClientSession(FixedHandler()).receive(ours_server(kind))
    assert ours.WhichOneof("msg") == kind.replace("_ins", "_res")
    assert wire(ours) == wire(flwr_client_reply(kind))


def test_disconnect_res_reconnect_bytes_equal_flwr():
    ours = ClientSession(FixedHandler()).receive(ours_server("reconnect_ins", seconds=5))
    theirs, sleep_seconds = flwr_reconnect(flwr_pb2.ServerMessage.ReconnectIns(seconds=5))
    assert sleep_seconds == 5
    assert ours.disconnect_res.reason == Reason.RECONNECT
    assert wire(ours) == wire(theirs)


def test_disconnect_res_ack_bytes_equal_flwr_message():
    # flwr's client says RECONNECT even for seconds = 0; we say ACK (see fedproto.dispatch).
    ours = ClientSession(FixedHandler()).receive(ours_server("reconnect_ins", seconds=0))
    theirs = flwr_pb2.ClientMessage(
        disconnect_res=flwr_pb2.ClientMessage.DisconnectRes(reason=flwr_pb2.Reason.ACK)
    )
    assert wire(ours) == wire(theirs) == b"\n\x02\x08\x04"


# ------------------------------------------------------------------------ decoding


def test_every_scalar_kind_round_trips_with_its_python_type():
    protos = scalars_to_proto(CONFIG)
    assert {key: proto.WhichOneof("scalar") for key, proto in protos.items()} == EXPECTED_KINDS
    decoded = scalars_from_proto(protos)
    assert [(k, type(v), v) for k, v in decoded.items()] == [(k, type(v), v) for k, v in CONFIG.items()]


def test_scalars_encoded_by_flwr_decode_to_the_same_values():
    flwr_config = flwr_server("fit_ins").fit_ins.config
    decoded = scalars_from_proto(flwr_config)
    assert {k: (type(v), v) for k, v in decoded.items()} == {k: (type(v), v) for k, v in CONFIG.items()}


@pytest.mark.parametrize("name", list(TENSORS))
def test_tensor_round_trip_keeps_dtype_shape_and_byte_order(name):
    array = TENSORS[name]
    back = bytes_to_ndarray(ndarray_to_bytes(array))
    assert back.dtype.str == array.dtype.str  # '>f4' stays big-endian
    assert back.shape == array.shape
    assert back.flags.f_contiguous == array.flags.f_contiguous
    assert back.flags.c_contiguous == array.flags.c_contiguous
    assert not back.flags.writeable  # a view of the received bytes (the edge client's handler gets a copy)
    np.testing.assert_array_equal(back, array)


# Beyond TENSORS: complex, fp16 and strided arrays. Structured, unicode, bytes and
# zero-itemsize arrays are refused since issue 9 (test_refused_dtypes_are_codec_errors_both_ways).
DECODE_CASES = {
    **TENSORS,
    "float16": np.array([0.5, -2.0, 65504.0], dtype=np.float16),
    "complex128": np.array([1 + 2j, -3.5j]),
    "complex64_big_endian": np.array([1 + 2j, -3.5j], dtype=">c8"),
    "int8": np.array([-128, 0, 127], dtype=np.int8),
    "uint64_big_endian": np.array([0, 2**64 - 1], dtype=">u8"),
    "transposed_view": np.arange(24, dtype=np.int16).reshape(2, 3, 4).transpose(2, 0, 1),
    "fortran_3d_big_endian": np.asfortranarray(np.arange(24, dtype=">i4").reshape(2, 3, 4)),
}


@pytest.mark.parametrize("name", list(DECODE_CASES))
def test_decoding_equals_numpy_load(name):
    """bytes_to_ndarray views the data with frombuffer; numpy.load (flwr's decoder) is the reference.

    One difference, on purpose: ours is a read-only view of the message's bytes (no copy), where
    numpy.load's is a writable copy. Everything else is equal.
    """
    data = npy(DECODE_CASES[name])
    ours, reference = bytes_to_ndarray(data), np.load(io.BytesIO(data), allow_pickle=False)
    assert ours.dtype == reference.dtype and ours.dtype.str == reference.dtype.str
    assert ours.shape == reference.shape
    assert ours.strides == reference.strides
    assert (ours.flags.c_contiguous, ours.flags.f_contiguous) == (
        reference.flags.c_contiguous, reference.flags.f_contiguous)
    assert not ours.flags.writeable and reference.flags.writeable
    if ours.size:
        assert np.shares_memory(ours, np.frombuffer(data, np.uint8))  # a view of the message, not a copy
        with pytest.raises(ValueError, match="read-only"):
            ours[(0,) * ours.ndim] = 0
    assert ours.tobytes(order="A") == reference.tobytes(order="A")
    assert ndarray_to_bytes(ours) == data  # and it encodes back to the very same bytes


def test_parameters_cross_decode_with_flwr():
    ours = ndarrays_to_parameters(ARRAYS)
    assert ours.tensor_type == TENSOR_TYPE == "numpy.ndarray"
    theirs = flwr_common.ndarrays_to_parameters(ARRAYS)
    for decoded in (parameters_to_ndarrays(serde.parameters_to_proto(theirs)),
                    flwr_common.parameters_to_ndarrays(serde.parameters_from_proto(ours))):
        assert [(a.dtype.str, a.shape) for a in decoded] == [(a.dtype.str, a.shape) for a in ARRAYS]
        for got, want in zip(decoded, ARRAYS, strict=True):
            np.testing.assert_array_equal(got, want)


def test_empty_parameters_are_an_empty_list():
    # What flwr's server sends in EvaluateIns/FitIns before it has any parameters.
    assert parameters_to_ndarrays(Parameters()) == []
    assert parameters_to_ndarrays(Parameters(tensor_type=TENSOR_TYPE)) == []


NUMPY_SCALARS = [
    (np.float32(0.5), "double", 0.5),
    (np.float64(-0.25), "double", -0.25),
    (np.int64(-3), "sint64", -3),
    (np.int8(7), "sint64", 7),
    (np.uint64(5), "sint64", 5),
    (np.uint64(2**64 - 1), "uint64", 2**64 - 1),
    (np.bool_(True), "bool", True),
    (np.bool_(False), "bool", False),
    (np.str_("text"), "string", "text"),
    (np.bytes_(b"raw"), "bytes", b"raw"),
]


@pytest.mark.parametrize("value, kind, python_value", NUMPY_SCALARS, ids=lambda v: repr(v))
def test_numpy_scalars_are_sent_as_their_python_kind(value, kind, python_value):
    scalar = scalar_to_proto(value)
    assert scalar.WhichOneof("scalar") == kind
    decoded = scalar_from_proto(scalar)
    assert (type(decoded), decoded) == (type(python_value), python_value)
    assert wire(scalar) == wire(serde.scalar_to_proto(python_value))


# ---------------------------------------------------------------------- bad input

GOOD = npy(TENSORS["float32_2d"])  # a (3, 4) float32 array: 48 data bytes


def _npz() -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, np.ones(2))
    return buffer.getvalue()


def _header_claiming(shape: tuple[int, ...]) -> bytes:
    """A valid .npy header announcing ``shape`` float32, followed by only 48 data bytes."""
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": "<f4", "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue() + bytes(48)


BAD_TENSORS = {
    "pickled_object_array": (
        npy(np.array([{"a": 1}, None], dtype=object), allow_pickle=True),
        "object arrays are not accepted (pickled .npy)",
    ),
    "truncated_data": (GOOD[:-5], "truncated .npy data: float32 (3, 4) needs 48 bytes, got 43"),
    "trailing_bytes": (GOOD + b"xx", "2 unexpected bytes after the .npy data"),
    "not_npy": (b"hello world", "not a .npy tensor (starts with b'hello ', expected b'\\x93NUMPY')"),
    "empty": (b"", "not a .npy tensor (starts with b'', expected b'\\x93NUMPY')"),
    "npz_archive": (_npz(), "expected one .npy array, got an .npz archive"),
    "negative_shape": (
        GOOD.replace(b"(3, 4)", b"(-3, 4)", 1)[:-4],  # the header keeps its length
        "bad .npy header (negative size in shape (-3, 4))",
    ),
    "shape_far_beyond_the_data": (
        _header_claiming((10**12,)),
        "truncated .npy data: float32 (1000000000000,) needs 4000000000000 bytes, got 48",
    ),
    "truncated_header": (
        GOOD[:20],
        "bad .npy header (ValueError: EOF: reading array header, expected 118 bytes got 10)",
    ),
    "unknown_format_version": (
        GOOD[:6] + b"\x09\x00" + GOOD[8:],
        "bad .npy header (ValueError: unsupported .npy format version 9.0)",
    ),
}


@pytest.mark.parametrize("case", list(BAD_TENSORS))
def test_bad_tensor_is_a_codec_error_naming_the_tensor(case):
    data, reason = BAD_TENSORS[case]
    parameters = Parameters(tensors=[GOOD, GOOD, data], tensor_type=TENSOR_TYPE)
    with pytest.raises(CodecError) as caught:
        parameters_to_ndarrays(parameters, "FitIns.parameters")
    assert (caught.value.field, caught.value.reason) == ("FitIns.parameters.tensors[2]", reason)
    assert str(caught.value) == f"FitIns.parameters.tensors[2]: {reason}"


def test_garbled_header_is_a_codec_error_not_a_crash():
    # numpy's header parser raises tokenize.TokenError here, which is not a ValueError.
    garbled = GOOD[:10] + b"{garbage}" + GOOD[19:]
    with pytest.raises(CodecError) as caught:
        bytes_to_ndarray(garbled, "EvaluateIns.parameters.tensors[0]")
    assert caught.value.field == "EvaluateIns.parameters.tensors[0]"
    assert caught.value.reason.startswith("bad .npy header (TokenError: ")


@pytest.mark.parametrize("tensor_type", ["torch.Tensor", ""])
def test_unknown_tensor_type_is_refused(tensor_type):
    with pytest.raises(CodecError) as caught:
        parameters_to_ndarrays(Parameters(tensors=[GOOD], tensor_type=tensor_type), "FitIns.parameters")
    assert (caught.value.field, caught.value.reason) == (
        "FitIns.parameters.tensor_type",
        f"unknown tensor_type {tensor_type!r} (expected one of 'numpy.ndarray', 'cpp_double')",
    )


def test_scalar_without_a_kind_is_refused():
    config = ServerMessage.FitIns(config={"lr": Scalar(double=0.1), "x": Scalar()}).config
    with pytest.raises(CodecError) as caught:
        scalars_from_proto(config, "FitIns.config")
    assert (caught.value.field, caught.value.reason) == ("FitIns.config['x']", "Scalar has no value set")


@pytest.mark.parametrize(
    "value, type_name",
    [(None, "NoneType"), ([1, 2], "list"), ({"a": 1}, "dict"), (np.array([1.0]), "ndarray"),
     (np.array(1.0), "ndarray"), (1 + 2j, "complex"), (bytearray(b"x"), "bytearray")],
    ids=["None", "list", "dict", "ndarray", "ndarray_0d", "complex", "bytearray"],
)
def test_non_scalar_values_are_refused(value, type_name):
    with pytest.raises(CodecError) as caught:
        scalars_to_proto({"ok": 1.0, "bad": value}, "FitRes.metrics")
    assert (caught.value.field, caught.value.reason) == (
        "FitRes.metrics['bad']",
        f"{type_name} is not a Scalar kind (use bool, bytes, float, int or str)",
    )


@pytest.mark.parametrize("value", [2**64, -(2**63) - 1, 10**30])
def test_out_of_range_int_is_refused(value):
    with pytest.raises(CodecError) as caught:
        scalars_to_proto({"n": value}, "GetPropertiesRes.properties")
    assert (caught.value.field, caught.value.reason) == (
        "GetPropertiesRes.properties['n']", f"int {value} does not fit in sint64 or uint64"
    )


def test_non_str_key_is_refused():
    with pytest.raises(CodecError) as caught:
        scalars_to_proto({"fine": 1, 7: 0.5}, "FitRes.metrics")
    assert (caught.value.field, caught.value.reason) == ("FitRes.metrics", "key 7 is not a str")


def test_non_mapping_is_refused():
    with pytest.raises(CodecError) as caught:
        scalars_to_proto([("a", 1)], "EvaluateRes.metrics")
    assert (caught.value.field, caught.value.reason) == (
        "EvaluateRes.metrics", "expected a dict of Scalars, got list"
    )


@pytest.mark.parametrize(
    "arrays, field, reason",
    [
        ([np.zeros(2), np.array([{"a": 1}], dtype=object)], "FitRes.parameters.tensors[1]",
         "object arrays are not accepted"),
        ([np.zeros(2), [1.0, 2.0]], "FitRes.parameters.tensors[1]", "expected a numpy.ndarray, got list"),
        (np.zeros(3), "FitRes.parameters", "expected a list of ndarrays, got a single ndarray"),
        (5, "FitRes.parameters", "expected a list of ndarrays, got int"),
    ],
    ids=["object_array", "list_in_list", "single_ndarray", "not_iterable"],
)
def test_unencodable_tensors_are_refused(arrays, field, reason):
    with pytest.raises(CodecError) as caught:
        ndarrays_to_parameters(arrays, "FitRes.parameters")
    assert (caught.value.field, caught.value.reason) == (field, reason)


# ------------------------------------------------- hostile .npy headers and dtypes (issue 9)


def raw_npy(descr: str, shape: str, data: bytes = b"", fortran_order: str = "False") -> bytes:
    """A version 1.0 .npy file whose header text is written by hand, so any literal can go in."""
    header = f"{{'descr': {descr}, 'fortran_order': {fortran_order}, 'shape': {shape}, }}"
    header += " " * (-(10 + len(header) + 1) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode("latin1") + data


# Each was a ValueError / OverflowError / TypeError / TokenError out of numpy, or an array that
# decoded and then broke aggregation; now a CodecError with this reason.
HOSTILE_HEADERS = {
    "sub_array_dtype": (raw_npy("('<f4', (2,))", "(3,)", bytes(24)),
                        "sub-array dtype |V8 (2,) is not accepted"),
    "sub_array_dtype_huge": (raw_npy(repr(("<f4", (2**40,))), "(1,)", bytes(8)),
                             "bad .npy header (ValueError: "),
    "zero_itemsize_bytes": (raw_npy("'|S0'", repr((10**12,))),
                            "dtype |S0 is not accepted (only bool, int, uint, float, complex)"),
    "zero_itemsize_void": (raw_npy("'|V0'", "(4,)"),
                           "dtype |V0 is not accepted (only bool, int, uint, float, complex)"),
    "void": (raw_npy("'|V8'", "(2,)", bytes(16)),
             "dtype |V8 is not accepted (only bool, int, uint, float, complex)"),
    "structured": (raw_npy("[('a', '<i8'), ('b', '>f8')]", "(1,)", bytes(16)),
                   "structured dtype [('a', '<i8'), ('b', '>f8')] is not accepted"),
    "unicode": (raw_npy("'<U5'", "(2,)", bytes(40)),
                "dtype <U5 is not accepted (only bool, int, uint, float, complex)"),
    "bytes": (raw_npy("'|S3'", "(2,)", bytes(6)),
              "dtype |S3 is not accepted (only bool, int, uint, float, complex)"),
    "datetime": (raw_npy("'<M8[s]'", "(1,)", bytes(8)),
                 "dtype <M8[s] is not accepted (only bool, int, uint, float, complex)"),
    "timedelta": (raw_npy("'>m8[ns]'", "(1,)", bytes(8)),
                  "dtype >m8[ns] is not accepted (only bool, int, uint, float, complex)"),
    "longdouble": (raw_npy("'<f16'", "(1,)", bytes(16)),
                   "dtype <f16 is not accepted (item size 16 not in [2, 4, 8])"),
    "complex256": (raw_npy("'<c32'", "(1,)", bytes(32)),
                   "dtype <c32 is not accepted (item size 32 not in [8, 16])"),
    "object_without_pickle_data": (raw_npy("'|O'", "(1,)", bytes(8)),
                                   "object arrays are not accepted (pickled .npy)"),
    "empty_but_product_overflows": (raw_npy("'<f4'", repr((0, 2**62, 2**62))),
                                    "bad .npy header (shape (0, 4611686018427387904, 4611686018427387904)"
                                    " is over the 536870912-byte message limit)"),
    "empty_but_dimension_huge": (raw_npy("'|u1'", repr((10**30, 0))),
                                 "bad .npy header (shape (1000000000000000000000000000000, 0)"
                                 " is over the 536870912-byte message limit)"),
    "dimension_is_an_expression": (raw_npy("'|u1'", "(2**4,)", bytes(16)),
                                   "bad .npy header (ValueError: malformed node or string"),
    "dimensions_beyond_32": (raw_npy("'|u1'", "(" + "1, " * 33 + ")", bytes(1)),
                             "bad .npy header (33 dimensions (at most 32))"),
    "bool_dimension": (raw_npy("'<f4'", "(True, 3)", bytes(12)),
                       "bad .npy header (shape (True, 3) is not a tuple of non-negative ints)"),
    "untokenizable_header": (GOOD[:10] + b"{garbage}" + GOOD[19:],
                             "bad .npy header (TokenError: "),
    "fortran_order_not_bool": (raw_npy("'<f4'", "(1,)", bytes(4), fortran_order="2"),
                               "bad .npy header (ValueError: fortran_order is not a valid bool: 2)"),
    "header_not_a_dict": (b"\x93NUMPY\x01\x00\x0a\x00[1, 2, 3]\n",
                          "bad .npy header (ValueError: Header is not a dictionary: [1, 2, 3])"),
    "deeply_nested_header": (raw_npy("'<f4'", "(" * 300 + ")" * 300, bytes(4)),
                             "bad .npy header ("),
    "version_2_header_over_numpys_limit": (b"\x93NUMPY\x02\x00" + (20000).to_bytes(4, "little") + b" " * 20000,
                                           "bad .npy header (ValueError: Header info length (20000) is large"),
}


@pytest.mark.parametrize("case", list(HOSTILE_HEADERS))
def test_hostile_npy_header_is_a_codec_error_naming_the_field(case):
    data, reason = HOSTILE_HEADERS[case]
    for decode in (bytes_to_ndarray, read_npy_header):
        with pytest.raises(CodecError) as caught:
            decode(data, "FitRes.parameters.tensors[1]")
        assert caught.value.field == "FitRes.parameters.tensors[1]"
        assert caught.value.reason.startswith(reason)


REFUSED_ARRAYS = {
    "unicode": np.array(["héllo", "wörld"]),
    "bytes_S3": np.array([b"abc", b"de"]),
    "zero_itemsize": np.zeros(4, dtype="S0"),
    "structured": np.array([(1, 2.5), (3, -1.0)], dtype=[("count", "<i8"), ("value", ">f8")]),
    "void": np.zeros(2, dtype="V4"),
    "datetime": np.array(["2026-01-01"], dtype="datetime64[D]"),
    "timedelta": np.array([5], dtype="timedelta64[s]"),
    "longdouble": np.zeros(2, dtype=np.longdouble),
    "clongdouble": np.zeros(2, dtype=np.clongdouble),
}


@pytest.mark.parametrize("name", list(REFUSED_ARRAYS))
def test_refused_dtypes_are_codec_errors_both_ways(name):
    array = REFUSED_ARRAYS[name]
    with pytest.raises(CodecError) as sent:
        ndarray_to_bytes(array, "FitRes.parameters.tensors[0]")
    assert sent.value.field == "FitRes.parameters.tensors[0]"
    assert "is not accepted" in sent.value.reason
    with pytest.raises(CodecError) as received:  # the same bytes from a peer that sends them anyway
        bytes_to_ndarray(npy(array), "FitIns.parameters.tensors[0]")
    assert received.value.reason == sent.value.reason or received.value.reason.startswith("dtype ")
    assert received.value.field == "FitIns.parameters.tensors[0]"


def test_encoding_refuses_an_array_over_the_message_limit():
    huge = np.lib.stride_tricks.as_strided(np.zeros(1, np.float64), shape=(2**27 + 1,), strides=(0,))
    with pytest.raises(CodecError) as caught:
        ndarray_to_bytes(huge, "FitRes.parameters.tensors[0]")
    assert caught.value.reason == "shape (134217729,) is over the 536870912-byte message limit"


def test_read_npy_header_reports_what_the_header_announces():
    array = np.asfortranarray(np.arange(6, dtype=">i4").reshape(2, 3))
    data = npy(array)
    header = read_npy_header(data, "t")
    assert header == NpyHeader(np.dtype(">i4"), (2, 3), True, 128)
    assert header.dtype.str == ">i4"
    assert len(data) - header.data_offset == array.nbytes


def test_a_header_quoted_in_the_reason_is_bounded_and_on_one_line():
    data = raw_npy("'<f4'", "(1,)\n\n" + " " * 9000 + "+ 'x'", bytes(4))
    with pytest.raises(CodecError) as caught:
        bytes_to_ndarray(data, "t")
    assert "\n" not in caught.value.reason
    assert len(caught.value.reason) < 300


def test_the_codecs_public_names_are_the_ones_their_modules_define():
    """CodecError lives in fedproto.errors and the .npy names in fedproto.npy; the old paths still lead there."""
    import fedproto
    from fedproto import codec, errors, npy

    assert fedproto.CodecError is codec.CodecError is errors.CodecError
    for name in ("TENSOR_TYPE", "ndarray_to_bytes", "bytes_to_ndarray"):
        assert getattr(codec, name) is getattr(npy, name), name
