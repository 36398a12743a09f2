"""What the user's handler must return, checked the same way for both transports.

The handler (flwr's NumPyClient method names) answers a Join instruction (``fedproto.dispatch``)
and a Fleet message (``fedproto.fleet_content``) alike. ``fit`` and ``evaluate`` return a
3-tuple; its counts and losses are checked here before anything is encoded, so a bad result
becomes a named :class:`HandlerError` that each transport reports in its own way (a non-OK
Status on Join, ``Message.error`` on the Fleet API), never a crash.
"""

from __future__ import annotations

import numbers
import operator
from typing import Any

import numpy as np

from fedproto.errors import FedprotoError

INT64_MAX = 2**63 - 1


class HandlerError(FedprotoError):
    """The user's handler returned something that cannot be sent (wrong shape or kind)."""


def unpack_result(result: Any, method: str, shape: str) -> tuple[Any, Any, Any]:
    """``fit``/``evaluate``'s 3-tuple (or list), e.g. shape = "(loss, num_examples, metrics)"."""
    if not isinstance(result, (tuple, list)):
        raise HandlerError(f"{method} must return {shape}, got {type(result).__name__}")
    if len(result) != 3:
        raise HandlerError(f"{method} must return {shape}, got a {type(result).__name__} of {len(result)}")
    return result[0], result[1], result[2]


def check_count(value: Any, field: str) -> int:
    """num_examples: an int or NumPy integer in int64's range; not a float, not a bool."""
    try:
        count = operator.index(value)
    except TypeError:
        raise HandlerError(f"{field}: expected an int, got {type(value).__name__}") from None
    if isinstance(value, (bool, np.bool_)) or not 0 <= count <= INT64_MAX:  # the field is an int64
        raise HandlerError(f"{field}: expected a non-negative int64, got {value!r}")
    return count


def check_loss(value: Any, field: str) -> float:
    """A loss: float, int or NumPy float; not a bool, not a string."""
    if not isinstance(value, numbers.Real) or isinstance(value, (bool, np.bool_)):
        raise HandlerError(f"{field}: expected a float, got {type(value).__name__}")
    return float(value)
