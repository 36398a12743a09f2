from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class Node(_message.Message):
    __slots__ = ("node_id",)
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    def __init__(self, node_id: _Optional[int] = ...) -> None: ...

class NodeInfo(_message.Message):
    __slots__ = ("node_id", "owner_aid", "owner_name", "status", "registered_at", "last_activated_at", "last_deactivated_at", "unregistered_at", "online_until", "heartbeat_interval", "public_key", "location", "name")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    OWNER_AID_FIELD_NUMBER: _ClassVar[int]
    OWNER_NAME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    REGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_ACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_DEACTIVATED_AT_FIELD_NUMBER: _ClassVar[int]
    UNREGISTERED_AT_FIELD_NUMBER: _ClassVar[int]
    ONLINE_UNTIL_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_FIELD_NUMBER: _ClassVar[int]
    PUBLIC_KEY_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    node_id: int
    owner_aid: str
    owner_name: str
    status: str
    registered_at: str
    last_activated_at: str
    last_deactivated_at: str
    unregistered_at: str
    online_until: float
    heartbeat_interval: float
    public_key: bytes
    location: str
    name: str
    def __init__(self, node_id: _Optional[int] = ..., owner_aid: _Optional[str] = ..., owner_name: _Optional[str] = ..., status: _Optional[str] = ..., registered_at: _Optional[str] = ..., last_activated_at: _Optional[str] = ..., last_deactivated_at: _Optional[str] = ..., unregistered_at: _Optional[str] = ..., online_until: _Optional[float] = ..., heartbeat_interval: _Optional[float] = ..., public_key: _Optional[bytes] = ..., location: _Optional[str] = ..., name: _Optional[str] = ...) -> None: ...
