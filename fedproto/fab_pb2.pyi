from fedproto import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Fab(_message.Message):
    __slots__ = ("hash_str", "content", "verifications")
    class VerificationsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HASH_STR_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    VERIFICATIONS_FIELD_NUMBER: _ClassVar[int]
    hash_str: str
    content: bytes
    verifications: _containers.ScalarMap[str, str]
    def __init__(self, hash_str: _Optional[str] = ..., content: _Optional[bytes] = ..., verifications: _Optional[_Mapping[str, str]] = ...) -> None: ...

class GetFabRequest(_message.Message):
    __slots__ = ("node", "hash_str", "run_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    HASH_STR_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    hash_str: str
    run_id: int
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., hash_str: _Optional[str] = ..., run_id: _Optional[int] = ...) -> None: ...

class GetFabResponse(_message.Message):
    __slots__ = ("fab",)
    FAB_FIELD_NUMBER: _ClassVar[int]
    fab: Fab
    def __init__(self, fab: _Optional[_Union[Fab, _Mapping]] = ...) -> None: ...
