"""fedproto: Flower's federated-learning wire protocols, readable and sans-IO, without flwr.

Both protocols, both roles, no I/O: every module here takes bytes (and clock ticks) and returns
bytes and actions; the transports (``fedproto.client``, ``fedproto.server``, ``fedproto.kit``)
bring sockets, threads and gRPC.

The legacy ``FlowerService.Join`` stream (``flwr.server.start_server``):

- ``fedproto.transport_pb2``: messages generated from proto/flwr/proto/transport.proto.
- ``fedproto.npy``: the .npy format of every tensor (both protocols): read in place, write in pieces.
- ``fedproto.codec``: ndarrays <-> Parameters, Python values <-> Scalar.
- ``fedproto.tensor_formats``: the formats ``Parameters.tensor_type`` names (.npy, the C++
  SDK's "cpp_double", a porter's own via :func:`register`).
- ``fedproto.dispatch``: the client's side of a Join stream as a state machine (:class:`ClientSession`).
- ``fedproto.server_role``: the server's side: instructions to bytes, replies to typed results.
- ``fedproto.wire``: the RPC path and message-size defaults.

The Fleet API of today's ``flower-superlink``:

- ``fedproto.objects``: a Message <-> its content-addressed object tree, byte-identical to flwr's.
- ``fedproto.fleet_content``: the two content layouts (message API, legacy) <-> handler calls.
- ``fedproto.node``: a Fleet node (flwr's SuperNode) as a state machine (:class:`NodeSession`).

Shared by both:

- ``fedproto.handler``: calling the user's handler (flwr's ``NumPyClient`` method names), one
  contract for both protocols.
- ``fedproto.text``: bounding and escaping peer text before it reaches a log.
- ``fedproto.errors``: :class:`FedprotoError`, the base of everything fedproto refuses
  (:class:`CodecError`, :class:`ProtocolError`, :class:`HandlerError`, :class:`ReplyError`,
  ``ObjectError``, ``NodeProtocolError``).

The porting kit (``fedproto.kit``) has golden vectors, a conformance runner and a wire trace relay.
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
from fedproto.handler import HandlerError
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
