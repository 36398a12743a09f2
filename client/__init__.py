"""The fedproto edge client: ``run_client(server_address, handler)``; CLI ``fedproto-client``."""

from fedproto.client.app import Retry, run_client

__all__ = ["Retry", "run_client"]
