"""The tensor-format registry: .npy as the codec writes it, cpp_double as Flower's C++ SDK writes
it, a porter's own format, and hostile bytes into every decoder.

cpp_double reference bytes are written by hand from the SDK's convention (docs/cpp-sdk.md): the
memory of a std::vector<double>, little-endian IEEE-754 binary64, no header.
"""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedproto import tensor_formats
from fedproto.codec import all_finite, ndarrays_to_parameters, parameters_to_ndarrays
from fedproto.errors import CodecError
from fedproto.npy import TENSOR_TYPE
from fedproto.tensor_formats import (
    CPP_DOUBLE,
    decode_parameters,
    encode_parameters,
    get_format,
    register,
    registered,
    unregister,
)
from fedproto.transport_pb2 import Parameters

ROOT = Path(__file__).resolve().parents[1]

# quickstart-cpp's model: weights m0, m1 in one tensor, the bias b in another.
LINE_MODEL = [np.array([1.0, 2.0]), np.array([3.0])]
# 1.0 = 0x3FF0000000000000, 2.0 = 0x4000000000000000, 3.0 = 0x4008000000000000, least significant byte first.
LINE_MODEL_BYTES = [
    bytes.fromhex("000000000000f03f" "0000000000000040"),
    bytes.fromhex("0000000000000840"),
]


def cpp(*tensors: bytes) -> Parameters:
    return Parameters(tensors=list(tensors), tensor_type=CPP_DOUBLE)


def assert_refused(field: str, text: str, function, *args, **kwargs) -> None:
    with pytest.raises(CodecError) as caught:
        function(*args, **kwargs)
    assert caught.value.field == field
    assert text in caught.value.reason


# ---------------------------------------------------------------------------- registry


def test_builtin_formats_are_registered_npy_first():
    assert registered()[:2] == (TENSOR_TYPE, CPP_DOUBLE)
    assert get_format(TENSOR_TYPE).name == TENSOR_TYPE


def test_unknown_tensor_type_names_the_field_and_the_known_formats():
    parameters = Parameters(tensors=[b"\x00" * 8], tensor_type="torch.Tensor")
    assert_refused("fit_res.parameters.tensor_type",
                   "unknown tensor_type 'torch.Tensor' (expected one of 'numpy.ndarray', 'cpp_double'",
                   decode_parameters, parameters, "fit_res.parameters")
    assert_refused("parameters.tensor_type", "unknown tensor_type", encode_parameters, LINE_MODEL, "torch.Tensor")


def test_empty_parameters_decode_to_an_empty_list_whatever_the_tensor_type():
    assert decode_parameters(Parameters()) == []
    assert decode_parameters(Parameters(tensor_type="anything")) == []


def test_a_name_is_registered_once_and_built_in_formats_stay():
    with pytest.raises(ValueError, match="already registered"):
        register(CPP_DOUBLE, bytes, np.frombuffer)
    with pytest.raises(ValueError, match="non-empty"):
        register("", bytes, np.frombuffer)
    with pytest.raises(ValueError, match="cannot be removed"):
        unregister(TENSOR_TYPE)


# ---------------------------------------------------------------------------- numpy.ndarray


def test_npy_format_is_byte_identical_to_the_codec():
    arrays = [np.arange(6, dtype=np.float32).reshape(2, 3), np.array([True, False]), np.array(7, dtype=">i8")]
    parameters = encode_parameters(arrays, TENSOR_TYPE)
    assert parameters.SerializeToString() == ndarrays_to_parameters(arrays).SerializeToString()
    decoded = decode_parameters(parameters)
    for got, expected in zip(decoded, parameters_to_ndarrays(parameters), strict=True):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert got.tobytes() == expected.tobytes()


def test_npy_format_refusals_are_the_codecs():
    parameters = Parameters(tensors=[b"\x93NUMPY\x01\x00garbage"], tensor_type=TENSOR_TYPE)
    assert_refused("parameters.tensors[0]", "bad .npy header", decode_parameters, parameters)
    assert_refused("parameters.tensors[1]", "dtype <U1 is not accepted",
                   encode_parameters, [np.zeros(1), np.array(["a"])], TENSOR_TYPE)


# ---------------------------------------------------------------------------- cpp_double


def test_cpp_double_bytes_are_little_endian_doubles_without_header():
    parameters = encode_parameters(LINE_MODEL, CPP_DOUBLE)
    assert parameters.tensor_type == "cpp_double"
    assert list(parameters.tensors) == LINE_MODEL_BYTES
    assert list(parameters.tensors) == [struct.pack("<2d", 1.0, 2.0), struct.pack("<d", 3.0)]


def test_cpp_double_multidimensional_tensors_are_written_in_row_major_order():
    matrix = np.array([[1.0, 2.0], [3.0, 4.0]], dtype=np.float32)
    assert encode_parameters([matrix.T], CPP_DOUBLE).tensors[0] == struct.pack("<4d", 1.0, 3.0, 2.0, 4.0)


def test_cpp_double_without_a_reference_decodes_flat_float64():
    decoded = decode_parameters(cpp(*LINE_MODEL_BYTES))
    assert [a.dtype for a in decoded] == [np.float64, np.float64]
    assert [a.tolist() for a in decoded] == [[1.0, 2.0], [3.0]]
    assert all(a.flags.writeable for a in decoded)


def test_cpp_double_takes_shape_and_dtype_from_the_global_model():
    model = [np.zeros((2, 2), np.float32), np.zeros((), ">f8")]
    data = [struct.pack("<4d", 0.5, -1.0, 1e-3, 2.0), struct.pack("<d", -7.25)]
    matrix, scalar = decode_parameters(cpp(*data), "fit_res.parameters", like=model)
    assert matrix.dtype == np.float32 and matrix.shape == (2, 2)
    assert matrix.tolist() == [[0.5, -1.0], [np.float32(1e-3), 2.0]]
    assert scalar.dtype == np.dtype(">f8") and scalar.shape == () and scalar == -7.25


def test_cpp_double_round_trips_float16_32_64():
    model = [np.array([0.1, 1e-5], dtype=d) for d in (np.float16, np.float32, np.float64)]
    decoded = decode_parameters(encode_parameters(model, CPP_DOUBLE), like=model)
    for got, sent in zip(decoded, model, strict=True):
        assert got.dtype == sent.dtype and got.tobytes() == sent.tobytes()


def test_cpp_double_keeps_nan_and_inf_and_the_finiteness_check_sees_them_as_for_npy():
    values = [float("nan"), float("inf"), -float("inf"), 1.0]
    model = [np.zeros(4)]
    for tensor_type in (TENSOR_TYPE, CPP_DOUBLE):
        decoded = decode_parameters(encode_parameters([np.array(values)], tensor_type), like=model)
        assert np.array_equal(decoded[0], values, equal_nan=True)
        assert not all_finite(decoded)


def test_cpp_double_beyond_the_float32_model_range_becomes_inf_for_the_finiteness_check():
    decoded = decode_parameters(cpp(struct.pack("<d", 1e300)), like=[np.zeros(1, np.float32)])
    assert decoded[0].dtype == np.float32 and np.isinf(decoded[0][0])
    assert not all_finite(decoded)


@pytest.mark.parametrize("length", [1, 7, 9, 15])
def test_cpp_double_data_not_a_whole_number_of_doubles(length):
    assert_refused("fit_res.parameters.tensors[1]", f"{length} bytes is not a whole number of 8-byte doubles",
                   decode_parameters, cpp(b"\x00" * 16, b"\x00" * length), "fit_res.parameters")


@pytest.mark.parametrize("count", [0, 1, 3])
def test_cpp_double_element_count_must_match_the_global_model(count):
    assert_refused("parameters.tensors[0]", f"holds {count} doubles; the global model's tensor (2,) has 2",
                   decode_parameters, cpp(b"\x00" * 8 * count, LINE_MODEL_BYTES[1]), like=LINE_MODEL)


def test_cpp_double_tensor_count_must_match_the_global_model():
    assert_refused("parameters.tensors", "1 tensors, the global model has 2",
                   decode_parameters, cpp(LINE_MODEL_BYTES[0]), like=LINE_MODEL)


def test_cpp_double_refuses_a_non_float_global_model():
    assert_refused("parameters.tensors[0]", "the global model's tensor is <i4",
                   decode_parameters, cpp(b"\x00" * 8), like=[np.zeros(1, np.int32)])


@pytest.mark.parametrize("array", [np.zeros(2, np.int64), np.array([True]), np.zeros(1, np.complex128),
                                   np.array(["x"]), np.zeros(1, np.longdouble)])
def test_cpp_double_encodes_floats_only(array):
    assert_refused("parameters.tensors[0]", "cpp_double carries float64 only", encode_parameters, [array], CPP_DOUBLE)


def test_cpp_double_over_the_message_limit(monkeypatch):
    monkeypatch.setattr(tensor_formats, "MAX_MESSAGE_LENGTH", 64)
    assert_refused("parameters.tensors[0]", "72 bytes are over the 64-byte message limit",
                   decode_parameters, cpp(b"\x00" * 72))
    assert_refused("parameters.tensors[0]", "9 doubles are over the 64-byte message limit",
                   encode_parameters, [np.zeros(9)], CPP_DOUBLE)
    assert len(decode_parameters(cpp(b"\x00" * 64))[0]) == 8


def test_encode_parameters_refuses_what_is_not_a_list_of_ndarrays():
    assert_refused("parameters", "got a single ndarray", encode_parameters, np.zeros(3), CPP_DOUBLE)
    assert_refused("parameters", "got int", encode_parameters, 3, CPP_DOUBLE)
    assert_refused("parameters.tensors[1]", "got list", encode_parameters, [np.zeros(1), [1.0]], CPP_DOUBLE)


def test_encode_parameters_writes_into_the_given_message():
    out = Parameters()
    assert encode_parameters(LINE_MODEL, CPP_DOUBLE, out=out) is out
    assert list(out.tensors) == LINE_MODEL_BYTES and out.tensor_type == CPP_DOUBLE


# ---------------------------------------------------------------------------- a porter's format


@pytest.fixture
def json_format():
    """A shape-carrying text format a porter might add: {"dtype": ..., "shape": [...], "values": [...]}."""

    def encode(array: np.ndarray, field: str) -> bytes:
        return json.dumps({"dtype": array.dtype.str, "shape": array.shape, "values": array.ravel().tolist()}).encode()

    def decode(data: bytes, field: str, like: np.ndarray | None) -> np.ndarray:
        document = json.loads(data)
        return np.array(document["values"], dtype=document["dtype"]).reshape(document["shape"])

    register("test.json", encode, decode)
    yield "test.json"
    unregister("test.json")


def test_a_registered_format_round_trips_through_parameters(json_format):
    arrays = [np.arange(6, dtype=np.int16).reshape(3, 2), np.array([0.25, -1.5], dtype=np.float32)]
    parameters = encode_parameters(arrays, json_format, "fit_res.parameters")
    assert parameters.tensor_type == "test.json"
    assert json.loads(parameters.tensors[0]) == {"dtype": "<i2", "shape": [3, 2], "values": [0, 1, 2, 3, 4, 5]}
    decoded = decode_parameters(Parameters.FromString(parameters.SerializeToString()))
    for got, sent in zip(decoded, arrays, strict=True):
        assert got.dtype == sent.dtype and np.array_equal(got, sent)


def test_whatever_a_registered_decoder_raises_or_returns_becomes_a_codec_error(json_format):
    def tensor(text: str) -> Parameters:
        return Parameters(tensors=[text.encode()], tensor_type=json_format)

    assert_refused("p.tensors[0]", "test.json: JSONDecodeError", decode_parameters, tensor("{"), "p")
    assert_refused("p.tensors[0]", "test.json: KeyError", decode_parameters, tensor('{"values": []}'), "p")
    assert_refused("p.tensors[0]", "test.json decoder: object arrays are not accepted", decode_parameters,
                   tensor('{"dtype": "O", "shape": [1], "values": [null]}'), "p")
    assert_refused("p.tensors[0]", "test.json decoder: dtype <U1 is not accepted", decode_parameters,
                   tensor('{"dtype": "<U1", "shape": [1], "values": ["a"]}'), "p")


def test_a_decoder_that_returns_no_ndarray_is_refused():
    register("test.list", lambda array, field: b"", lambda data, field, like: [1.0])
    try:
        assert_refused("parameters.tensors[0]", "test.list decoder returned list, not an ndarray",
                       decode_parameters, Parameters(tensors=[b"x"], tensor_type="test.list"))
    finally:
        unregister("test.list")


# ---------------------------------------------------------------------------- properties


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=200), tensor_type=st.sampled_from([TENSOR_TYPE, CPP_DOUBLE]),
       like=st.sampled_from([None, [np.zeros(3)], [np.zeros((2, 2), np.float32)], [np.zeros(0)]]))
def test_any_bytes_into_every_registered_decoder_decode_or_raise_codec_error(data, tensor_type, like):
    try:
        decoded = decode_parameters(Parameters(tensors=[data], tensor_type=tensor_type), like=like)
    except CodecError as error:
        assert error.field.startswith("parameters.tensors[0]")
    else:
        assert isinstance(decoded[0], np.ndarray) and decoded[0].dtype.kind in "biufc"
        if tensor_type == CPP_DOUBLE:
            with np.errstate(over="ignore", invalid="ignore"):
                expected = data if like is None else np.frombuffer(data, "<f8").astype(like[0].dtype).tobytes()
            assert decoded[0].tobytes() == expected


@settings(max_examples=200, deadline=None)
@given(hnp.arrays(dtype=st.sampled_from([np.float16, np.float32, np.float64, np.dtype(">f8")]),
                  shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)))
def test_cpp_double_round_trips_any_float_array(array):
    (decoded,) = decode_parameters(encode_parameters([array], CPP_DOUBLE), like=[np.empty_like(array)])
    assert decoded.dtype == array.dtype and decoded.shape == array.shape
    if array.dtype.itemsize == 8:  # no conversion: bit for bit, NaN payloads included
        assert decoded.tobytes() == array.tobytes()
    else:
        numbers = ~np.isnan(array)
        assert decoded[numbers].tobytes() == array[numbers].tobytes()
        assert np.isnan(decoded[~numbers]).all()


def test_a_signaling_float32_nan_arrives_quiet():
    signaling, quiet = np.array([0x7F800001, 0x7FC00001], dtype="<u4").view(np.float32)
    (decoded,) = decode_parameters(encode_parameters([np.array([signaling])], CPP_DOUBLE),
                                   like=[np.zeros(1, np.float32)])
    assert decoded.view("<u4")[0] == quiet.view("<u4")


def test_importing_the_registry_pulls_in_neither_grpc_tensorflow_nor_flwr():
    code = "import sys, fedproto.tensor_formats; print(sorted({m.split('.')[0] for m in sys.modules}))"
    loaded = json.loads(subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                                       check=True, timeout=60).stdout.replace("'", '"'))
    assert not {"grpc", "tensorflow", "keras", "flwr"} & set(loaded)
