"""Older SuperLinks, kept honest without installing them: a node's exchange with a real SuperLink of
an older flwr release, recorded once by ``python -m fedproto.bench.compat --record-vectors`` (a
gRPC proxy between one of our nodes and the release's flower-superlink, during a 2-round FedAvg
run), replayed here against NodeSession.

The replay drives the session at the recorded times with the recorded responses, and demands
that it sends exactly the recorded requests, in order (PushMessages compared without its
clientapp_runtime_list, the handler's measured duration): the same join and leave RPCs, the same
objects pulled in the same order, byte-identical replies. The handler is the example app's
deterministic ArithmeticClient (client 0), and the reply's ``created_at`` is the recorded one, so
the reply objects, whose ids the recorded SuperLink asked for, come out byte for byte.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path

import pytest

from fedproto.fleet_pb2 import PushMessagesRequest
from fedproto.node import (
    RPCS,
    Finished,
    NodeSession,
    RunHandler,
    Send,
    State,
    Wait,
    generation_for_release,
    refusal_for_grpc_code,
)

ROOT = Path(__file__).resolve().parents[1]
VECTORS = sorted((ROOT / "tests" / "data" / "compat_vectors").glob("flwr-*.json"))
sys.path.insert(0, str(ROOT / "examples" / "superlink_app"))
from superlink_app.arithmetic import ArithmeticClient  # noqa: E402

LEAVING = ("DeleteNode", "DeactivateNode")
PUBLIC_KEY = b"-----BEGIN PUBLIC KEY-----\nreplayed: CreateNode does not carry it\n-----END PUBLIC KEY-----\n"


def comparable(rpc: str, request: bytes) -> object:
    message = RPCS[rpc].request_type()
    message.ParseFromString(request)
    if isinstance(message, PushMessagesRequest):
        message.ClearField("clientapp_runtime_list")  # the handler's measured seconds
    return message


def replay(vector: dict) -> NodeSession:
    exchanges = vector["exchanges"]
    public_key = PUBLIC_KEY  # CreateNode carries no key; RegisterNode carries the recorded node's
    if exchanges[0]["rpc"] == "RegisterNode":
        public_key = comparable("RegisterNode", base64.b64decode(exchanges[0]["request"])).public_key
    session = NodeSession(ArithmeticClient(client=vector["client"]), public_key, poll_interval=0.2,
                          generation=generation_for_release(vector["release"]))
    now = exchanges[0]["at"]
    for index, exchange in enumerate(exchanges):
        now = max(now, exchange["at"])
        if exchange["rpc"] in LEAVING and session.state not in (State.DEACTIVATE, State.UNREGISTER):
            session.stop(now)  # the recording's node got SIGTERM here
        step = session.next_step(now)
        while not isinstance(step, Send):
            if isinstance(step, Wait):  # recorded at the proxy, a moment after the node's clock
                now = max(now, step.until)
            elif isinstance(step, RunHandler):
                push = next(e for e in exchanges[index:] if e["rpc"] == "PushMessages")
                created_at = comparable("PushMessages", base64.b64decode(push["request"])).messages_list[0]
                session.handler_finished(step.run(), created_at.metadata.created_at)
            else:
                pytest.fail(f"exchange {index} ({exchange['rpc']}): the session did {step} instead")
            step = session.next_step(now)
        recorded = base64.b64decode(exchange["request"])
        assert step.rpc == exchange["rpc"], f"exchange {index}: sent {step.rpc}, the recording {exchange['rpc']}"
        assert comparable(step.rpc, step.request) == comparable(step.rpc, recorded), f"exchange {index}: {step.rpc}"
        if "code" in exchange:
            refusal = refusal_for_grpc_code(exchange["code"])
            assert refusal is not None, f"exchange {index}: a transient {exchange['code']} was recorded"
            session.refused(refusal, now)
        else:
            session.receive(base64.b64decode(exchange["response"]), now)
    return session


@pytest.mark.parametrize("path", VECTORS, ids=lambda path: path.stem)
def test_recorded_exchange_with_an_older_superlink_replays(path):
    vector = json.loads(path.read_text())
    session = replay(vector)
    assert session.handled_count == 2 * 2  # 2 rounds of train and evaluate
    assert session.next_step(vector["exchanges"][-1]["at"]) == Finished("stopped")


def test_the_vectors_cover_the_releases_the_node_has_a_generation_for():
    releases = {path.stem.removeprefix("flwr-") for path in VECTORS}
    assert {"1.22.0", "1.39.0"} <= releases
