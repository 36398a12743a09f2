from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Code(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    OK: _ClassVar[Code]
    GET_PROPERTIES_NOT_IMPLEMENTED: _ClassVar[Code]
    GET_PARAMETERS_NOT_IMPLEMENTED: _ClassVar[Code]
    FIT_NOT_IMPLEMENTED: _ClassVar[Code]
    EVALUATE_NOT_IMPLEMENTED: _ClassVar[Code]

class Reason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    UNKNOWN: _ClassVar[Reason]
    RECONNECT: _ClassVar[Reason]
    POWER_DISCONNECTED: _ClassVar[Reason]
    WIFI_UNAVAILABLE: _ClassVar[Reason]
    ACK: _ClassVar[Reason]
OK: Code
GET_PROPERTIES_NOT_IMPLEMENTED: Code
GET_PARAMETERS_NOT_IMPLEMENTED: Code
FIT_NOT_IMPLEMENTED: Code
EVALUATE_NOT_IMPLEMENTED: Code
UNKNOWN: Reason
RECONNECT: Reason
POWER_DISCONNECTED: Reason
WIFI_UNAVAILABLE: Reason
ACK: Reason

class Status(_message.Message):
    __slots__ = ("code", "message")
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    code: Code
    message: str
    def __init__(self, code: _Optional[_Union[Code, str]] = ..., message: _Optional[str] = ...) -> None: ...

class Parameters(_message.Message):
    __slots__ = ("tensors", "tensor_type")
    TENSORS_FIELD_NUMBER: _ClassVar[int]
    TENSOR_TYPE_FIELD_NUMBER: _ClassVar[int]
    tensors: _containers.RepeatedScalarFieldContainer[bytes]
    tensor_type: str
    def __init__(self, tensors: _Optional[_Iterable[bytes]] = ..., tensor_type: _Optional[str] = ...) -> None: ...

class ServerMessage(_message.Message):
    __slots__ = ("reconnect_ins", "get_properties_ins", "get_parameters_ins", "fit_ins", "evaluate_ins")
    class ReconnectIns(_message.Message):
        __slots__ = ("seconds",)
        SECONDS_FIELD_NUMBER: _ClassVar[int]
        seconds: int
        def __init__(self, seconds: _Optional[int] = ...) -> None: ...
    class GetPropertiesIns(_message.Message):
        __slots__ = ("config",)
        class ConfigEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        config: _containers.MessageMap[str, Scalar]
        def __init__(self, config: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    class GetParametersIns(_message.Message):
        __slots__ = ("config",)
        class ConfigEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        config: _containers.MessageMap[str, Scalar]
        def __init__(self, config: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    class FitIns(_message.Message):
        __slots__ = ("parameters", "config")
        class ConfigEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        parameters: Parameters
        config: _containers.MessageMap[str, Scalar]
        def __init__(self, parameters: _Optional[_Union[Parameters, _Mapping]] = ..., config: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    class EvaluateIns(_message.Message):
        __slots__ = ("parameters", "config")
        class ConfigEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        CONFIG_FIELD_NUMBER: _ClassVar[int]
        parameters: Parameters
        config: _containers.MessageMap[str, Scalar]
        def __init__(self, parameters: _Optional[_Union[Parameters, _Mapping]] = ..., config: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    RECONNECT_INS_FIELD_NUMBER: _ClassVar[int]
    GET_PROPERTIES_INS_FIELD_NUMBER: _ClassVar[int]
    GET_PARAMETERS_INS_FIELD_NUMBER: _ClassVar[int]
    FIT_INS_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_INS_FIELD_NUMBER: _ClassVar[int]
    reconnect_ins: ServerMessage.ReconnectIns
    get_properties_ins: ServerMessage.GetPropertiesIns
    get_parameters_ins: ServerMessage.GetParametersIns
    fit_ins: ServerMessage.FitIns
    evaluate_ins: ServerMessage.EvaluateIns
    def __init__(self, reconnect_ins: _Optional[_Union[ServerMessage.ReconnectIns, _Mapping]] = ..., get_properties_ins: _Optional[_Union[ServerMessage.GetPropertiesIns, _Mapping]] = ..., get_parameters_ins: _Optional[_Union[ServerMessage.GetParametersIns, _Mapping]] = ..., fit_ins: _Optional[_Union[ServerMessage.FitIns, _Mapping]] = ..., evaluate_ins: _Optional[_Union[ServerMessage.EvaluateIns, _Mapping]] = ...) -> None: ...

class ClientMessage(_message.Message):
    __slots__ = ("disconnect_res", "get_properties_res", "get_parameters_res", "fit_res", "evaluate_res")
    class DisconnectRes(_message.Message):
        __slots__ = ("reason",)
        REASON_FIELD_NUMBER: _ClassVar[int]
        reason: Reason
        def __init__(self, reason: _Optional[_Union[Reason, str]] = ...) -> None: ...
    class GetPropertiesRes(_message.Message):
        __slots__ = ("status", "properties")
        class PropertiesEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        STATUS_FIELD_NUMBER: _ClassVar[int]
        PROPERTIES_FIELD_NUMBER: _ClassVar[int]
        status: Status
        properties: _containers.MessageMap[str, Scalar]
        def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., properties: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    class GetParametersRes(_message.Message):
        __slots__ = ("status", "parameters")
        STATUS_FIELD_NUMBER: _ClassVar[int]
        PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        status: Status
        parameters: Parameters
        def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ...) -> None: ...
    class FitRes(_message.Message):
        __slots__ = ("status", "parameters", "num_examples", "metrics")
        class MetricsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        STATUS_FIELD_NUMBER: _ClassVar[int]
        PARAMETERS_FIELD_NUMBER: _ClassVar[int]
        NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
        METRICS_FIELD_NUMBER: _ClassVar[int]
        status: Status
        parameters: Parameters
        num_examples: int
        metrics: _containers.MessageMap[str, Scalar]
        def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., parameters: _Optional[_Union[Parameters, _Mapping]] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    class EvaluateRes(_message.Message):
        __slots__ = ("status", "loss", "num_examples", "metrics")
        class MetricsEntry(_message.Message):
            __slots__ = ("key", "value")
            KEY_FIELD_NUMBER: _ClassVar[int]
            VALUE_FIELD_NUMBER: _ClassVar[int]
            key: str
            value: Scalar
            def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[Scalar, _Mapping]] = ...) -> None: ...
        STATUS_FIELD_NUMBER: _ClassVar[int]
        LOSS_FIELD_NUMBER: _ClassVar[int]
        NUM_EXAMPLES_FIELD_NUMBER: _ClassVar[int]
        METRICS_FIELD_NUMBER: _ClassVar[int]
        status: Status
        loss: float
        num_examples: int
        metrics: _containers.MessageMap[str, Scalar]
        def __init__(self, status: _Optional[_Union[Status, _Mapping]] = ..., loss: _Optional[float] = ..., num_examples: _Optional[int] = ..., metrics: _Optional[_Mapping[str, Scalar]] = ...) -> None: ...
    DISCONNECT_RES_FIELD_NUMBER: _ClassVar[int]
    GET_PROPERTIES_RES_FIELD_NUMBER: _ClassVar[int]
    GET_PARAMETERS_RES_FIELD_NUMBER: _ClassVar[int]
    FIT_RES_FIELD_NUMBER: _ClassVar[int]
    EVALUATE_RES_FIELD_NUMBER: _ClassVar[int]
    disconnect_res: ClientMessage.DisconnectRes
    get_properties_res: ClientMessage.GetPropertiesRes
    get_parameters_res: ClientMessage.GetParametersRes
    fit_res: ClientMessage.FitRes
    evaluate_res: ClientMessage.EvaluateRes
    def __init__(self, disconnect_res: _Optional[_Union[ClientMessage.DisconnectRes, _Mapping]] = ..., get_properties_res: _Optional[_Union[ClientMessage.GetPropertiesRes, _Mapping]] = ..., get_parameters_res: _Optional[_Union[ClientMessage.GetParametersRes, _Mapping]] = ..., fit_res: _Optional[_Union[ClientMessage.FitRes, _Mapping]] = ..., evaluate_res: _Optional[_Union[ClientMessage.EvaluateRes, _Mapping]] = ...) -> None: ...

class Scalar(_message.Message):
    __slots__ = ("double", "uint64", "sint64", "bool", "string", "bytes")
    DOUBLE_FIELD_NUMBER: _ClassVar[int]
    UINT64_FIELD_NUMBER: _ClassVar[int]
    SINT64_FIELD_NUMBER: _ClassVar[int]
    BOOL_FIELD_NUMBER: _ClassVar[int]
    STRING_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    double: float
    uint64: int
    sint64: int
    bool: bool
    string: str
    bytes: bytes
    def __init__(self, double: _Optional[float] = ..., uint64: _Optional[int] = ..., sint64: _Optional[int] = ..., bool: _Optional[bool] = ..., string: _Optional[str] = ..., bytes: _Optional[bytes] = ...) -> None: ...
