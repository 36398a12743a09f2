"""Raw-bytes clients that try to change the global model's dtype, give it an unusable start, or stall the server.

``python tests/hostile_clients.py MODE --server HOST:PORT`` joins with plain gRPC and fedproto
messages (no edge client, so nothing on our side cleans up what it sends):

- ``float64`` / ``big-endian`` / ``int8``: FitIns is answered with tensors of the model's
  shapes, values ``parameters + 100``, in that dtype (big-endian: the model's dtype, byte order
  swapped); 10,000 examples, so averaged in they would dominate the model.
- ``empty-model``: GetParametersIns is answered with status OK and no tensors.
- ``bool-model``: GetParametersIns is answered with bool tensors.
  Both answer FitIns with FIT_NOT_IMPLEMENTED.

EvaluateIns gets loss 1.0 on 1 example; ReconnectIns a DisconnectRes, then the client leaves.

- ``never-reads``: opens the Join stream and never reads from it, so its HTTP/2 flow-control
  window stays shut and a large instruction to it never finishes being written. It leaves after
  ``NEVER_READS_SECONDS`` (its test stops it sooner).
"""

from __future__ import annotations

import argparse
import queue
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

UPDATE_DTYPES = {
    "float64": lambda array: (array + 100).astype(np.float64),
    "big-endian": lambda array: (array + 100).astype(array.dtype.newbyteorder(">")),
    "int8": lambda array: (array + 100).astype(np.int8),
}
INITIAL_MODELS = {
    "empty-model": [],
    "bool-model": [np.ones((20, 4), bool), np.zeros(4, bool)],
}
NEVER_READS_SECONDS = 60
NEVER_READS_OPTIONS = [
    ("grpc.http2.bdp_probe", 0),  # no window growth behind the application's back
    ("grpc.http2.lookahead_bytes", 1024),
]


def never_read(server: str) -> None:
    import grpc

    from fedproto.wire import JOIN_METHOD

    outbox: queue.SimpleQueue = queue.SimpleQueue()
    channel = grpc.insecure_channel(server, options=NEVER_READS_OPTIONS)
    call = channel.stream_stream(JOIN_METHOD)(iter(outbox.get, None), wait_for_ready=True)
    print("stream opened; reading nothing", flush=True)
    time.sleep(NEVER_READS_SECONDS)
    outbox.put(None)
    call.cancel()
    channel.close()


def run(server: str, mode: str) -> None:
    import grpc

    from fedproto.codec import ndarrays_to_parameters, parameters_to_ndarrays
    from fedproto.transport_pb2 import ClientMessage, ServerMessage, Status
    from fedproto.wire import JOIN_METHOD

    ok = Status(code=0, message="Success")
    outbox: queue.SimpleQueue = queue.SimpleQueue()
    channel = grpc.insecure_channel(server)
    replies = channel.stream_stream(JOIN_METHOD)(iter(outbox.get, None), wait_for_ready=True)
    try:
        for data in replies:
            message = ServerMessage.FromString(data)
            kind = message.WhichOneof("msg")
            print("received", kind, flush=True)
            if kind == "get_parameters_ins":
                reply = ClientMessage(get_parameters_res=ClientMessage.GetParametersRes(
                    status=ok, parameters=ndarrays_to_parameters(INITIAL_MODELS.get(mode, []))))
            elif kind == "fit_ins" and mode in INITIAL_MODELS:
                reply = ClientMessage(fit_res=ClientMessage.FitRes(
                    status=Status(code=3, message="this client only hands out a bad initial model")))
            elif kind == "fit_ins":
                model = parameters_to_ndarrays(message.fit_ins.parameters)
                update = [UPDATE_DTYPES[mode](array) for array in model]
                reply = ClientMessage(fit_res=ClientMessage.FitRes(
                    status=ok, parameters=ndarrays_to_parameters(update), num_examples=10_000))
            elif kind == "evaluate_ins":
                reply = ClientMessage(evaluate_res=ClientMessage.EvaluateRes(status=ok, loss=1.0, num_examples=1))
            else:  # reconnect_ins
                outbox.put(ClientMessage(disconnect_res=ClientMessage.DisconnectRes(reason=4)).SerializeToString())
                break
            outbox.put(reply.SerializeToString())
    except grpc.RpcError as error:
        print("stream ended:", error.code().name, error.details(), flush=True)
    finally:
        outbox.put(None)
        time.sleep(0.2)
        channel.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=[*UPDATE_DTYPES, *INITIAL_MODELS, "never-reads"])
    parser.add_argument("--server", required=True)
    args = parser.parse_args()
    if args.mode == "never-reads":
        never_read(args.server)
    else:
        run(args.server, args.mode)


if __name__ == "__main__":
    main()
