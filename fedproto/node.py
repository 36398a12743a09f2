"""A Fleet API node (what flwr calls a SuperNode) as a state machine, without any I/O.

A transport (``client/fleet.py``, or your port) asks :meth:`NodeSession.next_step` what to do
now, does it, and reports back. A step is one of

- :class:`Send`: POST ``request`` (serialized protobuf) to the SuperLink's ``rpc`` and hand the
  response body to :meth:`NodeSession.receive` (or a refusal to :meth:`NodeSession.refused`;
  or, when the transport gives the request up without an answer, call :meth:`NodeSession.abandon`);
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
1. One request at a time: after a :class:`Send`, the next call is ``receive``, ``refused`` or
   ``abandon`` for that request, never ``next_step``. Transient failures (connection refused,
   HTTP 5xx, gRPC UNAVAILABLE) are the transport's to retry with backoff; they never reach the
   session.
2. Between RegisterNode and the end, heartbeats go out every ``heartbeat_period`` seconds
   (the first right after ActivateNode), in every state that has a node online, including
   while the handler runs: a heartbeat is never held back by message work.
3. A message is worked on from PullMessages to its last PushObject before the next is pulled.
   The node PullObjects every id of the message's object tree, parents before children (so
   the Message object, and every Array's announced size, come before any ArrayChunk), then
   ConfirmMessageReceived, then runs the handler, then PushMessages and PushObjects exactly the
   ids the SuperLink asks. All the state of one message lives in one object, dropped as a unit.
4. Only what a hash covers is trusted: the node acts on the metadata of the pulled Message
   object (whose sha256 is the message id), and a PullMessages entry whose metadata disagrees
   with it is a protocol error. The objects of one message may not exceed ``max_message_length``
   bytes: checked from the announced Array sizes before any chunk is pulled, and against the
   running total before every pull, so memory follows the limit, not what the SuperLink names.
5. The user's handler only ever sees NumPy arrays and dicts of Python scalars, its own copies
   (``fedproto.handler``, through ``fedproto.fleet_content``); whatever it raises becomes the
   reply's ``Message.error``, and the node goes on.
6. A response that breaks the protocol (undecodable bytes, an object whose sha256 is not its
   id, an object tree that is not the message's, a push request for an object we do not have,
   a response or refusal that does not fit the state) raises :class:`NodeProtocolError` and the
   session enters ERROR, which refuses every further call. The transport exits (code 1). Every
   piece of SuperLink text in a log line or an error goes through ``fedproto.text.bound_text``.
7. "Told to stop" in the Fleet API: the SuperLink no longer knows this node (HTTP 401 or gRPC
   UNAUTHENTICATED after activation, or a heartbeat answered ``success = false``: it restarted
   without its database, or the operator removed the node). The session then drops the message
   in flight and registers and activates again with the same key, after a backoff (Timing). If
   registering or activating is refused, the session unregisters if needed and finishes
   (``outcome`` = "refused"). :meth:`NodeSession.stop` (SIGINT/SIGTERM) deactivates,
   unregisters and finishes (``outcome`` = "stopped").

Transitions
-----------
Ticks (``next_step``) are classified as ``heartbeat_due`` (a heartbeat state whose heartbeat is
due), ``ready`` (this state's request may go now) or ``not_yet`` (wait). Responses and refusals
(``node_unknown``, ``run_not_running``, ``rejected``) are events too. The action runs before the
state changes; ``-`` means none: the next tick decides.

=====================================================  ==================  ==================  ============
state                                                  event               action              next state
=====================================================  ==================  ==================  ============
REGISTER                                               ready               send_register       REGISTER
REGISTER                                               not_yet             wait                REGISTER
REGISTER                                               registered          -                   ACTIVATE
REGISTER, ACTIVATE                                     node_unknown        give_up             (refused)
REGISTER, ACTIVATE                                     run_not_running     give_up             (refused)
REGISTER, ACTIVATE                                     rejected            give_up             (refused)
REGISTER                                               stop                -                   DONE
ACTIVATE                                               ready               send_activate       ACTIVATE
ACTIVATE                                               activated           -                   IDLE
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
PULL_OBJECTS                                           object_missing      drop_message        IDLE
CONFIRM                                                ready               send_confirm        CONFIRM
CONFIRM                                                confirmed           -                   HANDLING
HANDLING                                               ready               run_handler         HANDLING
HANDLING                                               not_yet             wait                HANDLING
HANDLING                                               handler_done        -                   PUSH_MESSAGE
PUSH_MESSAGE                                           ready               send_push_message   PUSH_MESSAGE
PUSH_MESSAGE                                           push_accepted       -                   PUSH_OBJECTS
PUSH_MESSAGE                                           nothing_to_push     finish_message      IDLE
PUSH_OBJECTS                                           ready               send_push_object    PUSH_OBJECTS
PUSH_OBJECTS                                           object_pushed       -                   PUSH_OBJECTS
PUSH_OBJECTS                                           last_object_pushed  finish_message      IDLE
PULL_OBJECTS, CONFIRM, PUSH_MESSAGE, PUSH_OBJECTS      run_not_running     drop_message        IDLE
PULL_OBJECTS, CONFIRM, PUSH_MESSAGE, PUSH_OBJECTS      rejected            drop_message        IDLE
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   heartbeat_due       send_heartbeat      (same)
PUSH_OBJECTS
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   heartbeat_ok        -                   (same)
PUSH_OBJECTS
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   node_unknown        register_again      REGISTER
PUSH_OBJECTS
IDLE, PULL_OBJECTS, CONFIRM, HANDLING, PUSH_MESSAGE,   stop                drop_message        DEACTIVATE
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
UNREGISTER: leaving goes on when the SuperLink has already forgotten the node. ``(refused)`` is
DONE from REGISTER and UNREGISTER from ACTIVATE (undo the registration): ``give_up`` sets
``outcome`` = "refused". Even a 401 there means our key or signature is not accepted, which
trying again will not change.
``stale_result`` is a handler that ends after its message was dropped (node unknown, stop): its
reply is not sent, and a newer message waits in HANDLING until that handler has returned. A pair not in
the table is invalid input (invariant 6): ERROR.

Generations
-----------
``NodeSession(generation=...)`` selects how the node joins and leaves; everything else (signing,
heartbeats, PullMessages, objects, pushing) is the same from flwr 1.20 on (checked against the
releases' own fleet.proto and grpc_rere_client). ``Generation.REGISTER_ACTIVATE`` (flwr 1.23 and
later, the default) runs the table above. ``Generation.CREATE_DELETE`` (flwr 1.20-1.22) joins with
``CreateNode(heartbeat_interval) -> node`` and leaves with ``DeleteNode(node)`` (their messages are
``fedproto.fleet_1_20_pb2``): it runs the same table without the ACTIVATE and UNREGISTER states and
without REGISTER ``registered`` and the DEACTIVATE rows, and adds these rows:

==========  ============  ================  ==========
state       event         action            next state
==========  ============  ================  ==========
REGISTER    ready         send_create_node  REGISTER
REGISTER    node_created  -                 IDLE
DEACTIVATE  ready         send_delete_node  DEACTIVATE
DEACTIVATE  node_deleted  -                 DONE
DEACTIVATE  rejected      -                 DONE
DEACTIVATE  node_unknown  -                 DONE
==========  ============  ================  ==========

Timing (flwr 1.42's SuperNode, ``supercore/heartbeat.py``, ``supernode/start_client_internal.py``):
ActivateNode and every heartbeat announce ``heartbeat_interval`` (30 s; the SuperLink accepts
10-1800 s and counts the node offline 2 x interval after its last heartbeat). Heartbeats go
every ``(interval - 5) x 0.8`` s (20 s; flwr adds +-10 % jitter, we keep it deterministic).
PullMessages every ``poll_interval`` (3 s) while idle, at once after a reply is pushed, and
``poll_interval`` after a dropped message (a SuperLink that keeps handing out a message it cannot
serve is not asked in a loop). An object that is not uploaded yet is asked again after 1 s,
doubling up to 10 s, for at most ``object_wait_limit`` (7200 s) per message; then the message is
dropped, like flwr does. Registering again after the SuperLink forgot the node waits 1 s, then
2, 4, ... up to 60 s while it keeps forgetting the node within 60 s of each activation; a node
that stayed known for 60 s starts again at 1 s. A SuperLink that refuses every heartbeat thus
gets at most three requests (register, activate, heartbeat) a minute from each node, once the
backoff has grown.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, NoReturn

from google.protobuf.message import DecodeError
from google.protobuf.message import Message as ProtoMessage

from fedproto import fleet_content, objects
from fedproto.errors import FedprotoError
from fedproto.fab_pb2 import GetFabRequest, GetFabResponse
from fedproto.fleet_1_20_pb2 import CreateNodeRequest, CreateNodeResponse, DeleteNodeRequest, DeleteNodeResponse
from fedproto.fleet_1_20_pb2 import Node as Node_1_20
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
    Metadata,
    ObjectTree,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
    PushObjectResponse,
)
from fedproto.node_pb2 import Node
from fedproto.objects import ObjectError, ObjectHeader
from fedproto.run_pb2 import GetRunRequest, GetRunResponse
from fedproto.text import bound_text
from fedproto.wire import MAX_MESSAGE_LENGTH

log = logging.getLogger(__name__)

HEARTBEAT_INTERVAL = 30.0  # seconds announced to the SuperLink (flwr's HEARTBEAT_DEFAULT_INTERVAL)
HEARTBEAT_CALL_TIMEOUT = 5.0  # flwr's HEARTBEAT_CALL_TIMEOUT: margin for a slow heartbeat call
HEARTBEAT_MULTIPLIER = 0.8  # flwr's HEARTBEAT_BASE_MULTIPLIER
HEARTBEAT_INTERVAL_RANGE = (10.0, 1800.0)  # what the SuperLink accepts (HEARTBEAT_MIN/MAX_INTERVAL)
POLL_INTERVAL = 3.0  # flwr's SuperNode sleeps 3 s after an empty PullMessages
OBJECT_RETRY_FIRST = 1.0  # flwr's PULL_INITIAL_BACKOFF
OBJECT_RETRY_CAP = 10.0  # flwr's PULL_BACKOFF_CAP
OBJECT_WAIT_LIMIT = 7200.0  # flwr's PULL_MAX_TIME
REREGISTER_FIRST = 1.0  # seconds before registering again after the SuperLink forgot the node
REREGISTER_CAP = 60.0  # the backoff doubles up to this; a node known this long starts again at FIRST
ID_TEXT = 80  # characters of a peer's id (message, object) shown in a log line or an error


class Rpc(NamedTuple):
    http_path: str  # POST path on the SuperLink's HTTP port (flwr/supercore/protobuf/translation.py)
    grpc_method: str  # unary method when the SuperLink runs the gRPC-rere Fleet API
    request_type: type[ProtoMessage]
    response_type: type[ProtoMessage]


def _rpc(name: str, kebab: str, request_type: type[ProtoMessage], response_type: type[ProtoMessage]) -> Rpc:
    return Rpc(f"/v1/fleet/{kebab}", f"/flwr.proto.Fleet/{name}", request_type, response_type)


# The Fleet API, as a node calls it. A NodeSession never calls GetRun/GetFab: it installs no
# ClientApp. flwr's SuperNode calls them to fetch the run's app; the kit's runner serves them.
RPCS: dict[str, Rpc] = {
    "RegisterNode": _rpc("RegisterNode", "register-node", RegisterNodeFleetRequest, RegisterNodeFleetResponse),
    "ActivateNode": _rpc("ActivateNode", "activate-node", ActivateNodeRequest, ActivateNodeResponse),
    "SendNodeHeartbeat": _rpc("SendNodeHeartbeat", "send-node-heartbeat", SendNodeHeartbeatRequest,
                              SendNodeHeartbeatResponse),
    "PullMessages": _rpc("PullMessages", "pull-messages", PullMessagesRequest, PullMessagesResponse),
    "PullObject": _rpc("PullObject", "pull-object", PullObjectRequest, PullObjectResponse),
    "ConfirmMessageReceived": _rpc("ConfirmMessageReceived", "confirm-message-received",
                                   ConfirmMessageReceivedRequest, ConfirmMessageReceivedResponse),
    "PushMessages": _rpc("PushMessages", "push-messages", PushMessagesRequest, PushMessagesResponse),
    "PushObject": _rpc("PushObject", "push-object", PushObjectRequest, PushObjectResponse),
    "DeactivateNode": _rpc("DeactivateNode", "deactivate-node", DeactivateNodeRequest, DeactivateNodeResponse),
    "UnregisterNode": _rpc("UnregisterNode", "unregister-node", UnregisterNodeFleetRequest,
                           UnregisterNodeFleetResponse),
    "GetRun": _rpc("GetRun", "get-run", GetRunRequest, GetRunResponse),
    "GetFab": _rpc("GetFab", "get-fab", GetFabRequest, GetFabResponse),
    # Generation.CREATE_DELETE (flwr 1.20-1.22), served over gRPC-rere only: their REST transport
    # (/api/v0/fleet/...) is not supported, so these paths are never posted to.
    "CreateNode": _rpc("CreateNode", "create-node", CreateNodeRequest, CreateNodeResponse),
    "DeleteNode": _rpc("DeleteNode", "delete-node", DeleteNodeRequest, DeleteNodeResponse),
}


class Generation(enum.Enum):
    """How the SuperLink's Fleet API lets a node join and leave (module docstring, Generations)."""

    REGISTER_ACTIVATE = "flwr 1.23 and later: RegisterNode + ActivateNode / DeactivateNode + UnregisterNode"
    CREATE_DELETE = "flwr 1.20-1.22: CreateNode / DeleteNode"


def generation_for_release(release: str) -> Generation:
    """The generation of a flwr release ("1.22", "1.22.0", "1.43.0.dev20260101"); 1.20 or later."""
    try:
        major, minor = (int(part) for part in release.split(".")[:2])
    except ValueError:
        raise ValueError(f"not a flwr release: {release!r}") from None
    if (major, minor) < (1, 20):
        raise ValueError(f"flwr {release} has a Fleet API of an older generation (before 1.20): not supported")
    return Generation.CREATE_DELETE if (major, minor) < (1, 23) else Generation.REGISTER_ACTIVATE


class Refusal(enum.Enum):
    """How the SuperLink said no to a request (as opposed to being unreachable)."""

    NODE_UNKNOWN = "401 / UNAUTHENTICATED: key or node id not known (any more)"
    RUN_NOT_RUNNING = "403 / PERMISSION_DENIED: the message's run is not running"
    REJECTED = "another 4xx / non-retryable gRPC code (e.g. 412 PUBLIC_KEY_ALREADY_IN_USE)"


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
    NODE_CREATED = "node_created"
    NODE_DELETED = "node_deleted"
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
    SEND_CREATE_NODE = "send_create_node"
    SEND_DELETE_NODE = "send_delete_node"
    WAIT = "wait"
    FINISH = "finish"
    GIVE_UP = "give_up"  # registering or activating refused: outcome "refused"
    REGISTER_AGAIN = "register_again"  # the SuperLink forgot the node: drop the message, back off
    DROP_MESSAGE = "drop_message"  # the message cannot be served: forget it, poll again later
    FINISH_MESSAGE = "finish_message"  # the reply is pushed: count it, poll again at once


# The event each refusal is in the table.
REFUSAL_EVENTS = {
    Refusal.NODE_UNKNOWN: Event.NODE_UNKNOWN,
    Refusal.RUN_NOT_RUNNING: Event.RUN_NOT_RUNNING,
    Refusal.REJECTED: Event.REJECTED,
}

S, E, A = State, Event, Action
# States in which the node is online: heartbeats flow, a message may be in the works.
ONLINE = (S.IDLE, S.PULL_OBJECTS, S.CONFIRM, S.HANDLING, S.PUSH_MESSAGE, S.PUSH_OBJECTS)
MESSAGE_WORK = (S.PULL_OBJECTS, S.CONFIRM, S.PUSH_MESSAGE, S.PUSH_OBJECTS)

# The executable table: (state, event) -> (action, next state). The code runs this, nothing else.
TRANSITIONS: dict[tuple[State, Event], tuple[Action, State]] = {
    (S.REGISTER, E.READY): (A.SEND_REGISTER, S.REGISTER),
    (S.REGISTER, E.NOT_YET): (A.WAIT, S.REGISTER),
    (S.REGISTER, E.REGISTERED): (A.NONE, S.ACTIVATE),
    **{(S.REGISTER, REFUSAL_EVENTS[refusal]): (A.GIVE_UP, S.DONE) for refusal in Refusal},
    **{(S.ACTIVATE, REFUSAL_EVENTS[refusal]): (A.GIVE_UP, S.UNREGISTER) for refusal in Refusal},
    (S.REGISTER, E.STOP): (A.NONE, S.DONE),
    (S.ACTIVATE, E.READY): (A.SEND_ACTIVATE, S.ACTIVATE),
    (S.ACTIVATE, E.ACTIVATED): (A.NONE, S.IDLE),
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
    (S.PULL_OBJECTS, E.OBJECT_MISSING): (A.DROP_MESSAGE, S.IDLE),
    (S.CONFIRM, E.READY): (A.SEND_CONFIRM, S.CONFIRM),
    (S.CONFIRM, E.CONFIRMED): (A.NONE, S.HANDLING),
    (S.HANDLING, E.READY): (A.RUN_HANDLER, S.HANDLING),
    (S.HANDLING, E.NOT_YET): (A.WAIT, S.HANDLING),
    (S.HANDLING, E.HANDLER_DONE): (A.NONE, S.PUSH_MESSAGE),
    (S.PUSH_MESSAGE, E.READY): (A.SEND_PUSH_MESSAGE, S.PUSH_MESSAGE),
    (S.PUSH_MESSAGE, E.PUSH_ACCEPTED): (A.NONE, S.PUSH_OBJECTS),
    (S.PUSH_MESSAGE, E.NOTHING_TO_PUSH): (A.FINISH_MESSAGE, S.IDLE),
    (S.PUSH_OBJECTS, E.READY): (A.SEND_PUSH_OBJECT, S.PUSH_OBJECTS),
    (S.PUSH_OBJECTS, E.OBJECT_PUSHED): (A.NONE, S.PUSH_OBJECTS),
    (S.PUSH_OBJECTS, E.LAST_OBJECT_PUSHED): (A.FINISH_MESSAGE, S.IDLE),
    **{(state, E.RUN_NOT_RUNNING): (A.DROP_MESSAGE, S.IDLE) for state in MESSAGE_WORK},
    **{(state, E.REJECTED): (A.DROP_MESSAGE, S.IDLE) for state in MESSAGE_WORK},
    **{(state, E.HEARTBEAT_DUE): (A.SEND_HEARTBEAT, state) for state in ONLINE},
    **{(state, E.HEARTBEAT_OK): (A.NONE, state) for state in ONLINE},
    **{(state, E.NODE_UNKNOWN): (A.REGISTER_AGAIN, S.REGISTER) for state in ONLINE},
    **{(state, E.STOP): (A.DROP_MESSAGE, S.DEACTIVATE) for state in ONLINE},
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

# Generation.CREATE_DELETE: the rows above minus those it has no use for, plus its own.
_CREATE_DELETE_DROPPED = {(S.REGISTER, E.REGISTERED), (S.DEACTIVATE, E.DEACTIVATED), (S.DEACTIVATE, E.READY),
                          (S.DEACTIVATE, E.REJECTED), (S.DEACTIVATE, E.NODE_UNKNOWN), (S.REGISTER, E.READY)}
CREATE_DELETE_ROWS: dict[tuple[State, Event], tuple[Action, State]] = {
    (S.REGISTER, E.READY): (A.SEND_CREATE_NODE, S.REGISTER),
    (S.REGISTER, E.NODE_CREATED): (A.NONE, S.IDLE),
    (S.DEACTIVATE, E.READY): (A.SEND_DELETE_NODE, S.DEACTIVATE),
    (S.DEACTIVATE, E.NODE_DELETED): (A.NONE, S.DONE),
    (S.DEACTIVATE, E.REJECTED): (A.NONE, S.DONE),
    (S.DEACTIVATE, E.NODE_UNKNOWN): (A.NONE, S.DONE),
}
TRANSITIONS_BY_GENERATION: dict[Generation, dict[tuple[State, Event], tuple[Action, State]]] = {
    Generation.REGISTER_ACTIVATE: TRANSITIONS,
    Generation.CREATE_DELETE: {
        **{key: row for key, row in TRANSITIONS.items()
           if key not in _CREATE_DELETE_DROPPED and key[0] not in (S.ACTIVATE, S.UNREGISTER)},
        **CREATE_DELETE_ROWS,
    },
}


@dataclass(frozen=True)
class Send:
    rpc: str  # key of RPCS: which path / method to call
    request: bytes  # the serialized request


@dataclass(frozen=True)
class RunHandler:
    run: Callable[[], fleet_content.Answer]  # call on a worker thread; pass the result to handler_finished


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


# The metadata fields PullMessages repeats from the Message object (message_id is the object's id).
COMPARED_METADATA = ("run_id", "src_node_id", "dst_node_id", "reply_to_message_id", "group_id", "ttl",
                     "message_type", "created_at")


@dataclass
class MessageWork:
    """One message, from PullMessages to its last PushObject: created and dropped as a unit."""

    message_id: str  # the root of its object tree, the sha256 of the Message object
    delivered: Metadata  # what PullMessages said; checked against the hashed Message object
    tree: ObjectTree
    to_pull: list[str]  # parents before children (objects.pull_order)
    pull_started: float
    pulled: dict[str, bytes] = field(default_factory=dict)
    headers: dict[str, ObjectHeader] = field(default_factory=dict)  # hashed and checked on pull
    pulled_bytes: int = 0
    announced_bytes: int = 0  # objects other than chunks, plus every pulled Array's announced data
    retry_at: float = 0.0
    retry_delay: float = OBJECT_RETRY_FIRST
    metadata: Metadata | None = None  # the hashed Message object's, once it is inflated
    instruction: fleet_content.Instruction | None = None
    handler_launched: bool = False
    handler_started: float = 0.0
    handler_seconds: float = 0.0
    reply: objects.DeflatedMessage | None = None
    to_push: list[str] = field(default_factory=list)
    pushed: int = 0
    push_session: str = ""

    @property
    def run_id(self) -> int:
        return self.delivered.run_id

    @property
    def shown_id(self) -> str:
        return bound_text(self.message_id, ID_TEXT)


class NodeSession:
    """One node from RegisterNode to UnregisterNode (or to ERROR).

    ``handler`` has (some of) NumPyClient's methods; see ``fedproto.handler``.
    ``public_key`` is the PEM (SubjectPublicKeyInfo) of the key that signs every request.
    """

    def __init__(
        self,
        handler: object,
        public_key: bytes,
        *,
        heartbeat_interval: float = HEARTBEAT_INTERVAL,
        poll_interval: float = POLL_INTERVAL,
        object_wait_limit: float = OBJECT_WAIT_LIMIT,
        max_message_length: int = MAX_MESSAGE_LENGTH,
        generation: Generation = Generation.REGISTER_ACTIVATE,
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
        self.max_message_length = max_message_length

        self.state = State.REGISTER
        self.outcome = ""  # set when the session heads for DONE: "stopped" or "refused"
        self.node_id = 0
        self.awaiting: str | None = None  # rpc whose response is due (invariant 1)
        self.handled_count = 0
        self.last_handled: Handled | None = None
        self.work: MessageWork | None = None  # the message in the works (invariant 3)
        self._heartbeat_at = 0.0
        self._poll_at = 0.0
        self._register_at = 0.0
        self._register_delay = REREGISTER_FIRST
        self._activated_at = 0.0
        self._handler_running = False  # a handler thread is out, possibly for a dropped message
        self.generation = generation
        self._transitions = TRANSITIONS_BY_GENERATION[generation]

        # What each table action and each response does: named here, not looked up by name.
        self._senders: dict[Action, Callable[[float], tuple[str, ProtoMessage]]] = {
            A.SEND_REGISTER: self._send_register,
            A.SEND_ACTIVATE: self._send_activate,
            A.SEND_HEARTBEAT: self._send_heartbeat,
            A.SEND_PULL_MESSAGES: self._send_pull_messages,
            A.SEND_PULL_OBJECT: self._send_pull_object,
            A.SEND_CONFIRM: self._send_confirm,
            A.SEND_PUSH_MESSAGE: self._send_push_message,
            A.SEND_PUSH_OBJECT: self._send_push_object,
            A.SEND_DEACTIVATE: self._send_deactivate,
            A.SEND_UNREGISTER: self._send_unregister,
            A.SEND_CREATE_NODE: self._send_create_node,
            A.SEND_DELETE_NODE: self._send_delete_node,
        }
        self._effects: dict[Action, Callable[[float], None]] = {
            A.NONE: lambda now: None,
            A.GIVE_UP: self._give_up,
            A.REGISTER_AGAIN: self._register_again,
            A.DROP_MESSAGE: self._drop_message,
            A.FINISH_MESSAGE: self._finish_message,
        }
        self._responses: dict[str, Callable[[Any, float], Event]] = {
            "RegisterNode": self._on_register,
            "ActivateNode": self._on_activate,
            "SendNodeHeartbeat": self._on_heartbeat,
            "PullMessages": self._on_pull_messages,
            "PullObject": self._on_pull_object,
            "ConfirmMessageReceived": lambda response, now: E.CONFIRMED,
            "PushMessages": self._on_push_messages,
            "PushObject": self._on_push_object,
            "DeactivateNode": lambda response, now: E.DEACTIVATED,
            "UnregisterNode": lambda response, now: E.UNREGISTERED,
            "CreateNode": self._on_create_node,
            "DeleteNode": lambda response, now: E.NODE_DELETED,
        }

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
        action = self._fire(event, now)
        if action is A.WAIT:
            return Wait(self._wait_until())
        if action is A.FINISH:
            return Finished(self.outcome or "stopped")
        if action is A.RUN_HANDLER:
            return self._run_handler(now)
        rpc, request = self._senders[action](now)
        self.awaiting = rpc
        return Send(rpc, request.SerializeToString(deterministic=True))

    def receive(self, response: bytes, now: float) -> None:
        """The SuperLink's answer to the last Send."""
        self._check_usable()
        rpc = self._take_awaiting()
        message = RPCS[rpc].response_type()
        try:
            message.ParseFromString(response)
        except DecodeError as error:
            self._fail(f"{rpc}: the response is not a valid {message.DESCRIPTOR.name} ({error})")
        self._fire(self._responses[rpc](message, now), now)

    def refused(self, refusal: Refusal, now: float) -> None:
        """The SuperLink refused the last Send (see refusal_for_http_status/_grpc_code)."""
        self._check_usable()
        rpc = self._take_awaiting()
        log.warning("%s refused (%s)", rpc, refusal.value)
        self._fire(REFUSAL_EVENTS[refusal], now)

    def abandon(self) -> None:
        """The transport gives up on the last Send without an answer (it is leaving, or the
        SuperLink stayed unreachable): the session is as it was before that request."""
        self._check_usable()
        self._take_awaiting()

    def handler_finished(self, result: fleet_content.Answer, now: float) -> None:
        """The value ``RunHandler.run()`` returned, once the worker thread is done."""
        self._check_usable()
        if not self._handler_running:
            raise NodeUsageError("handler_finished called without a running handler")
        self._handler_running = False
        work = self.work
        current = self.state is S.HANDLING and work is not None and work.handler_launched
        self._fire(E.HANDLER_DONE if current else E.STALE_RESULT, now)
        if work is None or not current:
            log.warning("handler finished after its message was dropped; the reply is not sent")
            return
        assert work.metadata is not None
        work.handler_seconds = now - work.handler_started
        work.reply = fleet_content.build_reply(result, work.metadata, self.node_id, now)

    def stop(self, now: float) -> None:
        """Leave: deactivate and unregister (what the transport does on SIGINT/SIGTERM)."""
        self._check_usable()
        if self.awaiting is not None:
            raise NodeUsageError(f"stop called while the {self.awaiting} response is due")
        if not self.outcome:
            self.outcome = "stopped"
        self._fire(E.STOP, now)

    # ---- the table ---------------------------------------------------------------------------

    def _fire(self, event: Event, now: float) -> Action:
        """Run the table's row for (state, event): its effect, then the state change."""
        row = self._transitions.get((self.state, event))
        if row is None:
            self._fail(f"{event.value} is not valid in state {self.state.name}")
        action, next_state = row
        effect = self._effects.get(action)
        if effect is not None:
            effect(now)
        self.state = next_state
        return action

    def _ready_at(self) -> float:
        """When this state's own request may go (infinity: only a heartbeat or an event moves it)."""
        if self.state is S.REGISTER:
            return self._register_at
        if self.state is S.IDLE:
            return self._poll_at
        if self.state is S.PULL_OBJECTS:
            assert self.work is not None
            return self.work.retry_at
        if self.state is S.HANDLING:  # ready once, when the handler has to be started
            assert self.work is not None
            return math.inf if self.work.handler_launched or self._handler_running else 0.0
        return 0.0

    def _wait_until(self) -> float:
        until = self._ready_at()
        if self.state in ONLINE:
            until = min(until, self._heartbeat_at)
        return until

    # ---- effects of the table's actions --------------------------------------------------------

    def _give_up(self, now: float) -> None:
        self.outcome = "refused"
        log.error("registering or activating refused: the SuperLink does not accept this node")

    def _register_again(self, now: float) -> None:
        if now - self._activated_at >= REREGISTER_CAP:  # known long enough: this is a new trouble
            self._register_delay = REREGISTER_FIRST
        self._register_at = now + self._register_delay
        log.warning("the SuperLink does not know node %d any more; registering again in %.0f s",
                    self.node_id, self._register_delay)
        self._register_delay = min(self._register_delay * 2, REREGISTER_CAP)
        self._forget_message("the node is registering again")

    def _drop_message(self, now: float) -> None:
        self._poll_at = now + self.poll_interval
        self._forget_message("dropped")

    def _forget_message(self, why: str) -> None:
        if self.work is not None:
            log.warning("message %s %s", self.work.shown_id, why)
            self.work = None

    def _finish_message(self, now: float) -> None:
        work = self.work
        assert work is not None and work.reply is not None and work.metadata is not None
        self.last_handled = Handled(
            message_type=work.metadata.message_type, run_id=work.metadata.run_id,
            received_bytes=work.pulled_bytes, sent_bytes=sum(map(len, work.reply.objects.values())),
            handler_seconds=work.handler_seconds, error=work.reply.message.error.reason)
        self.handled_count += 1
        self.work = None
        self._poll_at = now  # like flwr: look for the next message at once

    def _run_handler(self, now: float) -> RunHandler:
        work = self.work
        assert work is not None and work.instruction is not None
        self._handler_running = work.handler_launched = True
        work.handler_started = now
        instruction, handler = work.instruction, self.handler
        work.instruction = None  # the worker holds it; dropped with the worker when it ends
        return RunHandler(lambda: fleet_content.answer(handler, instruction))

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
        work = self._work()
        object_id = work.to_pull[len(work.pulled)]
        return "PullObject", PullObjectRequest(node=Node(node_id=self.node_id), run_id=work.run_id,
                                               object_id=object_id)

    def _send_confirm(self, now: float) -> tuple[str, ProtoMessage]:
        work = self._work()
        return "ConfirmMessageReceived", ConfirmMessageReceivedRequest(
            node=Node(node_id=self.node_id), run_id=work.run_id, message_object_id=work.message_id)

    def _send_push_message(self, now: float) -> tuple[str, ProtoMessage]:
        work = self._work()
        assert work.reply is not None
        return "PushMessages", PushMessagesRequest(
            node=Node(node_id=self.node_id), messages_list=[work.reply.message],
            message_object_trees=[work.reply.object_tree], clientapp_runtime_list=[work.handler_seconds])

    def _send_push_object(self, now: float) -> tuple[str, ProtoMessage]:
        work = self._work()
        assert work.reply is not None
        object_id = work.to_push[work.pushed]
        return "PushObject", PushObjectRequest(
            node=Node(node_id=self.node_id), run_id=work.run_id, object_id=object_id,
            object_content=work.reply.objects[object_id], session_id=work.push_session)

    def _send_deactivate(self, now: float) -> tuple[str, ProtoMessage]:
        return "DeactivateNode", DeactivateNodeRequest(node_id=self.node_id)

    def _send_unregister(self, now: float) -> tuple[str, ProtoMessage]:
        return "UnregisterNode", UnregisterNodeFleetRequest(node_id=self.node_id)

    def _send_create_node(self, now: float) -> tuple[str, ProtoMessage]:
        return "CreateNode", CreateNodeRequest(heartbeat_interval=self.heartbeat_interval)

    def _send_delete_node(self, now: float) -> tuple[str, ProtoMessage]:
        return "DeleteNode", DeleteNodeRequest(node=Node_1_20(node_id=self.node_id))

    # ---- responses: each returns the event it is ------------------------------------------------

    def _on_register(self, response: RegisterNodeFleetResponse, now: float) -> Event:
        return E.REGISTERED

    def _on_activate(self, response: ActivateNodeResponse, now: float) -> Event:
        self._go_online("ActivateNode", response.node_id, now)
        return E.ACTIVATED

    def _on_create_node(self, response: CreateNodeResponse, now: float) -> Event:
        self._go_online("CreateNode", response.node.node_id, now)
        return E.NODE_CREATED

    def _go_online(self, rpc: str, node_id: int, now: float) -> None:
        if node_id == 0:
            self._fail(f"{rpc}: the response has no node_id")
        self.node_id = node_id
        self._activated_at = now
        self._heartbeat_at = self._poll_at = now  # first heartbeat right away, then poll

    def _on_heartbeat(self, response: SendNodeHeartbeatResponse, now: float) -> Event:
        return E.HEARTBEAT_OK if response.success else E.NODE_UNKNOWN

    def _on_pull_messages(self, response: PullMessagesResponse, now: float) -> Event:
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
            self._fail(f"PullMessages: object tree root {bound_text(tree.object_id, ID_TEXT)!r} "
                       f"is not message {bound_text(metadata.message_id, ID_TEXT)!r}")
        if metadata.dst_node_id != self.node_id:
            self._fail(f"PullMessages: message for node {metadata.dst_node_id}, we are {self.node_id}")
        try:
            to_pull = objects.pull_order(tree)
        except ObjectError as error:
            self._fail(f"PullMessages: {error}")
        self.work = MessageWork(metadata.message_id, metadata, tree, to_pull, pull_started=now)
        return E.MESSAGE

    def _on_pull_object(self, response: PullObjectResponse, now: float) -> Event:
        work = self._work()
        object_id = work.to_pull[len(work.pulled)]
        if not response.object_found:
            log.warning("object %s of message %s not found on the SuperLink", object_id, work.shown_id)
            return E.OBJECT_MISSING
        if not response.object_available:  # the ServerApp is still uploading it
            if now - work.pull_started >= self.object_wait_limit:
                log.warning("object %s still not available after %.0f s", object_id, now - work.pull_started)
                return E.OBJECT_MISSING
            work.retry_at = now + work.retry_delay
            work.retry_delay = min(work.retry_delay * 2, OBJECT_RETRY_CAP)
            return E.OBJECT_NOT_READY
        content = response.object_content
        try:
            header = objects.check_object(object_id, content)  # hash and header, before we keep it
        except ObjectError as error:
            self._fail(f"PullObject: {error}")
        work.pulled[object_id], work.headers[object_id] = content, header
        work.pulled_bytes += len(content)
        if header.type_name != "ArrayChunk":
            work.announced_bytes += len(content) + objects.announced_data_size(header, content)
        if object_id == work.message_id:
            self._check_delivered_metadata(work, content, header)
        largest = max(work.pulled_bytes, work.announced_bytes)  # both are lower bounds of the total
        if largest > self.max_message_length:
            self._fail(f"message {work.shown_id}: its objects exceed the {self.max_message_length}-byte "
                       f"message limit (at least {largest} bytes)")
        work.retry_at, work.retry_delay = 0.0, OBJECT_RETRY_FIRST
        if len(work.pulled) < len(work.to_pull):
            return E.OBJECT
        try:
            inflated = objects.inflate_message(work.tree, work.pulled, work.headers)
            work.instruction = fleet_content.read_instruction(inflated)
        except FedprotoError as error:
            self._fail(f"message {work.shown_id}: {error}")
        work.metadata = inflated.metadata
        work.pulled, work.headers = {}, {}  # the instruction holds what it needs
        return E.LAST_OBJECT

    def _check_delivered_metadata(self, work: MessageWork, content: bytes, header: ObjectHeader) -> None:
        """Invariant 4: PullMessages' copy of the metadata must be the hashed object's."""
        try:
            hashed = objects.message_metadata(work.message_id, content, header)
        except ObjectError as error:
            self._fail(f"message {work.shown_id}: {error}")
        for name in COMPARED_METADATA:
            delivered, inside = getattr(work.delivered, name), getattr(hashed, name)
            if delivered != inside:
                self._fail(f"message {work.shown_id}: PullMessages says {name} = "
                           f"{bound_text(repr(delivered), ID_TEXT)}, the hashed Message object "
                           f"{bound_text(repr(inside), ID_TEXT)}")

    def _on_push_messages(self, response: PushMessagesResponse, now: float) -> Event:
        work = self._work()
        assert work.reply is not None
        wanted = list(response.objects_to_push)
        unknown = [object_id for object_id in wanted if object_id not in work.reply.objects]
        if unknown:
            self._fail(f"PushMessages: asked for {len(unknown)} objects we do not have, "
                       f"e.g. {bound_text(unknown[0], ID_TEXT)!r}")
        wanted_set = set(wanted)
        work.to_push = [object_id for object_id in work.reply.objects if object_id in wanted_set]
        work.push_session, work.pushed = response.session_id, 0
        return E.PUSH_ACCEPTED if work.to_push else E.NOTHING_TO_PUSH

    def _on_push_object(self, response: PushObjectResponse, now: float) -> Event:
        work = self._work()
        work.pushed += 1
        return E.OBJECT_PUSHED if work.pushed < len(work.to_push) else E.LAST_OBJECT_PUSHED

    # ---- helpers -------------------------------------------------------------------------------

    def _work(self) -> MessageWork:
        """The message in the works; a response about a message when there is none is invalid input."""
        if self.work is None:
            self._fail(f"a response about a message in state {self.state.name}, with no message in the works")
        return self.work

    def _take_awaiting(self) -> str:
        if self.awaiting is None:
            raise NodeUsageError("a response was reported but no request is outstanding")
        rpc, self.awaiting = self.awaiting, None
        return rpc

    def _check_usable(self) -> None:
        if self.state is S.ERROR:
            raise NodeProtocolError("the session is in ERROR after invalid input; start a new one")

    def _fail(self, reason: str) -> NoReturn:
        self.state = S.ERROR
        self.awaiting = None
        raise NodeProtocolError(reason)
