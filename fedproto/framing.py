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

from typing import NamedTuple

from google.protobuf.message import Message as ProtoMessage

from fedproto.errors import FedprotoError
from fedproto.tensor_formats import EncodedTensors, Pieces
from fedproto.transport_pb2 import ClientMessage, Parameters, ServerMessage

LENGTH_DELIMITED = 2
WIRE_TYPES = (0, 1, 2, 5)  # varint, 64-bit, length-delimited, 32-bit (3 and 4, groups, are not used)
TENSORS_FIELD = Parameters.DESCRIPTOR.fields_by_name["tensors"].number

# From this many bytes of tensors up, :func:`serialize` frames a message in one pass; below,
# protobuf serializes it. The edge client's FitRes, both paths timed alternately
# (``python -m fedproto.bench.codec --paths``, 2-core AMD EPYC, 2026-12-03): protobuf 10% faster
# at 64 KB (55 vs 61 µs), frame 30% faster at 96 KB (62 vs 90 µs) and 2-20x from 128 KB up.
FRAME_MIN_BYTES = 80_000
# From this many bytes of message up, the edge client's :func:`read` finds an instruction's
# tensors in place; below, protobuf parses the message whole (copying its tensors, which costs
# less than the walk when they are small). Same run: protobuf 3-7% faster up to 128 KB, equal
# at 192 KB, in place 10-27% faster from 256 KB. (The server's threshold for replies is
# ``server_role.IN_PLACE_DECODE_BYTES``: its reply decode copies nothing, so it breaks even later.)
SPLIT_MIN_BYTES = 160_000


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
# The same, by the oneof's field number: what a reader finds on the wire.
CARRIERS_BY_NUMBER = {
    outer: {outer.DESCRIPTOR.fields_by_name[name].number: carrier for name, carrier in table.items()}
    for outer, table in TAGS.items()
}


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
    tensor_type_field = small[parameters.start:parameters.end]
    parameters_size = len(tensor_type_field)
    for pieces in tensors.tensors:
        size = sum(memoryview(piece).nbytes for piece in pieces)
        prefix = TENSOR_TAG + varint(size)
        tensor_fields += [prefix, *pieces]
        parameters_size += len(prefix) + size
    head, tail = small[:parameters.tag_start], small[parameters.end:]
    parameters_header = parameters_tag + varint(parameters_size)
    body_size = len(head) + len(parameters_header) + parameters_size + len(tail)
    return b"".join([outer_tag, varint(body_size), head, parameters_header, *tensor_fields, tensor_type_field, tail])


def serialize(message: ClientMessage | ServerMessage, tensors: EncodedTensors) -> bytes:
    """The wire bytes of ``message`` with ``tensors`` as its Parameters, the cheaper way for their size.

    :func:`frame` from :data:`FRAME_MIN_BYTES` of tensors up, else ``SerializeToString()`` after
    writing the tensors into ``message`` (what :func:`frame` is proven equal to).
    """
    if sum(memoryview(piece).nbytes for pieces in tensors.tensors for piece in pieces) >= FRAME_MIN_BYTES:
        return frame(message, tensors)
    fill(message, tensors)
    return message.SerializeToString()


def fill(message: ClientMessage | ServerMessage, tensors: EncodedTensors) -> None:
    """Write ``tensors`` into the Parameters of ``message``'s body (protobuf copies them in)."""
    parameters = getattr(message, str(message.WhichOneof("msg"))).parameters
    parameters.tensor_type = tensors.tensor_type
    parameters.tensors.extend([b"".join(pieces) for pieces in tensors.tensors])


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


def fields(data: bytes | memoryview, start: int, end: int) -> list[Field]:
    """The fields of the message in ``data[start:end]``, without reading their values."""
    found = []
    position = start
    while position < end:
        tag = data[position]  # a one-byte tag or length (below 0x80) is the common case: read inline
        value_start = position + 1
        if tag & 0x80:
            tag, value_start = _read_varint(data, position, end)
        number, wire_type = tag >> 3, tag & 7
        if wire_type == LENGTH_DELIMITED:
            if value_start >= end:
                raise NotPlain(f"field {number} has no length")
            length = data[value_start]
            if length & 0x80:
                length, value_start = _read_varint(data, value_start, end)
            else:
                value_start += 1
            value_end = value_start + length
        elif wire_type == 0:
            _, value_end = _read_varint(data, value_start, end)
        elif wire_type in WIRE_TYPES:
            value_end = value_start + (8 if wire_type == 1 else 4)
        else:
            raise NotPlain(f"wire type {wire_type} of field {number}")
        if number == 0:
            raise NotPlain(f"wire type {wire_type} of field {number}")
        if value_end > end:
            raise NotPlain(f"field {number} runs past its message")
        found.append(Field(number, wire_type, position, value_start, value_end))
        position = value_end
    return found


def read(data: bytes, outer: type[ProtoMessage]) -> tuple[bytes, list[memoryview]] | None:
    """:func:`split_tensors` from :data:`SPLIT_MIN_BYTES` up; below, None: protobuf parses ``data``."""
    return split_tensors(data, outer) if len(data) >= SPLIT_MIN_BYTES else None


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
        carrier = CARRIERS_BY_NUMBER[outer].get(message.number)
        if carrier is None or message.wire_type != LENGTH_DELIMITED:
            return None
        [parameters] = [f for f in fields(view, message.start, message.end) if f.number == carrier[2]]
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
