"""What the FL loop and a strategy exchange: flwr's Ins/Res messages, on NumPy arrays.

These mirror ``flwr.common.FitIns``/``FitRes``/``EvaluateIns``/``EvaluateRes`` but carry
``list[np.ndarray]`` and plain dicts instead of protobuf ``Parameters``: the loop decodes
every reply (``fedproto.codec``) before a strategy sees it, so a strategy never touches bytes.
A reply that cannot be used becomes a :class:`Failure` naming what went wrong.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import numpy as np

from fedproto.codec import ScalarValue

NDArrays = list[np.ndarray]
Config = dict[str, ScalarValue]
Metrics = dict[str, ScalarValue]


@dataclass
class FitIns:
    parameters: NDArrays
    config: Config = field(default_factory=dict)


@dataclass
class FitRes:
    parameters: NDArrays
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


@dataclass
class EvaluateIns:
    parameters: NDArrays
    config: Config = field(default_factory=dict)


@dataclass
class EvaluateRes:
    loss: float
    num_examples: int
    metrics: Metrics = field(default_factory=dict)


class FailureKind(enum.Enum):
    """Why a client's reply did not count. The value is what logs and History show."""

    STREAM_CLOSED = "stream_closed"  # the Join stream ended (client left, crashed, was killed)
    TIMEOUT = "timeout"  # no reply within the round timeout; the stream is closed
    STATUS = "status"  # the reply carries a non-OK Status (e.g. the handler raised)
    WRONG_REPLY = "wrong_reply"  # a valid ClientMessage, but not the answer to what was asked
    MALFORMED = "malformed"  # bytes that are not a ClientMessage
    BAD_TENSOR = "bad_tensor"  # a tensor that is not one plain .npy (pickled, truncated...)
    NON_FINITE = "non_finite"  # NaN or Inf in the parameters or the loss
    SHAPE_MISMATCH = "shape_mismatch"  # FitRes tensors not shaped like the global model


@dataclass(frozen=True)
class Failure:
    """One client that did not deliver a usable reply in a round."""

    cid: str
    kind: FailureKind
    reason: str

    def __str__(self) -> str:
        return f"{self.cid}: {self.kind.value}: {self.reason}"
