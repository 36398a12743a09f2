"""What a SuperLink message asks of the NumPyClient-style handler, and the reply it gets back.

The handler is the one the Join client serves (``fedproto.dispatch``):
``get_parameters(config)``, ``fit(parameters, config) -> (arrays, num_examples, metrics)``,
``evaluate(parameters, config) -> (loss, num_examples, metrics)``, ``get_properties(config)``.
A ServerApp's message can carry two content layouts, told apart by its record names:

Message-API strategies (``flwr.serverapp.strategy``: FedAvg & co.)
    ``"train"``: one ArrayRecord (``"arrays"``) and a ConfigRecord (``"config"``, holding
    ``"server-round"``) -> ``fit(arrays in the record's key order, config)`` -> reply
    ``{<same record name>: ArrayRecord with the same keys, "metrics": MetricRecord}`` where the
    MetricRecord holds the handler's metrics and ``"num-examples"``.
    ``"evaluate"``: same content -> ``evaluate(...)`` -> reply ``{"metrics": MetricRecord}`` with
    ``"eval_loss"`` (the key flwr's own app templates use, e.g. ``client.pytorch_msg_api.py.tpl``),
    ``"num-examples"`` and the handler's metrics.
    ``"query"``: a ConfigRecord -> ``get_properties(config)`` -> reply ``{"properties":
    ConfigRecord}`` (no flwr strategy sends it; this is our convention for custom ServerApps).

Legacy strategies inside a ServerApp (``flwr.server.strategy``, ``compat/common/recorddict_compat.py``)
    ``fitins.parameters`` + ``fitins.config`` -> fit -> ``fitres.parameters`` (ArrayRecord "0",
    "1", ...), ``fitres.num_examples`` (MetricRecord ``{"num_examples": n}``), ``fitres.metrics``
    and ``fitres.status`` (ConfigRecords). ``evaluateins.*`` -> evaluate -> ``evaluateres.loss``
    (``{"loss": x}``), ``evaluateres.num_examples``, ``evaluateres.metrics``,
    ``evaluateres.status``. ``getparametersins.config`` -> ``getparametersres.parameters`` +
    status; ``getpropertiesins.config`` -> ``getpropertiesres.properties`` + status. Legacy
    arrays travel with empty dtype and shape: both come from each tensor's .npy header.

Metrics. A MetricRecord holds int, float and lists of them only; a legacy ConfigRecord holds
every Scalar. For the message-API layout the handler's metrics are mapped like this:
int/float (and NumPy numbers) -> as they are; bool -> int (True = 1); lists of int/float -> as
they are; str, bytes and anything else -> dropped, with a WARNING naming the key. A handler
metric named ``"num-examples"`` (or ``"eval_loss"`` in evaluate) is replaced by ours, also with a
WARNING. The ServerApp aggregates only replies whose MetricRecords have identical keys
(``InconsistentMessageReplies`` otherwise, and the round's aggregate is skipped): a handler must
return the same metric keys from every node in a round, whatever its data says.

Errors. A handler that lacks the method, raises, or returns something that does not fit the
reply becomes a reply with ``Message.error``: code 2 (``CLIENT_APP_RAISED_EXCEPTION``, what
flwr's ClientApp sends when user code raises) and a reason like ``fit raised ValueError: ...``.
The ServerApp counts a failure for this node; the others aggregate; the node goes on. A message
whose content fits neither layout gets the same kind of error reply. Only hostile input
(objects that do not decode) raises: :class:`fedproto.objects.ObjectError`.
"""

from __future__ import annotations

import logging
import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fedproto import objects
from fedproto.codec import TENSOR_TYPE, CodecError
from fedproto.errors import FedprotoError
from fedproto.handler import HandlerError, check_count, check_loss, unpack_result
from fedproto.error_pb2 import Error
from fedproto.message_pb2 import Message, Metadata, ObjectTree

log = logging.getLogger(__name__)

CLIENT_APP_RAISED_EXCEPTION = 2  # flwr/common/constant.py ErrorCode
NUM_EXAMPLES = "num-examples"  # the key message-API strategies weigh by (FedAvg's weighted_by_key)
EVAL_LOSS = "eval_loss"  # where flwr's app templates put evaluate's loss
LEGACY_STATUS_OK = {"code": 0, "message": "Success"}  # Code.OK and the text flwr's NumPyClient sends
EMPTY_TENSOR_KEY = "_empty"  # recorddict_compat: an ArrayRecord standing for zero tensors



@dataclass(frozen=True)
class Instruction:
    """A decoded message: which handler method to call, with what, and how to lay out the reply."""

    message_type: str
    layout: str  # "message-api", "legacy" or "unsupported"
    method: str  # handler method name ("" if unsupported)
    arrays: list[np.ndarray] = field(default_factory=list)
    array_keys: list[str] = field(default_factory=list)
    array_record: str = ""  # name of the instruction's ArrayRecord (message API)
    config: dict[str, Any] = field(default_factory=dict)
    problem: str = ""  # why the message is unsupported


@dataclass(frozen=True)
class Answer:
    """What goes into the reply: content records, or an error reason (never both)."""

    records: dict[str, objects.Record] = field(default_factory=dict)
    error: str = ""


# ---- decoding -------------------------------------------------------------------------------

# Legacy record names: instruction record prefix -> (handler method, reply prefix).
LEGACY = {
    "fitins": ("fit", "fitres"),
    "evaluateins": ("evaluate", "evaluateres"),
    "getparametersins": ("get_parameters", "getparametersres"),
    "getpropertiesins": ("get_properties", "getpropertiesres"),
}
MESSAGE_API = {"train": "fit", "evaluate": "evaluate", "query": "get_properties"}


def read_instruction(message: Message, tree: ObjectTree, pulled: dict[str, bytes]) -> Instruction:
    """The instruction a pulled message carries (raises ObjectError if its objects do not decode)."""
    inflated = objects.inflate_message(tree, pulled)
    message_type = message.metadata.message_type
    if inflated.content is None:  # a ServerApp does not send errors to nodes
        return Instruction(message_type, "unsupported", "", problem="the message carries an error, no content")
    try:
        return _instruction(message_type, inflated.content)
    except CodecError as error:  # an Array whose .npy we refuse (dtype, shape): hostile data
        raise objects.ObjectError(message.metadata.message_id, str(error)) from None


def _instruction(message_type: str, content: dict[str, objects.Record]) -> Instruction:
    names = set(content)
    for prefix, (method, _) in LEGACY.items():
        if f"{prefix}.config" in names:
            config = dict(content[f"{prefix}.config"])
            if prefix in ("fitins", "evaluateins"):
                record = content.get(f"{prefix}.parameters")
                if not isinstance(record, objects.ArrayRecord):
                    return _unsupported(message_type, content, f"{prefix}.parameters is not an ArrayRecord")
                keys = [key for key in record if key != EMPTY_TENSOR_KEY]
                if not all(key.isdigit() for key in keys):
                    return _unsupported(message_type, content, f"{prefix}.parameters keys are not 0, 1, ...")
                keys.sort(key=int)
                arrays = [record[key].to_numpy(f"{prefix}.parameters[{key!r}]") for key in keys]
                return Instruction(message_type, "legacy", method, arrays, keys, config=config)
            return Instruction(message_type, "legacy", method, config=config)

    method = MESSAGE_API.get(message_type)
    array_records = [name for name, record in content.items() if isinstance(record, objects.ArrayRecord)]
    config_records = [name for name, record in content.items() if isinstance(record, objects.ConfigRecord)]
    if method is None:
        return _unsupported(message_type, content, f"message type {message_type!r} is not train/evaluate/query")
    if len(config_records) > 1:
        return _unsupported(message_type, content, "more than one ConfigRecord")
    config = dict(content[config_records[0]]) if config_records else {}
    if method == "get_properties":
        return Instruction(message_type, "message-api", method, config=config)
    if len(array_records) != 1:
        return _unsupported(message_type, content, f"{len(array_records)} ArrayRecords, expected 1")
    name = array_records[0]
    keys = list(content[name])
    arrays = [content[name][key].to_numpy(f"{name}[{key!r}]") for key in keys]
    return Instruction(message_type, "message-api", method, arrays, keys, name, config)


def _unsupported(message_type: str, content: dict[str, objects.Record], problem: str) -> Instruction:
    records = ", ".join(f"{name} ({type(record).__name__})" for name, record in content.items()) or "none"
    return Instruction(message_type, "unsupported", "", problem=f"{problem}; records: {records}")


# ---- answering (runs on the transport's worker thread) -----------------------------------------


def answer(handler: Any, instruction: Instruction) -> Answer:
    """Call the handler and lay out its result. Never raises: failures become ``Answer.error``."""
    if instruction.layout == "unsupported":
        return Answer(error=f"unsupported message: {instruction.problem}")
    method = getattr(handler, instruction.method, None)
    if method is None:
        return Answer(error=f"Client does not implement `{instruction.method}`")
    arguments = (instruction.config,)
    if instruction.method in ("fit", "evaluate"):
        arguments = (instruction.arrays, instruction.config)
    try:
        result = method(*arguments)
    except Exception as error:  # the user's code: report it, keep the node alive
        log.exception("%s raised", instruction.method)
        return Answer(error=f"{instruction.method} raised {type(error).__name__}: {error}")
    try:
        if instruction.layout == "legacy":
            return Answer(_legacy_reply(instruction, result))
        return Answer(_message_api_reply(instruction, result))
    except FedprotoError as error:  # HandlerError, CodecError, ObjectError
        log.error("%s returned an invalid result: %s", instruction.method, error)
        return Answer(error=f"{instruction.method} returned an invalid result: {error}")


def _message_api_reply(instruction: Instruction, result: Any) -> dict[str, objects.Record]:
    if instruction.method == "get_properties":
        return {"properties": objects.ConfigRecord(_mapping(result, "get_properties"))}
    if instruction.method == "fit":
        arrays, num_examples, metrics = unpack_result(result, "fit", "(parameters, num_examples, metrics)")
        arrays = _arrays(arrays, "fit")
        if len(arrays) != len(instruction.array_keys):
            raise HandlerError(f"fit returned {len(arrays)} arrays for the {len(instruction.array_keys)} received")
        record = _array_record(dict(zip(instruction.array_keys, arrays)))
        metric_values = metric_record(_mapping(metrics, "fit metrics"), {NUM_EXAMPLES: check_count(num_examples, "num_examples")})
        return {instruction.array_record: record, "metrics": objects.MetricRecord(metric_values)}
    loss, num_examples, metrics = unpack_result(result, "evaluate", "(loss, num_examples, metrics)")
    reserved = {EVAL_LOSS: check_loss(loss, "loss"), NUM_EXAMPLES: check_count(num_examples, "num_examples")}
    return {"metrics": objects.MetricRecord(metric_record(_mapping(metrics, "evaluate metrics"), reserved))}


def _legacy_reply(instruction: Instruction, result: Any) -> dict[str, objects.Record]:
    prefix = LEGACY_REPLY[instruction.method]
    status = objects.ConfigRecord(dict(LEGACY_STATUS_OK))
    if instruction.method == "get_properties":
        return {f"{prefix}.properties": objects.ConfigRecord(_mapping(result, "get_properties")),
                f"{prefix}.status": status}
    if instruction.method == "get_parameters":
        return {f"{prefix}.parameters": _legacy_arrays(_arrays(result, "get_parameters")), f"{prefix}.status": status}
    if instruction.method == "fit":
        arrays, num_examples, metrics = unpack_result(result, "fit", "(parameters, num_examples, metrics)")
        return {
            f"{prefix}.metrics": objects.ConfigRecord(_mapping(metrics, "fit metrics")),
            f"{prefix}.num_examples": objects.MetricRecord({"num_examples": check_count(num_examples, "num_examples")}),
            f"{prefix}.parameters": _legacy_arrays(_arrays(arrays, "fit")),
            f"{prefix}.status": status,
        }
    loss, num_examples, metrics = unpack_result(result, "evaluate", "(loss, num_examples, metrics)")
    return {
        f"{prefix}.loss": objects.MetricRecord({"loss": check_loss(loss, "loss")}),
        f"{prefix}.num_examples": objects.MetricRecord({"num_examples": check_count(num_examples, "num_examples")}),
        f"{prefix}.metrics": objects.ConfigRecord(_mapping(metrics, "evaluate metrics")),
        f"{prefix}.status": status,
    }


LEGACY_REPLY = {method: reply for method, reply in LEGACY.values()}


def _legacy_arrays(arrays: list[np.ndarray]) -> objects.ArrayRecord:
    """recorddict_compat's layout: keys "0", "1", ...; an empty list is one "_empty" entry."""
    if not arrays:
        return objects.ArrayRecord({EMPTY_TENSOR_KEY: objects.Array("", (), TENSOR_TYPE, b"")})
    return _array_record({str(index): array for index, array in enumerate(arrays)})


def _array_record(arrays: dict[str, np.ndarray]) -> objects.ArrayRecord:
    return objects.ArrayRecord({key: objects.Array.from_numpy(array, f"array {key!r}") for key, array in arrays.items()})


def metric_record(metrics: dict[str, Any], reserved: dict[str, int | float]) -> dict[str, Any]:
    """The handler's metrics as MetricRecord values (module docstring), then ``reserved`` on top."""
    values: dict[str, Any] = {}
    for key, value in metrics.items():
        mapped = _metric_value(value)
        if mapped is None:
            log.warning("metric %r dropped: a MetricRecord holds int, float or lists of them, not %s",
                        key, type(value).__name__)
            continue
        if key in reserved:
            log.warning("metric %r replaced by the value the strategy reads", key)
            continue
        values[key] = mapped
    values.update(reserved)
    return values


def _metric_value(value: Any) -> int | float | list[int] | list[float] | None:
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, list) and value:
        if all(isinstance(v, numbers.Integral) and not isinstance(v, (bool, np.bool_)) for v in value):
            return [int(v) for v in value]
        if all(isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) for v in value):
            return [float(v) for v in value]
    return None


def _arrays(value: Any, method: str) -> list[np.ndarray]:
    if not isinstance(value, (list, tuple)) or not all(isinstance(a, np.ndarray) for a in value):
        raise HandlerError(f"{method} must return a list of NumPy arrays, got {type(value).__name__}")
    return list(value)


def _mapping(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict) or not all(isinstance(key, str) for key in value):
        raise HandlerError(f"{what}: expected a dict with str keys, got {type(value).__name__}")
    return value


# ---- the reply message ------------------------------------------------------------------------------


def build_reply(answer: Answer, instruction: Metadata, node_id: int, now: float) -> objects.DeflatedMessage:
    """The reply to ``instruction``: metadata as flwr's ``Message(reply_to=...)`` sets it.

    src = this node, dst = the instruction's sender, reply_to_message_id = its id, run_id,
    group_id and message_type copied, created_at = now, and ttl = what is left of the
    instruction's (``created_at + ttl - now``): a longer one makes the SuperLink drop the reply
    without telling us (``linkstate/in_memory_linkstate.py``, store_message_res).
    """
    metadata = Metadata(
        run_id=instruction.run_id,
        src_node_id=node_id,
        dst_node_id=instruction.src_node_id,
        reply_to_message_id=instruction.message_id,
        group_id=instruction.group_id,
        message_type=instruction.message_type,
        created_at=now,
        ttl=instruction.created_at + instruction.ttl - now,
    )
    if answer.error:
        return objects.deflate_message(metadata, error=Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=answer.error))
    return objects.deflate_message(metadata, answer.records)
