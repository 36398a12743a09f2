"""Property-based and fuzz tests of everything that decodes peer bytes (issue 9).

- any array of an allowed dtype, shape, byte order and memory order round-trips bit-exactly
  (every bit pattern, so NaN payloads and signed zeros included);
- any bytes into the tensor decoder, the Parameters and Scalar decoders, decode or raise
  CodecError, never another exception;
- mutations of the golden vectors fed to ``ClientSession.receive_bytes`` (client role) and to
  the server's reply decoders (``fedproto.server_role``) answer or raise a FedprotoError.

Budgets are explicit so the whole file stays well under 30 s on a busy 2-core machine;
``make fuzz`` (``tests/fuzz_campaign.py``) runs the long campaign. No deadline: the machine is
shared, so a slow example says nothing. No example database: nothing is written to the tree.
"""

from __future__ import annotations

import numpy as np
from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedproto import server_role
from fedproto.codec import parameters_to_ndarrays, scalars_from_proto
from fedproto.dispatch import ClientSession
from fedproto.errors import CodecError, FedprotoError
from fedproto.kit.make_vectors import DEFAULT_DIR
from fedproto.npy import ALLOWED_DTYPE_KINDS, bytes_to_ndarray, dtype_refusal, ndarray_to_bytes
from fedproto.transport_pb2 import Parameters, Scalar, ServerMessage
from fedproto.wire import MAX_MESSAGE_LENGTH

QUICK = settings(max_examples=300, deadline=None, database=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ALLOWED_DTYPES = [np.dtype(f"{order}{kind}{size}")
                  for kind, sizes in ALLOWED_DTYPE_KINDS.items() for size in sizes for order in "<>"]
SERVER_VECTORS = {p.stem: p.read_bytes() for p in sorted(DEFAULT_DIR.glob("server_*.bin"))}
CLIENT_VECTORS = {p.stem: p.read_bytes() for p in sorted(DEFAULT_DIR.glob("client_*.bin"))}


def assert_plain_array(array: np.ndarray) -> None:
    """What a successful decode must give: an allowed dtype within the size limit."""
    assert isinstance(array, np.ndarray)
    assert dtype_refusal(array.dtype) is None
    assert array.nbytes <= MAX_MESSAGE_LENGTH


# ---------------------------------------------------------------------------- round trip


@st.composite
def any_allowed_array(draw) -> np.ndarray:
    dtype = draw(st.sampled_from(ALLOWED_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=6))
    count = int(np.prod(shape))
    if dtype.kind == "b":  # a bool is one byte, 0 or 1
        raw = bytes(draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)))
    else:  # every bit pattern: NaN payloads, signalling NaNs, -0.0, subnormals
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    return np.asfortranarray(array) if draw(st.booleans()) else array.copy()


@QUICK
@given(any_allowed_array())
def test_any_allowed_array_round_trips_bit_exactly(array):
    back = bytes_to_ndarray(ndarray_to_bytes(array))
    assert back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    assert back.flags.f_contiguous == array.flags.f_contiguous
    assert back.flags.c_contiguous == array.flags.c_contiguous
    assert back.tobytes(order="A") == array.tobytes(order="A")


# ---------------------------------------------------------------------------- any bytes


def npy_seeds() -> list[bytes]:
    """Valid tensors of every vector, the starting points of the mutations."""
    return [t for data in SERVER_VECTORS.values()
            for t in ServerMessage.FromString(data).fit_ins.parameters.tensors]


@st.composite
def mutated(draw, seeds: list[bytes]) -> bytes:
    """A seed with a few bytes flipped, inserted, deleted or overwritten with a chosen token."""
    data = bytearray(draw(st.sampled_from(seeds)))
    tokens = [b"'", b"(", b")", b",", b"-", b"0", b"9" * 20, b"\n", b"'|V0'", b"'<U9'", b"'|S0'",
              b"True", b"[", b"]", b"{", b"}", b"\xff", b"\x00", b"2**63", b"('<f4', (2,))"]
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        action = draw(st.sampled_from(["flip", "insert", "delete", "token"]))
        if action == "flip" and position < len(data):
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif action == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=8))
        elif action == "delete":
            del data[position:position + draw(st.integers(1, 8))]
        elif action == "token":
            token = draw(st.sampled_from(tokens))
            data[position:position + draw(st.integers(0, len(token)))] = token
    return bytes(data)


def decode_or_codec_error(data: bytes) -> None:
    try:
        array = bytes_to_ndarray(data, "tensors[0]")
    except CodecError as error:
        assert error.field == "tensors[0]"
        assert "\n" not in str(error)
    else:
        assert_plain_array(array)


@QUICK
@given(st.binary(max_size=300))
def test_any_bytes_decode_to_a_plain_array_or_a_codec_error(data):
    decode_or_codec_error(data)


@QUICK
@given(st.binary(max_size=200))
def test_any_bytes_after_a_valid_magic_decode_or_raise_codec_error(tail):
    decode_or_codec_error(b"\x93NUMPY\x01\x00" + tail)


@settings(QUICK, max_examples=1500)
@given(mutated(npy_seeds()))
def test_mutated_tensors_decode_or_raise_codec_error(data):
    decode_or_codec_error(data)


def parsed_or_none(message_type, data: bytes):
    try:
        return message_type.FromString(data)
    except DecodeError:  # protobuf refused the bytes before our decoders see them
        return None


@QUICK
@given(st.lists(st.one_of(st.binary(max_size=64), mutated(npy_seeds())), max_size=3),
       st.sampled_from(["numpy.ndarray", "", "torch.Tensor"]))
def test_any_parameters_decode_or_raise_codec_error(tensors, tensor_type):
    parameters = Parameters(tensors=tensors, tensor_type=tensor_type)
    try:
        arrays = parameters_to_ndarrays(parameters, "FitIns.parameters")
    except CodecError as error:
        assert error.field.startswith("FitIns.parameters")
    else:
        assert len(arrays) == len(tensors)
        for array in arrays:
            assert_plain_array(array)


@QUICK
@given(st.binary(max_size=200))
def test_any_config_bytes_decode_or_raise_codec_error(data):
    fit_ins = parsed_or_none(ServerMessage.FitIns, data)
    if fit_ins is None:
        return
    try:
        config = scalars_from_proto(fit_ins.config, "FitIns.config")
        parameters_to_ndarrays(fit_ins.parameters, "FitIns.parameters")
    except CodecError:
        return
    assert all(isinstance(v, (bool, bytes, float, int, str)) for v in config.values())


@QUICK
@given(st.dictionaries(st.text(max_size=8), st.binary(max_size=16), max_size=4))
def test_any_scalar_bytes_decode_or_raise_codec_error(encoded):
    scalars = {key: parsed_or_none(Scalar, data) for key, data in encoded.items()}
    scalars = {key: scalar for key, scalar in scalars.items() if scalar is not None}
    try:
        values = scalars_from_proto(scalars, "EvaluateIns.config")
    except CodecError as error:
        assert error.field.startswith("EvaluateIns.config[")
    else:
        assert set(values) == set(scalars)


# ---------------------------------------------------------------------------- sessions


class EchoHandler:
    """A well-behaved NumPyClient: the fuzzing is of the wire, not of the handler."""

    def get_properties(self, config):
        return {"n": 1}

    def get_parameters(self, config):
        return [np.zeros(2, np.float32)]

    def fit(self, parameters, config):
        return parameters, 1, {}

    def evaluate(self, parameters, config):
        return 0.5, 1, {}


@settings(QUICK, max_examples=1000)
@given(mutated(list(SERVER_VECTORS.values())))
def test_mutated_server_vectors_answer_or_raise_a_fedproto_error(data):
    session = ClientSession(EchoHandler())
    try:
        reply = session.receive_bytes(data)
    except FedprotoError:
        return
    assert isinstance(reply, bytes)


def test_every_server_vector_is_answered_unmutated():
    # The mutations start from inputs the session accepts, so they probe past the first check.
    for name, data in SERVER_VECTORS.items():
        assert isinstance(ClientSession(EchoHandler()).receive_bytes(data), bytes), name


REPLY_DECODERS = {
    "client_fit_res": lambda reply: server_role.decode_fit_res(reply, MODEL),
    "client_evaluate_res": server_role.decode_evaluate_res,
    "client_get_parameters_res": server_role.decode_get_parameters_res,
    "client_get_properties_res": server_role.decode_get_properties_res,
    "client_disconnect_res_ack": server_role.decode_disconnect_res,
}
MODEL = [bytes_to_ndarray(t) for t in
         server_role.parse_reply(CLIENT_VECTORS["client_fit_res"]).fit_res.parameters.tensors]


@settings(QUICK, max_examples=1000)
@given(st.sampled_from(sorted(REPLY_DECODERS)), st.data())
def test_mutated_client_replies_decode_or_raise_a_fedproto_error(name, data):
    mutated_reply = data.draw(mutated([CLIENT_VECTORS[name]]))
    try:
        result = REPLY_DECODERS[name](server_role.parse_reply(mutated_reply))
    except FedprotoError:
        return
    assert result is not None
