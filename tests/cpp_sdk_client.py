"""A stand-in for Flower's C++ SDK client (``quickstart-cpp`` over the Join stream), for tests.

Written from reading the SDK (docs/cpp-sdk.md has the citations), not copied, and kept to what
the SDK does on the wire:

- one Join stream per connection, no ``wait_for_ready``: a server that is not up yet ends the
  client at once ("Disconnect and shut down.", exit 0), as the SDK's ``start_client`` does;
- tensors are the raw bytes of flat float64 arrays, little-endian, ``tensor_type "cpp_double"``:
  tensor 0 holds the weights (m0, m1), tensor 1 the bias b;
- replies carry no ``Status`` (the SDK never sets it; it reads as code OK), FitRes has no
  metrics, EvaluateRes has a float32 loss and the metric ``{"loss": <double>}``;
- GetPropertiesIns, an empty ServerMessage, or a config value that is not double, sint64, bool,
  string or bytes (e.g. uint64) make the SDK throw a ``const char*`` that nothing catches: the
  process aborts (SIGABRT) without answering or closing its stream. The stand-in does the same;
- ReconnectIns(seconds=0) is answered DisconnectRes(ACK) and the client exits; seconds > 0 is
  answered DisconnectRes(RECONNECT) and the client rejoins at once (the SDK's sleep is commented
  out); a stream the server ends without ReconnectIns also ends the client.

Two deliberate differences, neither visible in the protocol: the data and initial weights are
seeded by CLIENT_ID instead of ``std::random_device``, and training is full-batch gradient
descent instead of shuffled mini-batches, so that a test can recompute every number.

    python tests/cpp_sdk_client.py CLIENT_ID HOST:PORT [--train-size N] [--record FILE.jsonl]

``--record`` appends one JSON line per instruction handled: what arrived and what was sent.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import resource
import sys
from pathlib import Path

import grpc
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fedproto.transport_pb2 import ClientMessage, Parameters, Reason, Scalar, ServerMessage  # noqa: E402
from fedproto.wire import JOIN_METHOD, MAX_MESSAGE_LENGTH, message_size_options  # noqa: E402

DOUBLE = np.dtype("<f8")  # the SDK writes host doubles; every host it targets is little-endian
TRUE_WEIGHTS, TRUE_BIAS = np.array([3.5, 9.3]), 1.7  # quickstart-cpp's main.cc
LEARNING_RATE = 0.01
ITERATIONS = 20
TEST_SIZE = 500


def crash(what: str) -> None:
    """What an uncaught C++ exception does: libstdc++'s line on stderr, then abort()."""
    print(f"stand-in: the SDK throws here ({what})", file=sys.stderr)
    print("terminate called after throwing an instance of 'char const*'", file=sys.stderr, flush=True)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # no core file in the test's directory
    os.abort()


def as_int32(value: int) -> int:
    """The SDK stores Scalar ints and num_examples in a C++ ``int``: two's-complement wrap."""
    return (value + 2**31) % 2**32 - 2**31


# ---------------------------------------------------------------------------- the example's model


class LineFitClient:
    """quickstart-cpp's SimpleFlwrClient + LineFitModel: y = m0*x0 + m1*x1 + b."""

    def __init__(self, client_id: int, train_size: int) -> None:
        rng = np.random.default_rng(client_id)
        self.weights = rng.integers(-10, 11, size=2).astype(np.float64)
        self.bias = 0.0
        self.train_x, self.train_y = self._dataset(rng, train_size)
        self.test_x, self.test_y = self._dataset(rng, TEST_SIZE)

    @staticmethod
    def _dataset(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(-10.0, 10.0, size=(size, 2))
        return x, x @ TRUE_WEIGHTS + TRUE_BIAS

    def get_parameters(self) -> list[bytes]:
        return [self.weights.astype(DOUBLE).tobytes(), np.array([self.bias], DOUBLE).tobytes()]

    def set_parameters(self, tensors: list[bytes]) -> None:
        if not tensors:  # the example keeps its own model when the server sends none
            return
        if len(tensors) < 2 or len(tensors[1]) < DOUBLE.itemsize:
            crash("a bias tensor the example reads past its end (undefined behaviour in C++)")
        weights = tensors[0]
        self.weights = np.frombuffer(weights[: len(weights) // DOUBLE.itemsize * DOUBLE.itemsize], DOUBLE).copy()
        self.bias = float(np.frombuffer(tensors[1][: DOUBLE.itemsize], DOUBLE)[0])

    def fit(self) -> int:
        x, y = self.train_x, self.train_y
        for _ in range(ITERATIONS):
            error = y - (x @ self.weights + self.bias)
            self.weights = self.weights - LEARNING_RATE * (-2.0 / len(y)) * (x.T @ error)
            self.bias = self.bias - LEARNING_RATE * (-2.0 / len(y)) * float(error.sum())
        return len(y)

    def evaluate(self) -> tuple[int, float]:
        error = self.test_y - (self.test_x @ self.weights + self.bias)
        return len(self.test_y), float(np.mean(error**2))


# ---------------------------------------------------------------------------- the SDK's handler


def config_from_proto(config) -> dict:
    """The SDK's metrics_from_proto: five Scalar kinds; any other kind throws."""
    out = {}
    for key, scalar in config.items():
        kind = scalar.WhichOneof("scalar")
        if kind not in ("double", "sint64", "bool", "string", "bytes"):
            crash(f"Error scalar type: {key!r} is {kind}")
        value = getattr(scalar, kind)
        out[key] = as_int32(value) if kind == "sint64" else value
    return out


def handle(client: LineFitClient, message: ServerMessage, record) -> tuple[ClientMessage, int, bool]:
    """The SDK's handle(): (reply, sleep_duration, keep_going). Same order of tests as the SDK."""
    kind = message.WhichOneof("msg")
    if kind == "reconnect_ins":
        seconds = message.reconnect_ins.seconds
        reason = Reason.ACK if seconds == 0 else Reason.RECONNECT
        record({"kind": kind, "seconds": seconds})
        return ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=reason)), as_int32(seconds), False
    if kind == "get_parameters_ins":  # the SDK does not look at this config
        tensors = client.get_parameters()
        record({"kind": kind, "sent": [_doubles(t) for t in tensors]})
        res = ClientMessage.GetParametersRes(parameters=Parameters(tensors=tensors, tensor_type="cpp_double"))
        return ClientMessage(get_parameters_res=res), 0, True
    if kind == "fit_ins":
        config_from_proto(message.fit_ins.config)  # fit_ins_from_proto, before the client's fit()
        print("Fitting...", flush=True)
        received = list(message.fit_ins.parameters.tensors)
        client.set_parameters(received)
        num_examples = as_int32(client.fit())
        tensors = client.get_parameters()
        record({"kind": kind, "received": [_doubles(t) for t in received],
                "sent": [_doubles(t) for t in tensors], "num_examples": num_examples})
        res = ClientMessage.FitRes(parameters=Parameters(tensors=tensors, tensor_type="cpp_double"),
                                   num_examples=num_examples)
        return ClientMessage(fit_res=res), 0, True
    if kind == "evaluate_ins":
        config_from_proto(message.evaluate_ins.config)
        print("Evaluating...", flush=True)
        client.set_parameters(list(message.evaluate_ins.parameters.tensors))
        num_examples, loss = client.evaluate()
        res = ClientMessage.EvaluateRes(loss=loss, num_examples=as_int32(num_examples),
                                        metrics={"loss": Scalar(double=loss)})
        record({"kind": kind, "loss": res.loss, "metric_loss": loss, "num_examples": res.num_examples})
        return ClientMessage(evaluate_res=res), 0, True
    crash("Unkown server message")  # the SDK's spelling; reached by GetPropertiesIns and by no message at all
    raise AssertionError("unreachable: crash() aborts")


def _doubles(tensor: bytes) -> list[float]:
    return np.frombuffer(tensor[: len(tensor) // DOUBLE.itemsize * DOUBLE.itemsize], DOUBLE).tolist()


# ---------------------------------------------------------------------------- the SDK's start_client


def start_client(server_address: str, client: LineFitClient, record) -> None:
    while True:
        sleep_duration = 0
        channel = grpc.insecure_channel(server_address, options=message_size_options(MAX_MESSAGE_LENGTH))
        outbox: queue.SimpleQueue = queue.SimpleQueue()
        replies = channel.stream_stream(JOIN_METHOD)(iter(outbox.get, None))
        try:
            for data in replies:
                reply, sleep_duration, keep_going = handle(client, ServerMessage.FromString(data), record)
                outbox.put(reply.SerializeToString())
                if not keep_going:
                    break
            outbox.put(None)  # WritesDone
            for _ in replies:  # Finish: wait for the server's status; its value is not looked at
                pass
        except grpc.RpcError:
            outbox.put(None)
        channel.close()
        if sleep_duration == 0:
            print("Disconnect and shut down.", flush=True)
            return
        # The SDK's sleep before rejoining is commented out: it rejoins at once.


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("client_id", type=int)
    parser.add_argument("server_url")
    parser.add_argument("--train-size", type=int, default=1000, help="training examples (default: %(default)s)")
    parser.add_argument("--record", type=Path, help="append one JSON line per instruction handled")
    args = parser.parse_args()

    def record(entry: dict) -> None:
        if args.record:
            with args.record.open("a") as file:
                file.write(json.dumps(entry) + "\n")

    start_client(args.server_url, LineFitClient(args.client_id, args.train_size), record)


if __name__ == "__main__":
    main()
