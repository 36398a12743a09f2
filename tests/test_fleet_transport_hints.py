"""The node knocked at the wrong door: it says which door in one line (client/fleet.py transport_hint).

Fakes stand in for the four ways it shows (each checked by hand against a real SuperLink by
``make compat``, see docs/compat.md): a 1.23-1.39 SuperLink's HTTP port answers 404 on
/v1/fleet/*; a gRPC server answers an HTTP request with an HTTP/2 frame; an HTTP server answers a
gRPC call with HTTP/1.x; a 1.20-1.22 SuperLink refuses RegisterNode with UNAUTHENTICATED.
"""

from __future__ import annotations

import http.server
import logging
import threading
from concurrent import futures

import grpc
import pytest

from fedproto.client.fleet import Retry, run_node
from fedproto.node import Generation

pytestmark = pytest.mark.timeout(30)


class NotFound(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"detail":"Not Found"}'
        self.send_response(404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def http_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def grpc_server(handler: grpc.GenericRpcHandler | None = None):
    server = grpc.server(futures.ThreadPoolExecutor(2), handlers=[handler] if handler else None)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, f"127.0.0.1:{port}"


class RefuseEverything(grpc.GenericRpcHandler):
    """What flwr 1.22's SuperLink answers a RegisterNode (its auth interceptor does not know the key)."""

    def service(self, details):
        def refuse(request, context):
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "Invalid node ID")
        return grpc.unary_unary_rpc_method_handler(refuse)


def node(address: str, transport: str, generation: Generation = Generation.REGISTER_ACTIVATE) -> int:
    return run_node(address, object(), transport=transport, retry=Retry(attempts=2, first_delay=0.1),
                    install_signal_handlers=False, generation=generation)


def hints(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records
            if record.name == "fedproto.client" and record.levelno == logging.ERROR]


def test_http_404_on_the_fleet_path_names_the_grpc_rere_fleet_api(http_server, caplog):
    assert node(http_server, "http") == 5
    [line] = hints(caplog)
    assert line.startswith(f"{http_server} answers HTTP 404 on /v1/fleet/register-node")
    assert "flwr 1.20-1.39 only over gRPC-rere on its --fleet-api-address (default 9092)" in line
    assert "--fleet-transport grpc-rere" in line and "\n" not in line


def test_http_to_a_grpc_server_names_grpc_rere_and_exits_at_once(caplog):
    server, address = grpc_server()
    try:
        assert node(address, "http") == 3
    finally:
        server.stop(0)
    [line] = hints(caplog)
    assert line.startswith(f"{address} is a gRPC server, not HTTP")
    assert "--fleet-transport grpc-rere" in line


def test_grpc_to_an_http_server_names_http(http_server, caplog):
    assert node(http_server, "grpc-rere") == 3
    [line] = hints(caplog)
    assert line.startswith(f"{http_server} does not answer gRPC (an HTTP/1.x server?)")
    assert "use --fleet-transport http" in line


def test_register_node_refused_over_grpc_names_the_1_20_generation(caplog):
    server, address = grpc_server(RefuseEverything())
    try:
        assert node(address, "grpc-rere") == 5
    finally:
        server.stop(0)
    [line] = hints(caplog)
    assert "flwr 1.20-1.22 SuperLinks join nodes with CreateNode" in line
    assert "--superlink-release 1.22" in line


def test_create_node_refused_over_grpc_names_the_1_23_generation(caplog):
    server, address = grpc_server(RefuseEverything())
    try:
        assert node(address, "grpc-rere", Generation.CREATE_DELETE) == 5
    finally:
        server.stop(0)
    [line] = hints(caplog)
    assert "a flwr 1.23 or later SuperLink has no CreateNode: drop --superlink-release" in line
