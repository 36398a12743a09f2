"""The fedproto reference server: Flower's legacy server (``FlowerService.Join``) on grpc.aio.

    from fedproto.server import run_server, FedAvg
    result = run_server(address="0.0.0.0:8080", strategy=FedAvg(min_available_clients=2), rounds=3)
    result.history, result.parameters

- ``server.transport``: the Join servicer (one coroutine per stream), TLS, message sizes.
- ``server.client_manager``: connected clients; ``wait_for``, ``sample``.
- ``server.loop``: the rounds (fit, evaluate, failures, checkpoints).
- ``server.strategy``: ``Strategy`` (flwr's interface, on NumPy arrays, plus per-round
  aggregators that fold each result in as it arrives), ``FedAvg``, ``FedProx`` and ``FedAdam``.
- ``server.history``, ``server.checkpoint``: what happened, and how to resume it.
- ``server.cli``: the ``fedproto-server`` command.
"""

from fedproto.server.app import run_server
from fedproto.server.client_manager import ClientManager
from fedproto.server.history import History, RoundRecord
from fedproto.server.loop import ClientsUnavailable, ServerResult
from fedproto.server.strategy import FedAdam, FedAvg, FedProx, Strategy
from fedproto.server.transport import BindError
from fedproto.server_role import EvaluateIns, EvaluateRes, Failure, FailureKind, FitIns, FitRes

__all__ = [
    "BindError", "ClientManager", "ClientsUnavailable", "EvaluateIns", "EvaluateRes", "Failure",
    "FailureKind", "FedAdam", "FedAvg", "FedProx", "FitIns", "FitRes", "History", "RoundRecord", "ServerResult",
    "Strategy", "run_server",
]
