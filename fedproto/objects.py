"""A Fleet API Message <-> its content-addressed object tree, byte-identical to flwr 1.42's.

Sans-IO: bytes and protobuf messages in, bytes and protobuf messages out. The node's transport
pulls and pushes the objects; this module only builds and checks them.

The format (docs/PROTOCOL.md §16 has it byte by byte, each claim tied to a test or vector):

- An **object** is ``b"<TypeName> <child ids joined by ','> <len(body)>" + b"\\x00" + body``;
  its **id** is ``sha256(object).hexdigest()`` (64 lowercase hex digits).
- ``Message``: body = the ``flwr.proto.Message`` proto with ``metadata.message_id = ""``, no
  content, and the error if there is one, serialized deterministically. Its one child is the
  RecordDict when there is content; a message with an error has no child. The message id is
  the Message object's id.
- ``RecordDict`` / ``ArrayRecord``: body = ``json.dumps({name: child_id, ...})`` (Python's
  default separators ``", "`` and ``": "``, ASCII escapes); children = the distinct child ids in
  first-seen order.
- ``Array``: body = ``json.dumps({"dtype": ..., "shape": [...], "stype": ..., "arraychunk_ids":
  [i, ...]})``; children = the distinct chunk ids in first-seen order, and ``arraychunk_ids``
  indexes into that list once per chunk, in data order (so a run of equal chunks repeats an index).
- ``ArrayChunk``: body = one slice of the array's data (the .npy bytes of the tensor), cut every
  :data:`CHUNK_SIZE` bytes (5 MiB); no children.
- ``ConfigRecord`` / ``MetricRecord``: body = the ``flwr.proto.ConfigRecord`` /
  ``MetricRecord`` proto (repeated ``Item{key, value}``, in insertion order); no children.
- The objects are pushed children first (post-order, each distinct id once); the ObjectTree
  lists each object's distinct children in header order, recursively.

Python-side types (no flwr needed):

- :class:`Array` ``(dtype, shape, stype, data)``: ``data`` is the .npy file of the tensor.
  :meth:`Array.from_numpy` builds one as flwr does; :meth:`Array.to_numpy` decodes through
  :func:`fedproto.codec.bytes_to_ndarray`, which takes dtype and shape from the .npy header
  (flwr's legacy layout sends ``dtype=""`` and ``shape=()`` in the Array metadata).
- :class:`ArrayRecord` (a ``dict[str, Array]``), :class:`ConfigRecord` (a ``dict`` of bool, int,
  float, str, bytes or a list of one of them) and :class:`MetricRecord` (a ``dict`` of int, float
  or a list of one of them): plain ``dict`` subclasses, in insertion order. A RecordDict is a
  plain ``dict[str, ArrayRecord | ConfigRecord | MetricRecord]``. Values cross the wire as flwr
  sends them: ``bool`` -> bool, ``int`` -> sint64 (uint64 above 2**63 - 1), ``float`` -> double;
  a list takes the first kind all its items fit, so an empty ConfigRecord list travels as a
  bool list and an empty MetricRecord list as a double list (both come back as ``[]``).

Functions:

- :func:`deflate_message` (metadata, content or error) -> :class:`DeflatedMessage`: the message
  id, the ``Message`` proto for ``PushMessagesRequest.messages_list`` (metadata with the id,
  an empty RecordDict or the error), the ObjectTree, and ``objects`` (id -> bytes, in push order).
- :func:`tree_object_ids` (ObjectTree) -> the ids to PullObject, children first, each once.
- :func:`check_object` (id, bytes) -> :class:`ObjectHeader`: one pulled object's hash and header.
- :func:`inflate_message` (ObjectTree, objects) -> :class:`InflatedMessage`: metadata (its
  ``message_id`` set to the root id, as flwr's ClientApp does), content or error.
- :func:`object_id` (bytes) -> the id.

Whatever a peer sends, inflating either succeeds or raises :class:`ObjectError` naming the object
and the reason: wrong hash, malformed or lying header, unknown type, an object of the wrong type
where it sits, a tree that is not the objects' own structure (missing, extra or reordered
children, cycles, more than :data:`MAX_TREE_DEPTH` levels), a missing object, body JSON or protos
of the wrong shape, a chunk index out of range, a chunk never used, chunks that do not form one
valid .npy, Array metadata that contradicts its .npy header, and more than
:data:`~fedproto.wire.MAX_MESSAGE_LENGTH` bytes of objects or of inflated array data (checked
before anything that size is allocated). Building a message from values that cannot cross the
wire raises :class:`~fedproto.codec.CodecError` naming the record and key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple, TypeVar

import numpy as np
from google.protobuf.message import Message as ProtoMessage

from fedproto import recorddict_pb2
from fedproto.error_pb2 import Error
from fedproto.errors import CodecError, FedprotoError
from fedproto.message_pb2 import Message, Metadata, ObjectTree
from fedproto.npy import TENSOR_TYPE, bytes_to_ndarray, ndarray_to_bytes
from fedproto.text import bound_text
from fedproto.wire import MAX_MESSAGE_LENGTH

CHUNK_SIZE = 5 * 1024 * 1024  # flwr's FLWR_PRIVATE_MAX_ARRAY_CHUNK_SIZE default (common/constant.py)
HEAD_BODY_DIVIDER = b"\x00"
# Message -> RecordDict -> ArrayRecord -> Array -> ArrayChunk: no valid tree is deeper.
MAX_TREE_DEPTH = 5

TYPE_NAMES = frozenset(
    {"Message", "RecordDict", "ArrayRecord", "Array", "ArrayChunk", "ConfigRecord", "MetricRecord"}
)
RECORD_TYPE_NAMES = frozenset({"ArrayRecord", "ConfigRecord", "MetricRecord"})
ARRAY_KEYS = ("dtype", "shape", "stype", "arraychunk_ids")  # flwr's order in the Array body

_OBJECT_ID = re.compile(r"[0-9a-f]{64}")
_BODY_LENGTH = re.compile(r"0|[1-9][0-9]{0,18}")  # decimal, no sign or padding; < 10**19
_INT64_MAX = 2**63 - 1


class ObjectError(FedprotoError, ValueError):
    """An object or object tree that cannot be a flwr Message; names the object and why."""

    def __init__(self, object_id: str, reason: str) -> None:
        super().__init__(f"object {bound_text(object_id, 80)}: {reason}")
        self.object_id = object_id
        self.reason = reason


# ------------------------------------------------------------------------------ records


@dataclass(frozen=True)
class Array:
    """One tensor as a RecordDict carries it: ``data`` is a complete .npy file."""

    dtype: str
    shape: tuple[int, ...]
    stype: str
    data: bytes = dataclasses.field(repr=False)
    # The read-only view of ``data`` that inflating decoded while checking it: its .npy header
    # is parsed once, and to_numpy() hands out this view.
    decoded: np.ndarray | None = dataclasses.field(default=None, repr=False, compare=False)

    @classmethod
    def from_numpy(cls, ndarray: np.ndarray, field: str = "array") -> Array:
        """As flwr's ``Array(ndarray)``: ``str(dtype)``, the shape, ``"numpy.ndarray"``, .npy bytes."""
        data = ndarray_to_bytes(ndarray, field)  # refuses what our decoder would refuse
        return cls(str(ndarray.dtype), tuple(int(size) for size in ndarray.shape), TENSOR_TYPE, data)

    def to_numpy(self, field: str = "array") -> np.ndarray:
        """The tensor; dtype and shape come from the .npy header (a CodecError names ``field``)."""
        if self.decoded is not None:
            return self.decoded
        if self.stype != TENSOR_TYPE:
            raise CodecError(field, f"stype {bound_text(self.stype)!r} is not {TENSOR_TYPE!r}")
        return bytes_to_ndarray(self.data, field)


class ArrayRecord(dict[str, "Array"]):
    """``dict[str, Array]``, in insertion order (flwr's ArrayRecord)."""


class ConfigRecord(dict[str, Any]):
    """``dict[str, bool | int | float | str | bytes | list of one of them]`` (flwr's ConfigRecord)."""


class MetricRecord(dict[str, Any]):
    """``dict[str, int | float | list[int] | list[float]]`` (flwr's MetricRecord)."""


Record = ArrayRecord | ConfigRecord | MetricRecord
RecordDict = dict[str, Record]

# flwr's common/serde_utils.py: the proto field of each Python kind, tried in this order (bool
# first, since bool is an int); an int above 2**63 - 1 goes as uint64, a list of them as UintList.
_CONFIG_KINDS = (bool, int, float, str, bytes)
_METRIC_KINDS = (float, int)
_SCALAR_FIELDS = {float: "double", int: "sint64", bool: "bool", str: "string", bytes: "bytes"}
_LIST_FIELDS = {
    float: (recorddict_pb2.DoubleList, "double_list"),
    int: (recorddict_pb2.SintList, "sint_list"),
    bool: (recorddict_pb2.BoolList, "bool_list"),
    str: (recorddict_pb2.StringList, "string_list"),
    bytes: (recorddict_pb2.BytesList, "bytes_list"),
}


RecordValue = recorddict_pb2.ConfigRecordValue | recorddict_pb2.MetricRecordValue
ProtoT = TypeVar("ProtoT", bound=ProtoMessage)


def _record_value(value: Any, kinds: tuple[type, ...], value_class: type[RecordValue], where: str) -> RecordValue:
    """flwr's ``_record_value_to_proto``: the first kind the value (or every list item) is."""
    if value_class is recorddict_pb2.MetricRecordValue and (
        isinstance(value, bool) or (isinstance(value, list) and any(isinstance(v, bool) for v in value))
    ):
        raise CodecError(where, "bool is not a MetricRecord value (int or float)")
    try:
        for kind in kinds:
            if isinstance(value, kind):
                big = isinstance(value, int) and value > _INT64_MAX
                fields: dict[str, Any] = {"uint64" if big else _SCALAR_FIELDS[kind]: value}
                return value_class(**fields)
            if isinstance(value, list) and all(isinstance(item, kind) for item in value):
                list_class, name = _LIST_FIELDS[kind]
                if kind is int and any(item > _INT64_MAX for item in value):
                    list_class, name = recorddict_pb2.UintList, "uint_list"
                list_fields: dict[str, Any] = {name: list_class(vals=value)}
                return value_class(**list_fields)
    except ValueError as error:  # protobuf: an int outside sint64/uint64
        raise CodecError(where, f"out of range ({error})") from None
    kind_names = ", ".join(kind.__name__ for kind in kinds)
    raise CodecError(where, f"{type(value).__name__} is not a value of this record ({kind_names}, or a list)")


# ------------------------------------------------------------------------------ deflate


class DeflatedMessage(NamedTuple):
    """What replying takes: PushMessages(message, object_tree), then PushObject each asked id."""

    message_id: str
    message: Message  # for PushMessagesRequest.messages_list: metadata with the id, no content
    object_tree: ObjectTree
    objects: dict[str, bytes]  # id -> object, children before parents (flwr's push order)


def object_id(data: bytes) -> str:
    """An object's id: the SHA-256 hex digest of all its bytes, header included."""
    return hashlib.sha256(data).hexdigest()


def _object_bytes(type_name: str, child_ids: list[str], body: bytes | memoryview) -> bytes:
    head = f"{type_name} {','.join(child_ids)} {len(body)}".encode("ascii")
    return b"".join((head, HEAD_BODY_DIVIDER, body))


class _Deflater:
    """Builds objects children first; ``objects`` keeps each id once, at its first position."""

    def __init__(self) -> None:
        self.objects: dict[str, bytes] = {}
        self.array_trees: dict[int, ObjectTree] = {}  # id(Array) -> tree: hash a shared Array once

    def store(self, type_name: str, children: list[ObjectTree], body: bytes | memoryview) -> ObjectTree:
        content = _object_bytes(type_name, [child.object_id for child in children], body)
        oid = object_id(content)
        self.objects.setdefault(oid, content)
        return ObjectTree(object_id=oid, children=children)

    def mapping(self, type_name: str, refs_of: Mapping[str, ObjectTree]) -> ObjectTree:
        unique: dict[str, ObjectTree] = {}
        for tree in refs_of.values():
            unique.setdefault(tree.object_id, tree)
        body = json.dumps({name: tree.object_id for name, tree in refs_of.items()}).encode("utf-8")
        return self.store(type_name, list(unique.values()), body)

    def array(self, array: Array, where: str) -> ObjectTree:
        if not isinstance(array, Array):
            raise CodecError(where, f"expected a fedproto.objects.Array, got {type(array).__name__}")
        if id(array) in self.array_trees:
            return self.array_trees[id(array)]
        view = memoryview(array.data)
        chunks: dict[str, ObjectTree] = {}  # distinct chunks, first-seen order
        positions: dict[str, int] = {}
        indices = []  # one per slice of the data: its chunk's position among the distinct ones
        for start in range(0, len(view), CHUNK_SIZE):
            tree = self.store("ArrayChunk", [], view[start : start + CHUNK_SIZE])
            chunks.setdefault(tree.object_id, tree)
            indices.append(positions.setdefault(tree.object_id, len(positions)))
        body = json.dumps(
            {"dtype": array.dtype, "shape": list(array.shape), "stype": array.stype, "arraychunk_ids": indices}
        ).encode("utf-8")
        tree = self.store("Array", list(chunks.values()), body)
        self.array_trees[id(array)] = tree
        return tree

    def record(self, record: Record, where: str) -> ObjectTree:
        if isinstance(record, ArrayRecord):
            trees = {_key(name, where): self.array(array, f"{where}[{name!r}]") for name, array in record.items()}
            return self.mapping("ArrayRecord", trees)
        body: bytes
        if isinstance(record, ConfigRecord):
            body = recorddict_pb2.ConfigRecord(items=[
                recorddict_pb2.ConfigRecord.Item(key=key, value=value)  # type: ignore[arg-type]
                for key, value in _record_items(record, where)
            ]).SerializeToString()
            return self.store("ConfigRecord", [], body)
        if isinstance(record, MetricRecord):
            body = recorddict_pb2.MetricRecord(items=[
                recorddict_pb2.MetricRecord.Item(key=key, value=value)  # type: ignore[arg-type]
                for key, value in _record_items(record, where)
            ]).SerializeToString()
            return self.store("MetricRecord", [], body)
        raise CodecError(where, f"expected ArrayRecord, ConfigRecord or MetricRecord, got {type(record).__name__}")


def check_record(record: ConfigRecord | MetricRecord, where: str) -> None:
    """CodecError naming ``where[key]`` for the first value this record cannot carry."""
    _record_items(record, where)


def _record_items(record: ConfigRecord | MetricRecord, where: str) -> list[tuple[str, RecordValue]]:
    """The record's (key, proto value) pairs, in order; CodecError naming ``where[key]``."""
    kinds: tuple[type, ...] = _CONFIG_KINDS
    value_class: type[RecordValue] = recorddict_pb2.ConfigRecordValue
    if isinstance(record, MetricRecord):
        kinds, value_class = _METRIC_KINDS, recorddict_pb2.MetricRecordValue
    return [(_key(key, where), _record_value(value, kinds, value_class, f"{where}[{key!r}]"))
            for key, value in record.items()]


def _key(key: object, where: str) -> str:
    if not isinstance(key, str):
        raise CodecError(where, f"keys are str, got {type(key).__name__}")
    return key


class DeflatedContent(NamedTuple):
    """A message's RecordDict as objects: its tree and its objects (id -> bytes, push order)."""

    tree: ObjectTree
    objects: dict[str, bytes]


def deflate_content(content: RecordDict) -> DeflatedContent:
    """The RecordDict of a message -> its objects; the heavy part of :func:`deflate_message`."""
    if not isinstance(content, Mapping):
        raise CodecError("content", f"expected a dict of records, got {type(content).__name__}")
    deflater = _Deflater()
    records = {
        _key(name, "content"): deflater.record(record, f"content[{name!r}]") for name, record in content.items()
    }
    return DeflatedContent(deflater.mapping("RecordDict", records), deflater.objects)


def deflate_message(
    metadata: Metadata, content: RecordDict | DeflatedContent | None = None, error: Error | None = None
) -> DeflatedMessage:
    """A message -> its id, the proto for PushMessages, its ObjectTree and objects (flwr's deflate()).

    ``metadata.message_id`` is ignored (the id is computed); exactly one of ``content`` (a
    RecordDict, or one :func:`deflate_content` made) and ``error`` is given.
    """
    if (content is None) == (error is None):
        raise ValueError("a message carries either content or an error, exactly one")
    deflater = _Deflater()
    children = []
    if content is not None:
        deflated = content if isinstance(content, DeflatedContent) else deflate_content(content)
        deflater.objects.update(deflated.objects)
        children = [deflated.tree]
    body_metadata = Metadata()
    body_metadata.CopyFrom(metadata)
    body_metadata.message_id = ""
    body = Message(metadata=body_metadata, error=error) if error is not None else Message(metadata=body_metadata)
    tree = deflater.store("Message", children, body.SerializeToString(deterministic=True))

    pushed_metadata = Metadata()
    pushed_metadata.CopyFrom(metadata)
    pushed_metadata.message_id = tree.object_id
    if error is not None:
        pushed = Message(metadata=pushed_metadata, error=error)
    else:  # as flwr's remove_content_from_message: the content travels as objects only
        pushed = Message(metadata=pushed_metadata, content=recorddict_pb2.RecordDict())
    return DeflatedMessage(tree.object_id, pushed, tree, deflater.objects)


# ------------------------------------------------------------------------------ inflate


class ObjectHeader(NamedTuple):
    type_name: str
    child_ids: tuple[str, ...]
    body_length: int


class InflatedMessage(NamedTuple):
    message_id: str  # the root object's id
    metadata: Metadata  # from the Message object, with message_id = the root id
    content: RecordDict | None
    error: Error | None


def is_object_id(text: object) -> bool:
    return isinstance(text, str) and _OBJECT_ID.fullmatch(text) is not None


def check_object(oid: str, content: bytes) -> ObjectHeader:
    """One object's id, hash and header, as flwr's validate_object_content (and stricter)."""
    if not is_object_id(oid):
        raise ObjectError(str(oid), "not an object id (64 lowercase hex digits)")
    if not isinstance(content, bytes):
        raise ObjectError(oid, f"content is {type(content).__name__}, not bytes")
    actual = object_id(content)
    if actual != oid:
        raise ObjectError(oid, f"content hashes to {actual}")
    end = content.find(HEAD_BODY_DIVIDER)
    if end < 0:
        raise ObjectError(oid, "no NUL byte between header and body")
    try:
        head = content[:end].decode("ascii")
    except UnicodeDecodeError:
        raise ObjectError(oid, "header is not ASCII") from None
    parts = head.split(" ")
    if len(parts) != 3:
        raise ObjectError(oid, f"header {bound_text(head)!r} has {len(parts)} space-separated fields, not 3")
    type_name, children_text, length_text = parts
    if type_name not in TYPE_NAMES:
        raise ObjectError(oid, f"unknown object type {bound_text(type_name)!r}")
    child_ids = tuple(children_text.split(",")) if children_text else ()
    for child_id in child_ids:
        if not is_object_id(child_id):
            raise ObjectError(oid, f"header lists {bound_text(child_id)!r}, not an object id")
    if len(set(child_ids)) != len(child_ids):
        raise ObjectError(oid, "header lists a child twice")
    if not _BODY_LENGTH.fullmatch(length_text):
        raise ObjectError(oid, f"header body length {bound_text(length_text)!r} is not a decimal number")
    body_length = len(content) - end - len(HEAD_BODY_DIVIDER)
    if int(length_text) != body_length:
        raise ObjectError(oid, f"header says the body has {length_text} bytes, it has {body_length}")
    return ObjectHeader(type_name, child_ids, body_length)


def tree_object_ids(object_tree: ObjectTree) -> list[str]:
    """The ids to pull, children before parents, each once; the tree's shape is checked first."""
    ids: dict[str, None] = {}

    def walk(tree: ObjectTree, path: tuple[str, ...]) -> None:
        oid = tree.object_id
        if not is_object_id(oid):
            raise ObjectError(oid, "object tree holds something that is not an object id")
        if oid in path:
            raise ObjectError(oid, "object tree has a cycle: the object is its own descendant")
        if len(path) >= MAX_TREE_DEPTH:
            raise ObjectError(oid, f"object tree is deeper than {MAX_TREE_DEPTH} levels")
        for child in tree.children:
            walk(child, (*path, oid))
        ids.setdefault(oid)

    walk(object_tree, ())
    return list(ids)


def pull_order(object_tree: ObjectTree) -> list[str]:
    """The ids to pull, parents before children, level by level, each once (the tree is checked first).

    The Message object comes first and every Array before any ArrayChunk, so a node learns the
    metadata and how much array data a message announces before it downloads the data.
    """
    tree_object_ids(object_tree)  # ids, depth and cycles
    order: dict[str, None] = {}
    level = [object_tree]
    while level:
        for tree in level:
            order.setdefault(tree.object_id)
        level = [child for tree in level for child in tree.children]
    return list(order)


def _body(content: bytes, header: ObjectHeader) -> memoryview:
    return memoryview(content)[len(content) - header.body_length :]


def message_metadata(oid: str, content: bytes, header: ObjectHeader) -> Metadata:
    """The metadata inside a checked Message object (what its id, the message id, covers)."""
    if header.type_name != "Message":
        raise ObjectError(oid, f"a {header.type_name} where the Message (the tree's root) belongs")
    message: Message = _parse_proto(oid, _body(content, header), Message)
    return message.metadata


def announced_data_size(header: ObjectHeader, content: bytes) -> int:
    """The data bytes a checked Array object announces (dtype x shape); 0 if it does not say.

    flwr's legacy layout leaves dtype and shape empty; a body that does not parse is refused
    later, when the message is inflated. Only used to refuse a message early.
    """
    if header.type_name != "Array":
        return 0
    try:
        meta = json.loads(bytes(_body(content, header)))
        dtype, shape = meta["dtype"], meta["shape"]
        if not isinstance(dtype, str) or not dtype or len(dtype) > 32 or not _int_list(shape, lambda n: n >= 0):
            return 0
        return int(math.prod(shape)) * int(np.dtype(dtype).itemsize)
    except Exception:  # hostile JSON or dtype text: inflating names the problem
        return 0


def _parse_json(oid: str, body: memoryview) -> object:
    def no_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
        result = dict(pairs)
        if len(result) != len(pairs):
            raise ValueError("a key appears twice")
        return result

    try:
        return json.loads(bytes(body).decode("utf-8"), object_pairs_hook=no_duplicates)
    except (ValueError, RecursionError) as error:  # JSONDecodeError, UnicodeDecodeError, duplicates, nesting
        raise ObjectError(oid, f"body is not JSON ({type(error).__name__}: {bound_text(str(error))})") from None


def _parse_proto(oid: str, body: memoryview, proto_class: type[ProtoT]) -> ProtoT:
    try:
        return proto_class.FromString(bytes(body))
    except Exception as error:  # DecodeError, or whatever the runtime raises on a crafted body
        raise ObjectError(oid, f"body is not a {proto_class.__name__} proto ({type(error).__name__})") from None


class _Inflater:
    """Walks the ObjectTree, checking every object against its place in it."""

    def __init__(self, objects: Mapping[str, bytes], checked: Mapping[str, ObjectHeader]) -> None:
        self.objects = objects
        self.checked = checked  # headers the caller got from check_object on pull: not hashed again
        self.headers: dict[str, ObjectHeader] = {}  # objects met so far: each is hashed once
        self.object_bytes = 0
        self.arrays: dict[str, Array] = {}
        self.array_bytes = 0

    def open(self, tree: ObjectTree, type_names: frozenset[str], place: str) -> tuple[ObjectHeader, memoryview]:
        oid = tree.object_id
        header = self.headers.get(oid)
        if header is None:
            content = self.objects.get(oid)
            if content is None:
                raise ObjectError(oid, "missing: not among the pulled objects")
            self.object_bytes += len(content)
            if self.object_bytes > MAX_MESSAGE_LENGTH:
                raise ObjectError(oid, f"the message's objects exceed {MAX_MESSAGE_LENGTH} bytes")
            header = self.checked.get(oid) or check_object(oid, content)
            self.headers[oid] = header
        if header.type_name not in type_names:
            raise ObjectError(oid, f"a {header.type_name} where {place} belongs")
        tree_child_ids = tuple(child.object_id for child in tree.children)
        if tree_child_ids != header.child_ids:
            raise ObjectError(
                oid, f"object tree lists children {bound_text(str(list(tree_child_ids)))}, "
                f"the header {bound_text(str(list(header.child_ids)))}"
            )
        return header, _body(self.objects[oid], header)

    def message(self, tree: ObjectTree) -> InflatedMessage:
        header, body = self.open(tree, frozenset({"Message"}), "the Message (the tree's root)")
        oid = tree.object_id
        proto = _parse_proto(oid, body, Message)
        if proto.HasField("content"):
            raise ObjectError(oid, "the Message object carries content inline (it travels as a child)")
        if proto.metadata.message_id:
            raise ObjectError(oid, "metadata.message_id is set inside the object (flwr leaves it empty)")
        content = error = None
        if proto.HasField("error"):
            if header.child_ids:
                raise ObjectError(oid, "a Message with an error has no children")
            error = proto.error
        else:
            if len(header.child_ids) != 1:
                listed = len(header.child_ids)
                raise ObjectError(oid, f"a Message without error has one child, its RecordDict; it lists {listed}")
            content = self.record_dict(tree.children[0])
        metadata = proto.metadata
        metadata.message_id = oid
        return InflatedMessage(oid, metadata, content, error)

    def references(self, tree: ObjectTree, header: ObjectHeader, body: memoryview) -> dict[str, str]:
        """A RecordDict/ArrayRecord body: {name: child id}, naming exactly the header's children."""
        oid = tree.object_id
        refs = _parse_json(oid, body)
        if not isinstance(refs, dict) or not all(is_object_id(value) for value in refs.values()):
            raise ObjectError(oid, f"a {header.type_name} body is a JSON object of name: child id")
        named, listed = set(refs.values()), set(header.child_ids)
        if named - listed:
            raise ObjectError(oid, f"body names child {min(named - listed)} that the header does not list")
        if listed - named:
            raise ObjectError(oid, f"header lists child {min(listed - named)} that the body does not name")
        return refs

    def record_dict(self, tree: ObjectTree) -> RecordDict:
        header, body = self.open(tree, frozenset({"RecordDict"}), "a RecordDict")
        refs = self.references(tree, header, body)
        records = {child.object_id: self.record(child) for child in tree.children}
        return {name: records[child_id] for name, child_id in refs.items()}

    def record(self, tree: ObjectTree) -> Record:
        header, body = self.open(tree, RECORD_TYPE_NAMES, "a record of a RecordDict")
        if header.type_name == "ArrayRecord":
            refs = self.references(tree, header, body)
            arrays = {child.object_id: self.array(child) for child in tree.children}
            return ArrayRecord((name, arrays[child_id]) for name, child_id in refs.items())
        if header.child_ids:
            raise ObjectError(tree.object_id, f"a {header.type_name} has no children")
        if header.type_name == "ConfigRecord":
            return ConfigRecord(self.items(tree.object_id, body, recorddict_pb2.ConfigRecord))
        return MetricRecord(self.items(tree.object_id, body, recorddict_pb2.MetricRecord))

    def items(self, oid: str, body: memoryview,
              proto_class: type[recorddict_pb2.ConfigRecord | recorddict_pb2.MetricRecord]) -> list[tuple[str, object]]:
        proto: recorddict_pb2.ConfigRecord | recorddict_pb2.MetricRecord = _parse_proto(oid, body, proto_class)
        keys = [item.key for item in proto.items]
        if len(set(keys)) != len(keys):
            raise ObjectError(oid, "a key appears twice")
        items = []
        for item in proto.items:
            kind = item.value.WhichOneof("value")
            if kind is None:
                raise ObjectError(oid, f"key {bound_text(item.key)!r} has no value")
            value = getattr(item.value, kind)
            items.append((item.key, list(value.vals) if kind.endswith("_list") else value))
        return items

    def array(self, tree: ObjectTree) -> Array:
        oid = tree.object_id
        header, body = self.open(tree, frozenset({"Array"}), "an Array (in an ArrayRecord)")
        meta = _parse_json(oid, body)
        if not isinstance(meta, dict) or sorted(meta) != sorted(ARRAY_KEYS):
            raise ObjectError(oid, f"an Array body is a JSON object with exactly the keys {', '.join(ARRAY_KEYS)}")
        dtype, shape, stype, indices = (meta[key] for key in ARRAY_KEYS)
        if not isinstance(dtype, str) or not isinstance(stype, str):
            raise ObjectError(oid, "Array dtype and stype are strings")
        if not _int_list(shape, lambda size: size >= 0):
            raise ObjectError(oid, "Array shape is a list of non-negative ints")
        if not _int_list(indices, lambda _: True):
            raise ObjectError(oid, "Array arraychunk_ids is a list of ints")
        for index in indices:
            if not 0 <= index < len(header.child_ids):
                listed = len(header.child_ids)
                raise ObjectError(oid, f"chunk index {index} is out of range (the header lists {listed} chunks)")
        if len(set(indices)) != len(header.child_ids):
            raise ObjectError(oid, "the header lists a chunk that arraychunk_ids never uses")
        chunks = [self.chunk(child) for child in tree.children]
        if oid in self.arrays:  # the same Array under several names: built once
            return self.arrays[oid]
        size = sum(len(chunks[index]) for index in indices)
        self.array_bytes += size
        if self.array_bytes > MAX_MESSAGE_LENGTH:
            raise ObjectError(oid, f"the message's arrays would inflate to more than {MAX_MESSAGE_LENGTH} bytes")
        data = b"".join(chunks[index] for index in indices)
        decoded = _decode_array_data(oid, dtype, tuple(shape), stype, data)
        array = self.arrays[oid] = Array(dtype, tuple(shape), stype, data, decoded)
        return array

    def chunk(self, tree: ObjectTree) -> memoryview:
        header, body = self.open(tree, frozenset({"ArrayChunk"}), "an ArrayChunk (in an Array)")
        if header.child_ids:
            raise ObjectError(tree.object_id, "an ArrayChunk has no children")
        return body


def _int_list(value: object, accept: Callable[[int], bool]) -> bool:
    # type() is int: JSON true/false are Python bools, which are ints too.
    return isinstance(value, list) and all(type(item) is int and accept(item) for item in value)


def _decode_array_data(oid: str, dtype: str, shape: tuple[int, ...], stype: str, data: bytes) -> np.ndarray | None:
    """The data as a read-only array: one valid .npy whose dtype and shape the metadata repeats
    (or leaves empty). None for flwr's "_empty" marker of a legacy instruction without tensors."""
    if stype != TENSOR_TYPE:
        raise ObjectError(oid, f"stype {bound_text(stype)!r} is not supported (only {TENSOR_TYPE!r})")
    legacy = dtype == "" and shape == ()  # flwr's recorddict_compat leaves both empty
    if not data:
        if not legacy:
            raise ObjectError(oid, f"no data for a {bound_text(dtype)} {shape} array")
        return None
    try:
        array = bytes_to_ndarray(data, f"Array {oid}")
    except CodecError as error:
        raise ObjectError(oid, f"chunks do not form one valid .npy: {error.reason}") from None
    if not legacy and (dtype != str(array.dtype) or shape != array.shape):
        raise ObjectError(
            oid, f"metadata says {bound_text(dtype)} {shape}, the .npy holds {array.dtype} {array.shape}"
        )
    return array


def inflate_message(
    object_tree: ObjectTree, objects: Mapping[str, bytes], checked: Mapping[str, ObjectHeader] | None = None
) -> InflatedMessage:
    """The pulled objects of one message (every id of ``object_tree``) -> metadata and content or error.

    ``object_tree`` is the one PullMessages returned with the message; ``objects`` maps each id to
    the bytes PullObject returned (extra entries are ignored). ``checked`` holds the headers
    :func:`check_object` returned for objects already checked on pull: those are not hashed again.
    Every other check is made here.
    """
    tree_object_ids(object_tree)  # ids, depth and cycles, before any object is read
    return _Inflater(objects, checked or {}).message(object_tree)
