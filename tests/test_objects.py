"""fedproto.objects against flwr 1.42's own deflate()/inflate(), the golden vectors, and hostile trees.

Every vector of kit/fleet_vectors is built twice, with our types and with flwr's (Message,
RecordDict, ArrayRecord, Array, ConfigRecord, MetricRecord), and deflated by each side: ids,
object bytes, push order and ObjectTree must be equal. Then each side inflates the other's
objects. The hostile cases forge objects with correct hashes (the forge helpers below) so each
check is reached on its own, and a hypothesis test mutates real objects, re-hashed or not.
"""

from __future__ import annotations

import hashlib
import json
import tracemalloc

import numpy as np
import pytest
from flwr.app import Array as FlwrArray
from flwr.app import ArrayRecord as FlwrArrayRecord
from flwr.app import ConfigRecord as FlwrConfigRecord
from flwr.app import Error as FlwrError
from flwr.app import Metadata as FlwrMetadata
from flwr.app import MetricRecord as FlwrMetricRecord
from flwr.app import RecordDict as FlwrRecordDict
from flwr.app.message.message import make_message, remove_content_from_message
from flwr.common import FitIns, ndarrays_to_parameters
from flwr.common.serde import message_to_proto
from flwr.compat.common.recorddict_compat import fitins_to_recorddict
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects, get_object_tree
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedproto import objects
from fedproto.errors import FedprotoError
from fedproto.kit.make_fleet_vectors import DEFAULT_DIR, MANIFEST, MODEL, build_vectors, write_vectors
from fedproto.message_pb2 import Message, Metadata, ObjectTree
from fedproto.objects import (
    CHUNK_SIZE,
    Array,
    ArrayRecord,
    ConfigRecord,
    InflatedMessage,
    MetricRecord,
    ObjectError,
    check_object,
    deflate_message,
    inflate_message,
    object_id,
    tree_object_ids,
)
from fedproto.wire import MAX_MESSAGE_LENGTH

VECTORS = {vector.name: vector for vector in build_vectors()}
MANIFEST_DATA = json.loads((DEFAULT_DIR / MANIFEST).read_text(encoding="utf-8"))
SMALL = ["train_instruction", "train_reply", "error_reply", "legacy_fit_instruction"]


def deflated(name: str):
    vector = VECTORS[name]
    return deflate_message(vector.metadata, vector.content, vector.error)


# ---------------------------------------------------------------------------- flwr's side


def flwr_message(vector):
    md = vector.metadata
    metadata = FlwrMetadata(run_id=md.run_id, message_id="", src_node_id=md.src_node_id, dst_node_id=md.dst_node_id,
                            reply_to_message_id=md.reply_to_message_id, group_id=md.group_id,
                            created_at=md.created_at, ttl=md.ttl, message_type=md.message_type)
    if vector.error is not None:
        return make_message(metadata=metadata, error=FlwrError(code=vector.error.code, reason=vector.error.reason))
    shared: dict[int, FlwrArray] = {}  # the same Array object under two keys stays one object

    def record(value):
        if isinstance(value, ArrayRecord):
            arrays = {key: shared.setdefault(id(a), FlwrArray(a.dtype, a.shape, a.stype, a.data))
                      for key, a in value.items()}
            return FlwrArrayRecord(arrays)
        return (FlwrConfigRecord if isinstance(value, ConfigRecord) else FlwrMetricRecord)(dict(value))

    return make_message(metadata=metadata, content=FlwrRecordDict({k: record(v) for k, v in vector.content.items()}))


def flwr_deflate(message):
    """What flwr pushes: the id, {id: object} in push order, the ObjectTree (as bytes, its own proto class)."""
    nested = get_all_nested_objects(message)
    return message.object_id, {oid: obj.deflate() for oid, obj in nested.items()}, get_object_tree(message)


# ---------------------------------------------------------------------------- vectors


def test_generator_reproduces_the_committed_vectors(tmp_path):
    assert write_vectors(tmp_path) == MANIFEST_DATA
    committed = sorted(p.relative_to(DEFAULT_DIR) for p in DEFAULT_DIR.rglob("*.bin"))
    assert committed == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.bin"))
    for path in committed:
        assert (tmp_path / path).read_bytes() == (DEFAULT_DIR / path).read_bytes(), path


@pytest.mark.parametrize("name", list(VECTORS))
def test_our_deflate_equals_flwrs_byte_for_byte(name):
    ours = deflated(name)
    flwr_id, flwr_objects, flwr_tree = flwr_deflate(flwr_message(VECTORS[name]))
    assert ours.message_id == flwr_id
    assert list(ours.objects.items()) == list(flwr_objects.items())  # same bytes, same push order
    assert ours.object_tree.SerializeToString() == flwr_tree.SerializeToString()


@pytest.mark.parametrize("name", list(VECTORS))
def test_pushed_message_proto_equals_flwrs(name):
    """PushMessagesRequest.messages_list[0]: what flwr's SuperNode sends (metadata with the id, no content)."""
    ours = deflated(name)
    message = flwr_message(VECTORS[name])
    message.metadata.__dict__["_message_id"] = message.object_id  # as flwr's push_message does
    theirs = message_to_proto(remove_content_from_message(message))
    assert ours.message.SerializeToString(deterministic=True) == theirs.SerializeToString(deterministic=True)


@pytest.mark.parametrize("entry", MANIFEST_DATA["vectors"], ids=lambda e: e["name"])
def test_committed_objects_are_the_deflated_ones(entry):
    ours = deflated(entry["name"])
    assert entry["message_id"] == ours.message_id
    assert [o["object_id"] for o in entry["objects"]] == list(ours.objects)
    for listed in entry["objects"]:
        content = ours.objects[listed["object_id"]]
        assert (listed["type"], listed["size"]) == (check_object(listed["object_id"], content).type_name, len(content))
        if "file" in listed:
            assert (DEFAULT_DIR / listed["file"]).read_bytes() == content
        else:  # "bytes [start, end) of the .npy of <numpy expression>"
            span, _, expression = listed["recipe"].removeprefix("bytes [").partition(") of the .npy of ")
            start, end = (int(n) for n in span.split(", "))
            npy = Array.from_numpy(eval(expression, {"np": np})).data  # noqa: S307 - the committed manifest
            assert content == f"ArrayChunk  {end - start}".encode() + b"\x00" + npy[start:end]


def test_large_vectors_chunk_as_documented():
    large = deflated("large_array_two_chunks")
    chunks = [len(c) for c in large.objects.values() if c.startswith(b"ArrayChunk ")]
    assert chunks == [len(f"ArrayChunk  {CHUNK_SIZE}") + 1 + CHUNK_SIZE, len("ArrayChunk  757248") + 1 + 757248]
    zeros = deflated("zeros_repeated_chunk")
    (array,) = [c for c in zeros.objects.values() if c.startswith(b"Array ")]
    body = json.loads(array.partition(b"\x00")[2])
    assert body["arraychunk_ids"] == [0, 1, 1, 2]
    assert len(check_object(object_id(array), array).child_ids) == 3


def test_legacy_vector_is_what_flwrs_fitins_to_recorddict_sends():
    vector = VECTORS["legacy_fit_instruction"]
    config = dict(vector.content["fitins.config"])
    recorddict = fitins_to_recorddict(FitIns(ndarrays_to_parameters(list(MODEL.values())), config), keep_input=True)
    ours = deflated("legacy_fit_instruction")
    assert ours.object_tree.children[0].object_id == recorddict.object_id


@pytest.mark.parametrize("name", list(VECTORS))
def test_inflate_of_deflate_gives_the_message_back(name):
    vector, ours = VECTORS[name], deflated(name)
    assert tree_object_ids(ours.object_tree) == list(ours.objects)
    inflated = inflate_message(ours.object_tree, ours.objects)
    expected_metadata = Metadata()
    expected_metadata.CopyFrom(vector.metadata)
    expected_metadata.message_id = ours.message_id
    assert inflated == InflatedMessage(ours.message_id, expected_metadata, vector.content, vector.error)
    if vector.content is not None:
        assert [type(r) for r in inflated.content.values()] == [type(r) for r in vector.content.values()]


@pytest.mark.parametrize("name", list(VECTORS))
def test_we_inflate_flwrs_objects_and_flwr_inflates_ours(name):
    message = flwr_message(VECTORS[name])
    flwr_id, flwr_objects, flwr_tree = flwr_deflate(message)
    ours = inflate_message(ObjectTree.FromString(flwr_tree.SerializeToString()), flwr_objects)
    theirs = inflate_object_from_contents(flwr_id, dict(deflated(name).objects), keep_object_contents=True)
    assert theirs.metadata.run_id == ours.metadata.run_id == message.metadata.run_id
    if message.has_error():
        assert (ours.error.code, ours.error.reason) == (message.error.code, message.error.reason)
        assert theirs.error.code == message.error.code
        return
    for record_name, record in message.content.items():
        if isinstance(record, FlwrArrayRecord):
            for key, array in record.items():
                # legacy arrays carry no dtype/shape: flwr's numpy() and ours both read the .npy header
                np.testing.assert_array_equal(ours.content[record_name][key].to_numpy(), array.numpy())
                np.testing.assert_array_equal(theirs.content[record_name][key].numpy(), array.numpy())
        else:
            assert dict(ours.content[record_name]) == dict(record) == dict(theirs.content[record_name])


def test_manifest_content_matches_what_inflates():
    for entry in MANIFEST_DATA["vectors"]:
        if entry["content"] is None:
            continue
        ours = deflated(entry["name"])
        inflated = inflate_message(ours.object_tree, ours.objects).content
        for record_name, record in entry["content"].items():
            if record["type"] == "ArrayRecord":
                for key, described in record["arrays"].items():
                    array = inflated[record_name][key]
                    assert [array.dtype, list(array.shape), array.stype] == [
                        described[k] for k in ("dtype", "shape", "stype")]
                    tensor = described.get("tensor")
                    if tensor is not None:
                        want = np.array(tensor["values"], dtype=tensor["dtype"]).reshape(tensor["shape"])
                        np.testing.assert_array_equal(array.to_numpy(), want)
                        assert array.to_numpy().dtype == want.dtype
            else:
                assert list(record["values"]) == list(inflated[record_name])


# ---------------------------------------------------------------------------- deflate inputs


def test_values_travel_as_flwr_sends_them():
    record = ConfigRecord({"b": True, "i": -3, "u": 2**64 - 1, "f": 0.5, "s": "é", "y": b"\x00", "li": [1, 2**63],
                           "lb": [True], "e": []})
    metric = MetricRecord({"n": 7, "x": 1.5, "l": [1.0], "e": []})
    ours = deflate_message(Metadata(run_id=1, message_type="query"), {"c": record, "m": metric})
    theirs = flwr_deflate(make_message(
        metadata=FlwrMetadata(1, "", 0, 0, "", "", 0.0, 0.0, "query"),
        content=FlwrRecordDict({"c": FlwrConfigRecord(dict(record)), "m": FlwrMetricRecord(dict(metric))})))
    assert list(ours.objects.items()) == list(theirs[1].items())
    assert inflate_message(ours.object_tree, ours.objects).content == {"c": record, "m": metric}


@pytest.mark.parametrize("content, where", [
    ({"m": MetricRecord({"s": "text"})}, "content['m']['s']"),
    ({"m": MetricRecord({"flag": True})}, "content['m']['flag']"),
    ({"c": ConfigRecord({"x": [1, "a"]})}, "content['c']['x']"),
    ({"c": ConfigRecord({"x": -(2**63) - 1})}, "content['c']['x']"),
    ({"c": {"x": 1}}, "content['c']"),
    ({"a": ArrayRecord({"w": np.zeros(2)})}, "content['a']['w']"),
    ({1: ConfigRecord({})}, "content"),
])
def test_values_that_cannot_travel_are_codec_errors(content, where):
    with pytest.raises(objects.CodecError) as caught:
        deflate_message(Metadata(), content)
    assert caught.value.field == where


def test_content_xor_error():
    with pytest.raises(ValueError, match="exactly one"):
        deflate_message(Metadata())


# ---------------------------------------------------------------------------- hostile trees


def seal(store: dict[str, bytes], content: bytes, children: list[ObjectTree] = ()) -> ObjectTree:
    """Store one forged object under its true id, with the tree node that lists ``children``."""
    oid = object_id(content)
    store[oid] = content
    return ObjectTree(object_id=oid, children=list(children))


def obj(type_name: str, children: list[ObjectTree], body: bytes, length: int | None = None) -> bytes:
    head = f"{type_name} {','.join(c.object_id for c in children)} {len(body) if length is None else length}"
    return head.encode() + b"\x00" + body


def message_around(store, record_dict: ObjectTree) -> ObjectTree:
    body = Message(metadata=Metadata(run_id=1, message_type="train")).SerializeToString(deterministic=True)
    return seal(store, obj("Message", [record_dict], body), [record_dict])


def record_dict_around(store, records: dict[str, ObjectTree]) -> ObjectTree:
    unique = list({t.object_id: t for t in records.values()}.values())
    body = json.dumps({k: t.object_id for k, t in records.items()}).encode()
    return seal(store, obj("RecordDict", unique, body), unique)


def array_message(array_body: dict | bytes, chunks: list[bytes], store=None):
    """A Message -> RecordDict -> ArrayRecord -> Array(array_body) -> chunks, all hashes right."""
    store = {} if store is None else store
    chunk_trees = list({t.object_id: t for t in (seal(store, obj("ArrayChunk", [], c)) for c in chunks)}.values())
    body = array_body if isinstance(array_body, bytes) else json.dumps(array_body).encode()
    array = seal(store, obj("Array", chunk_trees, body), chunk_trees)
    record = seal(store, obj("ArrayRecord", [array], json.dumps({"w": array.object_id}).encode()), [array])
    return message_around(store, record_dict_around(store, {"arrays": record})), store


NPY = Array.from_numpy(np.arange(4, dtype="<f4")).data


def array_meta(ids, dtype="float32", shape=(4,), stype="numpy.ndarray"):
    return {"dtype": dtype, "shape": list(shape), "stype": stype, "arraychunk_ids": ids}


def raises(tree, store, reason_part: str) -> ObjectError:
    with pytest.raises(ObjectError) as caught:
        inflate_message(tree, store)
    assert reason_part in caught.value.reason, caught.value.reason
    assert isinstance(caught.value, FedprotoError)
    return caught.value


def test_a_forged_valid_array_message_inflates():
    """The forge helpers build what flwr builds, so each hostile case below differs in one thing."""
    tree, store = array_message(array_meta([0, 1]), [NPY[:50], NPY[50:]])
    np.testing.assert_array_equal(inflate_message(tree, store).content["arrays"]["w"].to_numpy(), np.arange(4))


def test_wrong_hash():
    ours = deflated("train_instruction")
    tampered = dict(ours.objects)
    tampered[ours.message_id] = tampered[ours.message_id].replace(b"train", b"tra1n")
    error = raises(ours.object_tree, tampered, "content hashes to")
    assert error.object_id == ours.message_id


@pytest.mark.parametrize("content, reason", [
    (b"Message  5\x00abc", "header says the body has 5 bytes, it has 3"),
    (b"Message  1\x00abc", "header says the body has 1 bytes, it has 3"),
    (b"Message  3abc", "no NUL byte"),
    (b"Message 3\x00abc", "2 space-separated fields"),
    (b"Message   3\x00abc", "4 space-separated fields"),
    (b"Messag\xc3\xa9  3\x00abc", "not ASCII"),
    (b"Message  +3\x00abc", "not a decimal number"),
    (b"Message  03\x00abc", "not a decimal number"),
    (b"Message  " + b"9" * 5000 + b"\x00abc", "not a decimal number"),
    (b"Message xyz 3\x00abc", "not an object id"),
    (b"Pickle  3\x00abc", "unknown object type 'Pickle'"),
])
def test_malformed_or_lying_headers(content, reason):
    store = {}
    tree = seal(store, content)
    raises(tree, store, reason)


def test_header_lists_a_child_twice():
    store = {}
    chunk = seal(store, obj("ArrayChunk", [], NPY))
    tree = seal(store, obj("Array", [chunk, chunk], b"{}"), [chunk, chunk])
    with pytest.raises(ObjectError, match="lists a child twice"):
        check_object(tree.object_id, store[tree.object_id])


def test_cycle_in_the_tree():
    ours = deflated("train_instruction")
    cyclic = ObjectTree()
    cyclic.CopyFrom(ours.object_tree)
    cyclic.children[0].children.add().CopyFrom(ObjectTree(object_id=ours.message_id))
    raises(cyclic, ours.objects, "cycle")


def test_tree_deeper_than_any_message():
    tree = node = ObjectTree(object_id="a" * 64)
    for depth in range(6):
        node = node.children.add(object_id=f"{depth:064x}")
    raises(tree, {}, "deeper than 5 levels")


def test_missing_child():
    ours = deflated("train_reply")
    chunk_id = next(oid for oid, c in ours.objects.items() if c.startswith(b"ArrayChunk"))
    partial = {oid: c for oid, c in ours.objects.items() if oid != chunk_id}
    assert raises(ours.object_tree, partial, "missing").object_id == chunk_id


def test_tree_that_is_not_the_objects_structure():
    ours = deflated("train_instruction")
    reordered = ObjectTree()
    reordered.CopyFrom(ours.object_tree)
    records = reordered.children[0].children
    first, second = ObjectTree(), ObjectTree()
    first.CopyFrom(records[0])
    second.CopyFrom(records[1])
    del records[:]
    records.extend([second, first])
    raises(reordered, ours.objects, "object tree lists children")


def test_body_names_a_child_the_header_does_not_list():
    store = {}
    config = seal(store, obj("ConfigRecord", [], b""))
    other = seal(store, obj("MetricRecord", [], b""))
    body = json.dumps({"c": config.object_id, "m": other.object_id}).encode()
    record_dict = seal(store, obj("RecordDict", [config], body), [config])
    raises(message_around(store, record_dict), store, f"body names child {other.object_id}")


def test_header_lists_a_child_the_body_does_not_name():
    store = {}
    config = seal(store, obj("ConfigRecord", [], b""))
    other = seal(store, obj("MetricRecord", [], b""))
    body = json.dumps({"c": config.object_id}).encode()
    record_dict = seal(store, obj("RecordDict", [config, other], body), [config, other])
    raises(message_around(store, record_dict), store, f"header lists child {other.object_id}")


def test_chunk_index_out_of_range():
    tree, store = array_message(array_meta([0, 1]), [NPY])
    raises(tree, store, "chunk index 1 is out of range (the header lists 1 chunks)")


def test_chunk_never_used():
    tree, store = array_message(array_meta([0]), [NPY, b"unused"])
    raises(tree, store, "never uses")


@pytest.mark.parametrize("chunks, reason", [
    ([NPY[:-4]], "truncated .npy data"),
    ([NPY[:60]], "bad .npy header"),
    ([NPY, b"\x00"], "unexpected bytes after the .npy data"),
    ([b"not an npy file"], "not a .npy tensor"),
    ([NPY.replace(b"'<f4'", b"'|O8'")], "object arrays are not accepted"),
])
def test_chunks_that_are_not_one_valid_npy(chunks, reason):
    tree, store = array_message(array_meta(list(range(len(chunks)))), chunks)
    assert "chunks do not form one valid .npy" in raises(tree, store, reason).reason


@pytest.mark.parametrize("meta, reason", [
    (array_meta([0], dtype="float64"), "metadata says float64 (4,), the .npy holds float32 (4,)"),
    (array_meta([0], shape=(2, 2)), "metadata says float32 (2, 2)"),
    (array_meta([0], stype="torch.Tensor"), "stype 'torch.Tensor' is not supported"),
])
def test_array_metadata_that_contradicts_its_data(meta, reason):
    tree, store = array_message(meta, [NPY])
    raises(tree, store, reason)


def test_legacy_array_without_dtype_and_shape_reads_the_npy_header():
    tree, store = array_message(array_meta([0], dtype="", shape=()), [NPY])
    array = inflate_message(tree, store).content["arrays"]["w"]
    assert (array.dtype, array.shape) == ("", ())
    np.testing.assert_array_equal(array.to_numpy(), np.arange(4, dtype="<f4"))


def test_legacy_empty_marker_has_no_data():
    tree, store = array_message(array_meta([], dtype="", shape=()), [])
    assert inflate_message(tree, store).content["arrays"]["w"].data == b""
    tree, store = array_message(array_meta([]), [])
    raises(tree, store, "no data for a float32 (4,) array")


@pytest.mark.parametrize("body, reason", [
    (b"[1, 2]", "exactly the keys"),
    (json.dumps({"dtype": "float32", "shape": [4], "stype": "numpy.ndarray"}).encode(), "exactly the keys"),
    (json.dumps({**array_meta([0]), "extra": 1}).encode(), "exactly the keys"),
    (json.dumps(array_meta([0], shape=(-4,))).encode(), "shape is a list of non-negative ints"),
    (json.dumps({**array_meta([0]), "shape": [True]}).encode(), "shape is a list of non-negative ints"),
    (json.dumps({**array_meta([0]), "arraychunk_ids": "0"}).encode(), "arraychunk_ids is a list of ints"),
    (json.dumps({**array_meta([0]), "dtype": 4}).encode(), "dtype and stype are strings"),
    (b'{"dtype": "a", "dtype": "b"}', "a key appears twice"),
    (b"[" * 100_000 + b"]" * 100_000, "body is not JSON (RecursionError"),
    (b"\xff\xfe", "body is not JSON (UnicodeDecodeError"),
    (b"{", "body is not JSON (JSONDecodeError"),
])
def test_array_json_of_the_wrong_shape(body, reason):
    tree, store = array_message(body, [NPY])
    raises(tree, store, reason)


@pytest.mark.parametrize("body, reason", [
    (b'["a"]', "a RecordDict body is a JSON object of name: child id"),
    (b'{"c": "not-an-id"}', "a RecordDict body is a JSON object of name: child id"),
    (b'{"c": 5}', "a RecordDict body is a JSON object of name: child id"),
])
def test_record_dict_json_of_the_wrong_shape(body, reason):
    store = {}
    config = seal(store, obj("ConfigRecord", [], b""))
    record_dict = seal(store, obj("RecordDict", [config], body), [config])
    raises(message_around(store, record_dict), store, reason)


def test_an_object_of_the_wrong_type_where_it_sits():
    store = {}
    chunk = seal(store, obj("ArrayChunk", [], NPY))
    record_dict = record_dict_around(store, {"arrays": chunk})
    raises(message_around(store, record_dict), store, "a ArrayChunk where a record of a RecordDict belongs")
    raises(record_dict, store, "a RecordDict where the Message (the tree's root) belongs")


@pytest.mark.parametrize("proto, children, reason", [
    (Message(metadata=Metadata(message_id="x" * 64)), 1, "metadata.message_id is set"),
    (Message(metadata=Metadata(), error=objects.Error(code=2)), 1, "a Message with an error has no children"),
    (Message(metadata=Metadata()), 0, "a Message without error has one child"),
])
def test_message_objects_that_flwr_never_builds(proto, children, reason):
    store = {}
    record_dict = record_dict_around(store, {})
    kids = [record_dict][:children]
    tree = seal(store, obj("Message", kids, proto.SerializeToString()), kids)
    raises(tree, store, reason)


def test_message_body_that_is_not_a_proto():
    store = {}
    tree = seal(store, obj("Message", [], b"\xff\xff\xff"))
    raises(tree, store, "body is not a Message proto")


def test_config_record_without_a_value_or_with_a_key_twice():
    from fedproto import recorddict_pb2

    for items, reason in [
        ([recorddict_pb2.ConfigRecord.Item(key="k")], "key 'k' has no value"),
        ([recorddict_pb2.ConfigRecord.Item(key="k", value=recorddict_pb2.ConfigRecordValue(bool=True))] * 2,
         "a key appears twice"),
    ]:
        store = {}
        config = seal(store, obj("ConfigRecord", [], recorddict_pb2.ConfigRecord(items=items).SerializeToString()))
        raises(message_around(store, record_dict_around(store, {"c": config})), store, reason)


def test_objects_above_the_message_limit(monkeypatch):
    ours = deflated("train_instruction")
    monkeypatch.setattr(objects, "MAX_MESSAGE_LENGTH", sum(map(len, ours.objects.values())) - 1)
    raises(ours.object_tree, ours.objects, "the message's objects exceed")


def test_a_repeated_chunk_index_cannot_inflate_beyond_the_limit():
    """110 references to one 5 MiB chunk would be 550 MiB: refused before any of it is allocated."""
    chunk = bytes(CHUNK_SIZE)
    repeats = MAX_MESSAGE_LENGTH // CHUNK_SIZE + 10
    tree, store = array_message(array_meta([0] * repeats), [chunk])
    tracemalloc.start()
    try:
        raises(tree, store, "would inflate to more than")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * CHUNK_SIZE


def test_check_object_refuses_a_bad_id():
    with pytest.raises(ObjectError, match="not an object id"):
        check_object("ABC", b"Message  0\x00")
    with pytest.raises(ObjectError, match="not an object id"):
        check_object(object_id(b"x").upper(), b"x")


# ---------------------------------------------------------------------------- mutations


def reseal(tree: ObjectTree, store: dict[str, bytes], target: str, mutate) -> tuple[ObjectTree, dict[str, bytes]]:
    """Apply ``mutate`` to the object ``target`` and re-hash it and every ancestor (ids replaced in
    headers and JSON bodies), so the mutation reaches the checks behind the hash check."""
    out: dict[str, bytes] = {}

    def walk(node: ObjectTree) -> ObjectTree:
        children = [walk(child) for child in node.children]
        content = store[node.object_id]
        if node.object_id == target:
            content = mutate(content)
        for old, new in zip(node.children, children):
            content = content.replace(old.object_id.encode(), new.object_id.encode())
        new_id = hashlib.sha256(content).hexdigest()
        out[new_id] = content
        return ObjectTree(object_id=new_id, children=children)

    return walk(tree), out


@st.composite
def mutation(draw):
    name = draw(st.sampled_from(SMALL))
    ours = deflated(name)
    target = draw(st.sampled_from(list(ours.objects)))
    size = len(ours.objects[target])
    position = draw(st.integers(0, size))
    kind = draw(st.sampled_from(["replace", "insert", "delete", "truncate"]))
    data = draw(st.binary(min_size=1, max_size=8))

    def mutate(content: bytes) -> bytes:
        if kind == "replace":
            return content[:position] + data + content[position + len(data):]
        if kind == "insert":
            return content[:position] + data + content[position:]
        if kind == "delete":
            return content[:position] + content[position + len(data):]
        return content[:position]

    return ours, target, mutate, draw(st.booleans())


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutation())
def test_mutated_objects_decode_or_raise_a_fedproto_error(case):
    ours, target, mutate, resealed = case
    if resealed:
        tree, store = reseal(ours.object_tree, ours.objects, target, mutate)
    else:
        tree, store = ours.object_tree, {**ours.objects, target: mutate(ours.objects[target])}
    try:
        inflated = inflate_message(tree, store)
    except FedprotoError:
        return
    assert isinstance(inflated, InflatedMessage)
    for record in (inflated.content or {}).values():
        for array in (record.values() if isinstance(record, ArrayRecord) else ()):
            try:
                array.to_numpy()
            except FedprotoError:
                pass
