"""Clients for the server tests: well-behaved, misbehaving, and flwr's own.

Handlers for the edge client (``python -m fedproto.client --app tests.server_clients:NAME``), built on
the demo's softmax client so their good replies fit the same model:

- ``NanClient``: fit returns NaN and Inf weights.
- ``RaisingClient``: fit raises, so the edge client answers with a non-OK Status.
- ``ZeroExamplesClient``: fit trains as the demo does but reports ``num_examples=0``.
- ``AddsOneClient``: any model; fit adds 1 to every parameter (1 example), evaluate reports loss 0.
- ``SlowClient``: fit touches ``$SLOW_FIT_MARKER`` (if set), then sleeps ``$SLOW_FIT_SECONDS``.

Scripts (``python tests/server_clients.py MODE --server HOST:PORT``):

- ``flwr``: flwr's ``start_client`` with a NumPyClient around the demo client ($DEMO_PARTITION).
- ``wrong-type`` / ``pickled`` / ``truncated`` / ``silent``: raw gRPC with fedproto messages.
  GetParametersIns and EvaluateIns get proper answers; FitIns gets an EvaluateRes, a pickled
  object-array .npy, a cut-off .npy, or no answer at all.
"""

from __future__ import annotations

import argparse
import io
import os
import queue
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedproto.client.demo import SoftmaxClient, make_client  # noqa: E402


class NanClient(SoftmaxClient):
    def fit(self, parameters, config):
        weights, bias = (p.copy() for p in parameters)
        weights[0, 0], bias[0] = np.nan, np.inf
        return [weights, bias], len(self.y), {}


class RaisingClient(SoftmaxClient):
    def fit(self, parameters, config):
        raise RuntimeError("simulated training crash")


class ZeroExamplesClient(SoftmaxClient):
    def fit(self, parameters, config):
        arrays, _, metrics = super().fit(parameters, config)
        return arrays, 0, metrics


class AddsOneClient:
    def fit(self, parameters, config):
        return [p + 1 for p in parameters], 1, {}

    def evaluate(self, parameters, config):
        return 0.0, 1, {}


class SlowClient(SoftmaxClient):
    def __init__(self) -> None:
        super().__init__(partition=int(os.environ.get("DEMO_PARTITION", "0")))

    def fit(self, parameters, config):
        marker = os.environ.get("SLOW_FIT_MARKER")
        if marker:
            Path(marker).write_text(str(config.get("server_round")))
        time.sleep(float(os.environ.get("SLOW_FIT_SECONDS", "1")))
        return super().fit(parameters, config)


def run_flwr_client(server: str) -> None:
    import flwr

    class DemoNumPyClient(flwr.client.NumPyClient):
        def __init__(self) -> None:
            self.demo = make_client()

        def get_parameters(self, config):
            return self.demo.get_parameters(config)

        def fit(self, parameters, config):
            return self.demo.fit(parameters, config)

        def evaluate(self, parameters, config):
            return self.demo.evaluate(parameters, config)

    flwr.client.start_client(server_address=server, client=DemoNumPyClient().to_client(),
                             insecure=True, max_retries=5, max_wait_time=60)


def _pickled_npy() -> bytes:
    """A .npy file holding an object array: loading it would unpickle (run) arbitrary code."""
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"not": "a tensor"}], dtype=object), allow_pickle=True)
    return buffer.getvalue()


def _truncated_npy() -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((20, 4), np.float32))
    return buffer.getvalue()[:-10]


def run_raw_client(server: str, mode: str) -> None:
    import grpc

    from fedproto.codec import ndarrays_to_parameters, parameters_to_ndarrays, scalars_to_proto
    from fedproto.transport_pb2 import ClientMessage, Parameters, ServerMessage, Status
    from fedproto.wire import JOIN_METHOD

    demo = make_client()
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    channel = grpc.insecure_channel(server)
    replies = channel.stream_stream(JOIN_METHOD)(iter(outbox.get, None), wait_for_ready=True)
    ok = Status(code=0, message="Success")
    try:
        for data in replies:
            message = ServerMessage.FromString(data)
            kind = message.WhichOneof("msg")
            print("received", kind, flush=True)
            if kind == "get_parameters_ins":
                reply = ClientMessage(get_parameters_res=ClientMessage.GetParametersRes(
                    status=ok, parameters=ndarrays_to_parameters(demo.get_parameters({}))))
            elif kind == "evaluate_ins":
                loss, num_examples, metrics = demo.evaluate(
                    parameters_to_ndarrays(message.evaluate_ins.parameters), {})
                reply = ClientMessage(evaluate_res=ClientMessage.EvaluateRes(
                    status=ok, loss=loss, num_examples=num_examples, metrics=scalars_to_proto(metrics)))
            elif kind == "reconnect_ins":
                outbox.put(ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=4))
                           .SerializeToString())
                break
            elif mode == "silent":
                continue  # never answer; the server must time us out
            elif mode == "wrong-type":
                reply = ClientMessage(evaluate_res=ClientMessage.EvaluateRes(status=ok, loss=1.0, num_examples=1))
            else:
                tensor = _pickled_npy() if mode == "pickled" else _truncated_npy()
                reply = ClientMessage(fit_res=ClientMessage.FitRes(
                    status=ok, num_examples=400,
                    parameters=Parameters(tensors=[tensor, tensor], tensor_type="numpy.ndarray")))
            outbox.put(reply.SerializeToString())
    except grpc.RpcError as error:
        print("stream ended:", error.code().name, error.details(), flush=True)
    finally:
        outbox.put(None)
        time.sleep(0.2)
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["flwr", "wrong-type", "pickled", "truncated", "silent"])
    parser.add_argument("--server", required=True)
    args = parser.parse_args()
    if args.mode == "flwr":
        run_flwr_client(args.server)
    else:
        run_raw_client(args.server, args.mode)


if __name__ == "__main__":
    main()
