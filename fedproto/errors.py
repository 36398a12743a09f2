"""One family for everything fedproto refuses, so a caller can catch it in one clause.

``except FedprotoError`` catches a bad tensor or Scalar (:class:`CodecError`), an invalid
instruction (:class:`~fedproto.dispatch.ProtocolError`), a client reply that cannot be used
(``ReplyError``) and the Fleet API's object-tree and node errors alike. Each subclass keeps its
own name, so a caller that cares can still tell them apart.
"""


class FedprotoError(Exception):
    """Base class of every error fedproto raises on input it refuses."""


class CodecError(FedprotoError, ValueError):
    """A value that cannot cross the wire; ``field`` says where, ``reason`` says why."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason
