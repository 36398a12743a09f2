from fedproto import error_pb2 as _error_pb2
from fedproto import recorddict_pb2 as _recorddict_pb2
from fedproto import transport_pb2 as _transport_pb2
from fedproto import node_pb2 as _node_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Message(_message.Message):
    __slots__ = ("metadata", "content", "error")
    METADATA_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    metadata: Metadata
    content: _recorddict_pb2.RecordDict
    error: _error_pb2.Error
    def __init__(self, metadata: _Optional[_Union[Metadata, _Mapping]] = ..., content: _Optional[_Union[_recorddict_pb2.RecordDict, _Mapping]] = ..., error: _Optional[_Union[_error_pb2.Error, _Mapping]] = ...) -> None: ...

class Context(_message.Message):
    __slots__ = ("run_id", "node_id", "node_config", "state", "run_config", "series_id")
    class NodeConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _transport_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_transport_pb2.Scalar, _Mapping]] = ...) -> None: ...
    class RunConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _transport_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_transport_pb2.Scalar, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RUN_CONFIG_FIELD_NUMBER: _ClassVar[int]
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    node_id: int
    node_config: _containers.MessageMap[str, _transport_pb2.Scalar]
    state: _recorddict_pb2.RecordDict
    run_config: _containers.MessageMap[str, _transport_pb2.Scalar]
    series_id: int
    def __init__(self, run_id: _Optional[int] = ..., node_id: _Optional[int] = ..., node_config: _Optional[_Mapping[str, _transport_pb2.Scalar]] = ..., state: _Optional[_Union[_recorddict_pb2.RecordDict, _Mapping]] = ..., run_config: _Optional[_Mapping[str, _transport_pb2.Scalar]] = ..., series_id: _Optional[int] = ...) -> None: ...

class Metadata(_message.Message):
    __slots__ = ("run_id", "message_id", "src_node_id", "dst_node_id", "reply_to_message_id", "group_id", "ttl", "message_type", "created_at", "src_task_id", "dst_task_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    SRC_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    DST_NODE_ID_FIELD_NUMBER: _ClassVar[int]
    REPLY_TO_MESSAGE_ID_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_TYPE_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    SRC_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    DST_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    message_id: str
    src_node_id: int
    dst_node_id: int
    reply_to_message_id: str
    group_id: str
    ttl: float
    message_type: str
    created_at: float
    src_task_id: int
    dst_task_id: int
    def __init__(self, run_id: _Optional[int] = ..., message_id: _Optional[str] = ..., src_node_id: _Optional[int] = ..., dst_node_id: _Optional[int] = ..., reply_to_message_id: _Optional[str] = ..., group_id: _Optional[str] = ..., ttl: _Optional[float] = ..., message_type: _Optional[str] = ..., created_at: _Optional[float] = ..., src_task_id: _Optional[int] = ..., dst_task_id: _Optional[int] = ...) -> None: ...

class ObjectIDs(_message.Message):
    __slots__ = ("object_ids",)
    OBJECT_IDS_FIELD_NUMBER: _ClassVar[int]
    object_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, object_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class ObjectTree(_message.Message):
    __slots__ = ("object_id", "children")
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    CHILDREN_FIELD_NUMBER: _ClassVar[int]
    object_id: str
    children: _containers.RepeatedCompositeFieldContainer[ObjectTree]
    def __init__(self, object_id: _Optional[str] = ..., children: _Optional[_Iterable[_Union[ObjectTree, _Mapping]]] = ...) -> None: ...

class PushObjectRequest(_message.Message):
    __slots__ = ("node", "run_id", "object_id", "object_content", "session_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_CONTENT_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    run_id: int
    object_id: str
    object_content: bytes
    session_id: str
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., run_id: _Optional[int] = ..., object_id: _Optional[str] = ..., object_content: _Optional[bytes] = ..., session_id: _Optional[str] = ...) -> None: ...

class PushObjectResponse(_message.Message):
    __slots__ = ("stored",)
    STORED_FIELD_NUMBER: _ClassVar[int]
    stored: bool
    def __init__(self, stored: _Optional[bool] = ...) -> None: ...

class PullObjectRequest(_message.Message):
    __slots__ = ("node", "run_id", "object_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    run_id: int
    object_id: str
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., run_id: _Optional[int] = ..., object_id: _Optional[str] = ...) -> None: ...

class PullObjectResponse(_message.Message):
    __slots__ = ("object_found", "object_available", "object_content")
    OBJECT_FOUND_FIELD_NUMBER: _ClassVar[int]
    OBJECT_AVAILABLE_FIELD_NUMBER: _ClassVar[int]
    OBJECT_CONTENT_FIELD_NUMBER: _ClassVar[int]
    object_found: bool
    object_available: bool
    object_content: bytes
    def __init__(self, object_found: _Optional[bool] = ..., object_available: _Optional[bool] = ..., object_content: _Optional[bytes] = ...) -> None: ...

class ConfirmMessageReceivedRequest(_message.Message):
    __slots__ = ("node", "run_id", "message_object_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    run_id: int
    message_object_id: str
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., run_id: _Optional[int] = ..., message_object_id: _Optional[str] = ...) -> None: ...

class ConfirmMessageReceivedResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...
