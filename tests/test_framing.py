"""fedproto.framing: the one-pass writer is byte-identical to protobuf, the in-place reader equal to its parse.

The reference is built the old way, without fedproto's encoders: each .npy tensor by
``numpy.save``, each cpp_double tensor by ``astype("<f8").tobytes()``, the message by protobuf
(``SerializeToString()``). Arrays: every allowed dtype in both byte orders, 0-d to 4-d, empty,
C order, Fortran order and strided (non-contiguous) views. Scalar maps: every kind.
"""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from fedproto import framing
from fedproto.codec import scalars_to_proto
from fedproto.npy import ALLOWED_DTYPE_KINDS, TENSOR_TYPE
from fedproto.tensor_formats import CPP_DOUBLE, decode_tensors, encode_tensors
from fedproto.transport_pb2 import ClientMessage, Parameters, ServerMessage, Status

EXAMPLES = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

ALLOWED_DTYPES = [np.dtype(f"{order}{kind}{size}")
                  for kind, sizes in ALLOWED_DTYPE_KINDS.items() for size in sizes for order in "<>"]
FLOAT_DTYPES = [dtype for dtype in ALLOWED_DTYPES if dtype.kind == "f"]
KINDS = [(ServerMessage, "fit_ins"), (ServerMessage, "evaluate_ins"),
         (ClientMessage, "fit_res"), (ClientMessage, "get_parameters_res")]


@st.composite
def arrays(draw, dtypes=ALLOWED_DTYPES) -> np.ndarray:
    dtype = draw(st.sampled_from(dtypes))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    count = int(np.prod(shape))
    if dtype.kind == "b":
        raw = bytes(draw(st.lists(st.integers(0, 1), min_size=count, max_size=count)))
    else:
        raw = draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))
    array = np.frombuffer(raw, dtype=dtype).reshape(shape)
    layout = draw(st.sampled_from(["C", "F", "strided"]))
    if layout == "F":
        return np.asfortranarray(array)
    if layout == "strided" and array.ndim:
        return np.repeat(array, 2, axis=-1)[..., ::2]  # same values, not contiguous
    return array.copy()


scalar_values = st.one_of(
    st.booleans(), st.binary(max_size=8), st.floats(allow_nan=False), st.text(max_size=8),
    st.integers(-(2**63), 2**64 - 1),
)
scalar_maps = st.dictionaries(st.text(max_size=6), scalar_values, max_size=5)


def reference_tensor(array: np.ndarray, tensor_type: str) -> bytes:
    if tensor_type == TENSOR_TYPE:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return buffer.getvalue()
    return array.astype("<f8").tobytes(order="C")


def build(outer: type, kind: str, scalars: dict, status: tuple[int, str], num_examples: int,
          parameters: Parameters | None) -> ClientMessage | ServerMessage:
    """One message of ``kind`` with every small field set (parameters only if given)."""
    body = getattr(outer, outer.DESCRIPTOR.fields_by_name[kind].message_type.name)()
    if kind in ("fit_ins", "evaluate_ins"):
        for key, value in scalars_to_proto(scalars).items():
            body.config[key].CopyFrom(value)
    else:
        body.status.CopyFrom(Status(code=status[0], message=status[1]))
    if kind == "fit_res":
        body.num_examples = num_examples
        for key, value in scalars_to_proto(scalars).items():
            body.metrics[key].CopyFrom(value)
    if parameters is not None:
        body.parameters.CopyFrom(parameters)
    return outer(**{kind: body})


@EXAMPLES
@given(kind=st.sampled_from(KINDS), tensor_type=st.sampled_from([TENSOR_TYPE, CPP_DOUBLE]), data=st.data(),
       scalars=scalar_maps, status=st.tuples(st.integers(0, 4), st.text(max_size=10)),
       num_examples=st.integers(-(2**63), 2**63 - 1))
def test_frame_is_byte_identical_to_serialize_to_string(kind, tensor_type, data, scalars, status, num_examples):
    outer, name = kind
    tensors = data.draw(st.lists(arrays(FLOAT_DTYPES if tensor_type == CPP_DOUBLE else ALLOWED_DTYPES),
                                 max_size=4))
    reference = build(outer, name, scalars, status, num_examples,
                      Parameters(tensors=[reference_tensor(a, tensor_type) for a in tensors],
                                 tensor_type=tensor_type))
    ours = framing.frame(build(outer, name, scalars, status, num_examples, None),
                         encode_tensors(tensors, tensor_type))
    assert ours == reference.SerializeToString()


@EXAMPLES
@given(kind=st.sampled_from(KINDS), tensors=st.lists(arrays(), max_size=4), scalars=scalar_maps,
       status=st.tuples(st.integers(0, 4), st.text(max_size=10)), num_examples=st.integers(0, 2**40))
def test_split_tensors_gives_protobufs_parse_without_copying_the_tensors(kind, tensors, scalars, status,
                                                                         num_examples):
    outer, name = kind
    data = build(outer, name, scalars, status, num_examples,
                 Parameters(tensors=[reference_tensor(a, TENSOR_TYPE) for a in tensors], tensor_type=TENSOR_TYPE)
                 ).SerializeToString()
    skeleton, views = framing.split_tensors(data, outer)
    full = outer.FromString(data)
    assert [bytes(view) for view in views] == list(getattr(full, name).parameters.tensors)
    assert all(view.obj is data for view in views)  # views of the received bytes, not copies
    getattr(full, name).parameters.ClearField("tensors")
    assert outer.FromString(skeleton) == full
    decoded = decode_tensors(views, TENSOR_TYPE)
    assert [a.tobytes(order="A") for a in decoded] == [np.asarray(a).tobytes(order="A") for a in tensors]


def test_split_tensors_leaves_other_layouts_to_protobuf():
    parameters = Parameters(tensors=[b"x"], tensor_type=TENSOR_TYPE)
    fit_ins = ServerMessage(fit_ins=ServerMessage.FitIns(parameters=parameters))
    data = fit_ins.SerializeToString()
    assert framing.split_tensors(data, ServerMessage) is not None
    assert framing.split_tensors(data + data, ServerMessage) is None  # the oneof twice: protobuf merges
    assert framing.split_tensors(data[:-1], ServerMessage) is None  # truncated
    assert framing.split_tensors(b"", ServerMessage) is None
    reconnect = ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=3)).SerializeToString()
    assert framing.split_tensors(reconnect, ServerMessage) is None  # carries no Parameters
    group = b"\x22\x02\x0b\x0c"  # fit_ins whose body is a (start, end) group pair
    assert framing.split_tensors(group, ServerMessage) is None


def test_varint_is_protobufs_length_prefix():
    for size in (0, 1, 127, 128, 300, 16_383, 16_384, 2**21 + 5):
        serialized = Parameters(tensors=[b"\0" * size]).SerializeToString()
        assert serialized == framing.TENSOR_TAG + framing.varint(size) + b"\0" * size


def test_a_handler_that_writes_into_its_parameters_changes_nothing_else():
    from fedproto.dispatch import ClientSession
    from fedproto.server_role import FitIns, encode_fit_ins

    model = [np.arange(6, dtype=np.float32).reshape(2, 3), np.asfortranarray(np.ones((2, 2), ">f8"))]
    wire = encode_fit_ins(FitIns(model))
    seen = []

    class TrainsInPlace:
        def fit(self, parameters, config):
            seen.append([p.copy(order="K") for p in parameters])
            for p in parameters:
                p += 1  # writable: the handler's own copy
            return parameters, 1, {}

    session = ClientSession(TrainsInPlace())
    first, second = session.receive_bytes(wire), session.receive_bytes(wire)
    assert first == second  # the received bytes were not changed by the first handler call
    for got, expected in zip(seen[1], model, strict=True):
        assert got.dtype.str == expected.dtype.str and got.flags.f_contiguous == expected.flags.f_contiguous
        np.testing.assert_array_equal(got, expected)
    reply = ClientMessage.FromString(first).fit_res.parameters
    np.testing.assert_array_equal(np.load(io.BytesIO(reply.tensors[0])), model[0] + 1)


def _outcome(decode, data: bytes, model):
    """What a FitRes decoder gives for ``data``: the result's fields, or the ReplyError's kind and text."""
    from fedproto.server_role import ReplyError

    try:
        result = decode(data, model)
    except ReplyError as error:
        return ("error", error.kind, re.sub(r" at 0x[0-9a-f]+", "", error.reason))  # numpy quotes addresses
    return ("ok", [(a.dtype.str, a.shape, a.tobytes(order="A")) for a in result.parameters],
            result.num_examples, result.metrics)


def _two_step(data: bytes, model):
    from fedproto.server_role import decode_fit_res, parse_reply

    return decode_fit_res(parse_reply(data), model)


@EXAMPLES
@given(tensors=st.lists(arrays(), max_size=3), scalars=scalar_maps, status=st.tuples(st.integers(0, 4),
       st.text(max_size=10)), num_examples=st.integers(-5, 2**40), data=st.data())
def test_decode_fit_res_bytes_equals_parse_reply_then_decode_fit_res(tensors, scalars, status, num_examples, data):
    from fedproto.server_role import decode_fit_res_bytes

    wire = build(ClientMessage, "fit_res", scalars, status, num_examples,
                 Parameters(tensors=[reference_tensor(a, TENSOR_TYPE) for a in tensors], tensor_type=TENSOR_TYPE)
                 ).SerializeToString()
    model = data.draw(st.sampled_from([[], [np.asarray(a) for a in tensors]]))
    position = data.draw(st.integers(0, len(wire)))
    damaged = data.draw(st.sampled_from([wire, wire[:position], wire[:position] + b"\xff" + wire[position:]]))
    assert _outcome(decode_fit_res_bytes, damaged, model) == _outcome(_two_step, damaged, model)


def test_decode_fit_res_bytes_gives_read_only_views_of_the_reply():
    from fedproto.server_role import decode_fit_res_bytes

    model = [np.arange(6, dtype=np.float32).reshape(2, 3)]
    parameters = Parameters(tensors=[reference_tensor(model[0], TENSOR_TYPE)], tensor_type=TENSOR_TYPE)
    wire = build(ClientMessage, "fit_res", {"loss": 0.5}, (0, "Success"), 3, parameters).SerializeToString()
    [array] = decode_fit_res_bytes(wire, model).parameters
    assert np.shares_memory(array, np.frombuffer(wire, np.uint8))
    with pytest.raises(ValueError, match="read-only"):
        array[0, 0] = 1


@EXAMPLES
@given(edits=st.lists(st.tuples(st.integers(0, 10**6), st.sampled_from(["flip", "insert", "delete"]),
                                st.integers(0, 255)), min_size=1, max_size=4))
def test_decode_fit_res_bytes_equals_the_two_step_path_on_damaged_golden_vectors(edits):
    from fedproto.kit.make_vectors import DEFAULT_DIR
    from fedproto.server_role import decode_fit_res_bytes

    golden = (DEFAULT_DIR / "client_fit_res.bin").read_bytes()
    model = [np.array(a) for a in _two_step(golden, []).parameters]
    data = bytearray(golden)
    for position, action, value in edits:
        position %= len(data) + 1
        if action == "flip" and position < len(data):
            data[position] ^= 1 << (value % 8)
        elif action == "insert":
            data[position:position] = bytes([value])
        elif action == "delete":
            del data[position:position + 1]
    damaged = bytes(data)
    for reference in ([], model):
        assert _outcome(decode_fit_res_bytes, damaged, reference) == _outcome(_two_step, damaged, reference)
