"""flwr's own client (NumPyClient + start_client) serving an interop_handlers handler.

    python tests/flwr_numpy_client.py HOST:PORT      (HANDLER_* environment as for our client)

The mixed-fleet test runs this next to our edge client, so both sides of the comparison train
the same deterministic model.
"""

from __future__ import annotations

import sys

from flwr.client import NumPyClient, start_client

import interop_handlers


class HandlerAsNumPyClient(NumPyClient):
    def __init__(self, handler) -> None:
        self.handler = handler

    def get_parameters(self, config):
        return self.handler.get_parameters(config)

    def fit(self, parameters, config):
        return self.handler.fit(parameters, config)

    def evaluate(self, parameters, config):
        return self.handler.evaluate(parameters, config)


if __name__ == "__main__":
    numpy_client = HandlerAsNumPyClient(interop_handlers.delta_client())
    if hasattr(numpy_client, "to_client"):
        start_client(server_address=sys.argv[1], client=numpy_client.to_client())
    else:  # older releases (flwr 1.0 among them): NumPyClient has no to_client(), start_numpy_client wraps it
        from flwr.client import start_numpy_client

        start_numpy_client(server_address=sys.argv[1], client=numpy_client)
