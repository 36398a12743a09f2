"""``run_server``: start the gRPC server, run the rounds, say goodbye to the clients, stop."""

from __future__ import annotations

import asyncio
import gc
import logging
from pathlib import Path

from fedproto import tensor_formats
from fedproto.server.client_manager import ClientManager
from fedproto.server.loop import LoopConfig, ServerResult, disconnect_all, run_rounds
from fedproto.server.strategy import FedAvg, Strategy
from fedproto.server.transport import create_server
from fedproto.wire import MAX_MESSAGE_LENGTH

log = logging.getLogger("fedproto.server")

# Seconds in-flight calls get to finish when the server stops.
STOP_GRACE_SECONDS = 1.0

# Thousands of open streams mean thousands of live coroutines and futures, which Python's
# cyclic GC re-scans again and again at its default young threshold (700 allocations): ~15% of
# the server's CPU at 1,000 clients (bench/scale.py). Collecting 70x less often costs little memory.
GC_YOUNG_THRESHOLD = 50_000


def run_server(
    address: str = "0.0.0.0:8080",
    strategy: Strategy | None = None,
    rounds: int = 1,
    *,
    round_timeout: float | None = None,
    certificates: tuple[bytes, bytes, bytes] | None = None,
    history_path: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    resume: bool = False,
    max_message_length: int = MAX_MESSAGE_LENGTH,
    wait_timeout: float | None = None,
    tensor_type: str | None = None,
) -> ServerResult:
    """Serve ``FlowerService.Join`` on ``address`` and run ``rounds`` rounds of ``strategy``.

    Blocks until done, on an asyncio loop of its own. At the end every connected client gets
    ReconnectIns(seconds=0) and the gRPC server stops.

    - ``round_timeout``: seconds a client may take to answer; a silent client counts as a failure
      and its stream is closed. None waits forever (flwr's default too).
    - ``certificates``: (CA, server certificate, server key) as PEM bytes switches on TLS.
    - ``history_path``: History JSON, rewritten after every round.
    - ``checkpoint_dir`` / ``resume``: save parameters + History after every round; with
      ``resume``, continue after the last round saved there (``server.checkpoint``).
    - ``wait_timeout``: seconds to wait for the strategy's ``min_available_clients``; past it
      :class:`~server.loop.ClientsUnavailable` is raised. None waits forever.
    - ``tensor_type``: the tensor format (``fedproto.tensor_formats``) of the first instruction
      to a client not heard from yet; later ones use the format the client writes. None: the
      initial model's format when a client gave it, else "numpy.ndarray".

    Raises :class:`~server.transport.BindError` if ``address`` cannot be listened on.
    """
    if rounds < 0:
        raise ValueError(f"rounds must be >= 0, got {rounds}")
    if resume and checkpoint_dir is None:
        raise ValueError("resume=True needs a checkpoint_dir")
    if tensor_type is not None and tensor_type not in tensor_formats.registered():
        raise ValueError(f"tensor_type {tensor_type!r} is not a registered format {tensor_formats.registered()}")
    config = LoopConfig(
        rounds=rounds,
        round_timeout=round_timeout,
        wait_timeout=wait_timeout,
        history_path=Path(history_path) if history_path is not None else None,
        checkpoint_dir=Path(checkpoint_dir) if checkpoint_dir is not None else None,
        resume=resume,
        tensor_type=tensor_type,
    )
    previous_thresholds = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *previous_thresholds[1:])
    try:
        return asyncio.run(_serve(address, strategy or FedAvg(), config, certificates, max_message_length))
    finally:
        gc.set_threshold(*previous_thresholds)


async def _serve(
    address: str,
    strategy: Strategy,
    config: LoopConfig,
    certificates: tuple[bytes, bytes, bytes] | None,
    max_message_length: int,
) -> ServerResult:
    clients = ClientManager()
    server = create_server(address, clients, certificates, max_message_length)
    await server.start()
    log.info("listening on %s (%s), %s, %d round(s)", address, "TLS" if certificates else "insecure",
             strategy, config.rounds)
    try:
        result = await run_rounds(strategy, clients, config)
        await disconnect_all(clients)
        return result
    finally:
        # On an error or Ctrl-C the clients get no ReconnectIns: their streams just break, so
        # they keep trying to rejoin, ready for a restart with resume.
        await server.stop(STOP_GRACE_SECONDS)
