"""flwr's own start_server hosting C++ SDK clients, with a strategy like quickstart-cpp's.

quickstart-cpp's ``server.py`` runs flwr's ``start_server`` with ``FedAvgCpp``: FedAvg whose
``aggregate_fit`` reads each ``cpp_double`` tensor as a flat array of doubles, averages with
flwr's ``aggregate`` (weighted by num_examples) and writes the result back as ``cpp_double``;
its initial model is ``[1.0, 2.0], [3.0]``. This script does the same (written here, not copied;
it reads the doubles with ``struct``, independently of ``fedproto.tensor_formats``) and writes
what the run produced as JSON:

    python tests/flwr_cpp_server.py --address HOST:PORT --rounds 2 --out run.json [--initial-from-client]

``--initial-from-client`` gives the strategy no initial model, so flwr asks one client
(GetParametersIns). The JSON holds ``aggregated`` (round -> list of tensors as lists of
floats) and flwr's History losses and metrics.
"""

from __future__ import annotations

import argparse
import json
import struct
from pathlib import Path

import numpy as np
from flwr.common import Parameters
from flwr.server import ServerConfig, start_server
from flwr.server.strategy import FedAvg
from flwr.server.strategy.aggregate import aggregate, weighted_loss_avg

INITIAL_MODEL = [[1.0, 2.0], [3.0]]  # quickstart-cpp's server.py


def to_parameters(arrays) -> Parameters:
    tensors = [struct.pack(f"<{len(a)}d", *np.asarray(a, dtype=np.float64).tolist()) for a in arrays]
    return Parameters(tensors=tensors, tensor_type="cpp_double")


def from_parameters(parameters: Parameters) -> list[np.ndarray]:
    return [np.array(struct.unpack(f"<{len(t) // 8}d", t)) for t in parameters.tensors]


class FedAvgCpp(FedAvg):
    """FedAvg over cpp_double tensors; records each round's aggregated model."""

    def __init__(self, **kwargs) -> None:
        super().__init__(**kwargs)
        self.aggregated: dict[int, list[list[float]]] = {}

    def aggregate_fit(self, server_round, results, failures):
        if not results:
            return None, {}
        arrays = aggregate([(from_parameters(res.parameters), res.num_examples) for _, res in results])
        self.aggregated[server_round] = [a.tolist() for a in arrays]
        return to_parameters(arrays), {}

    def aggregate_evaluate(self, server_round, results, failures):
        if not results:
            return None, {}
        loss = weighted_loss_avg([(res.num_examples, res.loss) for _, res in results])
        total = sum(res.num_examples for _, res in results)
        metric = sum(res.num_examples * res.metrics["loss"] for _, res in results) / total
        return loss, {"loss": metric}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", required=True, metavar="HOST:PORT")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--min-clients", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--initial-from-client", action="store_true",
                        help="no initial model on the server: flwr asks a client for one")
    args = parser.parse_args()
    strategy = FedAvgCpp(
        min_fit_clients=args.min_clients, min_evaluate_clients=args.min_clients,
        min_available_clients=args.min_clients,
        initial_parameters=None if args.initial_from_client else to_parameters(INITIAL_MODEL),
    )
    history = start_server(server_address=args.address, config=ServerConfig(num_rounds=args.rounds),
                           strategy=strategy)
    args.out.write_text(json.dumps({
        "aggregated": strategy.aggregated,
        "losses_distributed": history.losses_distributed,
        "metrics_distributed": history.metrics_distributed,
    }))


if __name__ == "__main__":
    main()
