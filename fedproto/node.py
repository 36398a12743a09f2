"""A Fleet API node (what flwr calls a SuperNode) as a state machine, without any I/O.

A transport (``client/fleet.py``, or your port) asks :meth:`NodeSession.next_step` what to do
now, does it, and reports back. A step is one of

- :class:`Send`: POST ``request`` (serialized protobuf) to the SuperLink's ``rpc`` and hand the
  response body to :meth:`NodeSession.receive` (or a refusal to :meth:`NodeSession.refused`);
- :class:`RunHandler`: call ``step.run()`` on a worker thread and hand its return value to
  :meth:`NodeSession.handler_finished`. Keep asking ``next_step`` meanwhile: it returns the
  heartbeats that fall due while the user's ``fit`` runs, and :class:`Wait` in between;
- :class:`Wait`: nothing to do until ``step.until`` (wake up earlier when the handler ends or a
  stop is requested);
- :class:`Finished`: the node has deactivated and unregistered (or was refused); exit.

``now`` is always the caller's wall clock, ``time.time()``: it times heartbeats and polls and it
stamps replies (``created_at``), which the SuperLink compares with its own clock.

Invariants
----------
1. One request at a time: after a :class:`Send`, the next call is ``receive`` or ``refused``
   for that request, never ``next_step``. Transient failures (connection refused, HTTP 5xx,
   gRPC UNAVAILABLE) are the transport's to retry with backoff; they never reach the session.
2. Between RegisterNode and the end, heartbeats go out every ``heartbeat_period`` seconds
   (the first right after ActivateNode), in every state that has a node online, including
   while the handler runs: a heartbeat is never held back by message work.
3. A message is worked on from PullMessages to its last PushObject before the next is pulled.
   The node PullObjects every id of the message's object tree, then ConfirmMessageReceived,
   then runs the handler, then PushMessages and PushObjects exactly the ids the SuperLink asks.
4. The user's handler only ever sees NumPy arrays and dicts of Python scalars
   (``fedproto.fleet_content`` maps both content layouts); whatever it raises becomes the
   reply's ``Message.error``, and the node goes on.
5. A response that breaks the protocol (undecodable bytes, an object whose sha256 is not its
   id, an object tree that is not the message's, a push request for an object we do not have,
   a response that does not fit the state) raises :class:`NodeProtocolError` and the session
   enters ERROR, which refuses every further call. The transport exits (code 1).
6. "Told to stop" in the Fleet API: the SuperLink no longer knows this node (HTTP 401 or gRPC
   UNAUTHENTICATED after activation, or a heartbeat answered ``success = false``: it restarted
   without its database, or the operator removed the node). The session then registers and
   activates again with the same key and drops the message in flight. If registering or
   activating is refused, the session unregisters if needed and finishes (``outcome`` =
   "refused"). :meth:`NodeSession.stop` (SIGINT/SIGTERM) deactivates, unregisters and finishes
   (``outcome`` = "stopped").

Transitions
-----------
Ticks (``next_step``) are classified as ``heartbeat_due`` (a heartbeat state whose heartbeat is
due), ``ready`` (this state's request may go now) or ``not_yet`` (wait). Responses and refusals
are events too. ``-`` means no step: the next tick decides.

=====================================================  ==================  ==================  ============
state                                                  event               action              next state
=====================================================  ==================  ==================  ============
REGISTER                                               ready               send_register       REGISTER
REGISTER                                               registered          -                   ACTIVATE
REGISTER                                               rejected            -                   DONE
REGISTER                                               stop                -                   DONE
ACTIVATE                                               ready               send_activate       ACTIVATE
ACTIVATE                                               activated           -                   IDLE
ACTIVATE                                               rejected            -                   UNREGISTER
ACTIVATE                                               stop                -                   UNREGISTER
IDLE                                                   ready               send_pull_messages  IDLE
IDLE                                                   not_yet             wait                IDLE
IDLE                                                   no_message          -                   IDLE
IDLE                                                   message             -                   PULL_OBJECTS
PULL_OBJECTS                                           ready               send_pull_object    PULL_OBJECTS
PULL_OBJECTS                                           not_yet             wait                PULL_OBJECTS
PULL_OBJECTS                                           object              -                   PULL_OBJECTS
PULL_OBJECTS                                           object_not_ready    -                   PULL_OBJECTS
PULL_OBJECTS                                           last_object         -                   CONFIRM
PULL_OBJECTS                                           object_missing      -                   IDLE
CONFIRM                                                ready               send_confirm        CONFIRM
CONFIRM                                                confirmed           -                   HANDLING
HANDLING                                               ready               run_handler         HANDLING
HANDLING                                               not_yet             wait                HANDLING
HANDLING                                               handler_done        -                   PUSH_MESSAGE
PUSH_MESSAGE                                           ready               send_push_message   PUSH_MESSAGE
PUSH_MESSAGE                                           push_accepted       -                   PUSH_OBJECTS
PUSH_MESSAGE                                           nothing_to_push     -                   IDLE
PUSH_OBJECTS                                           ready               send_push_object    PUSH_OBJECTS
PUSH_OBJECTS                                           object_pushed       -                   PUSH_OBJECTS
PUSH_OBJECTS                                           last_object_pushed  -                   IDLE
PULL_OBJECTS, CONFIRM, PUSH_MESSAGE, PUSH_OBJECTS      run_not_running     -                   IDLE
PULL_OBJECTS, CONFIRM, PUSH_MESSAGE, PUSH_OBJECTS      rejected            -                   IDLE
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   heartbeat_due       send_heartbeat      (same)
PUSH_OBJECTS
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   heartbeat_ok        -                   (same)
PUSH_OBJECTS
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   node_unknown        -                   REGISTER
PUSH_OBJECTS
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   stop                -                   DEACTIVATE
PUSH_OBJECTS
REGISTER, ACTIVATE, IDLE, PULL_OBJECTS, CONFIRM,       stale_result        - (reply dropped)   (same)
HANDLING, DEACTIVATE, UNREGISTER
DEACTIVATE                                             ready               send_deactivate     DEACTIVATE
DEACTIVATE                                             deactivated         -                   UNREGISTER
DEACTIVATE, UNREGISTER                                 rejected            -                   (next)
DEACTIVATE, UNREGISTER                                 node_unknown        -                   (next)
DEACTIVATE, UNREGISTER, DONE                           stop                -                   (same)
UNREGISTER                                             ready               send_unregister     UNREGISTER
UNREGISTER                                             unregistered        -                   DONE
DONE                                                   ready               finish              DONE
=====================================================  ==================  ==================  ============

``(same)`` keeps the state; ``(next)`` is UNREGISTER after DEACTIVATE and DONE after
UNREGISTER: leaving goes on when the SuperLink has already forgotten the node.
``stale_result`` is a handler that ends after its message was dropped (node unknown, stop): its
reply is not sent, and a newer message waits in HANDLING until that handler has returned. A pair not in
the table is invalid input (invariant 5): ERROR.

Timing (flwr 1.42's SuperNode, ``supercore/heartbeat.py``, ``supernode/start_client_internal.py``):
ActivateNode and every heartbeat announce ``heartbeat_interval`` (30 s; the SuperLink accepts
10-1800 s and counts the node offline 2 x interval after its last heartbeat). Heartbeats go
every ``(interval - 5) x 0.8`` s (20 s; flwr adds +-10 % jitter, we keep it deterministic).
PullMessages every ``poll_interval`` (3 s) while idle, and at once after a reply is pushed.
An object that is not uploaded yet is asked again after 1 s, doubling up to 10 s, for at most
``object_wait_limit`` (7200 s) per message; then the message is dropped, like flwr does.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from fedproto import fleet_content, objects
from fedproto.errors import FedprotoError
from fedproto.fleet_pb2 import (
    ActivateNodeRequest,
    ActivateNodeResponse,
    DeactivateNodeRequest,
    DeactivateNodeResponse,
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    RegisterNodeFleetRequest,
    RegisterNodeFleetResponse,
    UnregisterNodeFleetRequest,
    UnregisterNodeFleetResponse,
)
from fedproto.heartbeat_pb2 import SendNodeHeartbeatRequest, SendNodeHeartbeatResponse
from fedproto.message_pb2 import (
    ConfirmMessageReceivedRequest,
    ConfirmMessageReceivedResponse,
    Message,
    ObjectTree,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
    PushObjectResponse,
)
from fedproto.node_pb2 import Node
from fedproto.objects import ObjectError

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 30.0  # seconds announced to the SuperLink (flwr's HEARTBEAT_DEFAULT_INTERVAL)
HEARTBEAT_CALL_TIMEOUT = 5.0  # flwr's HEARTBEAT_CALL_TIMEOUT: margin for a slow heartbeat call
HEARTBEAT_MULTIPLIER = 0.8  # flwr's HEARTBEAT_BASE_MULTIPLIER
HEARTBEAT_INTERVAL_RANGE = (10.0, 1800.0)  # what the SuperLink accepts (HEARTBEAT_MIN/MAX_INTERVAL)
POLL_INTERVAL = 3.0  # flwr's SuperNode sleeps 3 s after an empty PullMessages
OBJECT_RETRY_FIRST = 1.0  # flwr's PULL_INITIAL_BACKOFF
OBJECT_RETRY_CAP = 10.0  # flwr's PULL_BACKOFF_CAP
OBJECT_WAIT_LIMIT = 7200.0  # flwr's PULL_MAX_TIME


class Rpc(NamedTuple):
    http_path: str  # POST path on the SuperLink's HTTP port (flwr/supercore/protobuf/translation.py)
    grpc_method: str  # unary method when the SuperLink runs the gRPC-rere Fleet API
    response_type: type[ProtoMessage]


def _rpc(name: str, kebab: str, response_type: type[ProtoMessage]) -> Rpc:
    return Rpc(f"/v1/fleet/{kebab}", f"/flwr.proto.Fleet/{name}", response_type)


# The Fleet RPCs a node calls. GetRun/GetFab are not needed: we never install a ClientApp.
RPCS: dict[str, Rpc] = {
    "RegisterNode": _rpc("RegisterNode", "register-node", RegisterNodeFleetResponse),
    "ActivateNode": _rpc("ActivateNode", "activate-node", ActivateNodeResponse),
    "SendNodeHeartbeat": _rpc("SendNodeHeartbeat", "send-node-heartbeat", SendNodeHeartbeatResponse),
    "PullMessages": _rpc("PullMessages", "pull-messages", PullMessagesResponse),
    "PullObject": _rpc("PullObject", "pull-object", PullObjectResponse),
    "ConfirmMessageReceived": _rpc("ConfirmMessageReceived", "confirm-message-received",
                                   ConfirmMessageReceivedResponse),
    "PushMessages": _rpc("PushMessages", "push-messages", PushMessagesResponse),
    "PushObject": _rpc("PushObject", "push-object", PushObjectResponse),
    "DeactivateNode": _rpc("DeactivateNode", "deactivate-node", DeactivateNodeResponse),
    "UnregisterNode": _rpc("UnregisterNode", "unregister-node", UnregisterNodeFleetResponse),
}


class Refusal(enum.Enum):
    """How the SuperLink said no to a request (as opposed to being unreachable)."""

    NODE_UNKNOWN = "node_unknown"  # 401 / UNAUTHENTICATED: key or node id not known (any more)
    RUN_NOT_RUNNING = "run_not_running"  # 403 / PERMISSION_DENIED: the message's run is not running
    REJECTED = "rejected"  # any other 4xx / non-retryable gRPC code (e.g. 412 PUBLIC_KEY_ALREADY_IN_USE)


def refusal_for_http_status(status: int) -> Refusal | None:
    """The refusal an HTTP error status means, or None if it is transient (retry it)."""
    if status == 401:
        return Refusal.NODE_UNKNOWN
    if status == 403:
        return Refusal.RUN_NOT_RUNNING
    if status in (408, 429) or status >= 500:  # timeouts, overload, server errors: try again
        return None
    return Refusal.REJECTED


# gRPC status code names that mean "try again later"; every other error code is a refusal.
_GRPC_TRANSIENT = {"UNAVAILABLE", "DEADLINE_EXCEEDED", "RESOURCE_EXHAUSTED", "ABORTED", "INTERNAL", "UNKNOWN"}


def refusal_for_grpc_code(code_name: str) -> Refusal | None:
    """The refusal a gRPC status code (its name, e.g. "UNAUTHENTICATED") means, or None."""
    if code_name == "UNAUTHENTICATED":
        return Refusal.NODE_UNKNOWN
    if code_name == "PERMISSION_DENIED":
        return Refusal.RUN_NOT_RUNNING
    if code_name in _GRPC_TRANSIENT:
        return None
    return Refusal.REJECTED


class NodeProtocolError(FedprotoError):
    """The SuperLink answered something that breaks the Fleet protocol; the session is over."""


class NodeUsageError(FedprotoError):
    """The transport called the session out of turn (e.g. next_step while a response is due)."""


class State(enum.Enum):
    REGISTER = "register"
    ACTIVATE = "activate"
    IDLE = "idle"
    PULL_OBJECTS = "pull_objects"
    CONFIRM = "confirm"
    HANDLING = "handling"
    PUSH_MESSAGE = "push_message"
    PUSH_OBJECTS = "push_objects"
    DEACTIVATE = "deactivate"
    UNREGISTER = "unregister"
    DONE = "done"
    ERROR = "error"


class Event(enum.Enum):
    HEARTBEAT_DUE = "heartbeat_due"
    READY = "ready"
    NOT_YET = "not_yet"
    REGISTERED = "registered"
    ACTIVATED = "activated"
    HEARTBEAT_OK = "heartbeat_ok"
    NO_MESSAGE = "no_message"
    MESSAGE = "message"
    OBJECT = "object"
    OBJECT_NOT_READY = "object_not_ready"
    LAST_OBJECT = "last_object"
    OBJECT_MISSING = "object_missing"
    CONFIRMED = "confirmed"
    HANDLER_DONE = "handler_done"
    STALE_RESULT = "stale_result"
    PUSH_ACCEPTED = "push_accepted"
    NOTHING_TO_PUSH = "nothing_to_push"
    OBJECT_PUSHED = "object_pushed"
    LAST_OBJECT_PUSHED = "last_object_pushed"
    DEACTIVATED = "deactivated"
    UNREGISTERED = "unregistered"
    NODE_UNKNOWN = "node_unknown"
    RUN_NOT_RUNNING = "run_not_running"
    REJECTED = "rejected"
    STOP = "stop"


class Action(enum.Enum):
    NONE = "-"
    SEND_REGISTER = "send_register"
    SEND_ACTIVATE = "send_activate"
    SEND_HEARTBEAT = "send_heartbeat"
    SEND_PULL_MESSAGES = "send_pull_messages"
    SEND_PULL_OBJECT = "send_pull_object"
    SEND_CONFIRM = "send_confirm"
    RUN_HANDLER = "run_handler"
    SEND_PUSH_MESSAGE = "send_push_message"
    SEND_PUSH_OBJECT = "send_push_object"
    SEND_DEACTIVATE = "send_deactivate"
    SEND_UNREGISTER = "send_unregister"
    WAIT = "wait"
    FINISH = "finish"


S, E, A = State, Event, Action
# States in which the node is online: heartbeats flow, a message may be in the works.
ONLINE = (S.IDLE, S.PULL_OBJECTS, S.CONFIRM, S.HANDLING, S.PUSH_MESSAGE, S.PUSH_OBJECTS)
MESSAGE_WORK = (S.PULL_OBJECTS, S.CONFIRM, S.PUSH_MESSAGE, S.PUSH_OBJECTS)

# The executable table: (state, event) -> (action, next state). The code runs this, nothing else.
TRANSITIONS: dict[tuple[State, Event], tuple[Action, State]] = {
    (S.REGISTER, E.READY): (A.SEND_REGISTER, S.REGISTER),
    (S.REGISTER, E.REGISTERED): (A.NONE, S.ACTIVATE),
    (S.REGISTER, E.REJECTED): (A.NONE, S.DONE),
    (S.REGISTER, E.STOP): (A.NONE, S.DONE),
    (S.ACTIVATE, E.READY): (A.SEND_ACTIVATE, S.ACTIVATE),
    (S.ACTIVATE, E.ACTIVATED): (A.NONE, S.IDLE),
    (S.ACTIVATE, E.REJECTED): (A.NONE, S.UNREGISTER),
    (S.ACTIVATE, E.STOP): (A.NONE, S.UNREGISTER),
    (S.IDLE, E.READY): (A.SEND_PULL_MESSAGES, S.IDLE),
    (S.IDLE, E.NOT_YET): (A.WAIT, S.IDLE),
    (S.IDLE, E.NO_MESSAGE): (A.NONE, S.IDLE),
    (S.IDLE, E.MESSAGE): (A.NONE, S.PULL_OBJECTS),
    (S.PULL_OBJECTS, E.READY): (A.SEND_PULL_OBJECT, S.PULL_OBJECTS),
    (S.PULL_OBJECTS, E.NOT_YET): (A.WAIT, S.PULL_OBJECTS),
    (S.PULL_OBJECTS, E.OBJECT): (A.NONE, S.PULL_OBJECTS),
    (S.PULL_OBJECTS, E.OBJECT_NOT_READY): (A.NONE, S.PULL_OBJECTS),
    (S.PULL_OBJECTS, E.LAST_OBJECT): (A.NONE, S.CONFIRM),
    (S.PULL_OBJECTS, E.OBJECT_MISSING): (A.NONE, S.IDLE),
    (S.CONFIRM, E.READY): (A.SEND_CONFIRM, S.CONFIRM),
    (S.CONFIRM, E.CONFIRMED): (A.NONE, S.HANDLING),
    (S.HANDLING, E.READY): (A.RUN_HANDLER, S.HANDLING),
    (S.HANDLING, E.NOT_YET): (A.WAIT, S.HANDLING),
    (S.HANDLING, E.HANDLER_DONE): (A.NONE, S.PUSH_MESSAGE),
    (S.PUSH_MESSAGE, E.READY): (A.SEND_PUSH_MESSAGE, S.PUSH_MESSAGE),
    (S.PUSH_MESSAGE, E.PUSH_ACCEPTED): (A.NONE, S.PUSH_OBJECTS),
    (S.PUSH_MESSAGE, E.NOTHING_TO_PUSH): (A.NONE, S.IDLE),
    (S.PUSH_OBJECTS, E.READY): (A.SEND_PUSH_OBJECT, S.PUSH_OBJECTS),
    (S.PUSH_OBJECTS, E.OBJECT_PUSHED): (A.NONE, S.PUSH_OBJECTS),
    (S.PUSH_OBJECTS, E.LAST_OBJECT_PUSHED): (A.NONE, S.IDLE),
    **{(state, E.RUN_NOT_RUNNING): (A.NONE, S.IDLE) for state in MESSAGE_WORK},
    **{(state, E.REJECTED): (A.NONE, S.IDLE) for state in MESSAGE_WORK},
    **{(state, E.HEARTBEAT_DUE): (A.SEND_HEARTBEAT, state) for state in ONLINE},
    **{(state, E.HEARTBEAT_OK): (A.NONE, state) for state in ONLINE},
    **{(state, E.NODE_UNKNOWN): (A.NONE, S.REGISTER) for state in ONLINE},
    **{(state, E.STOP): (A.NONE, S.DEACTIVATE) for state in ONLINE},
    **{(state, E.STALE_RESULT): (A.NONE, state)
       for state in (S.REGISTER, S.ACTIVATE, S.IDLE, S.PULL_OBJECTS, S.CONFIRM, S.HANDLING, S.DEACTIVATE,
                     S.UNREGISTER)},
    (S.DEACTIVATE, E.READY): (A.SEND_DEACTIVATE, S.DEACTIVATE),
    (S.DEACTIVATE, E.DEACTIVATED): (A.NONE, S.UNREGISTER),
    (S.DEACTIVATE, E.REJECTED): (A.NONE, S.UNREGISTER),
    (S.DEACTIVATE, E.NODE_UNKNOWN): (A.NONE, S.UNREGISTER),
    (S.UNREGISTER, E.REJECTED): (A.NONE, S.DONE),
    (S.UNREGISTER, E.NODE_UNKNOWN): (A.NONE, S.DONE),
    **{(state, E.STOP): (A.NONE, state) for state in (S.DEACTIVATE, S.UNREGISTER, S.DONE)},
    (S.UNREGISTER, E.READY): (A.SEND_UNREGISTER, S.UNREGISTER),
    (S.UNREGISTER, E.UNREGISTERED): (A.NONE, S.DONE),
    (S.DONE, E.READY): (A.FINISH, S.DONE),
}


@dataclass(frozen=True)
class Send:
    rpc: str  # key of RPCS: which path / method to call
    request: bytes  # the serialized request


@dataclass(frozen=True)
class RunHandler:
    run: Callable[[], Any]  # call on a worker thread; pass the result to handler_finished


@dataclass(frozen=True)
class Wait:
    until: float  # wall-clock time (time.time()) of the next thing to do


@dataclass(frozen=True)
class Finished:
    outcome: str  # "stopped" (stop() was called) or "refused" (the SuperLink refused this node)


Step = Send | RunHandler | Wait | Finished


@dataclass(frozen=True)
class Handled:
    """One message answered, for the transport's log line."""

    message_type: str
    run_id: int
    received_bytes: int  # object bytes pulled
    sent_bytes: int  # object bytes of the reply
    handler_seconds: float
    error: str  # "" or the reply's Message.error reason


class NodeSession:
    """One node from RegisterNode to UnregisterNode (or to ERROR).

    ``handler`` has (some of) NumPyClient's methods; see ``fedproto.fleet_content``.
    ``public_key`` is the PEM (SubjectPublicKeyInfo) of the key that signs every request.
    """

    def __init__(
        self,
        handler: Any,
        public_key: bytes,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
        object_wait_limit: float = OBJECT_WAIT_LIMIT,
    ) -> None:
        low, high = HEARTBEAT_INTERVAL_RANGE
        if not low <= heartbeat_interval <= high:
            raise ValueError(f"heartbeat_interval must be within [{low:g}, {high:g}] s, got {heartbeat_interval}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
        self.handler = handler
        self.public_key = public_key
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_period = (heartbeat_interval - HEARTBEAT_CALL_TIMEOUT) * HEARTBEAT_MULTIPLIER
        self.poll_interval = poll_interval
        self.object_wait_limit = object_wait_limit

        self.state = State.REGISTER
        self.outcome = ""  # set when the session heads for DONE: "stopped" or "refused"
        self.node_id = 0
        self.awaiting: str | None = None  # rpc whose response is due (invariant 1)
        self.handled_count = 0
        self.last_handled: Handled | None = None
        self._heartbeat_at = 0.0
        self._poll_at = 0.0
        self._handler_running = False
        self._clear_message()

    # ---- what the transport calls -------------------------------------------------------

    def next_step(self, now: float) -> Step:
        """What to do now: send a request, run the handler, wait, or finish."""
        self._check_usable()
        if self.awaiting is not None:
            raise NodeUsageError(f"next_step called while the {self.awaiting} response is due")
        if self.state in ONLINE and now >= self._heartbeat_at:
            event = E.HEARTBEAT_DUE
        elif now >= self._ready_at():
            event = E.READY
        else:
            event = E.NOT_YET
        action = self._fire(event)
        return self._perform(action, now)

    def receive(self, response: bytes, now: float) -> None:
        """The SuperLink's answer to the last Send."""
        self._check_usable()
        rpc = self._take_awaiting()
        message = RPCS[rpc].response_type()
        try:
            message.ParseFromString(response)
        except DecodeError as error:
            self._fail(f"{rpc}: the response is not a valid {message.DESCRIPTOR.name} ({error})")
        event = getattr(self, f"_on_{rpc}")(message, now)
        self._fire(event)

    def refused(self, refusal: Refusal, now: float) -> None:
        """The SuperLink refused the last Send (see refusal_for_http_status/_grpc_code)."""
        self._check_usable()
        rpc = self._take_awaiting()
        if self.state in (S.REGISTER, S.ACTIVATE):
            # Registering or activating refused; even a 401 here means our key or signature is
            # not accepted, which trying again will not change.
            self.outcome, event = "refused", E.REJECTED
            log.error("%s refused (%s): the SuperLink does not accept this node", rpc, refusal.value)
        else:
            event = Event(refusal.value)
            if refusal is Refusal.NODE_UNKNOWN and self.state in ONLINE:
                log.warning("%s refused: the SuperLink does not know node %d any more; registering again",
                            rpc, self.node_id)
            elif self.state in MESSAGE_WORK:
                log.warning("%s refused (%s): dropping message %s", rpc, refusal.value, self._message_id)
        self._fire(event)
        if self.state in (S.IDLE, S.REGISTER):
            self._clear_message()

    def abandon(self) -> None:
        """The transport gives up on the last Send without an answer (it is leaving, or the
        SuperLink stayed unreachable): the session is as it was before that request."""
        self._check_usable()
        self._take_awaiting()

    def handler_finished(self, result: Any, now: float) -> None:
        """The value ``RunHandler.run()`` returned, once the worker thread is done."""
        self._check_usable()
        if not self._handler_running:
            raise NodeUsageError("handler_finished called without a running handler")
        self._handler_running = False
        current = self.state is S.HANDLING and self._handler_launched
        self._fire(E.HANDLER_DONE if current else E.STALE_RESULT)
        if not current:
            log.warning("handler finished after its message was dropped; the reply is not sent")
            return
        self._handler_seconds = now - self._handler_started
        self._reply = fleet_content.build_reply(result, self._message.metadata, self.node_id, now)

    def stop(self, now: float) -> None:
        """Leave: deactivate and unregister (what the transport does on SIGINT/SIGTERM)."""
        self._check_usable()
        if self.awaiting is not None:
            raise NodeUsageError(f"stop called while the {self.awaiting} response is due")
        if not self.outcome:
            self.outcome = "stopped"
        self._fire(E.STOP)

    # ---- the table ---------------------------------------------------------------------------

    def _fire(self, event: Event) -> Action:
        try:
            action, next_state = TRANSITIONS[(self.state, event)]
        except KeyError:
            self._fail(f"{event.value} is not valid in state {self.state.name}")
        self.state = next_state
        return action

    def _perform(self, action: Action, now: float) -> Step:
        if action is A.WAIT:
            return Wait(self._wait_until())
        if action is A.FINISH:
            return Finished(self.outcome or "stopped")
        if action is A.RUN_HANDLER:
            self._handler_running = self._handler_launched = True
            self._handler_started = now
            instruction, handler = self._instruction, self.handler
            return RunHandler(lambda: fleet_content.answer(handler, instruction))
        rpc, request = getattr(self, f"_{action.value}")(now)
        self.awaiting = rpc
        return Send(rpc, request.SerializeToString(deterministic=True))

    def _ready_at(self) -> float:
        """When this state's own request may go (infinity: only a heartbeat or an event moves it)."""
        if self.state is S.IDLE:
            return self._poll_at
        if self.state is S.PULL_OBJECTS:
            return self._object_retry_at
        if self.state is S.HANDLING:  # ready once, when the handler has to be started
            return float("inf") if self._handler_launched or self._handler_running else 0.0
        return 0.0

    def _wait_until(self) -> float:
        until = self._ready_at()
        if self.state in ONLINE:
            until = min(until, self._heartbeat_at)
        return until

    # ---- requests ------------------------------------------------------------------------------

    def _send_register(self, now: float) -> tuple[str, ProtoMessage]:
        return "RegisterNode", RegisterNodeFleetRequest(public_key=self.public_key)

    def _send_activate(self, now: float) -> tuple[str, ProtoMessage]:
        return "ActivateNode", ActivateNodeRequest(public_key=self.public_key,
                                                   heartbeat_interval=self.heartbeat_interval)

    def _send_heartbeat(self, now: float) -> tuple[str, ProtoMessage]:
        self._heartbeat_at = now + self.heartbeat_period
        return "SendNodeHeartbeat", SendNodeHeartbeatRequest(node=Node(node_id=self.node_id),
                                                             heartbeat_interval=self.heartbeat_interval)

    def _send_pull_messages(self, now: float) -> tuple[str, ProtoMessage]:
        return "PullMessages", PullMessagesRequest(node=Node(node_id=self.node_id))

    def _send_pull_object(self, now: float) -> tuple[str, ProtoMessage]:
        object_id = self._to_pull[len(self._pulled)]
        return "PullObject", PullObjectRequest(node=Node(node_id=self.node_id),
                                               run_id=self._message.metadata.run_id, object_id=object_id)

    def _send_confirm(self, now: float) -> tuple[str, ProtoMessage]:
        return "ConfirmMessageReceived", ConfirmMessageReceivedRequest(
            node=Node(node_id=self.node_id), run_id=self._message.metadata.run_id,
            message_object_id=self._message_id)

    def _send_push_message(self, now: float) -> tuple[str, ProtoMessage]:
        reply = self._reply
        return "PushMessages", PushMessagesRequest(
            node=Node(node_id=self.node_id), messages_list=[reply.message],
            message_object_trees=[reply.object_tree], clientapp_runtime_list=[self._handler_seconds])

    def _send_push_object(self, now: float) -> tuple[str, ProtoMessage]:
        object_id = self._to_push[self._pushed]
        return "PushObject", PushObjectRequest(
            node=Node(node_id=self.node_id), run_id=self._message.metadata.run_id, object_id=object_id,
            object_content=self._reply.objects[object_id], session_id=self._push_session)

    def _send_deactivate(self, now: float) -> tuple[str, ProtoMessage]:
        return "DeactivateNode", DeactivateNodeRequest(node_id=self.node_id)

    def _send_unregister(self, now: float) -> tuple[str, ProtoMessage]:
        return "UnregisterNode", UnregisterNodeFleetRequest(node_id=self.node_id)

    # ---- responses: each returns the event it is ------------------------------------------------

    def _on_RegisterNode(self, response: RegisterNodeFleetResponse, now: float) -> Event:
        return E.REGISTERED

    def _on_ActivateNode(self, response: ActivateNodeResponse, now: float) -> Event:
        if response.node_id == 0:
            self._fail("ActivateNode: the response has no node_id")
        self.node_id = response.node_id
        self._heartbeat_at = self._poll_at = now  # first heartbeat right away, then poll
        return E.ACTIVATED

    def _on_SendNodeHeartbeat(self, response: SendNodeHeartbeatResponse, now: float) -> Event:
        if response.success:
            return E.HEARTBEAT_OK
        log.warning("heartbeat refused: the SuperLink does not know node %d any more; registering again",
                    self.node_id)
        self._clear_message()
        return E.NODE_UNKNOWN

    def _on_PullMessages(self, response: PullMessagesResponse, now: float) -> Event:
        count = len(response.messages_list)
        if count != len(response.message_object_trees):
            self._fail(f"PullMessages: {count} messages but {len(response.message_object_trees)} object trees")
        if count == 0:
            self._poll_at = now + self.poll_interval
            return E.NO_MESSAGE
        if count > 1:  # the SuperLink hands out one at a time; more would be lost, not ignored
            self._fail(f"PullMessages: {count} messages in one response, expected at most 1")
        message, tree = response.messages_list[0], response.message_object_trees[0]
        metadata = message.metadata
        if tree.object_id != metadata.message_id:
            self._fail(f"PullMessages: object tree root {tree.object_id!r} is not message {metadata.message_id!r}")
        if metadata.dst_node_id != self.node_id:
            self._fail(f"PullMessages: message for node {metadata.dst_node_id}, we are {self.node_id}")
        self._message, self._message_id, self._tree = message, metadata.message_id, tree
        try:
            self._to_pull = objects.tree_object_ids(tree)
        except ObjectError as error:
            self._fail(f"PullMessages: {error}")
        self._pull_started = now
        return E.MESSAGE

    def _on_PullObject(self, response: PullObjectResponse, now: float) -> Event:
        object_id = self._to_pull[len(self._pulled)]
        if not response.object_found:
            log.warning("object %s of message %s not found on the SuperLink: dropping the message",
                        object_id, self._message_id)
            self._clear_message()
            return E.OBJECT_MISSING
        if not response.object_available:  # the ServerApp is still uploading it
            if now - self._pull_started >= self.object_wait_limit:
                log.warning("object %s still not available after %.0f s: dropping message %s",
                            object_id, now - self._pull_started, self._message_id)
                self._clear_message()
                return E.OBJECT_MISSING
            self._object_retry_at = now + self._object_retry_delay
            self._object_retry_delay = min(self._object_retry_delay * 2, OBJECT_RETRY_CAP)
            return E.OBJECT_NOT_READY
        content = response.object_content
        try:
            objects.check_object(object_id, content)  # hash and header, before we keep it
        except ObjectError as error:
            self._fail(f"PullObject: {error}")
        self._pulled[object_id] = content
        self._object_retry_at, self._object_retry_delay = 0.0, OBJECT_RETRY_FIRST
        if len(self._pulled) < len(self._to_pull):
            return E.OBJECT
        try:
            self._instruction = fleet_content.read_instruction(self._message, self._tree, self._pulled)
        except FedprotoError as error:
            self._fail(f"message {self._message_id}: {error}")
        self._received_bytes = sum(map(len, self._pulled.values()))
        self._pulled = {}  # the instruction holds what it needs
        return E.LAST_OBJECT

    def _on_ConfirmMessageReceived(self, response: ConfirmMessageReceivedResponse, now: float) -> Event:
        return E.CONFIRMED

    def _on_PushMessages(self, response: PushMessagesResponse, now: float) -> Event:
        wanted = list(response.objects_to_push)
        unknown = [object_id for object_id in wanted if object_id not in self._reply.objects]
        if unknown:
            self._fail(f"PushMessages: asked for {len(unknown)} objects we do not have, e.g. {unknown[0]!r}")
        wanted_set = set(wanted)
        self._to_push = [object_id for object_id in self._reply.objects if object_id in wanted_set]
        self._push_session, self._pushed = response.session_id, 0
        if not self._to_push:
            self._finish_message(now)
            return E.NOTHING_TO_PUSH
        return E.PUSH_ACCEPTED

    def _on_PushObject(self, response: PushObjectResponse, now: float) -> Event:
        self._pushed += 1
        if self._pushed < len(self._to_push):
            return E.OBJECT_PUSHED
        self._finish_message(now)
        return E.LAST_OBJECT_PUSHED

    def _on_DeactivateNode(self, response: DeactivateNodeResponse, now: float) -> Event:
        return E.DEACTIVATED

    def _on_UnregisterNode(self, response: UnregisterNodeFleetResponse, now: float) -> Event:
        return E.UNREGISTERED

    # ---- helpers -------------------------------------------------------------------------------

    def _finish_message(self, now: float) -> None:
        reply = self._reply
        self.last_handled = Handled(
            message_type=self._message.metadata.message_type, run_id=self._message.metadata.run_id,
            received_bytes=self._received_bytes, sent_bytes=sum(map(len, reply.objects.values())),
            handler_seconds=self._handler_seconds, error=reply.message.error.reason)
        self.handled_count += 1
        self._clear_message()
        self._poll_at = now  # like flwr: look for the next message at once

    def _clear_message(self) -> None:
        self._message = Message()
        self._message_id = ""
        self._tree = ObjectTree()
        self._to_pull: list[str] = []
        self._pulled: dict[str, bytes] = {}
        self._pull_started = 0.0
        self._object_retry_at, self._object_retry_delay = 0.0, OBJECT_RETRY_FIRST
        self._instruction: Any = None
        self._received_bytes = 0
        self._handler_launched = False
        self._handler_started = 0.0
        self._handler_seconds = 0.0
        self._reply: Any = None
        self._to_push: list[str] = []
        self._pushed = 0
        self._push_session = ""

    def _take_awaiting(self) -> str:
        if self.awaiting is None:
            raise NodeUsageError("a response was reported but no request is outstanding")
        rpc, self.awaiting = self.awaiting, None
        return rpc

    def _check_usable(self) -> None:
        if self.state is S.ERROR:
            raise NodeProtocolError("the session is in ERROR after invalid input; start a new one")

    def _fail(self, reason: str) -> Any:
        self.state = S.ERROR
        self.awaiting = None
        raise NodeProtocolError(reason)

