"""The byte-level claims of docs/PROTOCOL.md, checked against numpy, grpc and flwr themselves."""

from __future__ import annotations

import ast
import inspect
import json
import socket
import threading
from concurrent import futures

import grpc
import numpy as np
import pytest
from flwr import common as flwr_common
from flwr.client import start_client
from flwr.common import GRPC_MAX_MESSAGE_LENGTH, serde
from flwr.proto import transport_pb2 as flwr_pb2
from flwr.server import start_server
from flwr.server.strategy.aggregate import aggregate_inplace
from flwr.server.superlink.fleet.grpc_bidi.grpc_server import start_grpc_server

from fedproto.codec import CodecError, bytes_to_ndarray, ndarray_to_bytes, scalar_from_proto, scalar_to_proto
from fedproto.kit.make_vectors import DEFAULT_DIR, MANIFEST, tensor_from_json
from fedproto.transport_pb2 import Scalar
from fedproto.wire import JOIN_METHOD, MAX_MESSAGE_LENGTH, message_size_options

MANIFEST_DATA = json.loads((DEFAULT_DIR / MANIFEST).read_text(encoding="utf-8"))
FIT_INS = next(v for v in MANIFEST_DATA["vectors"] if v["name"] == "server_fit_ins")


def _vector(name: str) -> bytes:
    return (DEFAULT_DIR / f"{name}.bin").read_bytes()


# ---------------------------------------------------------------------------- .npy, byte by byte


def parse_npy_per_doc(data: bytes) -> np.ndarray:
    """The recipe of docs/PROTOCOL.md "Tensors", step by step, without numpy.load."""
    assert data[:6] == b"\x93NUMPY"  # magic
    assert data[6:8] == b"\x01\x00"  # version 1.0
    header_len = int.from_bytes(data[8:10], "little")
    assert (10 + header_len) % 64 == 0  # padded so the data starts 64-byte aligned
    header = data[10:10 + header_len].decode("latin1")
    dictionary = header.rstrip(" \n")
    assert dictionary.endswith(", }")  # a Python dict literal with a trailing comma
    assert header == dictionary + " " * (header_len - len(dictionary) - 1) + "\n"  # spaces, then newline
    fields = ast.literal_eval(dictionary)
    assert list(fields) == ["descr", "fortran_order", "shape"]
    assert fields["fortran_order"] is False
    dtype = np.dtype(fields["descr"])
    body = data[10 + header_len:]
    assert len(body) == dtype.itemsize * int(np.prod(fields["shape"], dtype=np.int64))
    return np.frombuffer(body, dtype=dtype).reshape(fields["shape"])


def test_every_vector_tensor_parses_with_the_documented_recipe():
    fit = flwr_pb2.ServerMessage.FromString(_vector("server_fit_ins")).fit_ins
    tensors = FIT_INS["content"]["parameters"]["tensors"]
    assert len(fit.parameters.tensors) == len(tensors)
    for data, expected in zip(fit.parameters.tensors, tensors):
        array = parse_npy_per_doc(data)
        assert array.dtype.str == expected["dtype"]
        assert np.array_equal(array, tensor_from_json(expected))


def test_the_documented_example_header_is_exactly_what_numpy_writes():
    data = flwr_pb2.ServerMessage.FromString(_vector("server_fit_ins")).fit_ins.parameters.tensors[0]
    assert data[:10] == b"\x93NUMPY\x01\x00\x76\x00"  # header length 0x0076 = 118
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }"
    assert data[10:128] == (header + " " * (118 - len(header) - 1) + "\n").encode("latin1")
    assert len(data) == 128 + 2 * 3 * 4
    assert data[128:132] == np.float32(0.5).tobytes()  # little-endian, C order: [0, 0] first


def test_big_endian_tensors_keep_their_byte_order_on_the_wire():
    tensors = flwr_pb2.ServerMessage.FromString(_vector("server_fit_ins")).fit_ins.parameters.tensors
    big_int32 = tensors[3]
    assert b"'descr': '>i4'" in big_int32
    assert big_int32[128:132] == (7).to_bytes(4, "big")


# ---------------------------------------------------------------------------- gRPC framing


class _Capture:
    """A loopback TCP forwarder that keeps a copy of every byte in each direction."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.to_server = bytearray()
        self.to_client = bytearray()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        client, _ = self.listener.accept()
        server = socket.create_connection(("127.0.0.1", self.upstream_port))
        pumps = [threading.Thread(target=self._pump, args=args, daemon=True)
                 for args in ((client, server, self.to_server), (server, client, self.to_client))]
        for pump in pumps:
            pump.start()
        for pump in pumps:
            pump.join()
        client.close()
        server.close()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket, copy: bytearray) -> None:
        try:
            while chunk := source.recv(65536):
                copy.extend(chunk)
                sink.sendall(chunk)
            sink.shutdown(socket.SHUT_WR)
        except OSError:  # the other side reset the connection: the capture is complete
            pass

    def close(self) -> None:
        self.listener.close()
        self.threads[0].join(timeout=5)


class _RecordingJoin(grpc.GenericRpcHandler):
    """Answers one ClientMessage with a fixed ServerMessage; remembers the :path it was called on."""

    def __init__(self, reply: bytes) -> None:
        self.reply = reply
        self.paths: list[str] = []

    def service(self, handler_call_details):
        self.paths.append(handler_call_details.method)

        def join(request_iterator, context):
            for _ in request_iterator:
                yield self.reply
                return

        return grpc.stream_stream_rpc_method_handler(join)


def _framed(message: bytes) -> bytes:
    """docs/PROTOCOL.md "Framing": 1 byte compressed flag (0), 4 bytes big-endian length, message."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def _data_frame_header(stream: bytes, framed: bytes) -> bytes:
    """The 9-byte HTTP/2 frame header right before ``framed`` in the captured ``stream``."""
    at = stream.find(framed)
    assert at >= 9, "framed message not found in the captured bytes"
    return stream[at - 9:at]


def test_grpc_sends_each_message_with_the_documented_5_byte_prefix():
    client_message, server_message = _vector("client_fit_res"), _vector("server_fit_ins")
    recorder = _RecordingJoin(server_message)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2), options=message_size_options())
    server.add_generic_rpc_handlers([recorder])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    capture = _Capture(port)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{capture.port}") as channel:
            replies = list(channel.stream_stream(JOIN_METHOD)(iter([client_message])))
    finally:
        server.stop(grace=None)
        capture.close()

    assert replies == [server_message]
    assert recorder.paths == ["/flwr.proto.FlowerService/Join"] == [JOIN_METHOD]
    to_server, to_client = bytes(capture.to_server), bytes(capture.to_client)
    assert to_server.startswith(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")  # HTTP/2 with prior knowledge
    for stream, message in ((to_server, client_message), (to_client, server_message)):
        frame = _data_frame_header(stream, _framed(message))
        assert int.from_bytes(frame[:3], "big") == 5 + len(message)  # one DATA frame holds it all
        assert frame[3] == 0x0  # frame type DATA


# ---------------------------------------------------------------------------- limits


def test_message_size_and_keepalive_defaults():
    # flwr 1.42's docstrings say 512 MB, but the default it applies is 2 GiB - 1, both sides.
    assert GRPC_MAX_MESSAGE_LENGTH == 2**31 - 1
    for function, name in ((start_server, "grpc_max_message_length"), (start_client, "grpc_max_message_length"),
                           (start_grpc_server, "max_message_length")):
        assert inspect.signature(function).parameters[name].default == 2**31 - 1
    assert MAX_MESSAGE_LENGTH == 512 * 1024 * 1024  # fedproto's default, both sides
    assert inspect.signature(start_grpc_server).parameters["keepalive_time_ms"].default == 210_000


# ---------------------------------------------------------------------------- Scalars


@pytest.mark.parametrize("value, kind", [
    (True, "bool"), (b"\x00", "bytes"), (0.5, "double"), (-3, "sint64"), (2**63 - 1, "sint64"),
    (2**63, "uint64"), (2**64 - 1, "uint64"), ("text", "string"),
])
def test_python_values_map_to_the_documented_scalar_kind_as_in_flwr(value, kind):
    ours = scalar_to_proto(value)
    assert ours.WhichOneof("scalar") == kind
    assert ours.SerializeToString() == serde.scalar_to_proto(value).SerializeToString()


# ---------------------------------------------------------------------------- wrong replies


def test_flwr_fedavg_cannot_aggregate_a_reply_of_the_wrong_kind():
    """A FitIns answered with EvaluateRes reads as an empty OK FitRes, which FedAvg cannot average."""
    good = serde.fit_res_from_proto(flwr_pb2.ClientMessage.FromString(_vector("client_fit_res")).fit_res)
    wrong = serde.fit_res_from_proto(flwr_pb2.ClientMessage.FromString(_vector("client_evaluate_res")).fit_res)
    with pytest.raises(ValueError, match="zip\\(\\) argument 2 is shorter than argument 1"):
        aggregate_inplace([(None, good), (None, wrong)])


def test_a_fortran_ordered_array_is_written_with_fortran_order_true_and_read_back_by_both():
    transposed = np.arange(6, dtype="<f4").reshape(2, 3).T  # Fortran-contiguous, shape (3, 2)
    data = ndarray_to_bytes(transposed)
    assert b"'fortran_order': True, 'shape': (3, 2)" in data
    # Memory order is column-major: 0, 1, 2 are the first column of the (2, 3) original.
    assert data[128:140] == np.array([0, 1, 2], "<f4").tobytes()
    assert np.array_equal(bytes_to_ndarray(data), transposed)
    assert np.array_equal(flwr_common.bytes_to_ndarray(data), transposed)


def test_a_scalar_without_a_kind_is_a_named_error_in_fedproto_and_a_type_error_in_flwr():
    with pytest.raises(CodecError, match="Scalar has no value set"):
        scalar_from_proto(Scalar())
    with pytest.raises(TypeError, match="attribute name must be string"):
        serde.scalar_from_proto(flwr_pb2.Scalar())
