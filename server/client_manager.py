"""Which clients are connected right now, and picking some of them for a round.

A client is registered by the transport when its Join stream opens and unregistered when the
stream ends, however it ends (client closed it, crashed, timed out, server shut down). All
methods run on the server's asyncio event loop; nothing here blocks.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Callable
from typing import Protocol

log = logging.getLogger("fedproto.server")


class Client(Protocol):
    """What the manager needs from a connected client: a unique id."""

    cid: str


class ClientManager:
    """The pool of connected clients (flwr's SimpleClientManager, on asyncio)."""

    def __init__(self, seed: int | None = None) -> None:
        self._clients: dict[str, Client] = {}
        self._random = random.Random(seed)
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []

    def num_available(self) -> int:
        return len(self._clients)

    def __len__(self) -> int:
        return len(self._clients)

    def all(self) -> dict[str, Client]:
        """Connected clients by id (a copy: the pool changes while callers iterate)."""
        return dict(self._clients)

    def register(self, client: Client) -> bool:
        """Add a client; False if its id is already registered."""
        if client.cid in self._clients:
            return False
        self._clients[client.cid] = client
        self._wake_waiters()
        return True

    def unregister(self, client: Client) -> None:
        """Remove a client. Idempotent: every way a stream can end may call it."""
        self._clients.pop(client.cid, None)

    async def wait_for(self, num_clients: int, timeout: float | None = None) -> bool:
        """Wait until at least ``num_clients`` are connected; False if ``timeout`` s pass first."""
        if len(self._clients) >= num_clients:
            return True
        waiter = asyncio.get_running_loop().create_future()
        entry = (num_clients, waiter)
        self._waiters.append(entry)
        try:
            await asyncio.wait_for(waiter, timeout)
            return True
        except TimeoutError:
            return False
        finally:
            if entry in self._waiters:
                self._waiters.remove(entry)

    def sample(
        self,
        num_clients: int,
        min_num_clients: int | None = None,
        criterion: Callable[[Client], bool] | None = None,
    ) -> list[Client]:
        """``num_clients`` distinct clients chosen at random, or [] if that many are not there.

        Unlike flwr's, this never blocks: the FL loop awaits :meth:`wait_for` first. An empty
        list (too few clients, or too few matching ``criterion``) makes the loop skip the step.
        """
        if min_num_clients is None:
            min_num_clients = num_clients
        if len(self._clients) < min_num_clients:
            log.info("sampling: %d clients connected, %d required", len(self._clients), min_num_clients)
            return []
        candidates = list(self._clients.values())
        if criterion is not None:
            candidates = [client for client in candidates if criterion(client)]
        if num_clients > len(candidates):
            log.info("sampling: %d clients requested, %d available", num_clients, len(candidates))
            return []
        return self._random.sample(candidates, num_clients)

    def _wake_waiters(self) -> None:
        for wanted, waiter in self._waiters:
            if len(self._clients) >= wanted and not waiter.done():
                waiter.set_result(None)
