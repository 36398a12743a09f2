from fedproto import heartbeat_pb2 as _heartbeat_pb2
from fedproto import node_pb2 as _node_pb2
from fedproto import run_pb2 as _run_pb2
from fedproto import fab_pb2 as _fab_pb2
from fedproto import message_pb2 as _message_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class RegisterNodeFleetRequest(_message.Message):
    __slots__ = ("public_key",)
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    def __init__(self, public_key: _Optional[bytes] = ...) -> None: ...

class RegisterNodeFleetResponse(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class ActivateNodeRequest(_message.Message):
    __slots__ = ("public_key", "heartbeat_interval")
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    public_key: bytes
    heartbeat_interval: float
    def __init__(self, public_key: _Optional[bytes] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class ActivateNodeResponse(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class DeactivateNodeRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class DeactivateNodeResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterNodeFleetRequest(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class UnregisterNodeFleetResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class PullMessagesRequest(_message.Message):
    __slots__ = ("node", "message_ids")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_IDS_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    message_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., message_ids: _Optional[_Iterable[str]] = ...) -> None: ...

class PullMessagesResponse(_message.Message):
    __slots__ = ("reconnect", "messages_list", "message_object_trees")
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_LIST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_OBJECT_TREES_FIELD_NUMBER: _ClassVar[int]
    reconnect: Reconnect
    messages_list: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    message_object_trees: _containers.RepeatedCompositeFieldContainer[_message_pb2.ObjectTree]
    def __init__(self, reconnect: _Optional[_Union[Reconnect, _Mapping]] = ..., messages_list: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., message_object_trees: _Optional[_Iterable[_Union[_message_pb2.ObjectTree, _Mapping]]] = ...) -> None: ...

class PushMessagesRequest(_message.Message):
    __slots__ = ("node", "messages_list", "message_object_trees", "clientapp_runtime_list")
    NODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_LIST_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_OBJECT_TREES_FIELD_NUMBER: _ClassVar[int]
    CLIENTAPP_RUNTIME_LIST_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    messages_list: _containers.RepeatedCompositeFieldContainer[_message_pb2.Message]
    message_object_trees: _containers.RepeatedCompositeFieldContainer[_message_pb2.ObjectTree]
    clientapp_runtime_list: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., messages_list: _Optional[_Iterable[_Union[_message_pb2.Message, _Mapping]]] = ..., message_object_trees: _Optional[_Iterable[_Union[_message_pb2.ObjectTree, _Mapping]]] = ..., clientapp_runtime_list: _Optional[_Iterable[float]] = ...) -> None: ...

class PushMessagesResponse(_message.Message):
    __slots__ = ("reconnect", "results", "objects_to_push", "session_id")
    class ResultsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    OBJECTS_TO_PUSH_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    reconnect: Reconnect
    results: _containers.ScalarMap[str, int]
    objects_to_push: _containers.RepeatedScalarFieldContainer[str]
    session_id: str
    def __init__(self, reconnect: _Optional[_Union[Reconnect, _Mapping]] = ..., results: _Optional[_Mapping[str, int]] = ..., objects_to_push: _Optional[_Iterable[str]] = ..., session_id: _Optional[str] = ...) -> None: ...

class Reconnect(_message.Message):
    __slots__ = ("reconnect",)
    RECONNECT_FIELD_NUMBER: _ClassVar[int]
    reconnect: int
    def __init__(self, reconnect: _Optional[int] = ...) -> None: ...
