"""fedproto.fleet_content: the NumPyClient-style handler behind both content layouts a SuperLink
run carries (message-API strategies, legacy strategies in a ServerApp), the metric mapping, the
error replies, and the reply metadata. Messages are built and read with fedproto.objects, the
codec that is byte-identical to flwr's deflate() (tests/test_objects*.py)."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from fedproto import fleet_content, objects
from fedproto.fleet_content import CLIENT_APP_RAISED_EXCEPTION, answer, build_reply, metric_record, read_instruction
from fedproto.message_pb2 import Metadata

NODE_ID = 42
SUPERLINK = 1


def instruction(message_type: str, content: dict) -> tuple[Metadata, fleet_content.Instruction]:
    metadata = Metadata(run_id=9, src_node_id=SUPERLINK, dst_node_id=NODE_ID, group_id="3",
                        message_type=message_type, created_at=1_800_000_000.0, ttl=3600.0)
    deflated = objects.deflate_message(metadata, content)
    metadata.message_id = deflated.message_id
    return metadata, read_instruction(objects.inflate_message(deflated.object_tree, deflated.objects))


def reply_content(metadata: Metadata, result: fleet_content.Answer, now: float = 1_800_000_010.0):
    deflated = build_reply(result, metadata, NODE_ID, now)
    inflated = objects.inflate_message(deflated.object_tree, deflated.objects)
    return deflated, inflated


def array_record(arrays: dict) -> objects.ArrayRecord:
    return objects.ArrayRecord({key: objects.Array.from_numpy(value) for key, value in arrays.items()})


def legacy_array_record(arrays: list) -> objects.ArrayRecord:
    """As flwr's parameters_to_arrayrecord: keys "0", "1", ..., dtype "" and shape ()."""
    return objects.ArrayRecord({str(i): objects.Array("", (), "numpy.ndarray", objects.Array.from_numpy(a).data)
                                for i, a in enumerate(arrays)})


W = np.arange(6, dtype=np.float32).reshape(2, 3)
B = np.array([0.5, -1.0])


class Handler:
    def __init__(self, metrics=None):
        self.metrics = {"acc": 0.75} if metrics is None else metrics
        self.calls = []

    def get_parameters(self, config):
        self.calls.append(("get_parameters", config))
        return [W, B]

    def get_properties(self, config):
        self.calls.append(("get_properties", config))
        return {"os": "linux", "cores": 2}

    def fit(self, parameters, config):
        self.calls.append(("fit", [p.copy() for p in parameters], config))
        return [p + 1 for p in parameters], 12, dict(self.metrics)

    def evaluate(self, parameters, config):
        self.calls.append(("evaluate", [p.copy() for p in parameters], config))
        return 0.25, 7, dict(self.metrics)


# ------------------------------------------------------------------ message-API layout


def test_message_api_train():
    handler = Handler()
    content = {"arrays": array_record({"w": W, "b": B}), "config": objects.ConfigRecord({"server-round": 2, "lr": 0.1})}
    metadata, ins = instruction("train", content)
    assert (ins.layout, ins.call.method, ins.array_keys) == ("message-api", "fit", ["w", "b"])
    deflated, inflated = reply_content(metadata, answer(handler, ins))
    name, parameters, config = handler.calls[0]
    assert [p.tolist() for p in parameters] == [W.tolist(), B.tolist()]  # in the record's key order
    assert config == {"server-round": 2, "lr": 0.1}
    assert set(inflated.content) == {"arrays", "metrics"}
    arrays = inflated.content["arrays"]
    assert list(arrays) == ["w", "b"]  # the instruction's keys, in its order
    assert np.array_equal(arrays["w"].to_numpy(), W + 1) and arrays["w"].dtype == "float32"
    assert isinstance(inflated.content["metrics"], objects.MetricRecord)
    assert dict(inflated.content["metrics"]) == {"acc": 0.75, "num-examples": 12}


def test_message_api_evaluate_puts_the_loss_under_eval_loss():
    handler = Handler()
    content = {"arrays": array_record({"w": W}), "config": objects.ConfigRecord({"server-round": 1})}
    metadata, ins = instruction("evaluate", content)
    _, inflated = reply_content(metadata, answer(handler, ins))
    assert list(inflated.content) == ["metrics"]
    assert dict(inflated.content["metrics"]) == {"acc": 0.75, "eval_loss": 0.25, "num-examples": 7}


def test_message_api_query_is_get_properties():
    handler = Handler()
    metadata, ins = instruction("query", {"config": objects.ConfigRecord({"which": "all"})})
    _, inflated = reply_content(metadata, answer(handler, ins))
    assert handler.calls == [("get_properties", {"which": "all"})]
    assert dict(inflated.content["properties"]) == {"os": "linux", "cores": 2}


# ------------------------------------------------------------------ legacy layout (recorddict_compat)


def test_legacy_fit():
    handler = Handler(metrics={"name": "node-a", "ok": True})
    content = {"fitins.parameters": legacy_array_record([W, B]),
               "fitins.config": objects.ConfigRecord({"server_round": 4})}
    metadata, ins = instruction("train", content)
    assert (ins.layout, ins.call.method) == ("legacy", "fit")
    _, inflated = reply_content(metadata, answer(handler, ins))
    _, parameters, config = handler.calls[0]
    assert parameters[0].dtype == np.float32 and parameters[0].shape == (2, 3)  # from the .npy headers
    assert config == {"server_round": 4}
    reply = inflated.content
    assert set(reply) == {"fitres.parameters", "fitres.num_examples", "fitres.metrics", "fitres.status"}
    assert list(reply["fitres.parameters"]) == ["0", "1"]
    assert np.array_equal(reply["fitres.parameters"]["1"].to_numpy(), B + 1)
    assert dict(reply["fitres.num_examples"]) == {"num_examples": 12}
    assert isinstance(reply["fitres.metrics"], objects.ConfigRecord)
    assert dict(reply["fitres.metrics"]) == {"name": "node-a", "ok": True}  # a ConfigRecord holds every Scalar
    assert dict(reply["fitres.status"]) == {"code": 0, "message": "Success"}


def test_legacy_arrays_are_ordered_by_integer_key():
    arrays = [np.full(1, float(i)) for i in range(12)]
    record = legacy_array_record(arrays)
    shuffled = objects.ArrayRecord({key: record[key] for key in sorted(record)})  # "0", "1", "10", "11", "2"...
    _, ins = instruction("train", {"fitins.parameters": shuffled, "fitins.config": objects.ConfigRecord({})})
    assert [float(a[0]) for a in ins.call.parameters] == [float(i) for i in range(12)]


def test_legacy_evaluate():
    handler = Handler()
    content = {"evaluateins.parameters": legacy_array_record([W]),
               "evaluateins.config": objects.ConfigRecord({"server_round": 1})}
    metadata, ins = instruction("evaluate", content)
    _, inflated = reply_content(metadata, answer(handler, ins))
    reply = inflated.content
    assert dict(reply["evaluateres.loss"]) == {"loss": 0.25}
    assert dict(reply["evaluateres.num_examples"]) == {"num_examples": 7}
    assert dict(reply["evaluateres.metrics"]) == {"acc": 0.75}
    assert dict(reply["evaluateres.status"]) == {"code": 0, "message": "Success"}


def test_legacy_get_parameters_and_get_properties():
    handler = Handler()
    metadata, ins = instruction("get_parameters", {"getparametersins.config": objects.ConfigRecord({})})
    _, inflated = reply_content(metadata, answer(handler, ins))
    assert list(inflated.content["getparametersres.parameters"]) == ["0", "1"]
    assert dict(inflated.content["getparametersres.status"]) == {"code": 0, "message": "Success"}
    metadata, ins = instruction("get_properties", {"getpropertiesins.config": objects.ConfigRecord({"k": 1})})
    _, inflated = reply_content(metadata, answer(handler, ins))
    assert dict(inflated.content["getpropertiesres.properties"]) == {"os": "linux", "cores": 2}


def test_legacy_empty_parameters_travel_as_the_empty_marker():
    class NoArrays(Handler):
        def get_parameters(self, config):
            return []

    metadata, ins = instruction("get_parameters", {"getparametersins.config": objects.ConfigRecord({})})
    _, inflated = reply_content(metadata, answer(NoArrays(), ins))
    record = inflated.content["getparametersres.parameters"]
    assert list(record) == ["_empty"] and record["_empty"].data == b""


# ------------------------------------------------------------------ metrics a MetricRecord cannot hold


def test_metric_mapping(caplog):
    caplog.set_level(logging.WARNING, logger="fedproto.fleet_content")
    metrics = {"f": 0.5, "i": 3, "np_f": np.float32(0.25), "np_i": np.int64(4), "flag": True,
               "np_flag": np.bool_(False),
               "floats": [0.5, 1.5], "ints": [1, 2], "name": "a", "blob": b"\x00", "none": None,
               "mixed": [1, "x"], "num-examples": 999}
    values = metric_record(metrics, {"num-examples": 10})
    assert values == {"f": 0.5, "i": 3, "np_f": 0.25, "np_i": 4, "flag": 1, "np_flag": 0,
                      "floats": [0.5, 1.5], "ints": [1, 2], "num-examples": 10}
    assert all(type(values[key]) is int for key in ("i", "np_i", "flag", "np_flag", "num-examples"))
    warned = " ".join(record.getMessage() for record in caplog.records)
    for key in ("name", "blob", "none", "mixed", "num-examples"):
        assert repr(key) in warned


def test_replies_of_a_round_carry_identical_metric_keys_when_handlers_return_identical_keys():
    # Two nodes whose handlers return the same keys with different str values: the str metric is
    # dropped on both, so the ServerApp's consistency check sees the same MetricRecord keys.
    keys = []
    for name in ("node-a", "node-b"):
        handler = Handler(metrics={"acc": 0.5, "host": name, "converged": name == "node-a"})
        content = {"arrays": array_record({"w": W}), "config": objects.ConfigRecord({"server-round": 1})}
        metadata, ins = instruction("train", content)
        _, inflated = reply_content(metadata, answer(handler, ins))
        keys.append(list(inflated.content["metrics"]))
    assert keys[0] == keys[1] == ["acc", "converged", "num-examples"]


# ------------------------------------------------------------------ handler failures -> Message.error


class Raises(Handler):
    def fit(self, parameters, config):
        raise RuntimeError("out of memory")


class WrongShape(Handler):
    def fit(self, parameters, config):
        return [parameters[0]], 3, {}  # one array for two keys


class WrongKind(Handler):
    def evaluate(self, parameters, config):
        return "low", 3, {}


class Missing:
    def get_parameters(self, config):
        return []


TRAIN = {"arrays": array_record({"w": W, "b": B}), "config": objects.ConfigRecord({"server-round": 1})}
LEGACY_TRAIN = {"fitins.parameters": legacy_array_record([W]), "fitins.config": objects.ConfigRecord({})}


@pytest.mark.parametrize("handler, message_type, content, reason", [
    (Raises(), "train", TRAIN, "fit raised RuntimeError: out of memory"),
    (Raises(), "train", LEGACY_TRAIN, "fit raised RuntimeError: out of memory"),
    (WrongShape(), "train", TRAIN, "fit returned an invalid result: parameters: 1 arrays for the 2 received"),
    (WrongKind(), "evaluate", TRAIN, "evaluate returned an invalid result: loss: expected a float, got str"),
    (Missing(), "train", TRAIN, "Client does not implement `fit`"),
    (Handler(), "reboot", TRAIN, "unsupported message: message type 'reboot' is not train/evaluate/query; "
                                       "records: arrays (ArrayRecord), config (ConfigRecord)"),
    (Handler(), "train", {"config": objects.ConfigRecord({})},
     "unsupported message: 0 ArrayRecords, expected 1; records: config (ConfigRecord)"),
])
def test_handler_failures_become_message_error(handler, message_type, content, reason):
    metadata, ins = instruction(message_type, content)
    result = answer(handler, ins)
    deflated, inflated = reply_content(metadata, result)
    assert inflated.content is None
    assert (inflated.error.code, inflated.error.reason) == (CLIENT_APP_RAISED_EXCEPTION, reason)
    assert deflated.message.HasField("error") and not deflated.message.HasField("content")
    assert list(deflated.object_tree.children) == []  # an error message has no content objects


def test_instruction_objects_that_do_not_decode_raise_object_error():
    metadata = Metadata(run_id=9, src_node_id=SUPERLINK, dst_node_id=NODE_ID, message_type="train",
                        created_at=1_800_000_000.0, ttl=3600.0)
    deflated = objects.deflate_message(metadata, TRAIN)
    pulled = dict(deflated.objects)
    chunk_id = next(oid for oid, data in pulled.items() if data.startswith(b"ArrayChunk "))
    del pulled[chunk_id]
    with pytest.raises(objects.ObjectError):
        read_instruction(objects.inflate_message(deflated.object_tree, pulled))


# ------------------------------------------------------------------ reply metadata


def test_reply_metadata_is_what_flwrs_reply_to_sets():
    metadata, ins = instruction("train", TRAIN)
    now = metadata.created_at + 100.0
    deflated = build_reply(answer(Handler(), ins), metadata, NODE_ID, now)
    pushed = deflated.message.metadata
    assert pushed.message_id == deflated.message_id == deflated.object_tree.object_id
    assert (pushed.run_id, pushed.src_node_id, pushed.dst_node_id) == (9, NODE_ID, SUPERLINK)
    assert (pushed.reply_to_message_id, pushed.group_id, pushed.message_type) == (metadata.message_id, "3", "train")
    assert pushed.created_at == now
    assert pushed.ttl == pytest.approx(3600.0 - 100.0)  # what is left of the instruction's
    assert pushed.created_at + pushed.ttl == pytest.approx(metadata.created_at + metadata.ttl)
    assert deflated.message.HasField("content") and deflated.message.content.ByteSize() == 0  # objects only
