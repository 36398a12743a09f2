"""Our node's request signatures, checked by flwr 1.42's own verification code: the HTTP
middleware's ``authenticate_node`` (superlink/routers/fleet/node_auth.py) and the gRPC-rere
``NodeAuthServerInterceptor``. This is the only one of the node's tests that imports flwr."""

from __future__ import annotations

import base64
import datetime
import sys
import types

import grpc
import pytest
from fastapi import HTTPException
from flwr.proto.fleet_pb2 import RegisterNodeFleetRequest  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.grpc_rere.node_auth_server_interceptor import NodeAuthServerInterceptor
from flwr.supercore.primitives.asymmetric import generate_key_pairs, private_key_to_bytes, public_key_to_bytes
from flwr.superlink.routers.fleet.node_auth import authenticate_node
from starlette.requests import Request

from fedproto.client import fleet
from fedproto.client.fleet import NodeKey, run_node


def http_request(headers: dict[str, str], public_key: bytes) -> Request:
    scope = {"type": "http", "method": "POST", "path": "/v1/fleet/register-node",
             "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]}
    request = Request(scope)
    request.state.protobuf_request = RegisterNodeFleetRequest(public_key=public_key)
    return request


def test_http_headers_pass_flwrs_authenticate_node():
    key = NodeKey()
    headers = key.http_headers()
    assert set(headers) == {"flwr-public-key", "flwr-timestamp", "flwr-signature"}
    assert base64.b64decode(headers["flwr-public-key"]) == key.public_key_pem
    assert key.public_key_pem.startswith(b"-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo PEM
    authenticate_node(http_request(headers, key.public_key_pem))  # raises HTTPException(401) if not


@pytest.mark.parametrize("tamper", ["signature", "timestamp", "other key", "old timestamp"])
def test_flwr_refuses_tampered_http_headers(tamper):
    key = NodeKey()
    headers = key.http_headers()
    if tamper == "signature":
        signature = bytearray(base64.b64decode(headers["flwr-signature"]))
        signature[-1] ^= 1
        headers["flwr-signature"] = base64.b64encode(bytes(signature)).decode()
    elif tamper == "timestamp":
        headers["flwr-timestamp"] = headers["flwr-timestamp"].replace("+00:00", "+00:01")
    elif tamper == "other key":
        headers["flwr-public-key"] = NodeKey().http_headers()["flwr-public-key"]
    else:  # signed correctly, but 306 s ago: outside the window the SuperLink accepts
        signed_at = datetime.datetime.now(tz=datetime.timezone.utc) - datetime.timedelta(seconds=306)
        key.sign_now = lambda: (signed_at.isoformat(), key._key.sign(signed_at.isoformat().encode(), key._ecdsa))
        headers = key.http_headers()
    with pytest.raises(HTTPException) as refused:
        authenticate_node(http_request(headers, key.public_key_pem))
    assert refused.value.status_code == 401


class AbortContext:
    def abort(self, code, details):
        raise RuntimeError(f"aborted: {code} {details}")


def grpc_call(metadata, public_key: bytes):
    interceptor = NodeAuthServerInterceptor(state_factory=None)  # RegisterNode never reads the state
    details = types.SimpleNamespace(method="/flwr.proto.Fleet/RegisterNode", invocation_metadata=metadata)
    handler = interceptor.intercept_service(
        lambda _details: grpc.unary_unary_rpc_method_handler(lambda request, context: "served"), details)
    return handler.unary_unary(RegisterNodeFleetRequest(public_key=public_key), AbortContext())


def test_grpc_metadata_passes_flwrs_interceptor():
    key = NodeKey()
    metadata = key.grpc_metadata()
    assert [name for name, _ in metadata] == ["flwr-public-key-bin", "flwr-timestamp", "flwr-signature-bin"]
    assert grpc_call(metadata, key.public_key_pem) == "served"


def test_flwr_interceptor_refuses_a_wrong_grpc_signature():
    key = NodeKey()
    public_key, timestamp, signature = (value for _, value in key.grpc_metadata())
    forged = [("flwr-public-key-bin", public_key), ("flwr-timestamp", timestamp),
              ("flwr-signature-bin", signature[:-1] + bytes([signature[-1] ^ 1]))]
    with pytest.raises(RuntimeError, match="Invalid signature"):
        grpc_call(forged, public_key)


def test_node_key_loads_the_pem_flwr_writes():
    private_key, public_key = generate_key_pairs()  # SECP384R1, PKCS#8 PEM: flwr's own key files
    key = NodeKey(private_key_to_bytes(private_key))
    assert key.public_key_pem == public_key_to_bytes(public_key)
    authenticate_node(http_request(key.http_headers(), key.public_key_pem))


def test_fresh_keys_are_secp384r1_and_differ():
    from cryptography.hazmat.primitives.serialization import load_pem_public_key

    first, second = NodeKey(), NodeKey()
    assert first.public_key_pem != second.public_key_pem
    assert load_pem_public_key(first.public_key_pem).curve.name == "secp384r1"


@pytest.mark.parametrize("pem, words", [(b"not a pem", "cannot use --node-key"),
                                        (b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
                                         "cannot use --node-key")])
def test_unusable_node_key_is_a_usage_error(pem, words, capsys):
    assert run_node("127.0.0.1:9", object(), node_key_pem=pem, install_signal_handlers=False) == 2
    assert words in capsys.readouterr().err


def test_missing_cryptography_tells_the_user_what_to_install(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "cryptography.hazmat.primitives", None)  # import now fails
    assert run_node("127.0.0.1:9", object(), install_signal_handlers=False) == fleet.EXIT_USAGE == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["fedproto-client: the Fleet API needs the 'cryptography' package: pip install 'fedproto[fleet]'"]
