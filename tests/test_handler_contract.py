"""One handler contract for both protocols (fedproto.handler): the same handler, unchanged, on the
Join stream and as a Fleet node; its own writable arrays on both; the same failure texts.

The interop tests run real processes: flwr 1.42's ``start_server`` with our edge clients, and
``flower-superlink`` + ``flwr run`` with our nodes, message-API and legacy ServerApps. The handlers
train in place and keep references to their inputs (tests/interop_handlers.py ``InPlaceClient``,
examples/superlink_app ``InPlaceClient``): a library that hands out read-only or shared buffers
fails their rounds.
"""

from __future__ import annotations

import numpy as np
import pytest

from fedproto import objects
from fedproto.dispatch import ClientSession
from fedproto.fleet_content import answer, read_instruction
from fedproto.message_pb2 import Metadata
from fedproto.tensor_formats import encode_parameters
from fedproto.transport_pb2 import ServerMessage
from test_client_interop import assert_exits_zero, assert_fedavg_run, start_edge_client, start_flwr_server
from test_fleet_interop import assert_arrays_equal, expected_fedavg, run, start_nodes, stop_node

W = np.arange(6, dtype=np.float32).reshape(2, 3)


# ------------------------------------------------------------------ real servers


def test_in_place_training_over_join_against_flwr_start_server(spawn, tmp_path):
    flwr_run = start_flwr_server(spawn, tmp_path)
    clients = [start_edge_client(spawn, flwr_run, tmp_path, k, app="interop_handlers:in_place_client")
               for k in (0, 1)]
    history = flwr_run.history()
    assert_exits_zero(*clients)
    assert_fedavg_run(flwr_run, history, clients=[0, 1])  # no failures; each round the exact weighted mean


@pytest.mark.timeout(240)
@pytest.mark.parametrize("strategy", ["message", "legacy"])
def test_in_place_training_as_a_fleet_node_of_flower_superlink(superlink_harness, tmp_path, strategy):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_nodes(harness, [0, 1], env={0: {"FLEET_IN_PLACE": "1"}, 1: {"FLEET_IN_PLACE": "1"}})
    report, arrays = run(harness, tmp_path, strategy, strategy=strategy, **{"num-rounds": 3})
    for section in ("train", "evaluate"):
        for server_round in ("1", "2", "3"):
            replies = report["replies"][section][server_round]
            assert len(replies) == 2 and all(reply["error"] is None for reply in replies), replies
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]] * 3))
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


# ------------------------------------------------------------------ the handler's arrays


class Keeper:
    """Records the arrays fit was given."""

    def __init__(self):
        self.given = []

    def fit(self, parameters, config):
        self.given.append(parameters)
        for parameter in parameters:
            parameter += 1  # trains in place
        return parameters, 1, {}


def fleet_instruction(content: dict, message_type: str = "train"):
    metadata = Metadata(run_id=1, src_node_id=1, dst_node_id=2, message_type=message_type,
                        created_at=1_800_000_000.0, ttl=60.0)
    deflated = objects.deflate_message(metadata, content)
    return read_instruction(objects.inflate_message(deflated.object_tree, deflated.objects))


def test_two_keys_carrying_the_same_array_give_the_handler_two_independent_arrays():
    shared = objects.Array.from_numpy(W)
    instruction = fleet_instruction({"arrays": objects.ArrayRecord({"a": shared, "b": shared}),
                                     "config": objects.ConfigRecord({})})
    received = instruction.call.parameters
    assert np.shares_memory(received[0], received[1])  # one object on the wire, decoded once
    handler = Keeper()
    assert answer(handler, instruction).error == ""
    first, second = handler.given[0]
    assert first.flags.writeable and second.flags.writeable
    assert not np.shares_memory(first, second)
    assert not np.shares_memory(first, received[0])
    np.testing.assert_array_equal(first, W + 1)  # each += 1 once: not twice through an alias
    np.testing.assert_array_equal(second, W + 1)
    np.testing.assert_array_equal(received[0], W)  # the received message is untouched


def test_join_handler_gets_writable_arrays_of_its_own():
    message = ServerMessage()
    encode_parameters([W, W], out=message.fit_ins.parameters)
    handler = Keeper()
    ClientSession(handler).receive(message)
    first, second = handler.given[0]
    assert not np.shares_memory(first, second)
    np.testing.assert_array_equal(first, W + 1)


# ------------------------------------------------------------------ one text per failure


class Returns:
    def __init__(self, value):
        self.value = value

    def fit(self, parameters, config):
        return self.value

    def evaluate(self, parameters, config):
        return self.value

    def get_properties(self, config):
        return self.value


class Raises:
    def fit(self, parameters, config):
        raise ValueError("no data")


OBJECT_ARRAY = np.array([{"a": 1}], dtype=object)
FAILURES = [  # (handler, method, the reason both protocols send)
    (Returns(([W], 10.0, {})), "fit", "fit returned an invalid result: num_examples: expected an int, got float"),
    (Returns(([W], -1, {})), "fit", "fit returned an invalid result: num_examples: expected a non-negative "
                                    "int64, got -1"),
    (Returns((W, 1, {})), "fit", "fit returned an invalid result: parameters: expected a list of ndarrays, "
                                 "got a single ndarray"),
    (Returns(([OBJECT_ARRAY], 1, {})), "fit", "fit returned an invalid result: parameters[0]: object arrays are "
                                              "not accepted"),
    (Returns(([W], 1, None)), "fit", "fit returned an invalid result: metrics: expected a dict with str keys, "
                                     "got NoneType"),
    (Returns(([W], 1)), "fit", "fit returned an invalid result: fit must return (parameters, num_examples, "
                               "metrics), got a tuple of 2"),
    (Returns(("low", 1, {})), "evaluate", "evaluate returned an invalid result: loss: expected a float, got str"),
    (Returns(None), "get_properties", "get_properties returned an invalid result: properties: expected a dict "
                                      "with str keys, got NoneType"),
    (Raises(), "fit", "fit raised ValueError: no data"),
    (object(), "evaluate", "Client does not implement `evaluate`"),
]
JOIN_INSTRUCTION = {"fit": "fit_ins", "evaluate": "evaluate_ins", "get_properties": "get_properties_ins"}
MESSAGE_TYPE = {"fit": "train", "evaluate": "evaluate", "get_properties": "query"}
LEGACY_PREFIX = {"fit": "fitins", "evaluate": "evaluateins", "get_properties": "getpropertiesins"}


@pytest.mark.parametrize("handler, method, reason", FAILURES, ids=[f[2][:60] for f in FAILURES])
def test_a_failure_has_the_same_text_on_join_and_on_both_fleet_layouts(handler, method, reason):
    message = ServerMessage()
    ins = getattr(message, JOIN_INSTRUCTION[method])
    ins.SetInParent()
    if method != "get_properties":
        encode_parameters([W], out=ins.parameters)
    reply = ClientSession(handler).receive(message)
    join_reason = getattr(reply, reply.WhichOneof("msg")).status.message

    arrays = objects.ArrayRecord({"w": objects.Array.from_numpy(W)})
    message_api = {"config": objects.ConfigRecord({})} | ({"arrays": arrays} if method != "get_properties" else {})
    prefix = LEGACY_PREFIX[method]
    legacy = {f"{prefix}.config": objects.ConfigRecord({})}
    if method != "get_properties":
        legacy[f"{prefix}.parameters"] = objects.ArrayRecord({"0": objects.Array.from_numpy(W)})
    fleet_reasons = [answer(handler, fleet_instruction(content, MESSAGE_TYPE[method])).error
                     for content in (message_api, legacy)]
    assert [join_reason, *fleet_reasons] == [reason] * 3
