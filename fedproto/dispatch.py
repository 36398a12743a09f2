"""The client side of ``FlowerService.Join`` as a state machine, without any I/O.

A transport (``client/app.py``, or your port in C, Kotlin, MicroPython...) reads one
``ServerMessage`` from the stream, hands it to :meth:`ClientSession.receive` (or its bytes to
:meth:`ClientSession.receive_bytes`), writes the returned ``ClientMessage`` back, then looks at
``session.state`` to know what to do next. Nothing here opens sockets, starts threads or sleeps.

Invariants
----------
1. The server speaks first. Every ServerMessage gets exactly one ClientMessage, in order.
2. ReconnectIns is the last message of a stream. After answering it with DisconnectRes the
   client sends nothing more on that stream and closes it.
3. The user's handler sees only NumPy arrays and dicts of Python scalars, never protobuf. It is
   called through ``fedproto.handler``, as on the Fleet API: its ``parameters`` are its own
   writable arrays, each copied once out of the received bytes, so writing into them (training
   in place) changes nothing else.
4. A handler that lacks a method, raises, or returns the wrong shape never breaks the stream:
   the reply carries a non-OK ``Status``. The contract has no generic error code, so the
   method's ``*_NOT_IMPLEMENTED`` code is used and ``Status.message`` is ``fedproto.handler``'s
   text ("Client does not implement `fit`", "fit raised ValueError: ...", "fit returned an
   invalid result: num_examples: ..."). flwr's server counts any non-OK reply as a failure
   for that round and keeps the client.
5. Input that is not a valid ServerMessage (undecodable bytes, no oneof set, a tensor that is
   not a plain .npy) raises :class:`ProtocolError`; the transport must end the stream.

Transitions
-----------
The table the code runs (:data:`TRANSITIONS`, :data:`AFTER_REFUSAL`); ``tests/test_dispatch.py``
checks that this copy says the same. "received" is the ServerMessage oneof field, "handler" the
:class:`ClientSession` method that builds the reply, "reply" the ClientMessage oneof field.

=========  ===========================  ================  ==================  ==========
state      received                     handler           reply               next state
=========  ===========================  ================  ==================  ==========
JOINED     get_properties_ins           _answer           get_properties_res  JOINED
JOINED     get_parameters_ins           _answer           get_parameters_res  JOINED
JOINED     fit_ins                      _answer           fit_res             JOINED
JOINED     evaluate_ins                 _answer           evaluate_res        JOINED
JOINED     reconnect_ins, seconds > 0   _come_back_later  disconnect_res      RECONNECT
JOINED     reconnect_ins, seconds <= 0  _leave            disconnect_res      DONE
JOINED     invalid input (invariant 5)  -                 ProtocolError       ERROR
RECONNECT  anything                     -                 ProtocolError       RECONNECT
DONE       anything                     -                 ProtocolError       DONE
ERROR      anything                     -                 ProtocolError       ERROR
=========  ===========================  ================  ==================  ==========

``_come_back_later`` answers with reason RECONNECT and sets ``session.reconnect_after``: the
transport closes the stream, waits that many seconds and joins again with a fresh session.
``_leave`` answers with reason ACK: the transport closes the stream and stops. (flwr's own client
answers ReconnectIns(seconds = 0) with reason RECONNECT too; we send ACK, which the contract has
for this case. flwr's server does not act on the reason.) After a ProtocolError the session is
in ERROR and refuses everything, as h11 and h2 do: the transport must end the stream.
"""

from __future__ import annotations

import enum
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError

from fedproto import framing
from fedproto.codec import TENSOR_TYPE, CodecError, scalars_from_proto, scalars_to_proto
from fedproto.errors import FedprotoError
from fedproto.handler import TAKES_ARRAYS, Call, HandlerFailure, Result, serve
from fedproto.tensor_formats import EncodedTensors, decode_tensors, encode_tensors
from fedproto.transport_pb2 import ClientMessage, Code, Reason, ServerMessage, Status


class State(enum.Enum):
    JOINED = "joined"  # stream open, waiting for the next instruction
    RECONNECT = "reconnect"  # answered ReconnectIns(seconds > 0): close, wait, join again
    DONE = "done"  # answered ReconnectIns(seconds <= 0): close and stop
    ERROR = "error"  # refused invalid input (ProtocolError): the stream must end


class ProtocolError(FedprotoError):
    """The server sent something that is not a valid instruction; the stream must end."""


class Transition(NamedTuple):
    handler: str  # ClientSession method that builds the reply
    reply: str  # ClientMessage oneof field it fills
    next_state: State


# (state, what was received) -> what the session does. What was received is the ServerMessage
# oneof field, except that ReconnectIns is split by its seconds (see _received).
TRANSITIONS: dict[tuple[State, str], Transition] = {
    (State.JOINED, "get_properties_ins"): Transition("_answer", "get_properties_res", State.JOINED),
    (State.JOINED, "get_parameters_ins"): Transition("_answer", "get_parameters_res", State.JOINED),
    (State.JOINED, "fit_ins"): Transition("_answer", "fit_res", State.JOINED),
    (State.JOINED, "evaluate_ins"): Transition("_answer", "evaluate_res", State.JOINED),
    (State.JOINED, "reconnect_ins, seconds > 0"): Transition("_come_back_later", "disconnect_res", State.RECONNECT),
    (State.JOINED, "reconnect_ins, seconds <= 0"): Transition("_leave", "disconnect_res", State.DONE),
}

# The state a ProtocolError leaves behind: JOINED fails into ERROR, a finished session stays as is.
AFTER_REFUSAL: dict[State, State] = {
    State.JOINED: State.ERROR,
    State.RECONNECT: State.RECONNECT,
    State.DONE: State.DONE,
    State.ERROR: State.ERROR,
}


# The tensors framing lifted out of a message's bytes: views of those bytes.
Tensors = list[memoryview]


class Instruction(NamedTuple):
    method: str  # handler method to call
    failure_code: Code  # Status code when the handler cannot answer
    ins_name: str  # message names, for error texts
    res_name: str


# Code.OK read once: an enum's attribute goes through protobuf's Python wrapper on every access.
CODE_OK = Code.OK

# ServerMessage oneof field -> how _answer calls the user's handler for it.
INSTRUCTIONS: dict[str, Instruction] = {
    "get_properties_ins": Instruction("get_properties", Code.GET_PROPERTIES_NOT_IMPLEMENTED,
                                      "GetPropertiesIns", "GetPropertiesRes"),
    "get_parameters_ins": Instruction("get_parameters", Code.GET_PARAMETERS_NOT_IMPLEMENTED,
                                      "GetParametersIns", "GetParametersRes"),
    "fit_ins": Instruction("fit", Code.FIT_NOT_IMPLEMENTED, "FitIns", "FitRes"),
    "evaluate_ins": Instruction("evaluate", Code.EVALUATE_NOT_IMPLEMENTED, "EvaluateIns", "EvaluateRes"),
}


def parse_instruction(data: bytes) -> ServerMessage:
    """The bytes of one ServerMessage -> the message; ProtocolError if they are not one."""
    try:
        return ServerMessage.FromString(data)
    except DecodeError as error:
        raise ProtocolError(f"ServerMessage: not a valid protobuf message ({error})") from None


class ClientSession:
    """One Join stream, from the first ServerMessage to the DisconnectRes.

    ``handler`` is any object with (some of) flwr's NumPyClient methods:
    ``get_properties(config) -> dict``, ``get_parameters(config) -> list[ndarray]``,
    ``fit(parameters, config) -> (list[ndarray], num_examples, metrics)``,
    ``evaluate(parameters, config) -> (loss, num_examples, metrics)``.
    """

    def __init__(self, handler: Any) -> None:
        self.handler = handler
        self.state = State.JOINED
        self.reconnect_after = 0  # seconds to wait before joining again (state RECONNECT)
        self.last_received: str | None = None  # oneof name of the last ServerMessage, for logs

    def receive_bytes(self, data: bytes) -> bytes:
        """Serialized ServerMessage in, serialized ClientMessage out.

        The lean path for models of many MB (``fedproto.framing``): the instruction's tensors are
        read in place in ``data`` (protobuf parses only the rest), and a reply's tensors are
        written into its bytes in one pass, each copied once. Small messages go through
        protobuf's own parser and serializer, which are faster for them (``framing.read``,
        ``framing.serialize``); the bytes are the same either way.
        """
        split = framing.read(data, ServerMessage)
        try:
            message = parse_instruction(data if split is None else split[0])
        except ProtocolError:
            self.state = AFTER_REFUSAL[self.state]
            raise
        reply, tensors = self._run(message, None if split is None else split[1])
        return reply.SerializeToString() if tensors is None else framing.serialize(reply, tensors)

    def receive(self, message: ServerMessage) -> ClientMessage:
        """Answer one ServerMessage by running its row of :data:`TRANSITIONS`."""
        reply, tensors = self._run(message, None)
        if tensors is not None:
            framing.fill(reply, tensors)
        return reply

    def _run(self, message: ServerMessage, tensors: Tensors | None) -> tuple[ClientMessage, EncodedTensors | None]:
        """The reply, and its tensors still apart from it (None: a reply without Parameters).

        ``tensors``: the instruction's tensors when they were lifted out of its bytes, else None
        (they are in ``message``).
        """
        try:
            received = self._received(message)
            transition = TRANSITIONS[(self.state, received)]
            answer: tuple[ClientMessage, EncodedTensors | None] = getattr(self, transition.handler)(
                message, transition.reply, tensors)
        except ProtocolError:
            self.state = AFTER_REFUSAL[self.state]
            raise
        self.state = transition.next_state
        return answer

    def _received(self, message: ServerMessage) -> str:
        """The message's name in the table; ProtocolError if no row can take it."""
        if self.state is not State.JOINED:
            raise ProtocolError(f"ServerMessage received after the stream ended ({self.state.value})")
        kind: str | None = message.WhichOneof("msg")
        if kind is None:
            raise ProtocolError("ServerMessage: no instruction set (empty oneof 'msg')")
        self.last_received = kind
        if kind == "reconnect_ins":
            # seconds > 0: the server wants us back later (e.g. it is busy); seconds = 0 (the
            # proto3 default, what flwr sends at the end of training): the session is over.
            return "reconnect_ins, seconds > 0" if message.reconnect_ins.seconds > 0 else "reconnect_ins, seconds <= 0"
        return kind

    def _come_back_later(self, message: ServerMessage, reply: str, tensors: None) -> tuple[ClientMessage, None]:
        self.reconnect_after = message.reconnect_ins.seconds
        return ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=Reason.RECONNECT)), None

    def _leave(self, message: ServerMessage, reply: str, tensors: None) -> tuple[ClientMessage, None]:
        self.reconnect_after = 0
        return ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=Reason.ACK)), None

    def _answer(self, message: ServerMessage, reply_field: str,
                tensors: Tensors | None) -> tuple[ClientMessage, EncodedTensors | None]:
        """Call the user's handler (``fedproto.handler``); a handler failure is a non-OK Status."""
        kind = str(message.WhichOneof("msg"))
        spec = INSTRUCTIONS[kind]
        try:
            call = _decode_call(spec.method, getattr(message, kind), tensors)
        except CodecError as error:
            raise ProtocolError(f"{spec.ins_name}.{error}") from None
        reply = ClientMessage()
        body = getattr(reply, reply_field)
        answered = serve(self.handler, call, lambda result: _fill_reply(spec.method, result, body))
        if isinstance(answered, HandlerFailure):  # invariant 4: a reply with only a non-OK Status
            failed = ClientMessage()
            getattr(failed, reply_field).status.CopyFrom(Status(code=spec.failure_code, message=answered.reason))
            return failed, None
        return reply, answered


def _decode_call(method: str, ins: Any, tensors: Tensors | None) -> Call:
    """The instruction as a handler call: its config and, for fit/evaluate, its tensors.

    Each .npy tensor is a read-only view of the received bytes; ``fedproto.handler`` gives the
    handler its own copy.
    """
    config = scalars_from_proto(ins.config, "config")
    if method not in TAKES_ARRAYS:
        return Call(method, config)
    received = ins.parameters.tensors if tensors is None else tensors
    return Call(method, config, decode_tensors(received, ins.parameters.tensor_type, "parameters"))


def _fill_reply(method: str, result: Result, body: Any) -> EncodedTensors | None:
    """Write the handler's checked result into the reply ``body``, with status OK; return its tensors.

    The tensors are checked here but stay apart from the reply (views of the handler's arrays):
    ``receive_bytes`` writes them into the reply's bytes in one pass (``fedproto.framing``), so
    each is copied once. With models of millions of parameters, every extra copy shows in the
    edge client's peak memory. Only what a Join reply forces is checked here: a Scalar holds
    bool, bytes, float, int or str.
    """
    body.status.code, body.status.message = CODE_OK, "Success"  # the text flwr's NumPyClient sends
    if method == "get_properties":
        body.MergeFrom(type(body)(properties=scalars_to_proto(result.metrics, "properties")))
        return None
    tensors = None
    if method in ("get_parameters", "fit"):
        tensors = encode_tensors(result.parameters, TENSOR_TYPE, "parameters")
        body.parameters.tensor_type = TENSOR_TYPE
    if method == "evaluate":
        body.loss = result.loss
    if method in ("fit", "evaluate"):
        body.num_examples = result.num_examples
        metrics = scalars_to_proto(result.metrics, "metrics")
        if metrics:  # building and merging an empty map is the per-reply cost of nothing
            body.MergeFrom(type(body)(metrics=metrics))
    return tensors
