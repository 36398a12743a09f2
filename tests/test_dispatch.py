"""ClientSession, the sans-IO client: every row of its transition table, every way a server
message can be invalid, and every way a handler can fail, answered as flwr's client does."""

from __future__ import annotations

import io
import logging

import flwr.common as flwr_common
import numpy as np
import pytest
from flwr.client import NumPyClient
from flwr.common import serde
from flwr.proto import transport_pb2 as flwr_pb2

from fedproto import dispatch
from fedproto.codec import TENSOR_TYPE, ndarray_to_bytes, ndarrays_to_parameters, scalars_to_proto
from fedproto.dispatch import AFTER_REFUSAL, TRANSITIONS, ClientSession, ProtocolError, State, Transition
from fedproto.transport_pb2 import ClientMessage, Code, Parameters, Reason, Scalar, ServerMessage

WEIGHTS = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, dtype=np.float64)]
CONFIG = {"lr": 0.5, "epochs": 2, "tag": "a", "flag": True, "blob": b"\x01"}


class Recorder:
    """A complete handler that records what it was called with."""

    def __init__(self):
        self.calls = []

    def get_properties(self, config):
        self.calls.append(("get_properties", config))
        return {"partition": 3}

    def get_parameters(self, config):
        self.calls.append(("get_parameters", config))
        return WEIGHTS

    def fit(self, parameters, config):
        self.calls.append(("fit", parameters, config))
        return [p + 1 for p in parameters], 10, {"train_loss": 0.5}

    def evaluate(self, parameters, config):
        self.calls.append(("evaluate", parameters, config))
        return 0.25, 10, {"accuracy": 0.75}


def server_message(kind: str, seconds: int = 0, parameters: Parameters | None = None,
                   config: dict | None = None) -> ServerMessage:
    if kind == "reconnect_ins":
        return ServerMessage(reconnect_ins=ServerMessage.ReconnectIns(seconds=seconds))
    fields = {"config": scalars_to_proto(CONFIG if config is None else config)}
    if kind in ("fit_ins", "evaluate_ins"):
        fields["parameters"] = ndarrays_to_parameters(WEIGHTS) if parameters is None else parameters
    return ServerMessage(**{kind: fields})


INSTRUCTIONS = ["get_properties_ins", "get_parameters_ins", "fit_ins", "evaluate_ins"]
FAILURE_CODES = {
    "get_properties_ins": Code.GET_PROPERTIES_NOT_IMPLEMENTED,
    "get_parameters_ins": Code.GET_PARAMETERS_NOT_IMPLEMENTED,
    "fit_ins": Code.FIT_NOT_IMPLEMENTED,
    "evaluate_ins": Code.EVALUATE_NOT_IMPLEMENTED,
}


def reply_of(message: ClientMessage):
    return getattr(message, message.WhichOneof("msg"))


# ------------------------------------------------------------------ transition table


@pytest.mark.parametrize("kind", INSTRUCTIONS)
def test_joined_instruction_is_answered_and_stays_joined(kind):
    handler = Recorder()
    session = ClientSession(handler)
    reply = session.receive(server_message(kind))
    assert reply.WhichOneof("msg") == kind.replace("_ins", "_res")
    assert reply_of(reply).status.code == Code.OK
    assert reply_of(reply).status.message == "Success"
    assert session.state is State.JOINED
    assert session.last_received == kind
    assert [call[0] for call in handler.calls] == [kind.removesuffix("_ins")]


def test_handler_sees_numpy_arrays_and_python_scalars():
    handler = Recorder()
    reply = ClientSession(handler).receive(server_message("fit_ins"))
    _, parameters, config = handler.calls[0]
    assert [(type(p), p.dtype, p.shape) for p in parameters] == [(np.ndarray, w.dtype, w.shape) for w in WEIGHTS]
    assert {k: (type(v), v) for k, v in config.items()} == {k: (type(v), v) for k, v in CONFIG.items()}
    assert reply.fit_res.num_examples == 10
    assert reply.fit_res.metrics["train_loss"].double == 0.5
    assert reply.fit_res.parameters.tensors == [ndarray_to_bytes(w + 1) for w in WEIGHTS]


def test_evaluate_reply_carries_loss_count_and_metrics():
    reply = ClientSession(Recorder()).receive(server_message("evaluate_ins")).evaluate_res
    assert (reply.loss, reply.num_examples, reply.metrics["accuracy"].double) == (0.25, 10, 0.75)


@pytest.mark.parametrize("seconds", [1, 30])
def test_reconnect_with_seconds_disconnects_with_reason_reconnect(seconds):
    session = ClientSession(Recorder())
    reply = session.receive(server_message("reconnect_ins", seconds=seconds))
    assert reply == ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=Reason.RECONNECT))
    assert session.state is State.RECONNECT
    assert session.reconnect_after == seconds


def test_reconnect_with_zero_seconds_acknowledges_and_is_done():
    session = ClientSession(Recorder())
    session.receive(server_message("fit_ins"))
    reply = session.receive(server_message("reconnect_ins", seconds=0))
    assert reply == ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=Reason.ACK))
    assert session.state is State.DONE
    assert session.reconnect_after == 0


@pytest.mark.parametrize("seconds, final_state", [(5, State.RECONNECT), (0, State.DONE)])
@pytest.mark.parametrize("kind", [*INSTRUCTIONS, "reconnect_ins"])
def test_nothing_is_answered_after_disconnect(seconds, final_state, kind):
    handler = Recorder()
    session = ClientSession(handler)
    session.receive(server_message("reconnect_ins", seconds=seconds))
    with pytest.raises(ProtocolError) as caught:
        session.receive(server_message(kind, seconds=3))
    assert str(caught.value) == f"ServerMessage received after the stream ended ({final_state.value})"
    assert session.state is final_state
    assert handler.calls == []


def test_a_whole_training_session_in_order():
    handler = Recorder()
    session = ClientSession(handler)
    kinds = ["get_parameters_ins", "fit_ins", "evaluate_ins", "fit_ins", "evaluate_ins"]
    replies = [session.receive(server_message(kind)).WhichOneof("msg") for kind in kinds]
    assert replies == [kind.replace("_ins", "_res") for kind in kinds]
    assert session.receive(server_message("reconnect_ins")).WhichOneof("msg") == "disconnect_res"
    assert session.state is State.DONE


def docstring_table() -> list[list[str]]:
    """The rows of the transition table in fedproto/dispatch.py's docstring, split on its columns."""
    lines = dispatch.__doc__.split("Transitions\n-----------")[1].splitlines()
    rules = [i for i, line in enumerate(lines) if line.startswith("=========")]
    assert len(rules) == 3, "the table is an RST simple table: rule, header, rule, rows, rule"
    spans, start = [], 0
    for column in lines[rules[0]].split("  "):
        spans.append((start, start + len(column)))
        start += len(column) + 2
    return [[line[a:b].strip() for a, b in spans] for line in lines[rules[1] + 1:rules[2]]]


def test_the_docstring_table_is_the_table_the_code_runs():
    documented, refusals = {}, {}
    for state, received, handler, reply, next_state in docstring_table():
        if reply == "ProtocolError":
            assert handler == "-"
            refusals[State[state]] = State[next_state]
        else:
            documented[(State[state], received)] = Transition(handler, reply, State[next_state])
    assert documented == TRANSITIONS
    assert refusals == AFTER_REFUSAL
    assert set(AFTER_REFUSAL) == set(State)


def test_every_instruction_has_a_row_in_joined():
    oneof = {field.name for field in ServerMessage.DESCRIPTOR.oneofs_by_name["msg"].fields}
    received = {name.split(",")[0] for state, name in TRANSITIONS if state is State.JOINED}
    assert received == oneof
    assert all(hasattr(ClientSession, t.handler) for t in TRANSITIONS.values())


# ------------------------------------------------------------------ invalid input


@pytest.mark.parametrize("bad_input", [b"garbage!", b""], ids=["undecodable", "empty_oneof"])
def test_after_a_protocol_error_the_session_refuses_everything(bad_input):
    handler = Recorder()
    session = ClientSession(handler)
    session.receive(server_message("fit_ins"))
    with pytest.raises(ProtocolError):
        session.receive_bytes(bad_input)
    assert session.state is State.ERROR
    for kind in [*INSTRUCTIONS, "reconnect_ins"]:
        with pytest.raises(ProtocolError) as caught:
            session.receive(server_message(kind, seconds=1))
        assert str(caught.value) == "ServerMessage received after the stream ended (error)"
        assert session.state is State.ERROR
    assert [call[0] for call in handler.calls] == ["fit"]


def test_a_bad_tensor_puts_the_session_in_error():
    session = ClientSession(Recorder())
    bad = Parameters(tensors=[b"not npy"], tensor_type=TENSOR_TYPE)
    with pytest.raises(ProtocolError):
        session.receive(server_message("fit_ins", parameters=bad))
    assert session.state is State.ERROR


@pytest.mark.parametrize("seconds", [-5, 0])
def test_reconnect_without_a_positive_pause_ends_the_session(seconds):
    session = ClientSession(Recorder())
    reply = session.receive(server_message("reconnect_ins", seconds=seconds))
    assert reply.disconnect_res.reason == Reason.ACK
    assert (session.state, session.reconnect_after) == (State.DONE, 0)




def test_receive_bytes_round_trip():
    session = ClientSession(Recorder())
    reply_bytes = session.receive_bytes(server_message("fit_ins").SerializeToString())
    expected = ClientSession(Recorder()).receive(server_message("fit_ins"))
    assert ClientMessage.FromString(reply_bytes) == expected
    assert reply_bytes == expected.SerializeToString()


@pytest.mark.parametrize("garbage", [b"\xff\xff\xff", b"garbage!", b"\n\x05ab"])
def test_undecodable_bytes_are_a_protocol_error(garbage):
    with pytest.raises(ProtocolError) as caught:
        ClientSession(Recorder()).receive_bytes(garbage)
    assert str(caught.value) == (
        "ServerMessage: not a valid protobuf message "
        "(Error parsing message with type 'flwr.proto.ServerMessage')"
    )


@pytest.mark.parametrize("data", [b"", b"\x50\x01"], ids=["empty", "unknown_field_only"])
def test_empty_oneof_is_a_protocol_error(data):
    session = ClientSession(Recorder())
    with pytest.raises(ProtocolError) as caught:
        session.receive_bytes(data)
    assert str(caught.value) == "ServerMessage: no instruction set (empty oneof 'msg')"
    assert session.state is State.ERROR


@pytest.mark.parametrize("kind, ins_name", [("fit_ins", "FitIns"), ("evaluate_ins", "EvaluateIns")])
def test_bad_tensor_is_a_protocol_error_naming_the_field(kind, ins_name):
    handler = Recorder()
    garbled = Parameters(tensors=[ndarray_to_bytes(WEIGHTS[0]), b"\x93NUMPY\x01\x00garbage"],
                         tensor_type=TENSOR_TYPE)
    with pytest.raises(ProtocolError) as caught:
        ClientSession(handler).receive(server_message(kind, parameters=garbled))
    assert str(caught.value).startswith(f"{ins_name}.parameters.tensors[1]: bad .npy header (")
    assert handler.calls == []


def test_object_array_in_fit_ins_is_a_protocol_error():
    buffer = io.BytesIO()
    np.save(buffer, np.array([object()], dtype=object), allow_pickle=True)
    parameters = Parameters(tensors=[buffer.getvalue()], tensor_type=TENSOR_TYPE)
    with pytest.raises(ProtocolError) as caught:
        ClientSession(Recorder()).receive(server_message("fit_ins", parameters=parameters))
    assert str(caught.value) == "FitIns.parameters.tensors[0]: object arrays are not accepted (pickled .npy)"


def test_unknown_tensor_type_is_a_protocol_error():
    parameters = Parameters(tensors=[ndarray_to_bytes(WEIGHTS[0])], tensor_type="torch.Tensor")
    with pytest.raises(ProtocolError) as caught:
        ClientSession(Recorder()).receive(server_message("evaluate_ins", parameters=parameters))
    assert str(caught.value) == (
        "EvaluateIns.parameters.tensor_type: unknown tensor_type 'torch.Tensor' "
        "(expected one of 'numpy.ndarray', 'cpp_double')"
    )


def test_scalar_without_kind_in_config_is_a_protocol_error():
    message = ServerMessage(get_properties_ins=ServerMessage.GetPropertiesIns(config={"x": Scalar()}))
    with pytest.raises(ProtocolError) as caught:
        ClientSession(Recorder()).receive(message)
    assert str(caught.value) == "GetPropertiesIns.config['x']: Scalar has no value set"


# ------------------------------------------------------------------ handler failures


class Empty:
    """A handler with no methods at all."""


class FlwrEmpty(NumPyClient):
    """flwr's NumPyClient with nothing overridden: flwr answers *_NOT_IMPLEMENTED."""


def flwr_not_implemented_reply(kind: str) -> flwr_pb2.ClientMessage:
    """What flwr's own client sends for an instruction its NumPyClient does not implement."""
    from flwr.compat.client.client import (
        maybe_call_evaluate,
        maybe_call_fit,
        maybe_call_get_parameters,
        maybe_call_get_properties,
    )

    client = FlwrEmpty().to_client()
    parameters = flwr_common.ndarrays_to_parameters(WEIGHTS)
    if kind == "get_properties_ins":
        res = maybe_call_get_properties(client, flwr_common.GetPropertiesIns(config={}))
        return flwr_pb2.ClientMessage(get_properties_res=serde.get_properties_res_to_proto(res))
    if kind == "get_parameters_ins":
        res = maybe_call_get_parameters(client, flwr_common.GetParametersIns(config={}))
        return flwr_pb2.ClientMessage(get_parameters_res=serde.get_parameters_res_to_proto(res))
    if kind == "fit_ins":
        res = maybe_call_fit(client, flwr_common.FitIns(parameters=parameters, config={}))
        return flwr_pb2.ClientMessage(fit_res=serde.fit_res_to_proto(res))
    res = maybe_call_evaluate(client, flwr_common.EvaluateIns(parameters=parameters, config={}))
    return flwr_pb2.ClientMessage(evaluate_res=serde.evaluate_res_to_proto(res))


@pytest.mark.parametrize("kind", INSTRUCTIONS)
def test_missing_method_is_not_implemented_exactly_as_flwr_says_it(kind):
    session = ClientSession(Empty())
    reply = session.receive(server_message(kind))
    status = reply_of(reply).status
    method = kind.removesuffix("_ins")
    assert (status.code, status.message) == (FAILURE_CODES[kind], f"Client does not implement `{method}`")
    assert session.state is State.JOINED
    theirs = flwr_not_implemented_reply(kind)
    assert reply.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


class Raising(Recorder):
    def fit(self, parameters, config):
        raise ValueError("out of memory on device")

    def evaluate(self, parameters, config):
        raise ZeroDivisionError("no test data")


@pytest.mark.parametrize(
    "kind, message",
    [("fit_ins", "fit raised ValueError: out of memory on device"),
     ("evaluate_ins", "evaluate raised ZeroDivisionError: no test data")],
)
def test_handler_exception_is_a_non_ok_status_and_the_session_goes_on(kind, message, caplog):
    session = ClientSession(Raising())
    with caplog.at_level(logging.ERROR, logger="fedproto.handler"):
        reply = session.receive(server_message(kind))
    status = reply_of(reply).status
    assert (status.code, status.message) == (FAILURE_CODES[kind], message)
    assert reply_of(reply) == type(reply_of(reply))(status=status)  # nothing but the status
    assert session.state is State.JOINED
    assert any(record.exc_info for record in caplog.records)  # the traceback is logged
    assert session.receive(server_message("get_properties_ins")).get_properties_res.status.code == Code.OK


class Returns:
    """A handler whose every method returns one fixed value."""

    def __init__(self, value):
        self.value = value

    def get_properties(self, config):
        return self.value

    def get_parameters(self, config):
        return self.value

    def fit(self, parameters, config):
        return self.value

    def evaluate(self, parameters, config):
        return self.value


OBJECT_ARRAY = np.array([{"a": 1}], dtype=object)
WRONG_RESULTS = [
    ("fit_ins", (WEIGHTS, 10), "fit must return (parameters, num_examples, metrics), got a tuple of 2"),
    ("fit_ins", None, "fit must return (parameters, num_examples, metrics), got NoneType"),
    ("fit_ins", (WEIGHTS, 10.0, {}), "num_examples: expected an int, got float"),
    ("fit_ins", (WEIGHTS, "10", {}), "num_examples: expected an int, got str"),
    ("fit_ins", (WEIGHTS, -1, {}), "num_examples: expected a non-negative int64, got -1"),
    ("fit_ins", (WEIGHTS, True, {}), "num_examples: expected a non-negative int64, got True"),
    ("fit_ins", (WEIGHTS, 2**63, {}),
     "num_examples: expected a non-negative int64, got 9223372036854775808"),
    ("fit_ins", ([OBJECT_ARRAY], 10, {}), "parameters[0]: object arrays are not accepted"),
    ("fit_ins", (WEIGHTS[0], 10, {}), "parameters: expected a list of ndarrays, got a single ndarray"),
    ("fit_ins", (WEIGHTS, 10, {"m": [1]}),
     "metrics['m']: list is not a Scalar kind (use bool, bytes, float, int or str)"),
    ("fit_ins", (WEIGHTS, 10, None), "metrics: expected a dict with str keys, got NoneType"),
    ("evaluate_ins", [0.5, 10], "evaluate must return (loss, num_examples, metrics), got a list of 2"),
    ("evaluate_ins", ("0.5", 10, {}), "loss: expected a float, got str"),
    ("evaluate_ins", (None, 10, {}), "loss: expected a float, got NoneType"),
    ("evaluate_ins", (0.5, -3, {}), "num_examples: expected a non-negative int64, got -3"),
    ("evaluate_ins", (0.5, 10, {"m": None}),
     "metrics['m']: NoneType is not a Scalar kind (use bool, bytes, float, int or str)"),
    ("get_properties_ins", None, "properties: expected a dict with str keys, got NoneType"),
    ("get_properties_ins", {"k": 2**64},
     "properties['k']: int 18446744073709551616 does not fit in sint64 or uint64"),
    ("get_parameters_ins", [OBJECT_ARRAY],
     "parameters[0]: object arrays are not accepted"),
    ("get_parameters_ins", None, "parameters: expected a list of ndarrays, got NoneType"),
]


@pytest.mark.parametrize("kind, result, reason", WRONG_RESULTS, ids=[r[2][:50] for r in WRONG_RESULTS])
def test_wrong_return_value_is_a_non_ok_status_saying_what_is_wrong(kind, result, reason):
    session = ClientSession(Returns(result))
    reply = session.receive(server_message(kind))
    status = reply_of(reply).status
    method = kind.removesuffix("_ins")
    assert (status.code, status.message) == (FAILURE_CODES[kind], f"{method} returned an invalid result: {reason}")
    assert session.state is State.JOINED


def test_numpy_numbers_are_accepted_as_results():
    session = ClientSession(Returns((np.float32(0.5), np.int64(7), {"acc": np.float64(0.9)})))
    reply = session.receive(server_message("evaluate_ins")).evaluate_res
    assert (reply.status.code, reply.loss, reply.num_examples, reply.metrics["acc"].double) == (
        Code.OK, 0.5, 7, 0.9
    )
