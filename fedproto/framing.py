"""A Parameters-carrying message to wire bytes in one pass, and its tensors found in place when read.

Four messages carry a model: ``ServerMessage{fit_ins, evaluate_ins}`` and
``ClientMessage{fit_res, get_parameters_res}``. On the wire each is one length-delimited field
(the oneof) around its body, whose ``Parameters`` field is length-delimited around the
``tensors`` entries (field 1, each length-delimited around a tensor's bytes) and then the
``tensor_type`` string (field 2). Protobuf writes fields in field-number order, so

    outer tag, len(body), body fields before parameters,
      parameters tag, len(P),
        for each tensor: tensors tag, len(tensor), tensor bytes      <- the only big part
        tensor_type field
      body fields after parameters

:func:`frame` lets protobuf serialize the body with no tensors (every small field, maps
included, in protobuf's own order and encoding), finds the parameters field in those few bytes,
and joins the pieces around the tensors once: the tensor data is copied once, into the result.
``tests/test_framing.py`` proves the result byte-identical to ``SerializeToString()`` of the
same message. Hand-written here: the base-128 varint of a length, and the walk over a
message's tags (:func:`fields`). The tags themselves come from protobuf (:data:`TAGS`).

:func:`split_tensors` is the reverse: it finds the tensors of a received message as
memoryviews of its bytes and gives protobuf the rest to parse (a "skeleton" without them), so
the tensor data is not copied by the parse. Anything but the plain layout above (a field
repeated, a group, a wire type that does not fit) is left to protobuf's full parse: None.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple

from google.protobuf.message import Message as ProtoMessage

from fedproto.errors import FedprotoError
from fedproto.tensor_formats import EncodedTensors, Pieces
from fedproto.transport_pb2 import ClientMessage, Parameters, ServerMessage

LENGTH_DELIMITED = 2
WIRE_TYPES = (0, 1, 2, 5)  # varint, 64-bit, length-delimited, 32-bit (3 and 4, groups, are not used)
TENSORS_FIELD = Parameters.DESCRIPTOR.fields_by_name["tensors"].number


def _tag(message: ProtoMessage) -> bytes:
    """The tag of the one length-delimited field set to empty in ``message``, as protobuf writes it."""
    return message.SerializeToString()[:-1]  # the last byte is the field's length, 0


def _carriers(outer: type[ProtoMessage], names: tuple[str, ...]) -> dict[str, tuple[bytes, bytes, int]]:
    """oneof name -> (its tag in ``outer``, the parameters tag in its body, the parameters field number)."""
    table = {}
    for name in names:
        body_type = getattr(outer, outer.DESCRIPTOR.fields_by_name[name].message_type.name)
        table[name] = (_tag(outer(**{name: body_type()})), _tag(body_type(parameters=Parameters())),
                       body_type.DESCRIPTOR.fields_by_name["parameters"].number)
    return table


TAGS = {
    ServerMessage: _carriers(ServerMessage, ("fit_ins", "evaluate_ins")),
    ClientMessage: _carriers(ClientMessage, ("fit_res", "get_parameters_res")),
}
TENSOR_TAG = _tag(Parameters(tensors=[b""]))


def varint(value: int) -> bytes:
    """Protobuf's base-128 varint of a non-negative int: 7 bits a byte, low bits first."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def frame(message: ClientMessage | ServerMessage, tensors: EncodedTensors) -> bytes:
    """The wire bytes of ``message`` with ``tensors`` as its Parameters, equal to SerializeToString().

    ``message`` has its oneof set to a Parameters-carrying body whose parameters hold no tensors
    yet; its ``tensor_type`` is set here. The tensors' pieces are copied once, into the result.
    """
    kind = message.WhichOneof("msg")
    outer_tag, parameters_tag, parameters_number = TAGS[type(message)][kind]
    body = getattr(message, kind)
    body.parameters.tensor_type = tensors.tensor_type
    small = body.SerializeToString()  # protobuf writes every field but the tensors
    [parameters] = [f for f in fields(small, 0, len(small)) if f.number == parameters_number]
    tensor_fields: Pieces = []
    for pieces in tensors.tensors:
        size = sum(memoryview(piece).nbytes for piece in pieces)
        tensor_fields += [TENSOR_TAG, varint(size), *pieces]
    tensor_type_field = small[parameters.start:parameters.end]
    parameters_size = sum(memoryview(piece).nbytes for piece in tensor_fields) + len(tensor_type_field)
    head, tail = small[:parameters.tag_start], small[parameters.end:]
    parameters_header = parameters_tag + varint(parameters_size)
    body_size = len(head) + len(parameters_header) + parameters_size + len(tail)
    return b"".join([outer_tag, varint(body_size), head, parameters_header, *tensor_fields, tensor_type_field, tail])


# ---------------------------------------------------------------------------- reading


class Field(NamedTuple):
    number: int
    wire_type: int
    tag_start: int  # where the field's tag begins
    start: int  # where its value (after the length, if length-delimited) begins
    end: int


class NotPlain(FedprotoError):
    """The bytes are not in the plain layout :func:`split_tensors` reads; protobuf parses them.

    Never leaves this module: :func:`split_tensors` answers None instead."""


def _read_varint(data: bytes | memoryview, position: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while position < end and shift < 64:
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
    raise NotPlain("truncated or overlong varint")


def fields(data: bytes | memoryview, start: int, end: int) -> Iterator[Field]:
    """The fields of the message in ``data[start:end]``, without reading their values."""
    position = start
    while position < end:
        tag, value_start = _read_varint(data, position, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type not in WIRE_TYPES or number == 0:
            raise NotPlain(f"wire type {wire_type} of field {number}")
        if wire_type == 0:
            _, value_end = _read_varint(data, value_start, end)
        elif wire_type == LENGTH_DELIMITED:
            length, value_start = _read_varint(data, value_start, end)
            value_end = value_start + length
        else:
            value_end = value_start + (8 if wire_type == 1 else 4)
        if value_end > end:
            raise NotPlain(f"field {number} runs past its message")
        yield Field(number, wire_type, position, value_start, value_end)
        position = value_end


def split_tensors(data: bytes, outer: type[ProtoMessage]) -> tuple[bytes, list[memoryview]] | None:
    """(the message without its tensors, the tensors as views of ``data``), or None.

    None: not one of the Parameters-carrying kinds of ``outer`` (ServerMessage or ClientMessage)
    in the plain layout; parse ``data`` with protobuf instead. Otherwise the first part, parsed by
    protobuf, is the message ``data`` holds with ``Parameters.tensors`` empty, and the views are
    those tensors in order (proven with every kind in ``tests/test_framing.py``).
    """
    view = memoryview(data)
    try:
        [message] = fields(view, 0, len(view))
        oneof_field = outer.DESCRIPTOR.fields_by_number.get(message.number)
        carrier = TAGS[outer].get(oneof_field.name) if oneof_field else None
        if carrier is None or message.wire_type != LENGTH_DELIMITED:
            return None
        body = list(fields(view, message.start, message.end))
        [parameters] = [f for f in body if f.number == carrier[2]]
        if parameters.wire_type != LENGTH_DELIMITED:
            return None
        tensors, kept = [], []
        for field in fields(view, parameters.start, parameters.end):
            if field.number == TENSORS_FIELD and field.wire_type == LENGTH_DELIMITED:
                tensors.append(view[field.start:field.end])
            elif field.number == TENSORS_FIELD:
                return None
            else:
                kept.append(view[field.tag_start:field.end])
    except (NotPlain, ValueError):  # ValueError: not exactly one message or parameters field
        return None
    rest = b"".join(kept)
    parameters_field = carrier[1] + varint(len(rest)) + rest
    head = view[message.start:parameters.tag_start]
    tail = view[parameters.end:message.end]
    body_size = len(head) + len(parameters_field) + len(tail)
    return b"".join([carrier[0], varint(body_size), head, parameters_field, tail]), tensors
