"""Calling the user's handler: one contract for the Join stream and the Fleet API.

The handler is any object with (some of) flwr's ``NumPyClient`` method names::

    get_properties(config) -> dict
    get_parameters(config) -> list[ndarray]
    fit(parameters, config) -> (list[ndarray], num_examples, metrics)
    evaluate(parameters, config) -> (loss, num_examples, metrics)

Both protocols call it through :func:`serve`, which owns everything that is not a layout:

1. look up the method; a missing one fails with flwr's text, ``Client does not implement `fit```;
2. give it arrays of its own: each received array is copied once, writable, and no two share
   memory (two keys that carry the same object give two independent arrays), so a handler may
   train in place (``parameters[0] += lr * grad``) or keep references to its inputs;
3. call it; whatever it raises fails as ``fit raised ValueError: ...`` (traceback logged);
4. check what it returned (:func:`check_result`): the 3-tuple, ``num_examples`` a non-negative
   int64, ``loss`` a real number, the arrays NumPy arrays a ``.npy`` can carry, metrics and
   properties a dict with str keys;
5. hand the checked :class:`Result` to the layout's ``build`` (the Join reply in
   ``fedproto.dispatch``, the Fleet records in ``fedproto.fleet_content``); whatever
   :class:`~fedproto.errors.FedprotoError` it raises fails as ``fit returned an invalid result: ...``.

A failure is a :class:`HandlerFailure` with one text, the same on both protocols; each layout
sends it its own way (a non-OK ``Status`` on Join, ``Message.error`` on the Fleet API). What stays
in a layout is only what it forces: a Join ``Scalar`` holds no lists, a message-API
``MetricRecord`` holds no str, and its ``ArrayRecord`` needs one array per received key.
"""

from __future__ import annotations

import logging
import numbers
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

import numpy as np

from fedproto.errors import FedprotoError
from fedproto.npy import dtype_refusal, shape_refusal

log = logging.getLogger(__name__)

INT64_MAX = 2**63 - 1
METHODS = ("get_properties", "get_parameters", "fit", "evaluate")
TAKES_ARRAYS = ("fit", "evaluate")  # the methods called as (parameters, config)

Built = TypeVar("Built")


class HandlerError(FedprotoError):
    """The user's handler returned something that cannot be sent (wrong shape or kind)."""


class Call(NamedTuple):
    """One call of the handler, as a layout decoded it from the instruction."""

    method: str  # one of METHODS
    config: dict[str, Any]
    parameters: Sequence[np.ndarray] = ()  # fit/evaluate: the received arrays (read-only views are fine)


class Result(NamedTuple):
    """What the handler returned, checked; the fields its method does not return are left empty."""

    parameters: list[np.ndarray]  # get_parameters, fit
    num_examples: int  # fit, evaluate
    loss: float  # evaluate
    metrics: dict[str, Any]  # fit and evaluate: metrics; get_properties: the properties


class HandlerFailure(NamedTuple):
    """The handler could not answer; ``reason`` is what the reply says."""

    reason: str


def serve(handler: object, call: Call, build: Callable[[Result], Built]) -> Built | HandlerFailure:
    """Call ``handler`` for ``call`` and lay out its result with ``build``. Never raises for the handler."""
    method: Callable[..., Any] | None = getattr(handler, call.method, None)
    if method is None:
        return HandlerFailure(f"Client does not implement `{call.method}`")  # flwr's text
    config = dict(call.config)
    try:
        if call.method in TAKES_ARRAYS:
            returned = method(own_arrays(call.parameters), config)
        else:
            returned = method(config)
    except Exception as error:  # the user's code: report it, keep the session alive
        log.exception("%s raised", call.method)
        return HandlerFailure(f"{call.method} raised {type(error).__name__}: {error}")
    try:
        return build(check_result(call.method, returned))
    except FedprotoError as error:  # HandlerError, or a layout's CodecError
        log.error("%s returned an invalid result: %s", call.method, error)
        return HandlerFailure(f"{call.method} returned an invalid result: {error}")


def own_arrays(arrays: Sequence[np.ndarray]) -> list[np.ndarray]:
    """A writable copy of each array, in its memory order: the handler's alone, whatever it does."""
    return [np.array(array, order="K", copy=True) for array in arrays]


def check_result(method: str, returned: Any) -> Result:
    """The handler's return value as a :class:`Result`; :class:`HandlerError` says what is wrong."""
    if method == "get_properties":
        return Result([], 0, 0.0, _mapping(returned, "properties"))
    if method == "get_parameters":
        return Result(_arrays(returned, "parameters"), 0, 0.0, {})
    if method == "fit":
        arrays, num_examples, metrics = _triple(returned, method, "(parameters, num_examples, metrics)")
        return Result(_arrays(arrays, "parameters"), _count(num_examples, "num_examples"), 0.0,
                      _mapping(metrics, "metrics"))
    loss, num_examples, metrics = _triple(returned, method, "(loss, num_examples, metrics)")
    return Result([], _count(num_examples, "num_examples"), _loss(loss, "loss"), _mapping(metrics, "metrics"))


def _triple(returned: Any, method: str, shape: str) -> tuple[Any, Any, Any]:
    if not isinstance(returned, (tuple, list)):
        raise HandlerError(f"{method} must return {shape}, got {type(returned).__name__}")
    if len(returned) != 3:
        raise HandlerError(f"{method} must return {shape}, got a {type(returned).__name__} of {len(returned)}")
    return returned[0], returned[1], returned[2]


def _arrays(value: Any, field: str) -> list[np.ndarray]:
    """A list (or tuple) of ndarrays a .npy can carry."""
    if isinstance(value, np.ndarray):
        raise HandlerError(f"{field}: expected a list of ndarrays, got a single ndarray")
    if not isinstance(value, (list, tuple)):
        raise HandlerError(f"{field}: expected a list of ndarrays, got {type(value).__name__}")
    for index, array in enumerate(value):
        if not isinstance(array, np.ndarray):
            raise HandlerError(f"{field}[{index}]: expected a numpy.ndarray, got {type(array).__name__}")
        refusal = dtype_refusal(array.dtype) or shape_refusal(array.shape, array.dtype.itemsize)
        if refusal:
            raise HandlerError(f"{field}[{index}]: {refusal}")
    return list(value)


def _count(value: Any, field: str) -> int:
    """An int or NumPy integer in int64's range; not a float, not a bool."""
    try:
        count = operator.index(value)
    except TypeError:
        raise HandlerError(f"{field}: expected an int, got {type(value).__name__}") from None
    if isinstance(value, (bool, np.bool_)) or not 0 <= count <= INT64_MAX:  # the field is an int64
        raise HandlerError(f"{field}: expected a non-negative int64, got {value!r}")
    return count


def _loss(value: Any, field: str) -> float:
    """A float, int or NumPy float; not a bool, not a string."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise HandlerError(f"{field}: expected a float, got {type(value).__name__}")
    return float(value)


def _mapping(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise HandlerError(f"{field}: expected a dict with str keys, got {type(value).__name__}")
    for key in value:
        if not isinstance(key, str):
            raise HandlerError(f"{field}: key {key!r} is not a str")
    return dict(value)
