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

Calling the handler is ``fedproto.handler``'s, as on the Join stream: the handler gets its own
writable arrays, and its result is checked there. This module only decodes the layouts and lays
out the checked result; it checks only what a layout forces (one array per received key of a
message-API ArrayRecord; the value kinds of a MetricRecord or ConfigRecord).

Errors. A handler that lacks the method, raises, or returns something that does not fit the
reply becomes a reply with ``Message.error``: code 2 (``CLIENT_APP_RAISED_EXCEPTION``, what
flwr's ClientApp sends when user code raises) and ``fedproto.handler``'s reason, the same text
the Join stream sends, e.g. ``fit raised ValueError: ...``.
The ServerApp counts a failure for this node; the others aggregate; the node goes on. A message
whose content fits neither layout gets the same kind of error reply. Only hostile input
(objects that do not decode) raises: :class:`fedproto.objects.ObjectError`.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, NamedTuple

import numpy as np

from fedproto import objects
from fedproto.error_pb2 import Error
from fedproto.errors import CodecError
from fedproto.handler import Call, HandlerError, HandlerFailure, Result, serve
from fedproto.message_pb2 import Metadata
from fedproto.npy import TENSOR_TYPE
from fedproto.text import bound_text

log = logging.getLogger(__name__)

CLIENT_APP_RAISED_EXCEPTION = 2  # flwr/common/constant.py ErrorCode
NUM_EXAMPLES = "num-examples"  # the key message-API strategies weigh by (FedAvg's weighted_by_key)
EVAL_LOSS = "eval_loss"  # where flwr's app templates put evaluate's loss
LEGACY_STATUS_OK = {"code": 0, "message": "Success"}  # Code.OK and the text flwr's NumPyClient sends
EMPTY_TENSOR_KEY = "_empty"  # recorddict_compat: an ArrayRecord standing for zero tensors

MESSAGE_API_LAYOUT, LEGACY_LAYOUT = "message-api", "legacy"


class Instruction(NamedTuple):
    """A decoded message: the handler call it asks for and how to lay out the reply.

    ``call`` is None when the content fits no layout; ``problem`` then says why.
    """

    layout: str  # MESSAGE_API_LAYOUT or LEGACY_LAYOUT
    call: Call | None
    array_keys: list[str]  # the keys of the instruction's ArrayRecord, in order
    array_record: str = ""  # message API: the name of the instruction's ArrayRecord
    problem: str = ""


class Answer(NamedTuple):
    """What goes into the reply: the deflated content records, or an error reason (never both)."""

    content: objects.DeflatedContent | None
    error: str = ""


# ---- decoding -------------------------------------------------------------------------------

# Legacy record names: instruction record prefix -> (handler method, reply prefix).
LEGACY = {
    "fitins": ("fit", "fitres"),
    "evaluateins": ("evaluate", "evaluateres"),
    "getparametersins": ("get_parameters", "getparametersres"),
    "getpropertiesins": ("get_properties", "getpropertiesres"),
}
LEGACY_REPLY = {method: reply for method, reply in LEGACY.values()}
MESSAGE_API = {"train": "fit", "evaluate": "evaluate", "query": "get_properties"}


def read_instruction(message: objects.InflatedMessage) -> Instruction:
    """The handler call an inflated message asks for (ObjectError: an Array whose .npy we refuse)."""
    if message.content is None:  # a ServerApp does not send errors to nodes
        return Instruction(MESSAGE_API_LAYOUT, None, [], problem="the message carries an error, no content")
    try:
        return _instruction(message.metadata.message_type, message.content)
    except CodecError as error:  # an Array whose .npy we refuse (dtype, shape): hostile data
        raise objects.ObjectError(message.message_id, str(error)) from None


def _instruction(message_type: str, content: objects.RecordDict) -> Instruction:
    names = set(content)
    for prefix, (method, _) in LEGACY.items():
        if f"{prefix}.config" not in names:
            continue
        config = dict(content[f"{prefix}.config"])
        if method not in ("fit", "evaluate"):
            return Instruction(LEGACY_LAYOUT, Call(method, config), [])
        record = content.get(f"{prefix}.parameters")
        if not isinstance(record, objects.ArrayRecord):
            return _unsupported(LEGACY_LAYOUT, content, f"{prefix}.parameters is not an ArrayRecord")
        keys = [key for key in record if key != EMPTY_TENSOR_KEY]
        if not all(key.isdigit() for key in keys):
            return _unsupported(LEGACY_LAYOUT, content, f"{prefix}.parameters keys are not 0, 1, ...")
        keys.sort(key=int)
        arrays = [record[key].to_numpy(f"{prefix}.parameters[{key!r}]") for key in keys]
        return Instruction(LEGACY_LAYOUT, Call(method, config, arrays), keys)

    api_method = MESSAGE_API.get(message_type)
    array_records = [name for name, record in content.items() if isinstance(record, objects.ArrayRecord)]
    config_records = [name for name, record in content.items() if isinstance(record, objects.ConfigRecord)]
    if api_method is None:
        return _unsupported(MESSAGE_API_LAYOUT, content,
                            f"message type {bound_text(message_type)!r} is not train/evaluate/query")
    if len(config_records) > 1:
        return _unsupported(MESSAGE_API_LAYOUT, content, "more than one ConfigRecord")
    config = dict(content[config_records[0]]) if config_records else {}
    if api_method == "get_properties":
        return Instruction(MESSAGE_API_LAYOUT, Call(api_method, config), [])
    if len(array_records) != 1:
        return _unsupported(MESSAGE_API_LAYOUT, content, f"{len(array_records)} ArrayRecords, expected 1")
    name = array_records[0]
    record = content[name]
    keys = list(record)
    arrays = [record[key].to_numpy(f"{bound_text(name)}[{bound_text(key)!r}]") for key in keys]
    return Instruction(MESSAGE_API_LAYOUT, Call(api_method, config, arrays), keys, name)


def _unsupported(layout: str, content: objects.RecordDict, problem: str) -> Instruction:
    """A message no layout serves; its records are named (bounded: the names are the peer's)."""
    shown = list(content.items())[:8]
    records = ", ".join(f"{bound_text(name, 60)} ({type(record).__name__})" for name, record in shown) or "none"
    if len(content) > len(shown):
        records += f", ... ({len(content) - len(shown)} more)"
    return Instruction(layout, None, [], problem=f"{problem}; records: {records}")


# ---- answering (runs on the transport's worker thread) -----------------------------------------


def answer(handler: object, instruction: Instruction) -> Answer:
    """Call the handler and deflate its reply's content. Never raises: failures become ``Answer.error``.

    The content's objects are hashed here, on the worker thread, so that a large reply does not
    hold up the heartbeats of the transport's loop.
    """
    if instruction.call is None:
        return Answer(None, f"unsupported message: {instruction.problem}")

    def build(result: Result) -> objects.DeflatedContent:
        if instruction.layout == LEGACY_LAYOUT:
            records = _legacy_reply(instruction.call.method, result)  # type: ignore[union-attr]
        else:
            records = _message_api_reply(instruction, result)
        return objects.deflate_content(records)

    answered = serve(handler, instruction.call, build)
    if isinstance(answered, HandlerFailure):
        return Answer(None, answered.reason)
    return Answer(answered)


def _message_api_reply(instruction: Instruction, result: Result) -> objects.RecordDict:
    assert instruction.call is not None
    method = instruction.call.method
    if method == "get_properties":
        return {"properties": _config_record(result.metrics, "properties")}
    if method == "fit":
        keys = instruction.array_keys
        if len(result.parameters) != len(keys):  # an ArrayRecord: one array per received key
            raise HandlerError(f"parameters: {len(result.parameters)} arrays for the {len(keys)} received")
        record = _array_record(dict(zip(keys, result.parameters)))
        metrics = metric_record(result.metrics, {NUM_EXAMPLES: result.num_examples})
        return {instruction.array_record: record, "metrics": objects.MetricRecord(metrics)}
    reserved = {EVAL_LOSS: result.loss, NUM_EXAMPLES: result.num_examples}
    return {"metrics": objects.MetricRecord(metric_record(result.metrics, reserved))}


def _legacy_reply(method: str, result: Result) -> objects.RecordDict:
    """recorddict_compat's layout; the record types flwr's ServerApp reads (docs/PROTOCOL.md §17)."""
    prefix = LEGACY_REPLY[method]
    status = objects.ConfigRecord(dict(LEGACY_STATUS_OK))
    if method == "get_properties":
        return {f"{prefix}.properties": _config_record(result.metrics, "properties"), f"{prefix}.status": status}
    if method == "get_parameters":
        return {f"{prefix}.parameters": _legacy_arrays(result.parameters), f"{prefix}.status": status}
    num_examples = objects.MetricRecord({"num_examples": result.num_examples})
    metrics = _config_record(result.metrics, "metrics")
    if method == "fit":
        return {f"{prefix}.metrics": metrics, f"{prefix}.num_examples": num_examples,
                f"{prefix}.parameters": _legacy_arrays(result.parameters), f"{prefix}.status": status}
    return {f"{prefix}.loss": objects.MetricRecord({"loss": result.loss}), f"{prefix}.num_examples": num_examples,
            f"{prefix}.metrics": metrics, f"{prefix}.status": status}


def _config_record(values: dict[str, Any], field: str) -> objects.ConfigRecord:
    """A ConfigRecord of the handler's values, each checked (it holds every Scalar and lists of them)."""
    record = objects.ConfigRecord(values)
    objects.check_record(record, field)
    return record


def _legacy_arrays(arrays: list[np.ndarray]) -> objects.ArrayRecord:
    """recorddict_compat's layout: keys "0", "1", ...; an empty list is one "_empty" entry."""
    if not arrays:
        return objects.ArrayRecord({EMPTY_TENSOR_KEY: objects.Array("", (), TENSOR_TYPE, b"")})
    return _array_record({str(index): array for index, array in enumerate(arrays)})


def _array_record(arrays: dict[str, np.ndarray]) -> objects.ArrayRecord:
    record = objects.ArrayRecord()
    for index, (key, array) in enumerate(arrays.items()):
        record[key] = objects.Array.from_numpy(array, f"parameters[{index}]")
    return record


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


# ---- the reply message ------------------------------------------------------------------------------


def build_reply(answer: Answer, instruction: Metadata, node_id: int, now: float) -> objects.DeflatedMessage:
    """The reply to ``instruction``: metadata as flwr's ``Message(reply_to=...)`` sets it.

    src = this node, dst = the instruction's sender, reply_to_message_id = its id, run_id,
    group_id and message_type copied, created_at = now, and ttl = what is left of the
    instruction's (``created_at + ttl - now``): a longer one makes the SuperLink drop the reply
    without telling us (``linkstate/in_memory_linkstate.py``, store_message_res).
    ``instruction`` is the metadata of the hashed Message object, never PullMessages' copy.
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
    if answer.content is None:
        return objects.deflate_message(metadata, error=Error(code=CLIENT_APP_RAISED_EXCEPTION, reason=answer.error))
    return objects.deflate_message(metadata, answer.content)
