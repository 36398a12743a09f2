"""fedproto: Flower's wire protocol (FlowerService.Join), readable and sans-IO.

- ``fedproto.transport_pb2``: messages generated from proto/flwr/proto/transport.proto.
- ``fedproto.codec``: ndarrays <-> Parameters (.npy), Python values <-> Scalar.
- ``fedproto.dispatch``: the client's side of a Join stream as a state machine.
- ``fedproto.wire``: the RPC path and message-size defaults.
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
from fedproto.dispatch import ClientSession, ProtocolError, State
from fedproto.errors import FedprotoError
from fedproto.transport_pb2 import ClientMessage, Code, Parameters, Reason, Scalar, ServerMessage, Status
from fedproto.wire import JOIN_METHOD, MAX_MESSAGE_LENGTH

__all__ = [
    "JOIN_METHOD", "MAX_MESSAGE_LENGTH", "ClientMessage", "ClientSession", "Code", "CodecError", "FedprotoError",
    "Parameters", "ProtocolError", "Reason", "Scalar", "ServerMessage", "State", "Status",
    "bytes_to_ndarray", "ndarray_to_bytes", "ndarrays_to_parameters", "parameters_to_ndarrays",
    "scalar_from_proto", "scalar_to_proto", "scalars_from_proto", "scalars_to_proto",
]
