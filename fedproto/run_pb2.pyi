from fedproto import node_pb2 as _node_pb2
from fedproto import transport_pb2 as _transport_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Run(_message.Message):
    __slots__ = ("run_id", "fab_id", "fab_version", "override_config", "fab_hash", "pending_at", "starting_at", "running_at", "finished_at", "status", "flwr_aid", "federation", "bytes_sent", "bytes_recv", "clientapp_runtime", "primary_task_type", "primary_task_id", "series_id", "account_name")
    class OverrideConfigEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: _transport_pb2.Scalar
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[_transport_pb2.Scalar, _Mapping]] = ...) -> None: ...
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    FAB_ID_FIELD_NUMBER: _ClassVar[int]
    FAB_VERSION_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_CONFIG_FIELD_NUMBER: _ClassVar[int]
    FAB_HASH_FIELD_NUMBER: _ClassVar[int]
    PENDING_AT_FIELD_NUMBER: _ClassVar[int]
    STARTING_AT_FIELD_NUMBER: _ClassVar[int]
    RUNNING_AT_FIELD_NUMBER: _ClassVar[int]
    FINISHED_AT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FLWR_AID_FIELD_NUMBER: _ClassVar[int]
    FEDERATION_FIELD_NUMBER: _ClassVar[int]
    BYTES_SENT_FIELD_NUMBER: _ClassVar[int]
    BYTES_RECV_FIELD_NUMBER: _ClassVar[int]
    CLIENTAPP_RUNTIME_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_TASK_TYPE_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_TASK_ID_FIELD_NUMBER: _ClassVar[int]
    SERIES_ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_NAME_FIELD_NUMBER: _ClassVar[int]
    run_id: int
    fab_id: str
    fab_version: str
    override_config: _containers.MessageMap[str, _transport_pb2.Scalar]
    fab_hash: str
    pending_at: str
    starting_at: str
    running_at: str
    finished_at: str
    status: RunStatus
    flwr_aid: str
    federation: str
    bytes_sent: int
    bytes_recv: int
    clientapp_runtime: float
    primary_task_type: str
    primary_task_id: int
    series_id: int
    account_name: str
    def __init__(self, run_id: _Optional[int] = ..., fab_id: _Optional[str] = ..., fab_version: _Optional[str] = ..., override_config: _Optional[_Mapping[str, _transport_pb2.Scalar]] = ..., fab_hash: _Optional[str] = ..., pending_at: _Optional[str] = ..., starting_at: _Optional[str] = ..., running_at: _Optional[str] = ..., finished_at: _Optional[str] = ..., status: _Optional[_Union[RunStatus, _Mapping]] = ..., flwr_aid: _Optional[str] = ..., federation: _Optional[str] = ..., bytes_sent: _Optional[int] = ..., bytes_recv: _Optional[int] = ..., clientapp_runtime: _Optional[float] = ..., primary_task_type: _Optional[str] = ..., primary_task_id: _Optional[int] = ..., series_id: _Optional[int] = ..., account_name: _Optional[str] = ...) -> None: ...

class RunStatus(_message.Message):
    __slots__ = ("status", "sub_status", "details")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SUB_STATUS_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    status: str
    sub_status: str
    details: str
    def __init__(self, status: _Optional[str] = ..., sub_status: _Optional[str] = ..., details: _Optional[str] = ...) -> None: ...

class GetRunRequest(_message.Message):
    __slots__ = ("node", "run_id")
    NODE_FIELD_NUMBER: _ClassVar[int]
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    node: _node_pb2.Node
    run_id: int
    def __init__(self, node: _Optional[_Union[_node_pb2.Node, _Mapping]] = ..., run_id: _Optional[int] = ...) -> None: ...

class GetRunResponse(_message.Message):
    __slots__ = ("run",)
    RUN_FIELD_NUMBER: _ClassVar[int]
    run: Run
    def __init__(self, run: _Optional[_Union[Run, _Mapping]] = ...) -> None: ...
