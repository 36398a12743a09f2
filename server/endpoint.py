"""gRPC plumbing shared by everything that serves FlowerService.Join: the reference server,
the conformance runner (``kit.conformance``) and the trace relay (``kit.trace``).

It lives here, not in ``fedproto/``, because the core imports no gRPC; and in ``server/``
rather than ``kit/`` because all three users are Join *servers*, and the reference server
must not depend on the tools while the tools may use the server's plumbing.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from fedproto.wire import JOIN_METHOD

SERVICE_NAME, _, METHOD_NAME = JOIN_METHOD.lstrip("/").partition("/")


def join_handler(join: Callable[..., Any]) -> grpc.GenericRpcHandler:
    """Serve ``join(request_iterator, context)`` as Join with no (de)serializers.

    The endpoint reads and writes raw bytes, so it decodes every message itself and can name
    what is wrong with a malformed one (or, in the relay, forward it unchanged).
    """
    rpc = grpc.stream_stream_rpc_method_handler(join)
    return grpc.method_handlers_generic_handler(SERVICE_NAME, {METHOD_NAME: rpc})
