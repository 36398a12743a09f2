"""NodeSession, the sans-IO Fleet node: every transition of its table, heartbeat timing on a fake
clock, the docstring table against the data, the ERROR state, and hostile responses.

The content mapping (fedproto.fleet_content) is replaced by a stand-in here so that these tests
exercise the state machine alone; tests/test_fleet_content.py tests the mapping, and the interop
tests run both against a real SuperLink.
"""

from __future__ import annotations

import hashlib
import re
import types

import numpy as np
import pytest

from fedproto import node as node_module
from fedproto import objects
from fedproto.errors import FedprotoError
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
    Message,
    Metadata,
    ObjectTree,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
    PushObjectResponse,
)
from fedproto.node import (
    CREATE_DELETE_ROWS,
    TRANSITIONS,
    TRANSITIONS_BY_GENERATION,
    Action,
    Event,
    Finished,
    Generation,
    NodeProtocolError,
    NodeSession,
    NodeUsageError,
    Refusal,
    RunHandler,
    Send,
    State,
    Wait,
    generation_for_release,
    refusal_for_grpc_code,
    refusal_for_http_status,
)

PUBLIC_KEY = b"-----BEGIN PUBLIC KEY-----\nfake\n-----END PUBLIC KEY-----\n"
NODE_ID = 7
SUPERLINK_NODE = 1


def object_id(content: bytes) -> str:
    return hashlib.sha256(content).hexdigest()


# The message the SuperLink hands out, as real objects (the session checks each one's hash and
# header; what the content means is the content module's business).
INSTRUCTION = objects.deflate_message(
    Metadata(run_id=5, src_node_id=SUPERLINK_NODE, dst_node_id=NODE_ID, group_id="1", message_type="train",
             created_at=1000.0, ttl=600.0),
    {"arrays": objects.ArrayRecord({"w": objects.Array.from_numpy(np.arange(3.0))}),
     "config": objects.ConfigRecord({"server-round": 1})},
)
MESSAGE_ID = INSTRUCTION.message_id
OBJECTS = INSTRUCTION.objects
TREE = INSTRUCTION.object_tree

REPLY_OBJECTS = {object_id(b"reply child"): b"reply child", object_id(b"reply root"): b"reply root"}


class FakeContent:
    """Stands in for fedproto.fleet_content: records what the session asked of it."""

    def __init__(self):
        self.read = []
        self.built = []

    def read_instruction(self, inflated):
        self.read.append(inflated.message_id)
        return ("instruction", inflated.metadata.message_type)

    def answer(self, handler, instruction):
        return handler(instruction)

    def build_reply(self, result, metadata, node_id, now):
        self.built.append((result, metadata, node_id, now))
        reply = Message(metadata=Metadata(reply_to_message_id=metadata.message_id, src_node_id=node_id))
        reply.content.SetInParent()
        tree = ObjectTree(object_id=object_id(b"reply root"),
                          children=[ObjectTree(object_id=object_id(b"reply child"))])
        return types.SimpleNamespace(message=reply, object_tree=tree, objects=dict(REPLY_OBJECTS))


@pytest.fixture(autouse=True)
def content(monkeypatch):
    fake = FakeContent()
    monkeypatch.setattr(node_module, "fleet_content", fake)
    return fake


def new_session(**kwargs) -> NodeSession:
    return NodeSession(lambda instruction: ("answered", instruction), PUBLIC_KEY, **kwargs)


def expect_send(session: NodeSession, now: float, rpc: str, request_type):
    step = session.next_step(now)
    assert isinstance(step, Send), step
    assert step.rpc == rpc
    request = request_type()
    request.ParseFromString(step.request)
    return request


def answer(session: NodeSession, response, now: float) -> None:
    session.receive(response.SerializeToString(), now)


def online(now: float = 0.0, **kwargs) -> NodeSession:
    """A session registered, activated and past its first heartbeat (state IDLE)."""
    session = new_session(**kwargs)
    request = expect_send(session, now, "RegisterNode", RegisterNodeFleetRequest)
    assert request.public_key == PUBLIC_KEY
    answer(session, RegisterNodeFleetResponse(node_id=NODE_ID), now)
    request = expect_send(session, now, "ActivateNode", ActivateNodeRequest)
    assert (request.public_key, request.heartbeat_interval) == (PUBLIC_KEY, session.heartbeat_interval)
    answer(session, ActivateNodeResponse(node_id=NODE_ID), now)
    assert (session.state, session.node_id) == (State.IDLE, NODE_ID)
    heartbeat = expect_send(session, now, "SendNodeHeartbeat", SendNodeHeartbeatRequest)
    assert (heartbeat.node.node_id, heartbeat.heartbeat_interval) == (NODE_ID, session.heartbeat_interval)
    answer(session, SendNodeHeartbeatResponse(success=True), now)
    return session


def instruction_message() -> Message:
    return INSTRUCTION.message  # as PushMessages carries it: metadata with the id, empty content


def deliver(session: NodeSession, now: float, message: Message | None = None, tree: ObjectTree = TREE) -> None:
    expect_send(session, now, "PullMessages", PullMessagesRequest)
    answer(session, PullMessagesResponse(messages_list=[message or instruction_message()],
                                         message_object_trees=[tree]), now)


def pull_objects(session: NodeSession, now: float) -> None:
    """Answer every PullObject, in the order asked (state CONFIRM after)."""
    asked = []
    while session.state is State.PULL_OBJECTS:
        request = expect_send(session, now, "PullObject", PullObjectRequest)
        assert (request.node.node_id, request.run_id) == (NODE_ID, 5)
        asked.append(request.object_id)
        answer(session, PullObjectResponse(object_found=True, object_available=True,
                                           object_content=OBJECTS[request.object_id]), now)
    assert sorted(asked) == sorted(OBJECTS)  # every object once
    assert asked[0] == MESSAGE_ID  # parents before children: the Message object first
    assert session.state is State.CONFIRM


def pull_all(session: NodeSession, now: float) -> None:
    """Every object, then the confirmation (state HANDLING after)."""
    pull_objects(session, now)
    confirm = expect_send(session, now, "ConfirmMessageReceived", ConfirmMessageReceivedRequest)
    assert (confirm.message_object_id, confirm.run_id) == (MESSAGE_ID, 5)
    answer(session, ConfirmMessageReceivedResponse(), now)
    assert session.state is State.HANDLING


def run_handler(session: NodeSession, now: float):
    step = session.next_step(now)
    assert isinstance(step, RunHandler), step
    return step.run()


def push_all(session: NodeSession, now: float) -> None:
    push = expect_send(session, now, "PushMessages", PushMessagesRequest)
    assert push.node.node_id == NODE_ID
    assert len(push.messages_list) == len(push.message_object_trees) == 1
    assert push.messages_list[0].metadata.reply_to_message_id == MESSAGE_ID
    answer(session, PushMessagesResponse(objects_to_push=list(REPLY_OBJECTS), session_id="s1"), now)
    pushed = {}
    while session.state is State.PUSH_OBJECTS:
        request = expect_send(session, now, "PushObject", PushObjectRequest)
        assert (request.session_id, request.run_id) == ("s1", 5)
        pushed[request.object_id] = request.object_content
        answer(session, PushObjectResponse(stored=True), now)
    assert pushed == REPLY_OBJECTS
    assert session.state is State.IDLE


def leave(session: NodeSession, now: float) -> Finished:
    session.stop(now)
    deactivate = expect_send(session, now, "DeactivateNode", DeactivateNodeRequest)
    assert deactivate.node_id == session.node_id
    answer(session, DeactivateNodeResponse(), now)
    unregister = expect_send(session, now, "UnregisterNode", UnregisterNodeFleetRequest)
    assert unregister.node_id == session.node_id
    answer(session, UnregisterNodeFleetResponse(), now)
    step = session.next_step(now)
    assert isinstance(step, Finished)
    return step


# ------------------------------------------------------------------ scenarios (each a test below)


def scenario_one_message_end_to_end(content):
    session = online(now=0.0)
    expect_send(session, 0.0, "PullMessages", PullMessagesRequest)
    answer(session, PullMessagesResponse(), 0.0)  # nothing yet: poll again in 3 s
    assert session.next_step(1.0) == Wait(3.0)
    deliver(session, 3.0)
    pull_all(session, 3.0)
    assert content.read == [MESSAGE_ID]
    result = run_handler(session, 3.5)
    assert result == ("answered", ("instruction", "train"))
    assert session.next_step(4.0) == Wait(20.0)  # the handler runs: only heartbeats until it ends
    session.handler_finished(result, 9.5)
    assert content.built[0][0] == result and content.built[0][2:] == (NODE_ID, 9.5)
    push = expect_send(session, 9.5, "PushMessages", PushMessagesRequest)
    assert list(push.clientapp_runtime_list) == [6.0]
    answer(session, PushMessagesResponse(objects_to_push=list(REPLY_OBJECTS), session_id="s1"), 9.5)
    for _ in REPLY_OBJECTS:
        expect_send(session, 9.5, "PushObject", PushObjectRequest)
        answer(session, PushObjectResponse(stored=True), 9.5)
    assert session.handled_count == 1
    handled = session.last_handled
    assert (handled.message_type, handled.run_id, handled.handler_seconds) == ("train", 5, 6.0)
    assert handled.received_bytes == sum(map(len, OBJECTS.values()))
    assert handled.sent_bytes == sum(map(len, REPLY_OBJECTS.values()))
    expect_send(session, 9.5, "PullMessages", PullMessagesRequest)  # the next poll goes at once
    answer(session, PullMessagesResponse(), 9.5)
    assert leave(session, 10.0) == Finished("stopped")


def scenario_heartbeats_flow_during_a_long_handler(content):
    session = online(now=0.0)
    deliver(session, 0.0)
    pull_all(session, 0.0)
    run_handler(session, 0.0)
    sent = []
    now = 0.0
    while now <= 100.0:  # the handler runs for 100 s; the transport keeps asking
        step = session.next_step(now)
        if isinstance(step, Wait):
            now = step.until
            continue
        assert isinstance(step, Send) and step.rpc == "SendNodeHeartbeat"
        sent.append(now)
        answer(session, SendNodeHeartbeatResponse(success=True), now)
    assert sent == [20.0, 40.0, 60.0, 80.0, 100.0]
    session.handler_finished("late but fine", 101.0)
    push_all(session, 101.0)


def scenario_pull_object_retries_until_available(content):
    session = online(now=0.0)
    deliver(session, 0.0)
    request = expect_send(session, 0.0, "PullObject", PullObjectRequest)
    answer(session, PullObjectResponse(object_found=True, object_available=False), 0.0)
    assert session.next_step(0.5) == Wait(1.0)  # 1 s, then 2, 4, 8, 10, 10...
    again = expect_send(session, 1.0, "PullObject", PullObjectRequest)
    assert again.object_id == request.object_id
    answer(session, PullObjectResponse(object_found=True, object_available=False), 1.0)
    assert session.next_step(1.0) == Wait(3.0)
    pull_all(session, 3.0)


def scenario_object_never_available_drops_the_message(content):
    session = online(now=0.0, object_wait_limit=5.0)
    deliver(session, 0.0)
    expect_send(session, 0.0, "PullObject", PullObjectRequest)
    answer(session, PullObjectResponse(object_found=True, object_available=False), 0.0)
    expect_send(session, 6.0, "PullObject", PullObjectRequest)
    answer(session, PullObjectResponse(object_found=True, object_available=False), 6.0)
    assert session.state is State.IDLE
    assert content.read == []


def scenario_object_not_found_drops_the_message(content):
    session = online(now=0.0)
    deliver(session, 0.0)
    expect_send(session, 0.0, "PullObject", PullObjectRequest)
    answer(session, PullObjectResponse(object_found=False), 0.0)
    assert session.state is State.IDLE and session.work is None
    assert session.next_step(0.0) == Wait(3.0)  # not at once: a SuperLink may offer it again
    expect_send(session, 3.0, "PullMessages", PullMessagesRequest)


def scenario_run_not_running_drops_the_message(content):
    for refuse_in in (State.PULL_OBJECTS, State.CONFIRM, State.PUSH_MESSAGE, State.PUSH_OBJECTS):
        for refusal in (Refusal.RUN_NOT_RUNNING, Refusal.REJECTED):
            session = online(now=0.0)
            deliver(session, 0.0)
            while session.state is not refuse_in:
                step = session.next_step(0.0)
                if isinstance(step, RunHandler):
                    session.handler_finished(step.run(), 0.0)
                    continue
                response = {
                    "PullObject": lambda request: PullObjectResponse(
                        object_found=True, object_available=True, object_content=OBJECTS[request.object_id]),
                    "ConfirmMessageReceived": lambda request: ConfirmMessageReceivedResponse(),
                    "PushMessages": lambda request: PushMessagesResponse(objects_to_push=list(REPLY_OBJECTS)),
                }[step.rpc]
                request = {"PullObject": PullObjectRequest, "ConfirmMessageReceived": ConfirmMessageReceivedRequest,
                           "PushMessages": PushMessagesRequest}[step.rpc]()
                request.ParseFromString(step.request)
                answer(session, response(request), 0.0)
            assert isinstance(session.next_step(0.0), Send)
            session.refused(refusal, 0.0)
            assert session.state is State.IDLE and session.work is None
            assert session.next_step(0.0) == Wait(3.0)
            expect_send(session, 3.0, "PullMessages", PullMessagesRequest)


def scenario_nothing_to_push(content):
    session = online(now=0.0)
    deliver(session, 0.0)
    pull_all(session, 0.0)
    session.handler_finished(run_handler(session, 0.0), 0.0)
    expect_send(session, 0.0, "PushMessages", PushMessagesRequest)
    answer(session, PushMessagesResponse(objects_to_push=[], session_id="s"), 0.0)  # all known already
    assert session.state is State.IDLE and session.handled_count == 1


def scenario_node_unknown_registers_again(content):
    # A heartbeat answered success = false, and a 401, in every online state.
    for how in ("heartbeat", "refusal"):
        for state in (State.IDLE, State.PULL_OBJECTS, State.CONFIRM, State.HANDLING, State.PUSH_MESSAGE,
                      State.PUSH_OBJECTS):
            session = online(now=0.0)
            _walk_to(session, state)
            heartbeat = session.next_step(25.0)
            assert isinstance(heartbeat, Send) and heartbeat.rpc == "SendNodeHeartbeat"
            if how == "heartbeat":
                answer(session, SendNodeHeartbeatResponse(success=False), 25.0)
            else:
                session.refused(Refusal.NODE_UNKNOWN, 25.0)
            assert session.state is State.REGISTER
            if state is State.HANDLING:  # its reply is dropped when it ends
                session.handler_finished("stale", 26.0)
                assert session.state is State.REGISTER
            expect_send(session, 26.0, "RegisterNode", RegisterNodeFleetRequest)
            answer(session, RegisterNodeFleetResponse(), 26.0)
            expect_send(session, 26.0, "ActivateNode", ActivateNodeRequest)
            answer(session, ActivateNodeResponse(node_id=99), 26.0)
            assert session.node_id == 99
            expect_send(session, 26.0, "SendNodeHeartbeat", SendNodeHeartbeatRequest)  # at once again


def scenario_heartbeat_goes_first_in_every_online_state(content):
    for state in (State.IDLE, State.PULL_OBJECTS, State.CONFIRM, State.HANDLING, State.PUSH_MESSAGE,
                  State.PUSH_OBJECTS):
        session = online(now=0.0)
        _walk_to(session, state)
        heartbeat = expect_send(session, 20.0, "SendNodeHeartbeat", SendNodeHeartbeatRequest)
        assert heartbeat.node.node_id == NODE_ID
        answer(session, SendNodeHeartbeatResponse(success=True), 20.0)
        assert session.state is state
        assert isinstance(session.next_step(20.0), (Send, RunHandler, Wait))  # the state's own work goes on


def _walk_to(session: NodeSession, state: State) -> None:
    """From IDLE, work on a message until the session is in ``state`` (handler left running)."""
    if state is State.IDLE:
        return
    deliver(session, 0.0)
    if state is State.PULL_OBJECTS:
        return
    pull_objects(session, 0.0)
    if state is State.CONFIRM:
        return
    expect_send(session, 0.0, "ConfirmMessageReceived", ConfirmMessageReceivedRequest)
    answer(session, ConfirmMessageReceivedResponse(), 0.0)
    run = run_handler(session, 0.0)
    if state is State.HANDLING:
        return
    session.handler_finished(run, 0.0)
    if state is State.PUSH_MESSAGE:
        return
    expect_send(session, 0.0, "PushMessages", PushMessagesRequest)
    answer(session, PushMessagesResponse(objects_to_push=list(REPLY_OBJECTS), session_id="s"), 0.0)
    assert state is State.PUSH_OBJECTS


def scenario_stop_from_every_state(content):
    # Not registered yet: nothing to undo.
    session = new_session()
    session.stop(0.0)
    assert session.next_step(0.0) == Finished("stopped")
    # Registered, not activated: unregister only.
    session = new_session()
    expect_send(session, 0.0, "RegisterNode", RegisterNodeFleetRequest)
    answer(session, RegisterNodeFleetResponse(), 0.0)
    session.stop(0.0)
    expect_send(session, 0.0, "UnregisterNode", UnregisterNodeFleetRequest)
    answer(session, UnregisterNodeFleetResponse(), 0.0)
    assert session.next_step(0.0) == Finished("stopped")
    # Online, in each state; a second signal changes nothing.
    for state in (State.IDLE, State.PULL_OBJECTS, State.CONFIRM, State.HANDLING, State.PUSH_MESSAGE,
                  State.PUSH_OBJECTS):
        session = online(now=0.0)
        _walk_to(session, state)
        session.stop(1.0)
        session.stop(1.0)
        expect_send(session, 1.0, "DeactivateNode", DeactivateNodeRequest)
        if state is State.HANDLING:
            session.handler_finished("after stop", 1.0)  # dropped, we are leaving
        answer(session, DeactivateNodeResponse(), 1.0)
        session.stop(1.0)
        expect_send(session, 1.0, "UnregisterNode", UnregisterNodeFleetRequest)
        answer(session, UnregisterNodeFleetResponse(), 1.0)
        session.stop(1.0)
        assert session.next_step(1.0) == Finished("stopped")


def scenario_leaving_goes_on_when_the_superlink_forgot_us(content):
    for refusal in (Refusal.NODE_UNKNOWN, Refusal.REJECTED):
        session = online(now=0.0)
        session.stop(0.0)
        expect_send(session, 0.0, "DeactivateNode", DeactivateNodeRequest)
        session.refused(refusal, 0.0)
        expect_send(session, 0.0, "UnregisterNode", UnregisterNodeFleetRequest)
        session.refused(refusal, 0.0)
        assert session.next_step(0.0) == Finished("stopped")


def scenario_refused_registration_finishes(content):
    for refusal in Refusal:
        session = new_session()
        expect_send(session, 0.0, "RegisterNode", RegisterNodeFleetRequest)
        session.refused(refusal, 0.0)
        assert session.next_step(0.0) == Finished("refused")
        # Activation refused: undo the registration first.
        session = new_session()
        expect_send(session, 0.0, "RegisterNode", RegisterNodeFleetRequest)
        answer(session, RegisterNodeFleetResponse(), 0.0)
        expect_send(session, 0.0, "ActivateNode", ActivateNodeRequest)
        session.refused(refusal, 0.0)
        expect_send(session, 0.0, "UnregisterNode", UnregisterNodeFleetRequest)
        answer(session, UnregisterNodeFleetResponse(), 0.0)
        assert session.next_step(0.0) == Finished("refused")


def scenario_a_stale_handler_result_is_dropped(content):
    # The node is forgotten while fit runs; fit ends in each later state of the new registration.
    for ends_in in (State.REGISTER, State.ACTIVATE, State.IDLE, State.PULL_OBJECTS, State.CONFIRM,
                    State.HANDLING):
        session = online(now=0.0)
        _walk_to(session, State.HANDLING)
        expect_send(session, 25.0, "SendNodeHeartbeat", SendNodeHeartbeatRequest)
        session.refused(Refusal.NODE_UNKNOWN, 25.0)
        assert session.next_step(25.0) == Wait(26.0)  # registering again after 1 s
        steps = [
            (State.REGISTER, "RegisterNode", RegisterNodeFleetRequest, RegisterNodeFleetResponse()),
            (State.ACTIVATE, "ActivateNode", ActivateNodeRequest, ActivateNodeResponse(node_id=NODE_ID)),
        ]
        for state, rpc, request_type, response in steps:
            if state is ends_in:
                break
            expect_send(session, 26.0, rpc, request_type)
            answer(session, response, 26.0)
        else:
            expect_send(session, 26.0, "SendNodeHeartbeat", SendNodeHeartbeatRequest)
            answer(session, SendNodeHeartbeatResponse(success=True), 26.0)
            if ends_in is not State.IDLE:
                deliver(session, 26.0)
            if ends_in in (State.CONFIRM, State.HANDLING):
                pull_objects(session, 26.0)
            if ends_in is State.HANDLING:
                expect_send(session, 26.0, "ConfirmMessageReceived", ConfirmMessageReceivedRequest)
                answer(session, ConfirmMessageReceivedResponse(), 26.0)
                assert session.next_step(26.0) == Wait(46.0)  # no second handler while one runs
        assert session.state is ends_in
        session.handler_finished("stale", 27.0)
        assert session.state is ends_in
        assert content.built == []  # never sent
        if ends_in is State.HANDLING:  # now the new message's handler starts
            assert isinstance(session.next_step(27.0), RunHandler)
    # Stopped while fit runs: fit ends during DEACTIVATE or UNREGISTER.
    for ends_in in (State.DEACTIVATE, State.UNREGISTER):
        session = online(now=0.0)
        _walk_to(session, State.HANDLING)
        session.stop(1.0)
        expect_send(session, 1.0, "DeactivateNode", DeactivateNodeRequest)
        if ends_in is State.UNREGISTER:
            answer(session, DeactivateNodeResponse(), 1.0)
        else:
            session.handler_finished("stale", 1.0)
            answer(session, DeactivateNodeResponse(), 1.0)
            continue
        session.handler_finished("stale", 1.0)
        assert session.state is State.UNREGISTER


SCENARIOS = [value for name, value in sorted(globals().items()) if name.startswith("scenario_")]


@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda f: f.__name__.removeprefix("scenario_"))
def test_scenario(scenario, content):
    scenario(content)


def test_every_transition_is_exercised(monkeypatch):
    visited = set()
    fire = NodeSession._fire

    def recording_fire(self, event, now):
        key = (self.state, event)
        action = fire(self, event, now)
        visited.add(key)
        return action

    monkeypatch.setattr(NodeSession, "_fire", recording_fire)
    for scenario in SCENARIOS:
        monkeypatch.setattr(node_module, "fleet_content", FakeContent())
        scenario(node_module.fleet_content)
    missing = sorted(f"{state.name} {event.value}" for state, event in set(TRANSITIONS) - visited)
    assert not missing


# ------------------------------------------------------------------ the docstring table


def docstring_rows(section: str = "Transitions"):
    doc = node_module.__doc__
    table = doc[doc.index(f"{section}\n{'-' * len(section)}"):]
    lines = table.splitlines()
    rules = [index for index, line in enumerate(lines) if re.fullmatch(r"=+( +=+)+", line)]
    body = lines[rules[1] + 1:rules[2]]
    columns = [match.span() for match in re.finditer(r"=+", lines[rules[0]])]
    rows = []
    for line in body:
        cells = [line[start:end if index < len(columns) - 1 else None].strip()
                 for index, (start, end) in enumerate(columns)]
        if cells[1]:
            rows.append(cells)
        else:  # a continuation of the state list
            rows[-1][0] += " " + cells[0]
    return rows


def test_docstring_table_matches_the_transitions():
    follows = {State.DEACTIVATE: State.UNREGISTER, State.UNREGISTER: State.DONE}
    documented = {}
    for states, event, action, next_state in docstring_rows():
        for name in re.split(r",\s*", states.strip().rstrip(",")):
            state = State[name]
            action_value = action.split(" ")[0]
            if next_state == "(same)":
                target = state
            elif next_state == "(next)":
                target = follows[state]
            elif next_state == "(refused)":
                target = {State.REGISTER: State.DONE, State.ACTIVATE: State.UNREGISTER}[state]
            else:
                target = State[next_state]
            key = (state, Event(event))
            assert key not in documented, f"documented twice: {key}"
            documented[key] = (Action(action_value), target)
    assert documented == TRANSITIONS


def test_docstring_generation_table_matches_the_create_delete_rows():
    documented = {(State[state], Event(event)): (Action(action), State[next_state])
                  for state, event, action, next_state in docstring_rows("Generations")}
    assert documented == CREATE_DELETE_ROWS
    create_delete = TRANSITIONS_BY_GENERATION[Generation.CREATE_DELETE]
    # The rest is the 1.23+ table without ACTIVATE, UNREGISTER and the rows the generation replaces.
    shared = {key: row for key, row in create_delete.items() if key not in CREATE_DELETE_ROWS}
    assert all(TRANSITIONS[key] == row for key, row in shared.items())
    assert not any(state in (State.ACTIVATE, State.UNREGISTER) or next_state in (State.ACTIVATE, State.UNREGISTER)
                   for (state, _), (_, next_state) in create_delete.items())
    assert (State.REGISTER, Event.REGISTERED) not in create_delete


# ------------------------------------------------------------------ timing


@pytest.mark.parametrize("interval, period", [(30.0, 20.0), (10.0, 4.0), (60.0, 44.0)])
def test_heartbeat_period_is_flwrs(interval, period):
    session = online(now=100.0, heartbeat_interval=interval)
    expect_send(session, 100.0, "PullMessages", PullMessagesRequest)
    answer(session, PullMessagesResponse(), 100.0)
    times = []
    now = 100.0
    while len(times) < 3:
        step = session.next_step(now)
        if isinstance(step, Wait):
            now = step.until
        elif step.rpc == "SendNodeHeartbeat":
            times.append(now)
            answer(session, SendNodeHeartbeatResponse(success=True), now)
        else:
            answer(session, PullMessagesResponse(), now)
    assert times == [100.0 + period, 100.0 + 2 * period, 100.0 + 3 * period]


def test_idle_polls_every_poll_interval_and_waits_for_the_earlier_deadline():
    session = online(now=0.0, poll_interval=7.0)
    expect_send(session, 0.0, "PullMessages", PullMessagesRequest)
    answer(session, PullMessagesResponse(), 0.0)
    assert session.next_step(0.0) == Wait(7.0)
    expect_send(session, 7.0, "PullMessages", PullMessagesRequest)
    answer(session, PullMessagesResponse(), 18.5)
    assert session.next_step(18.5) == Wait(20.0)  # the heartbeat is due before the poll (25.5)
    expect_send(session, 20.0, "SendNodeHeartbeat", SendNodeHeartbeatRequest)


@pytest.mark.parametrize("kwargs", [{"heartbeat_interval": 9.0}, {"heartbeat_interval": 1801.0},
                                    {"poll_interval": 0.0}])
def test_parameters_outside_what_the_superlink_accepts_are_refused(kwargs):
    with pytest.raises(ValueError):
        new_session(**kwargs)


# ------------------------------------------------------------------ refusal classification


def test_refusal_classification():
    assert refusal_for_http_status(401) is Refusal.NODE_UNKNOWN
    assert refusal_for_http_status(403) is Refusal.RUN_NOT_RUNNING
    assert refusal_for_http_status(412) is Refusal.REJECTED
    assert refusal_for_http_status(400) is Refusal.REJECTED
    assert [refusal_for_http_status(code) for code in (408, 429, 500, 502, 503, 504)] == [None] * 6
    assert refusal_for_grpc_code("UNAUTHENTICATED") is Refusal.NODE_UNKNOWN
    assert refusal_for_grpc_code("PERMISSION_DENIED") is Refusal.RUN_NOT_RUNNING
    assert refusal_for_grpc_code("FAILED_PRECONDITION") is Refusal.REJECTED
    assert refusal_for_grpc_code("UNAVAILABLE") is None


# ------------------------------------------------------------------ hostile responses -> ERROR


def hostile(session: NodeSession, data: bytes, match: str) -> None:
    with pytest.raises(NodeProtocolError, match=match) as raised:
        session.receive(data, 0.0)
    assert isinstance(raised.value, FedprotoError)
    assert session.state is State.ERROR
    for call in (lambda: session.next_step(0.0), lambda: session.stop(0.0),
                 lambda: session.receive(b"", 0.0), lambda: session.refused(Refusal.REJECTED, 0.0)):
        with pytest.raises(NodeProtocolError, match="ERROR"):
            call()


def pulled_messages(message: Message, tree: ObjectTree, count: int = 1, trees: int = 1) -> bytes:
    return PullMessagesResponse(messages_list=[message] * count, message_object_trees=[tree] * trees
                                ).SerializeToString()


def test_undecodable_response():
    session = online()
    expect_send(session, 0.0, "PullMessages", PullMessagesRequest)
    hostile(session, b"\xff\xff\xff", "not a valid PullMessagesResponse")


def test_activation_without_node_id():
    session = new_session()
    expect_send(session, 0.0, "RegisterNode", RegisterNodeFleetRequest)
    answer(session, RegisterNodeFleetResponse(), 0.0)
    expect_send(session, 0.0, "ActivateNode", ActivateNodeRequest)
    hostile(session, ActivateNodeResponse().SerializeToString(), "no node_id")


@pytest.mark.parametrize("message, tree, count, trees, match", [
    (instruction_message(), TREE, 2, 2, "2 messages in one response"),
    (instruction_message(), TREE, 1, 0, "1 messages but 0 object trees"),
    (instruction_message(), ObjectTree(object_id=object_id(b"other")), 1, 1, "is not message"),
    (Message(metadata=Metadata(message_id=MESSAGE_ID, dst_node_id=NODE_ID + 1)), TREE, 1, 1, "for node 8"),
    (instruction_message(), ObjectTree(object_id=MESSAGE_ID, children=[ObjectTree(object_id="../etc")]), 1, 1,
     "not an object id"),
    (instruction_message(), ObjectTree(object_id=MESSAGE_ID, children=[ObjectTree(object_id=MESSAGE_ID)]), 1, 1,
     "cycle"),
])
def test_hostile_message_lists(message, tree, count, trees, match):
    session = online()
    expect_send(session, 0.0, "PullMessages", PullMessagesRequest)
    hostile(session, pulled_messages(message, tree, count, trees), match)


def test_object_whose_content_is_not_its_hash():
    session = online()
    deliver(session, 0.0)
    expect_send(session, 0.0, "PullObject", PullObjectRequest)
    response = PullObjectResponse(object_found=True, object_available=True, object_content=b"forged")
    hostile(session, response.SerializeToString(), "content hashes to")


def test_object_with_a_lying_header():
    body = b"x" * 10
    forged = b"ArrayChunk  11\x00" + body  # says 11 bytes, has 10
    tree = ObjectTree(object_id=object_id(forged))
    message = Message(metadata=Metadata(message_id=object_id(forged), dst_node_id=NODE_ID))
    session = online()
    deliver(session, 0.0, message, tree)
    expect_send(session, 0.0, "PullObject", PullObjectRequest)
    response = PullObjectResponse(object_found=True, object_available=True, object_content=forged)
    hostile(session, response.SerializeToString(), "header says the body has 11 bytes")


def test_content_that_does_not_decode(content):
    def refuse(inflated):
        raise FedprotoError("ArrayChunk index 9 out of range")

    content.read_instruction = refuse
    session = online()
    deliver(session, 0.0)
    for _ in range(len(OBJECTS) - 1):
        request = expect_send(session, 0.0, "PullObject", PullObjectRequest)
        answer(session, PullObjectResponse(object_found=True, object_available=True,
                                           object_content=OBJECTS[request.object_id]), 0.0)
    request = expect_send(session, 0.0, "PullObject", PullObjectRequest)
    hostile(session, PullObjectResponse(object_found=True, object_available=True,
                                        object_content=OBJECTS[request.object_id]).SerializeToString(), "out of range")


def test_push_request_for_an_object_we_do_not_have():
    session = online()
    _walk_to(session, State.PUSH_MESSAGE)
    expect_send(session, 0.0, "PushMessages", PushMessagesRequest)
    response = PushMessagesResponse(objects_to_push=[object_id(b"not ours")], session_id="s")
    hostile(session, response.SerializeToString(), "objects we do not have")


def test_response_that_does_not_fit_the_state():
    session = online()
    expect_send(session, 0.0, "PullMessages", PullMessagesRequest)
    with pytest.raises(NodeProtocolError, match="not valid in state"):
        session.refused(Refusal.RUN_NOT_RUNNING, 0.0)  # no message in the works
    assert session.state is State.ERROR


# ------------------------------------------------------------------ usage errors (transport bugs)


def test_calls_out_of_turn():
    session = new_session()
    with pytest.raises(NodeUsageError):
        session.receive(b"", 0.0)
    with pytest.raises(NodeUsageError):
        session.handler_finished(None, 0.0)
    expect_send(session, 0.0, "RegisterNode", RegisterNodeFleetRequest)
    with pytest.raises(NodeUsageError):
        session.next_step(0.0)
    with pytest.raises(NodeUsageError):
        session.stop(0.0)
    assert session.state is State.REGISTER  # misuse is not the peer's fault: no ERROR


# ------------------------------------------------------------------ a hostile or broken SuperLink


def test_registering_again_backs_off_while_the_superlink_keeps_forgetting_the_node():
    """A heartbeat answered success = false forever: re-registration waits 1, 2, 4, ... 60 s."""
    session = online(now=0.0)
    now, registrations, requests = 0.0, [], 0
    while now < 1800.0:  # half an hour of a SuperLink that forgets the node at every heartbeat
        step = session.next_step(now)
        if isinstance(step, Wait):
            now = step.until
            continue
        requests += 1
        if step.rpc == "SendNodeHeartbeat":
            answer(session, SendNodeHeartbeatResponse(success=False), now)
        elif step.rpc == "RegisterNode":
            registrations.append(now)
            answer(session, RegisterNodeFleetResponse(), now)
        elif step.rpc == "ActivateNode":
            answer(session, ActivateNodeResponse(node_id=NODE_ID), now)
        else:
            answer(session, PullMessagesResponse(), now)
    gaps = [later - earlier for earlier, later in zip(registrations, registrations[1:])]
    assert gaps[:7] == [2.0, 4.0, 8.0, 16.0, 32.0, 60.0, 60.0]
    assert registrations[0] == 21.0 and set(gaps[5:]) == {60.0}  # forgotten at the 20 s heartbeat
    assert requests <= 3 * 1800 / 60 + 20  # register + activate + heartbeat a minute, after the warm-up


def test_registering_again_starts_over_after_a_node_stayed_known():
    session = online(now=0.0)
    for forgotten_at, expected_delay in ((10.0, 1.0), (20.0, 2.0), (200.0, 1.0)):
        assert isinstance(session.next_step(forgotten_at), Send)
        session.refused(Refusal.NODE_UNKNOWN, forgotten_at)  # 401: the SuperLink forgot us
        assert session.next_step(forgotten_at) == Wait(forgotten_at + expected_delay)
        now = forgotten_at + expected_delay
        expect_send(session, now, "RegisterNode", RegisterNodeFleetRequest)
        answer(session, RegisterNodeFleetResponse(), now)
        expect_send(session, now, "ActivateNode", ActivateNodeRequest)
        answer(session, ActivateNodeResponse(node_id=NODE_ID), now)


def test_metadata_that_the_message_id_does_not_cover_is_refused(content):
    """PullMessages says evaluate / run 999, the hashed Message object train / run 5."""
    forged = Message()
    forged.CopyFrom(instruction_message())
    forged.metadata.message_type, forged.metadata.run_id = "evaluate", 999
    session = online()
    deliver(session, 0.0, forged)
    request = expect_send(session, 0.0, "PullObject", PullObjectRequest)
    assert request.object_id == MESSAGE_ID  # the Message object is pulled first
    response = PullObjectResponse(object_found=True, object_available=True, object_content=OBJECTS[MESSAGE_ID])
    hostile(session, response.SerializeToString(), "PullMessages says run_id = 999, the hashed Message object 5")
    assert content.read == []  # the handler never saw it


def big_instruction(arrays: int, size: int) -> objects.DeflatedMessage:
    content = {"arrays": objects.ArrayRecord({f"w{i}": objects.Array.from_numpy(np.full(size, i, np.uint8))
                                              for i in range(arrays)})}
    return objects.deflate_message(Metadata(run_id=5, src_node_id=SUPERLINK_NODE, dst_node_id=NODE_ID,
                                            message_type="train", created_at=1000.0, ttl=600.0), content)


@pytest.mark.parametrize("arrays, size, pulled_before_refusal", [
    (12, 200, 15),  # 12 Arrays of 200 bytes: refused after the Arrays, before any chunk
    (1, 5000, 4),  # one Array announcing 5000 bytes: refused as soon as it is pulled
])
def test_a_message_over_the_limit_is_refused_before_its_chunks_are_downloaded(arrays, size, pulled_before_refusal):
    message = big_instruction(arrays, size)
    announced = sum(len(data) for data in message.objects.values() if not data.startswith(b"ArrayChunk "))
    limit = announced + arrays * size - 1  # the chunks (data + .npy headers) would go further still
    session = online(max_message_length=limit)
    deliver(session, 0.0, message.message, message.object_tree)
    asked = []
    with pytest.raises(NodeProtocolError, match=f"exceed the {limit}-byte message limit"):
        while True:
            request = expect_send(session, 0.0, "PullObject", PullObjectRequest)
            asked.append(request.object_id)
            answer(session, PullObjectResponse(object_found=True, object_available=True,
                                               object_content=message.objects[request.object_id]), 0.0)
    assert len(asked) == pulled_before_refusal
    assert not any(message.objects[oid].startswith(b"ArrayChunk ") for oid in asked)
    assert session.state is State.ERROR


def test_legacy_arrays_without_announced_sizes_stop_at_the_running_total():
    """flwr's legacy layout leaves dtype and shape empty: the running total stops the download."""
    data = [objects.Array.from_numpy(np.full(400, i, np.uint8)).data for i in range(10)]
    content = {"fitins.parameters": objects.ArrayRecord({str(i): objects.Array("", (), "numpy.ndarray", d)
                                                         for i, d in enumerate(data)}),
               "fitins.config": objects.ConfigRecord({})}
    message = objects.deflate_message(Metadata(run_id=5, src_node_id=SUPERLINK_NODE, dst_node_id=NODE_ID,
                                               message_type="train", created_at=1000.0, ttl=600.0), content)
    session = online(max_message_length=2000)
    deliver(session, 0.0, message.message, message.object_tree)
    chunks = 0
    with pytest.raises(NodeProtocolError, match="exceed the 2000-byte message limit"):
        while True:
            request = expect_send(session, 0.0, "PullObject", PullObjectRequest)
            chunks += message.objects[request.object_id].startswith(b"ArrayChunk ")
            answer(session, PullObjectResponse(object_found=True, object_available=True,
                                               object_content=message.objects[request.object_id]), 0.0)
    assert chunks <= 3  # about 2000 bytes of objects, not the 10 chunks named


def test_each_pulled_object_is_hashed_once_and_each_npy_header_read_once(monkeypatch):
    from fedproto import fleet_content, npy

    monkeypatch.setattr(node_module, "fleet_content", fleet_content)  # the real mapping, not the stand-in
    hashed, headers = [], []
    real_object_id, real_header = objects.object_id, npy.read_npy_header
    monkeypatch.setattr(objects, "object_id", lambda data: hashed.append(data) or real_object_id(data))
    monkeypatch.setattr(npy, "read_npy_header", lambda *a, **k: headers.append(1) or real_header(*a, **k))
    session = online()
    deliver(session, 0.0)
    pull_objects(session, 0.0)
    assert sorted(hashed) == sorted(OBJECTS.values())  # once each, on pull
    assert len(headers) == 1  # INSTRUCTION has one Array


def test_abandoned_request_leaves_the_session_as_before_it():
    session = online()
    expect_send(session, 0.0, "PullMessages", PullMessagesRequest)
    session.abandon()
    assert (session.state, session.awaiting) == (State.IDLE, None)
    session.stop(0.0)
    expect_send(session, 0.0, "DeactivateNode", DeactivateNodeRequest)


# ------------------------------------------------------------------ Generation.CREATE_DELETE (flwr 1.20-1.22)


def created(now: float = 0.0) -> NodeSession:
    """A CREATE_DELETE session joined with CreateNode and past its first heartbeat (state IDLE)."""
    session = new_session(generation=Generation.CREATE_DELETE)
    request = expect_send(session, now, "CreateNode", CreateNodeRequest)
    assert request.heartbeat_interval == session.heartbeat_interval
    answer(session, CreateNodeResponse(node=Node_1_20(node_id=NODE_ID)), now)
    assert (session.state, session.node_id) == (State.IDLE, NODE_ID)
    expect_send(session, now, "SendNodeHeartbeat", SendNodeHeartbeatRequest)
    answer(session, SendNodeHeartbeatResponse(success=True), now)
    return session


def create_delete_scenario_one_message_then_delete_node(content):
    session = created(0.0)
    deliver(session, 0.0)
    pull_all(session, 0.0)
    session.handler_finished(run_handler(session, 0.0), 1.0)
    push_all(session, 1.0)
    session.stop(2.0)
    delete = expect_send(session, 2.0, "DeleteNode", DeleteNodeRequest)
    assert delete.node.node_id == NODE_ID
    answer(session, DeleteNodeResponse(), 2.0)
    assert session.next_step(2.0) == Finished("stopped")


def create_delete_scenario_refused_create_node_finishes(content):
    for refusal in Refusal:
        session = new_session(generation=Generation.CREATE_DELETE)
        expect_send(session, 0.0, "CreateNode", CreateNodeRequest)
        session.refused(refusal, 0.0)
        assert session.next_step(0.0) == Finished("refused")


def create_delete_scenario_leaving_goes_on_when_delete_node_is_refused(content):
    for refusal in (Refusal.NODE_UNKNOWN, Refusal.REJECTED):
        session = created(0.0)
        session.stop(0.0)
        expect_send(session, 0.0, "DeleteNode", DeleteNodeRequest)
        session.refused(refusal, 0.0)
        assert session.next_step(0.0) == Finished("stopped")


def create_delete_scenario_node_unknown_creates_the_node_again(content):
    session = created(0.0)
    heartbeat = session.next_step(25.0)
    assert isinstance(heartbeat, Send) and heartbeat.rpc == "SendNodeHeartbeat"
    answer(session, SendNodeHeartbeatResponse(success=False), 25.0)
    assert session.next_step(25.0) == Wait(26.0)  # the same backoff as registering again
    expect_send(session, 26.0, "CreateNode", CreateNodeRequest)
    answer(session, CreateNodeResponse(node=Node_1_20(node_id=99)), 26.0)
    assert session.node_id == 99


def create_delete_scenario_create_node_without_a_node_id_is_an_error(content):
    session = new_session(generation=Generation.CREATE_DELETE)
    expect_send(session, 0.0, "CreateNode", CreateNodeRequest)
    with pytest.raises(NodeProtocolError, match="CreateNode: the response has no node_id"):
        answer(session, CreateNodeResponse(), 0.0)


CREATE_DELETE_SCENARIOS = [value for name, value in sorted(globals().items())
                           if name.startswith("create_delete_scenario_")]


@pytest.mark.parametrize("scenario", CREATE_DELETE_SCENARIOS,
                         ids=lambda f: f.__name__.removeprefix("create_delete_scenario_"))
def test_create_delete_scenario(scenario, content):
    scenario(content)


def test_every_create_delete_row_is_exercised(monkeypatch):
    visited = set()
    fire = NodeSession._fire

    def recording_fire(self, event, now):
        key = (self.state, event)
        action = fire(self, event, now)
        visited.add(key)
        return action

    monkeypatch.setattr(NodeSession, "_fire", recording_fire)
    for scenario in CREATE_DELETE_SCENARIOS:
        monkeypatch.setattr(node_module, "fleet_content", FakeContent())
        scenario(node_module.fleet_content)
    assert sorted(f"{state.name} {event.value}" for state, event in set(CREATE_DELETE_ROWS) - visited) == []


def test_a_create_delete_session_has_no_registered_row():
    session = created(0.0)
    with pytest.raises(NodeProtocolError, match="registered is not valid"):
        session._fire(Event.REGISTERED, 0.0)


@pytest.mark.parametrize("release, generation", [
    ("1.20", Generation.CREATE_DELETE), ("1.22.0", Generation.CREATE_DELETE),
    ("1.23.0", Generation.REGISTER_ACTIVATE), ("1.43.0.dev20260101", Generation.REGISTER_ACTIVATE),
    ("2.0", Generation.REGISTER_ACTIVATE)])
def test_generation_for_release(release, generation):
    assert generation_for_release(release) is generation


@pytest.mark.parametrize("release", ["1.19.0", "0.9", "latest", "1"])
def test_generation_for_release_refuses_what_it_cannot_serve(release):
    with pytest.raises(ValueError):
        generation_for_release(release)
