"""The Fleet vectors around the objects (kit/fleet_vectors/rpcs.json, signatures.json, the legacy
replies), checked against flwr 1.42's own code, and the vector keys against a real SuperLink.

- Every exchange's bytes are decoded with flwr's generated classes, found through flwr's own
  route table (``supercore/protobuf/translation.py`` PROTOBUF_REQUEST_TYPES, the response type
  its ``superlink/routers/fleet/router.py`` endpoint returns) and its Fleet service descriptor.
- Every request's headers pass flwr's ``authenticate_node`` (``superlink/routers/fleet/node_auth.py``)
  and its gRPC metadata flwr's ``NodeAuthServerInterceptor``, with the clock set to the request's
  timestamp; the signature cases are judged by flwr's ``verify_signature``
  (``supercore/primitives/asymmetric.py``), which both of those call.
- The legacy replies are read by flwr's ``recorddict_to_fitres`` / ``recorddict_to_evaluateres``,
  what a legacy strategy's ServerApp calls on each reply.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import http.client
import json
import signal
import time
import types
from pathlib import Path

import grpc
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from fastapi import HTTPException
from flwr.app import ConfigRecord as FlwrConfigRecord
from flwr.common import Code, EvaluateRes, FitRes, Status, ndarrays_to_parameters
from flwr.common.serde import message_from_proto
from flwr.compat.common.recorddict_compat import (
    evaluateres_to_recorddict,
    fitres_to_recorddict,
    recorddict_to_evaluateres,
    recorddict_to_fitres,
)
from flwr.proto import fleet_pb2 as flwr_fleet_pb2  # pylint: disable=no-name-in-module
from flwr.server.superlink.fleet.grpc_rere import node_auth_server_interceptor
from flwr.supercore.inflatable.inflatable_utils import inflate_object_from_contents
from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature
from flwr.supercore.protobuf.constants import PROTOBUF_MEDIA_TYPE
from flwr.supercore.protobuf.translation import PROTOBUF_REQUEST_TYPES
from flwr.superlink.routers.fleet import node_auth
from flwr.superlink.routers.fleet.router import router as flwr_fleet_router
from google.protobuf import json_format
from google.protobuf.message_factory import GetMessageClass
from starlette.requests import Request

from fedproto.kit.make_fleet_vectors import (
    DEFAULT_DIR,
    NODE_ID,
    RPC_MANIFEST,
    SIGNATURES,
    TRAINED,
    VectorKey,
    build_vectors,
    http_headers,
    sign,
    timestamp,
    write_vectors,
)
from fedproto.node import RPCS
from fedproto.node_pb2 import Node
from fedproto.objects import ConfigRecord, deflate_message

RPC_DATA = json.loads((DEFAULT_DIR / RPC_MANIFEST).read_text(encoding="utf-8"))
SIGNATURE_DATA = json.loads((DEFAULT_DIR / SIGNATURES).read_text(encoding="utf-8"))
EXCHANGES = RPC_DATA["exchanges"]
VECTORS = {vector.name: vector for vector in build_vectors()}
FLEET_SERVICE = flwr_fleet_pb2.DESCRIPTOR.services_by_name["Fleet"]
# flwr's HTTP endpoints: path -> the protobuf class the endpoint returns
FLWR_RESPONSE_TYPES = {route.path: route.endpoint.__annotations__["return"] for route in flwr_fleet_router.routes}


def vector_bytes(side: dict) -> bytes:
    return (DEFAULT_DIR / side["file"]).read_bytes()


def at(text: str, seconds: float = 0.0) -> datetime.datetime:
    """The UTC instant of a timestamp, plus ``seconds`` (a time without offset taken as UTC)."""
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.timezone.utc)
    return moment + datetime.timedelta(seconds=seconds)


class LinkState:
    """The one thing flwr's auth asks the SuperLink's state: which node id a public key has."""

    def __init__(self, keys: dict[bytes, int]) -> None:
        self.keys = keys

    def get_node_id_by_public_key(self, public_key: bytes) -> int | None:
        return self.keys.get(public_key)


P384_PEM = SIGNATURE_DATA["keys"]["secp384r1"]["public_key_pem"].encode("ascii")
KNOWN_NODE = LinkState({P384_PEM: NODE_ID})


def flwr_authenticates(headers: dict[str, str], request, now: datetime.datetime, monkeypatch) -> bool:
    """flwr's HTTP middleware check of one request at time ``now``."""
    monkeypatch.setattr(node_auth, "now", lambda: now)
    monkeypatch.setattr(node_auth, "get_linkstate", lambda _request: KNOWN_NODE)
    scope = {"type": "http", "method": "POST", "path": "/v1/fleet/x",
             "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()]}
    http_request = Request(scope)
    http_request.state.protobuf_request = request
    try:
        node_auth.authenticate_node(http_request)
    except HTTPException as refused:
        assert refused.status_code == 401
        return False
    return True


class Aborted(Exception):
    pass


class AbortContext:
    def abort(self, code, details):
        raise Aborted(f"{code} {details}")


def flwr_interceptor_serves(metadata: list[list[str]], method: str, request, now, monkeypatch) -> bool:
    monkeypatch.setattr(node_auth_server_interceptor, "now", lambda: now)
    pairs = tuple((key, bytes.fromhex(value) if key.endswith("-bin") else value) for key, value in metadata)
    interceptor = node_auth_server_interceptor.NodeAuthServerInterceptor(
        state_factory=types.SimpleNamespace(state=lambda: KNOWN_NODE))
    details = types.SimpleNamespace(method=method, invocation_metadata=pairs)
    try:
        handler = interceptor.intercept_service(
            lambda _details: grpc.unary_unary_rpc_method_handler(lambda _request, _context: "served"), details)
    except TypeError:  # a timestamp without offset: the gRPC server answers UNKNOWN
        return False
    try:
        return handler.unary_unary(request, AbortContext()) == "served"
    except Aborted:
        return False


# ---------------------------------------------------------------------------- generator


def test_generator_reproduces_the_rpc_and_signature_vectors(tmp_path):
    write_vectors(tmp_path)
    for name in (RPC_MANIFEST, SIGNATURES):
        assert json.loads((tmp_path / name).read_text(encoding="utf-8")) == json.loads(
            (DEFAULT_DIR / name).read_text(encoding="utf-8")), name
    for exchange in EXCHANGES:
        for side in ("request", "response"):
            assert (tmp_path / exchange[side]["file"]).read_bytes() == vector_bytes(exchange[side])


# ---------------------------------------------------------------------------- RPC exchanges


def test_every_fleet_rpc_has_an_exchange():
    older_only = {"CreateNode", "DeleteNode"}  # flwr 1.20-1.22's (fedproto/fleet_1_20_pb2), not in 1.42's contract
    assert {exchange["rpc"] for exchange in EXCHANGES} == set(RPCS) - older_only == set(FLEET_SERVICE.methods_by_name)


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e["name"])
def test_paths_methods_and_types_are_flwrs(exchange):
    method = FLEET_SERVICE.methods_by_name[exchange["rpc"]]
    assert exchange["grpc_method"] == f"/{FLEET_SERVICE.full_name}/{method.name}"
    assert exchange["request"]["type"] == method.input_type.full_name
    assert exchange["response"]["type"] == method.output_type.full_name
    http_request_type = PROTOBUF_REQUEST_TYPES[("POST", exchange["http_path"])]
    assert http_request_type.DESCRIPTOR.full_name == exchange["request"]["type"]
    assert FLWR_RESPONSE_TYPES[exchange["http_path"]].DESCRIPTOR.full_name == exchange["response"]["type"]


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e["name"])
@pytest.mark.parametrize("side", ["request", "response"])
def test_flwr_decodes_the_bytes_to_the_listed_fields(exchange, side):
    method = FLEET_SERVICE.methods_by_name[exchange["rpc"]]
    flwr_class = GetMessageClass(method.input_type if side == "request" else method.output_type)
    data = vector_bytes(exchange[side])
    assert len(data) == exchange[side]["size"]
    decoded = flwr_class.FromString(data)
    assert json_format.MessageToDict(decoded, preserving_proto_field_name=True) == exchange[side]["fields"]
    assert decoded.SerializeToString(deterministic=True) == data


def exchange_named(name: str) -> dict:
    (exchange,) = [e for e in EXCHANGES if e["name"] == name]
    return exchange


def decoded(name: str, side: str):
    exchange = exchange_named(name)
    method = FLEET_SERVICE.methods_by_name[exchange["rpc"]]
    return GetMessageClass(method.input_type if side == "request" else method.output_type).FromString(
        vector_bytes(exchange[side]))


def test_the_messages_are_the_object_vectors_and_flwr_takes_them():
    """PullMessages carries train_instruction, PushMessages train_reply; flwr's message_from_proto
    (what the SuperLink runs on a pushed message) takes both."""
    pulled = decoded("PullMessages", "response")
    instruction = deflate_message(VECTORS["train_instruction"].metadata, VECTORS["train_instruction"].content)
    assert pulled.message_object_trees[0].object_id == pulled.messages_list[0].metadata.message_id
    assert pulled.messages_list[0].metadata.message_id == instruction.message_id
    pushed = decoded("PushMessages", "request")
    reply = deflate_message(VECTORS["train_reply"].metadata, VECTORS["train_reply"].content)
    assert pushed.messages_list[0].metadata.message_id == reply.message_id
    for message in (pulled.messages_list[0], pushed.messages_list[0]):
        assert message_from_proto(message).metadata.message_id == message.metadata.message_id
    pulled_object = decoded("PullObject", "response").object_content
    assert pulled_object == instruction.objects[decoded("PullObject", "request").object_id]
    pushed_object = decoded("PushObject", "request")
    assert pushed_object.object_content == reply.objects[pushed_object.object_id]
    assert list(decoded("PushMessages", "response").objects_to_push) == list(reply.objects)


def test_a_pushed_message_without_its_empty_content_is_what_flwr_refuses():
    """Why the SuperLink answers such a PushMessages with HTTP 500, every time (PROTOCOL.md §13)."""
    message = decoded("PushMessages", "request").messages_list[0]
    message.ClearField("content")
    with pytest.raises(Exception, match="Invalid arguments for Message"):
        message_from_proto(message)


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e["name"])
def test_every_request_passes_flwrs_http_authentication(exchange, monkeypatch):
    headers = exchange["http_headers"]
    assert headers["Content-Type"] == headers["Accept"] == PROTOBUF_MEDIA_TYPE
    assert base64.b64decode(headers["flwr-public-key"]) == P384_PEM
    request = decoded(exchange["name"], "request")
    assert flwr_authenticates(headers, request, at(exchange["timestamp"], 0.5), monkeypatch)


@pytest.mark.parametrize("exchange", EXCHANGES, ids=lambda e: e["name"])
def test_every_request_passes_flwrs_grpc_interceptor(exchange, monkeypatch):
    request = decoded(exchange["name"], "request")
    assert flwr_interceptor_serves(exchange["grpc_metadata"], exchange["grpc_method"], request,
                                   at(exchange["timestamp"], 0.5), monkeypatch)


def test_a_request_for_another_node_id_is_refused(monkeypatch):
    """The check the vectors' node id passes is a real one: the same headers with another node id fail."""
    exchange = exchange_named("SendNodeHeartbeat")
    request = decoded("SendNodeHeartbeat", "request")
    request.node.node_id = NODE_ID - 1
    assert not flwr_authenticates(exchange["http_headers"], request, at(exchange["timestamp"]), monkeypatch)


def test_fedproto_node_signs_as_the_vectors_show():
    """fedproto's node (client/fleet.py NodeKey) with the vector key: the same header names, the same
    public key header, a signature that verifies over its timestamp."""
    from fedproto.client.fleet import NodeKey

    node_key = NodeKey(SIGNATURE_DATA["keys"]["secp384r1"]["private_key_pem"].encode("ascii"))
    vector = exchange_named("RegisterNode")
    headers = node_key.http_headers()
    assert set(headers) == set(vector["http_headers"]) - {"Content-Type", "Accept"}
    assert headers["flwr-public-key"] == vector["http_headers"]["flwr-public-key"]
    assert verify_signature(bytes_to_public_key(P384_PEM), headers["flwr-timestamp"].encode("ascii"),
                            base64.b64decode(headers["flwr-signature"]))
    assert [name for name, _ in node_key.grpc_metadata()] == [name for name, _ in vector["grpc_metadata"]]


# ---------------------------------------------------------------------------- signatures


@pytest.mark.parametrize("curve", ["secp384r1", "secp256r1"])
def test_keys_are_what_the_labels_and_pems_say(curve):
    key = SIGNATURE_DATA["keys"][curve]
    private_key = serialization.load_pem_private_key(key["private_key_pem"].encode(), password=None)
    assert private_key.curve.name == curve
    scalar = int.from_bytes(hashlib.sha256(f"fedproto fleet vector key {curve}".encode()).digest(), "big")
    assert private_key.private_numbers().private_value == int(key["private_scalar"], 16) == scalar
    assert private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo) == \
        key["public_key_pem"].encode()
    assert bytes_to_public_key(key["public_key_pem"].encode()).curve.name == curve  # flwr loads it


@pytest.mark.parametrize("case", SIGNATURE_DATA["cases"], ids=lambda c: c["name"])
def test_signature_cases_are_judged_so_by_flwr(case, monkeypatch):
    pem = SIGNATURE_DATA["keys"][case["public_key"]]["public_key_pem"].encode()
    headers = case["http_headers"]
    assert (base64.b64decode(headers["flwr-public-key"]), headers["flwr-timestamp"],
            base64.b64decode(headers["flwr-signature"])) == (pem, case["timestamp"], bytes.fromhex(case["signature"]))
    assert verify_signature(bytes_to_public_key(pem), case["timestamp"].encode("ascii"),
                            bytes.fromhex(case["signature"])) is case["verifies"]
    register = flwr_fleet_pb2.RegisterNodeFleetRequest(public_key=pem)
    assert flwr_authenticates(headers, register, at(case["timestamp"], 1), monkeypatch) is case["accepted"]
    assert flwr_interceptor_serves(case["grpc_metadata"], "/flwr.proto.Fleet/RegisterNode", register,
                                   at(case["timestamp"], 1), monkeypatch) is case["accepted"]


@pytest.mark.parametrize("check", SIGNATURE_DATA["window"]["checks"], ids=lambda c: f"age {c['age']}")
def test_the_window_is_flwrs(check, monkeypatch):
    (case,) = [c for c in SIGNATURE_DATA["cases"] if c["timestamp"] == SIGNATURE_DATA["window"]["timestamp"]
               and c["name"] == "secp384r1"]
    register = flwr_fleet_pb2.RegisterNodeFleetRequest(public_key=P384_PEM)
    now = datetime.datetime.fromisoformat(check["now"])
    assert (now - at(case["timestamp"])).total_seconds() == check["age"]
    assert flwr_authenticates(case["http_headers"], register, now, monkeypatch) is check["accepted"]
    assert flwr_interceptor_serves(case["grpc_metadata"], "/flwr.proto.Fleet/RegisterNode", register, now,
                                   monkeypatch) is check["accepted"]


# ---------------------------------------------------------------------------- legacy replies


def flwr_inflated(name: str):
    vector = VECTORS[name]
    deflated = deflate_message(vector.metadata, vector.content)
    return inflate_object_from_contents(deflated.message_id, dict(deflated.objects), keep_object_contents=True)


def test_legacy_fit_reply_is_what_flwrs_serverapp_reads_and_flwrs_client_sends():
    message = flwr_inflated("legacy_fit_reply")
    fitres = recorddict_to_fitres(message.content, keep_input=True)
    assert (fitres.status.code, fitres.num_examples, fitres.metrics) == (
        Code.OK, 120, {"train-loss": 0.75, "device": "sensor-7"})
    assert fitres.parameters.tensor_type == "numpy.ndarray"
    parameters = ndarrays_to_parameters(list(TRAINED.values()))
    flwr_content = fitres_to_recorddict(
        FitRes(Status(Code.OK, "Success"), parameters, 120, {"train-loss": 0.75, "device": "sensor-7"}),
        keep_input=True)
    assert flwr_content.object_id == message.content.object_id  # byte for byte what flwr's own client sends


def test_legacy_evaluate_reply_is_what_flwrs_serverapp_reads_and_flwrs_client_sends():
    message = flwr_inflated("legacy_evaluate_reply")
    evaluateres = recorddict_to_evaluateres(message.content)
    assert (evaluateres.status.code, evaluateres.loss, evaluateres.num_examples, evaluateres.metrics) == (
        Code.OK, 0.5, 40, {"accuracy": 0.875})
    flwr_content = evaluateres_to_recorddict(EvaluateRes(Status(Code.OK, "Success"), 0.5, 40, {"accuracy": 0.875}))
    assert flwr_content.object_id == message.content.object_id


def test_num_examples_as_a_config_record_fails_only_inside_the_serverapp():
    """The silent failure of PROTOCOL.md §17: the message is well-formed (the SuperLink stores it and
    answers 200), only the ServerApp's recorddict_to_fitres finds no MetricRecord."""
    vector = VECTORS["legacy_fit_reply"]
    content = dict(vector.content)
    content["fitres.num_examples"] = ConfigRecord(content["fitres.num_examples"])
    deflated = deflate_message(vector.metadata, content)
    assert message_from_proto(deflated.message).metadata.message_id == deflated.message_id
    message = inflate_object_from_contents(deflated.message_id, dict(deflated.objects), keep_object_contents=True)
    assert isinstance(message.content["fitres.num_examples"], FlwrConfigRecord)
    with pytest.raises(KeyError, match="fitres.num_examples"):
        recorddict_to_fitres(message.content, keep_input=True)


def test_legacy_reply_records_carry_the_types_the_manifest_names():
    manifest = json.loads((DEFAULT_DIR / "manifest.json").read_text(encoding="utf-8"))
    types_of = {entry["name"]: {name: record["type"] for name, record in entry["content"].items()}
                for entry in manifest["vectors"] if entry["name"].startswith("legacy_") and entry["content"]}
    assert types_of["legacy_fit_reply"] == {"fitres.metrics": "ConfigRecord", "fitres.num_examples": "MetricRecord",
                                            "fitres.parameters": "ArrayRecord", "fitres.status": "ConfigRecord"}
    assert types_of["legacy_evaluate_reply"] == {
        "evaluateres.loss": "MetricRecord", "evaluateres.num_examples": "MetricRecord",
        "evaluateres.metrics": "ConfigRecord", "evaluateres.status": "ConfigRecord"}


# ---------------------------------------------------------------------------- a real SuperLink


def answered(harness, path: str, status: int = 200) -> int:
    """How many calls of ``path`` the SuperLink answered with ``status`` (its uvicorn access log)."""
    return harness.superlink.log().count(f'"POST /v1/fleet/{path} HTTP/1.1" {status}')


@pytest.mark.timeout(120)
def test_a_real_superlink_takes_both_vector_keys(superlink_harness, tmp_path):
    """flwr 1.42's flower-superlink takes a P-256 node key as it takes flwr's P-384: our node with
    each vector key (--node-key) registers, activates, heartbeats and polls (all signed, node id
    checked) and leaves with Deactivate + Unregister (exit 0). A full run with these keys: PROTOCOL.md §14."""
    from test_fleet_interop import APP, NODE_ARGS

    harness = superlink_harness()
    harness.start_superlink()
    nodes = []
    for client, curve in enumerate(("secp256r1", "secp384r1")):
        key_file = tmp_path / f"{curve}.pem"
        key_file.write_text(SIGNATURE_DATA["keys"][curve]["private_key_pem"], encoding="ascii")
        nodes.append(harness.start_fedproto_node(f"node-{curve}", APP, env={"FLEET_CLIENT": str(client)},
                                                 extra_args=NODE_ARGS + ["--node-key", str(key_file)]))
    deadline = time.monotonic() + 30
    while answered(harness, "activate-node") < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.5)  # a heartbeat and several PullMessages each (--poll-interval 0.2); the SuperLink logs
    for node in nodes:  # only their refusals
        node.popen.send_signal(signal.SIGTERM)
        assert node.wait(30) == 0, harness.logs()
    calls = {path: answered(harness, path) for path in ("register-node", "activate-node", "deactivate-node",
                                                         "unregister-node")}
    assert calls == dict.fromkeys(calls, 2), harness.logs()
    assert '" 401' not in harness.superlink.log() and "refused" not in harness.logs(), harness.logs()


def post(harness, path: str, request, key_pem: str) -> tuple[int, bytes]:
    """One Fleet call over HTTP, signed now with a vector key (the kit's own signing helpers)."""
    private_key = serialization.load_pem_private_key(key_pem.encode("ascii"), password=None)
    key = VectorKey(private_key.curve.name, private_key, private_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    text = timestamp(datetime.datetime.now(tz=datetime.timezone.utc))
    connection = http.client.HTTPConnection("127.0.0.1", harness.port, timeout=10)
    try:
        connection.request("POST", path, request.SerializeToString(),
                           http_headers(key.public_key_pem, text, sign(key, text)))
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


@pytest.mark.timeout(60)
def test_requests_a_real_superlink_answers_500_every_time(superlink_harness):
    """PROTOCOL.md §13: errors that look temporary (HTTP 500) but come back on every retry."""
    harness = superlink_harness()
    harness.start_superlink()
    key_pem = SIGNATURE_DATA["keys"]["secp256r1"]["private_key_pem"]
    public_pem = SIGNATURE_DATA["keys"]["secp256r1"]["public_key_pem"].encode("ascii")
    status, body = post(harness, RPCS["RegisterNode"].http_path,
                        RPCS["RegisterNode"].request_type(public_key=public_pem), key_pem)
    assert status == 200, body
    node_id = RPCS["RegisterNode"].response_type.FromString(body).node_id
    activate = RPCS["ActivateNode"].request_type(public_key=public_pem, heartbeat_interval=30)
    assert post(harness, RPCS["ActivateNode"].http_path, activate, key_pem)[0] == 200
    node = Node(node_id=node_id)

    without_content = RPCS["PushMessages"].request_type.FromString(
        vector_bytes(exchange_named("PushMessages")["request"]))
    without_content.node.node_id = node_id
    without_content.messages_list[0].ClearField("content")
    no_message = RPCS["PushMessages"].request_type(node=node)
    unknown_run = RPCS["PullObject"].request_type(node=node, run_id=12_345, object_id="0" * 64)
    internal_error = (500, b'{"detail":"Internal server error."}')
    for rpc, request in (("PushMessages", without_content), ("PushMessages", no_message), ("PullObject", unknown_run)):
        for _attempt in range(2):
            assert post(harness, RPCS[rpc].http_path, request, key_pem) == internal_error, harness.logs()
    too_fast = RPCS["SendNodeHeartbeat"].request_type(node=node, heartbeat_interval=5)
    assert post(harness, RPCS["SendNodeHeartbeat"].http_path, too_fast, key_pem) == (
        400, b'{"code":2003,"detail":"Invalid heartbeat interval."}')


# ---------------------------------------------------------------------------- what interop needs


def compact(objects: dict[str, bytes]) -> tuple[str, dict[str, bytes]]:
    """The same message with every JSON body written compactly (no spaces): new bytes, new ids."""
    renamed: dict[str, str] = {}
    result: dict[str, bytes] = {}
    for oid, content in objects.items():  # push order: children first
        header, _, body = content.partition(b"\x00")
        type_name, children, _ = header.decode("ascii").split(" ")
        children = ",".join(renamed[child] for child in children.split(",") if child)
        if type_name in ("RecordDict", "ArrayRecord", "Array"):
            value = json.loads(body)
            if type_name != "Array":
                value = {name: renamed[child] for name, child in value.items()}
            body = json.dumps(value, separators=(",", ":")).encode()
        new = f"{type_name} {children} {len(body)}".encode() + b"\x00" + body
        renamed[oid] = hashlib.sha256(new).hexdigest()
        result[renamed[oid]] = new
    return renamed[next(reversed(objects))], result


def test_flwr_takes_objects_whose_only_rule_kept_is_the_hash():
    """PROTOCOL.md §16: a SuperLink and its ServerApp check each id against the bytes and parse the JSON,
    they do not compare with json.dumps' layout; compact JSON (other bytes, other ids) reads the same."""
    from flwr.supercore.inflatable.inflatable_utils import validate_object_content

    vector = VECTORS["train_reply"]
    deflated = deflate_message(vector.metadata, vector.content)
    root, objects = compact(deflated.objects)
    assert root != deflated.message_id and b'{"arrays":"' in b"".join(objects.values())
    for content in objects.values():
        validate_object_content(content)  # what the SuperLink checks before storing an object
    message = inflate_object_from_contents(root, dict(objects), keep_object_contents=True)
    assert dict(message.content["metrics"]) == dict(vector.content["metrics"])
    for key, array in vector.content["arrays"].items():
        np.testing.assert_array_equal(message.content["arrays"][key].numpy(), array.to_numpy())


def test_the_porters_checklist_maps_every_conformance_step_in_order():
    """PROTOCOL.md §19 names the runner's steps as kit/fleet_conformance.py does, each once, in order."""
    import re

    from fedproto.kit.fleet_conformance import STEPS

    text = (Path(__file__).resolve().parents[1] / "docs" / "PROTOCOL.md").read_text(encoding="utf-8")
    checklist = text[text.index("## 19. A Fleet porter's checklist"):]
    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)`", checklist, flags=re.MULTILINE)
    assert rows == [(str(number), step.name) for number, step in enumerate(STEPS, 1)]
