from fedproto import node_pb2 as _node_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SendNodeHeartbeatRequest(_message.Message):
    __slots__ = ("node", "heartbeat_interval")
    NODE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    heartbeat_interval: float
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., heartbeat_interval: _Optional[float] = ...) -> None: ...

class SendNodeHeartbeatResponse(_message.Message):
    __slots__ = ("success",)
    SUCCESS_FIELD_NUMBER: _ClassVar[int]
    success: bool
    def __init__(self, success: _Optional[bool] = ...) -> None: ...
