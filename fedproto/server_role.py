"""The server side of ``FlowerService.Join`` without any I/O: instructions out, typed results in.

The counterpart of :mod:`fedproto.dispatch` (the client side). A transport (``server/transport.py``,
or your port in another language) writes the bytes of an instruction on a client's Join stream,
reads one ClientMessage back, and hands its bytes to :func:`parse_reply` and then to the
``decode_*`` function of what it asked (a FitRes's bytes go to :func:`decode_fit_reply` whole: it
picks how to read them). The result is a typed value (:class:`FitRes`...) or a
:class:`ReplyError` whose ``kind`` (:class:`FailureKind`) and ``reason`` say why the reply does
not count; the FL loop records that as a :class:`Failure` of that client. Nothing here opens
sockets, starts threads or sleeps.

Invariants
----------
1. The server speaks first, and each instruction gets exactly one reply, in order. (Timing is the
   transport's job: a reply that comes too late, or unasked, ends that client's stream.)
2. A reply counts only if it parses as a ClientMessage, is the kind asked for, carries status OK,
   every tensor decodes in the format its ``tensor_type`` names (``fedproto.tensor_formats``: .npy or
   cpp_double, shaped by the global model), no floating-point tensor (or loss) is NaN or Inf, and a FitRes
   matches the global model in tensor count, shapes and dtypes, byte order included
   (:func:`check_update`, the one place an update is compared with the model). Anything else is a
   :class:`ReplyError`, never an exception of another type.
3. An initial model (GetParametersRes) has at least one tensor and only numeric ones (ints,
   uints, floats, complex; not bool): it is what every update is checked against, and an
   average of it must be a model of the same dtype (:func:`check_initial_model`).
4. Peer text (a Status message) is escaped onto one line and cut before it enters a reason, and
   each reply's metrics or properties are capped at ``MAX_METRICS`` entries
   (``fedproto.text.bound_metrics``) as they are decoded.
5. A strategy never sees protobuf: results carry NumPy arrays and dicts of Python scalars.
6. ReconnectIns ends a stream: ``seconds=0`` means "we are done, do not come back", ``seconds>0``
   "come back after that long". The reply, DisconnectRes, carries only a reason; flwr's server
   does not act on it, and a client may close its stream without sending it.

Instructions and the replies they expect
----------------------------------------
==================  ==================  ===========================  =====================
instruction         reply (oneof)       decoded by                   result
==================  ==================  ===========================  =====================
GetPropertiesIns    get_properties_res  decode_get_properties_res    properties (dict)
GetParametersIns    get_parameters_res  decode_get_parameters_res    NDArrays
FitIns              fit_res             decode_fit_reply (bytes)     FitRes
EvaluateIns         evaluate_res        decode_evaluate_res          EvaluateRes
ReconnectIns        disconnect_res      decode_disconnect_res        Reason value (int)
==================  ==================  ===========================  =====================
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from google.protobuf.internal.enum_type_wrapper import EnumTypeWrapper
from google.protobuf.message import DecodeError

from fedproto import framing
from fedproto.codec import (
    TENSOR_TYPE,
    CodecError,
    ScalarValue,
    all_finite,
    parameters_to_ndarrays,
    scalars_from_proto,
    scalars_to_proto,
)
from fedproto.errors import FedprotoError
from fedproto.tensor_formats import decode_tensors as decode_tensor_list
from fedproto.tensor_formats import encode_tensors
from fedproto.text import bound_metrics, bound_text
from fedproto.transport_pb2 import ClientMessage, Code, ServerMessage

NDArrays = list[np.ndarray]
Config = dict[str, ScalarValue]
Metrics = dict[str, ScalarValue]

# A FitRes at least this large is decoded in place from the bytes received (its tensors become
# views of them) instead of being parsed by protobuf first, which copies the tensors twice; a
# small reply is faster through protobuf's parse (its C parser against a walk in Python).
# ``python -m fedproto.bench.codec --paths`` (both paths timed alternately, 2-core AMD EPYC,
# 2026-12-03): protobuf 25-30% faster up to 96 KB (31 vs 44 µs at 64 KB), within +-5% from
# 256 to 384 KB, in place 16% faster at 448 KB and 30% at 1 MB. At a tie in place wins: no copy
# of the reply's tensors is held.
IN_PLACE_DECODE_BYTES = 1 << 18
CODE_OK = Code.OK  # read once: an enum's attribute goes through protobuf's Python wrapper on every access


# ---------------------------------------------------------------------------- what the loop exchanges


@dataclass
class FitIns:
    parameters: NDArrays
    config: Config = field(default_factory=dict)


@dataclass
class FitRes:
    parameters: NDArrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    # The format the client wrote its tensors in; None if it sent none. The server answers that
    # client in this format from then on.
    tensor_type: str | None = None


@dataclass
class EvaluateIns:
    parameters: NDArrays
    config: Config = field(default_factory=dict)


@dataclass
class EvaluateRes:
    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


class FailureKind(enum.Enum):
    """Why a client's reply did not count. The value is what logs and History show."""

    STREAM_CLOSED = "stream_closed"  # the Join stream ended (client left, crashed, was killed)
    TIMEOUT = "timeout"  # no reply within the round timeout; the stream is closed
    STATUS = "status"  # the reply carries a non-OK Status (e.g. the handler raised)
    WRONG_REPLY = "wrong_reply"  # a valid ClientMessage, but not the answer to what was asked
    MALFORMED = "malformed"  # bytes that are not a ClientMessage
    BAD_TENSOR = "bad_tensor"  # a tensor that does not decode (pickled, truncated, unknown tensor_type...)
    NON_FINITE = "non_finite"  # NaN or Inf in the parameters or the loss
    SHAPE_MISMATCH = "shape_mismatch"  # FitRes tensors not as many, or not shaped, as the global model's
    # A dtype of its own (not shape_mismatch): a float64 or big-endian update of a float32 model is
    # a different fault (a client that trains in another precision) and would change the model's dtype.
    DTYPE_MISMATCH = "dtype_mismatch"  # FitRes tensors of another dtype or byte order than the model's
    UNUSABLE_MODEL = "unusable_model"  # GetParametersRes with no tensors, or a tensor that is not a number


@dataclass(frozen=True)
class Failure:
    """One client that did not deliver a usable reply in a round."""

    cid: str
    kind: FailureKind
    reason: str

    def __str__(self) -> str:
        return f"{self.cid}: {self.kind.value}: {self.reason}"


class ReplyError(FedprotoError):
    """A client's reply (or its absence) that does not count; ``kind`` says why, ``reason`` how."""

    def __init__(self, kind: FailureKind, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def enum_name(enum_type: EnumTypeWrapper, value: int) -> str:
    """``Code.Name(value)``, or e.g. "unknown code 42": proto3 keeps enum values it does not know."""
    if value in enum_type.values():
        return enum_type.Name(value)
    return f"unknown {enum_type.DESCRIPTOR.name.lower()} {value}"


# ---------------------------------------------------------------------------- instructions -> bytes


def encode_get_properties_ins(config: Config | None = None) -> bytes:
    body = ServerMessage.GetPropertiesIns(config=scalars_to_proto(config or {}, "get_properties_ins.config"))
    return ServerMessage(get_properties_ins=body).SerializeToString()


def encode_get_parameters_ins(config: Config | None = None) -> bytes:
    body = ServerMessage.GetParametersIns(config=scalars_to_proto(config or {}, "get_parameters_ins.config"))
    return ServerMessage(get_parameters_ins=body).SerializeToString()


def encode_fit_ins(ins: FitIns, tensor_type: str = TENSOR_TYPE) -> bytes:
    """FitIns with its tensors in format ``tensor_type`` (the one the receiving client speaks).

    Written in one pass from ``framing.FRAME_MIN_BYTES`` of tensors up (``fedproto.framing``):
    protobuf serializes the config, the tensors are copied once, into the result. A smaller
    model is serialized by protobuf whole, which is faster for it; the bytes are the same.
    """
    tensors = encode_tensors(ins.parameters, tensor_type, "fit_ins.parameters")
    config = scalars_to_proto(ins.config, "fit_ins.config")
    return framing.serialize(ServerMessage(fit_ins=ServerMessage.FitIns(config=config)), tensors)


def encode_evaluate_ins(ins: EvaluateIns, tensor_type: str = TENSOR_TYPE) -> bytes:
    """EvaluateIns with its tensors in format ``tensor_type``, written like :func:`encode_fit_ins`."""
    tensors = encode_tensors(ins.parameters, tensor_type, "evaluate_ins.parameters")
    config = scalars_to_proto(ins.config, "evaluate_ins.config")
    return framing.serialize(ServerMessage(evaluate_ins=ServerMessage.EvaluateIns(config=config)), tensors)


def encode_reconnect_ins(seconds: int) -> bytes:
    """``seconds=0``: the session is over; ``seconds>0``: come back after that many seconds."""
    return ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=seconds)).SerializeToString()


# ---------------------------------------------------------------------------- bytes -> replies


def parse_reply(data: bytes) -> ClientMessage:
    """The bytes of one reply -> ClientMessage; MALFORMED if they are not one."""
    try:
        return ClientMessage.FromString(data)
    except DecodeError as error:
        raise ReplyError(
            FailureKind.MALFORMED, f"reply is not a ClientMessage ({error}; {len(data)} bytes)"
        ) from None


def reply_of_kind(reply: ClientMessage, field: str) -> Any:
    """The reply's ``field`` body (e.g. ``"fit_res"``); WRONG_REPLY if it is another kind."""
    kind = reply.WhichOneof("msg")
    if kind != field:
        raise ReplyError(FailureKind.WRONG_REPLY,
                         f"expected {field}, got {kind or 'a ClientMessage with nothing set'}")
    return getattr(reply, field)


def check_status(status: Any) -> None:
    """STATUS unless ``status`` is OK (a client reports a failed or missing handler this way)."""
    if status.code != CODE_OK:
        raise ReplyError(FailureKind.STATUS, f"{enum_name(Code, status.code)}: {bound_text(status.message)}")


def expect(reply: ClientMessage, field: str) -> Any:
    """The reply's ``field`` body, if it is that kind of reply and its status is OK."""
    body = reply_of_kind(reply, field)
    check_status(body.status)
    return body


def decode_tensors(parameters: Any, field: str, like: NDArrays | None = None) -> NDArrays:
    """Parameters -> NDArrays in the format ``tensor_type`` names; BAD_TENSOR names the tensor that
    does not decode. ``like`` (the global model) shapes a shapeless format such as cpp_double."""
    try:
        return parameters_to_ndarrays(parameters, field, like)
    except CodecError as error:
        raise ReplyError(FailureKind.BAD_TENSOR, str(error)) from None


def reply_tensor_type(reply: ClientMessage) -> str | None:
    """The ``tensor_type`` a client writes its tensors in, from a reply that carries tensors.

    A FitRes or GetParametersRes with at least one tensor tells it; any other reply (or one with
    no tensors) tells nothing: None. The server answers each client in the format it speaks.
    """
    kind = reply.WhichOneof("msg")
    if kind not in ("fit_res", "get_parameters_res"):
        return None
    parameters = getattr(reply, kind).parameters
    return parameters.tensor_type if parameters.tensors else None


def check_finite(arrays: NDArrays, field: str) -> None:
    """NON_FINITE if a floating-point tensor holds NaN or Inf: averaged in, it poisons the model."""
    if all_finite(arrays):  # one call for the usual reply; the culprit is looked for only when there is one
        return
    for index, array in enumerate(arrays):
        if not all_finite([array]):
            raise ReplyError(FailureKind.NON_FINITE, f"{field}.tensors[{index}] holds NaN or Inf")


def decode_scalars(values: Any, field: str) -> dict[str, ScalarValue]:
    """A map of Scalars (metrics, properties) -> dict; MALFORMED for a Scalar with no kind set."""
    try:
        return scalars_from_proto(values, field)
    except CodecError as error:  # the reason quotes the peer's key: bounded (invariant 4)
        raise ReplyError(FailureKind.MALFORMED, bound_text(str(error))) from None


def decode_metrics(values: Any, field: str) -> dict[str, ScalarValue]:
    """A reply's metrics or properties, capped at ``MAX_METRICS`` entries, text bounded (invariant 4)."""
    if not values:  # the usual reply at scale: three calls less per reply
        return {}
    # bound_metrics keeps each value's type (a str stays a str, only shorter): still ScalarValues
    return cast(dict[str, ScalarValue], bound_metrics(decode_scalars(values, field)))


def check_num_examples(num_examples: int, res_name: str) -> int:
    """The field is an int64 on the wire: a negative count would turn FedAvg's weights around."""
    if num_examples < 0:
        raise ReplyError(FailureKind.MALFORMED, f"{res_name}.num_examples is negative ({num_examples})")
    return num_examples


def check_update(parameters: NDArrays, model: NDArrays) -> None:
    """An update must match the global model tensor for tensor, or averaging it fails for everyone.

    The one place a FitRes is compared with the model: count and shapes (SHAPE_MISMATCH), then
    dtypes, byte order included (DTYPE_MISMATCH): averaged in, a float64 or int8 update would
    make the model's dtype depend on which reply came first.
    """
    if len(parameters) != len(model):
        raise ReplyError(FailureKind.SHAPE_MISMATCH,
                         f"FitRes.parameters has {len(parameters)} tensors, the model has {len(model)}")
    for index, (array, reference) in enumerate(zip(parameters, model, strict=True)):
        if array.shape != reference.shape:
            raise ReplyError(FailureKind.SHAPE_MISMATCH,
                             f"FitRes.parameters.tensors[{index}] has shape {array.shape}, "
                             f"the model's is {reference.shape}")
    for index, (array, reference) in enumerate(zip(parameters, model, strict=True)):
        if array.dtype != reference.dtype:
            raise ReplyError(FailureKind.DTYPE_MISMATCH,
                             f"FitRes.parameters.tensors[{index}] has dtype {array.dtype.str}, "
                             f"the model's is {reference.dtype.str}")


def check_initial_model(arrays: NDArrays, field: str) -> None:
    """UNUSABLE_MODEL unless ``arrays`` can be the global model (invariant 3).

    An empty model would turn :func:`check_update` off; a bool tensor cannot be averaged into a
    bool. (The codec has already refused every dtype that is not bool or a number.)
    """
    if not arrays:
        raise ReplyError(FailureKind.UNUSABLE_MODEL, f"{field} holds no tensors")
    for index, array in enumerate(arrays):
        if not np.issubdtype(array.dtype, np.number):
            raise ReplyError(FailureKind.UNUSABLE_MODEL,
                             f"{field}.tensors[{index}] has dtype {array.dtype}, not a number")


def decode_get_properties_res(reply: ClientMessage) -> dict[str, ScalarValue]:
    body = expect(reply, "get_properties_res")
    return decode_metrics(body.properties, "GetPropertiesRes.properties")


def decode_get_parameters_res(reply: ClientMessage) -> NDArrays:
    body = expect(reply, "get_parameters_res")
    arrays = decode_tensors(body.parameters, "GetParametersRes.parameters")
    check_finite(arrays, "GetParametersRes.parameters")
    check_initial_model(arrays, "GetParametersRes.parameters")
    return arrays


def decode_fit_reply(data: bytes, model: NDArrays) -> FitRes:
    """The bytes of a reply to FitIns(``model``) -> FitRes, read the cheaper way for their size.

    From :data:`IN_PLACE_DECODE_BYTES` up in place (:func:`decode_fit_res_bytes`), below through
    protobuf (:func:`parse_reply`, :func:`decode_fit_res`): the same result and ReplyError either way.
    """
    if len(data) >= IN_PLACE_DECODE_BYTES:
        return decode_fit_res_bytes(data, model)
    return decode_fit_res(parse_reply(data), model)


def decode_fit_res(reply: ClientMessage, model: NDArrays) -> FitRes:
    """A FitRes answering FitIns(``model``); with no model yet (empty list), any tensors count."""
    body = expect(reply, "fit_res")
    return _fit_res(body, body.parameters.tensors, model)


def decode_fit_res_bytes(data: bytes, model: NDArrays) -> FitRes:
    """:func:`parse_reply` and :func:`decode_fit_res` in one, reading the tensors in place in ``data``.

    The .npy tensors become read-only views of ``data`` (``fedproto.framing.split_tensors``): no
    copy, where a parsed ClientMessage costs two (protobuf's parse, then each tensor as bytes).
    Same result and same ReplyError as the two-step path, for any input.
    """
    split = framing.split_tensors(data, ClientMessage)
    if split is None:  # not a FitRes in the plain layout: protobuf reads it all
        return decode_fit_res(parse_reply(data), model)
    skeleton, tensors = split
    try:
        reply = ClientMessage.FromString(skeleton)
    except DecodeError:  # then ``data`` is no ClientMessage either: parse_reply says so, in its words
        return decode_fit_res(parse_reply(data), model)
    return _fit_res(expect(reply, "fit_res"), tensors, model)


def _fit_res(body: Any, tensors: Any, model: NDArrays) -> FitRes:
    """A checked FitRes from its body and its tensors (in the body, or views of the reply's bytes)."""
    # A shapeless format (cpp_double) takes its shapes and dtypes from the model it answers; a
    # wrong tensor count is left to check_update, which names it SHAPE_MISMATCH.
    like = model if model and len(tensors) == len(model) else None
    try:
        parameters = decode_tensor_list(tensors, body.parameters.tensor_type, "FitRes.parameters", like)
    except CodecError as error:
        raise ReplyError(FailureKind.BAD_TENSOR, str(error)) from None
    check_finite(parameters, "FitRes.parameters")
    if model:
        check_update(parameters, model)
    return FitRes(parameters, check_num_examples(body.num_examples, "FitRes"),
                  decode_metrics(body.metrics, "FitRes.metrics"), body.parameters.tensor_type if tensors else None)


def decode_evaluate_res(reply: ClientMessage) -> EvaluateRes:
    body = expect(reply, "evaluate_res")
    if not math.isfinite(body.loss):
        raise ReplyError(FailureKind.NON_FINITE, f"EvaluateRes.loss is {body.loss}")
    return EvaluateRes(float(body.loss), check_num_examples(body.num_examples, "EvaluateRes"),
                       decode_metrics(body.metrics, "EvaluateRes.metrics"))


def decode_disconnect_res(reply: ClientMessage) -> int:
    """The DisconnectRes reason (``Reason.ACK``, ``Reason.RECONNECT``...); it has no status."""
    reason: int = reply_of_kind(reply, "disconnect_res").reason
    return reason
