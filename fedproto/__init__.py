"""fedproto: Flower's wire protocol (FlowerService.Join), readable and sans-IO.

- ``fedproto.transport_pb2``: messages generated from proto/flwr/proto/transport.proto.
- ``fedproto.codec``: ndarrays <-> Parameters (.npy), Python values <-> Scalar.
- ``fedproto.tensor_formats``: the formats ``Parameters.tensor_type`` names (.npy, the C++
  SDK's "cpp_double", a porter's own via :func:`register`).
- ``fedproto.dispatch``: the client's side of a Join stream as a state machine.
- ``fedproto.server_role``: the server's side: instructions to bytes, replies to typed results.
- ``fedproto.wire``: the RPC path and message-size defaults.
- ``fedproto.errors``: :class:`FedprotoError`, the base of everything fedproto refuses
  (:class:`CodecError`, :class:`ProtocolError`, :class:`HandlerError`, :class:`ReplyError`).

None of these imports gRPC: the transports (``client/``, ``server/``) bring it.
"""

from fedproto.codec import (
    CodecError,
    bytes_to_ndarray,
    ndarray_to_bytes,
    ndarrays_to_parameters,
    parameters_to_ndarrays,
    scalar_from_proto,
    scalar_to_proto,
    scalars_from_proto,
    scalars_to_proto,
)
from fedproto.dispatch import ClientSession, HandlerError, ProtocolError, State
from fedproto.errors import FedprotoError
from fedproto.server_role import Failure, FailureKind, ReplyError
from fedproto.tensor_formats import decode_parameters, encode_parameters, register
from fedproto.transport_pb2 import ClientMessage, Code, Parameters, Reason, Scalar, ServerMessage, Status
from fedproto.wire import JOIN_METHOD, MAX_MESSAGE_LENGTH

__all__ = [
    "JOIN_METHOD", "MAX_MESSAGE_LENGTH", "ClientMessage", "ClientSession", "Code", "CodecError", "Failure",
    "FailureKind", "FedprotoError", "HandlerError", "Parameters", "ProtocolError", "Reason", "ReplyError",
    "Scalar", "ServerMessage", "State", "Status",
    "bytes_to_ndarray", "decode_parameters", "encode_parameters", "ndarray_to_bytes", "ndarrays_to_parameters",
    "parameters_to_ndarrays",
    "register", "scalar_from_proto", "scalar_to_proto", "scalars_from_proto", "scalars_to_proto",
]
