"""fedproto-trace --fleet between a real flower-superlink and real nodes: transparent, logged, disturbable.

Each test starts `flower-superlink`, the relay in front of its Fleet API, nodes pointed at the
relay (ours, and flwr's `flower-supernode`), and `flwr run` of examples/superlink_app (message-API
FedAvg). The relay's --jsonl records are what the assertions read; its console is in its log.
The hostile-peer test puts the relay between raw sockets and a small fake SuperLink that answers
what no SuperLink should; the last tests build message lines from objects directly.
"""

from __future__ import annotations

import hashlib
import http.client
import http.server
import json
import socket
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from fedproto.error_pb2 import Error
from fedproto.fleet_pb2 import PullMessagesRequest, PullMessagesResponse
from fedproto.kit.fleet_trace import describe_message, format_line
from fedproto.message_pb2 import Message, Metadata, ObjectTree, PullObjectRequest, PullObjectResponse
from fedproto.objects import Array, ArrayRecord, ConfigRecord, MetricRecord, deflate_message
from superlink_harness import EXAMPLE_APP, Harness, Process, free_port, wait_listening
from test_fleet_interop import APP, NODE_ARGS, assert_arrays_equal, run, stop_node, train_clients

sys.path.insert(0, str(EXAMPLE_APP))
from superlink_app.arithmetic import expected_fedavg  # noqa: E402

pytestmark = pytest.mark.timeout(120)

FLEET_RPCS = ("RegisterNode", "ActivateNode", "SendNodeHeartbeat", "PullMessages", "PullObject",
              "ConfirmMessageReceived", "PushMessages", "PushObject", "DeactivateNode", "UnregisterNode",
              "GetRun", "GetFab")
NODE_TIMING = NODE_ARGS + ["--heartbeat-interval", "10"]


def records(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def calls(jsonl: Path, rpc: str | None = None) -> list[dict]:
    return [r for r in records(jsonl) if r["kind"] == "call" and (rpc is None or r["rpc"] == rpc)]


def messages(jsonl: Path) -> list[dict]:
    return [r for r in records(jsonl) if r["kind"] == "message"]


def our_node(harness: Harness, client: int, relay: str, transport: str = "http",
             extra_args: list[str] | None = None) -> Process:
    return harness.start_fedproto_node(f"node{client}", APP, env={"FLEET_CLIENT": str(client)},
                                       extra_args=NODE_TIMING + (extra_args or []), transport=transport,
                                       superlink=relay)


def wait_until(condition, what: str, harness: Harness, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n{harness.logs()}"
        time.sleep(0.1)


def test_run_through_the_relay_same_model_every_rpc_and_message_decoded(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, relay_proc = harness.start_fleet_relay("relay", "--jsonl", str(jsonl),
                                                  "--dump-objects", str(tmp_path / "objects"))
    ours = our_node(harness, 0, relay)
    theirs = harness.start_supernode("supernode1", "client=1", superlink=relay)
    _, arrays = run(harness, tmp_path, "traced", strategy="message", **{"num-rounds": 1})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]]))
    assert stop_node(harness, ours) == 0
    theirs.stop()
    wait_until(lambda: calls(jsonl, "UnregisterNode"), "our node's UnregisterNode", harness)

    assert {c["rpc"] for c in calls(jsonl)} == set(FLEET_RPCS)
    assert all(c["status"] == 200 for c in calls(jsonl)), [c for c in calls(jsonl) if c["status"] != 200]
    shown = messages(jsonl)
    assert all("error" not in m for m in shown), [m for m in shown if "error" in m]
    # (train + evaluate) x 2 nodes, each an instruction down and a reply up.
    for direction in ("SL->N", "N->SL"):
        kinds = sorted(m["message_type"] for m in shown if m["direction"] == direction)
        assert kinds == ["evaluate"] * 2 + ["train"] * 2, kinds
    pushed = {m["message_id"]: m for m in shown if m["direction"] == "N->SL"}
    pulled = {m["message_id"]: m for m in shown if m["direction"] == "SL->N"}
    assert {m["reply_to"] for m in pushed.values()} == set(pulled)
    train = next(m for m in pulled.values() if m["message_type"] == "train")
    assert train["content"]["config"]["values"]["server-round"] == 1
    arrays_shown = train["content"]["arrays"]["arrays"]
    assert [a["dtype"] for a in arrays_shown.values()] == [str(a.dtype) for a in arrays]
    assert [tuple(a["shape"]) for a in arrays_shown.values()] == [a.shape for a in arrays]
    reply = next(m for m in pushed.values() if m["message_type"] == "train")
    assert "num-examples" in reply["content"]["metrics"]["values"]
    # Every object of the run was written under its id, and is what its id says.
    dumped = list((tmp_path / "objects").iterdir())
    assert dumped and all(len(p.name) == 64 for p in dumped)
    assert all(hashlib.sha256(p.read_bytes()).hexdigest() == p.name for p in dumped)
    relay_proc.stop()


def one_node_run(harness: Harness, tmp_path, name: str) -> list[np.ndarray]:
    """One round with our node 0 alone; the final model is asserted."""
    _, arrays = run(harness, tmp_path, name, strategy="message", **{"num-rounds": 1, "min-nodes": 1})
    assert_arrays_equal(arrays, expected_fedavg([[0]]))
    return arrays


def test_answer_401_once_node_registers_again_and_the_run_completes(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, _ = harness.start_fleet_relay("relay", "--jsonl", str(jsonl), "--answer-401-once", "PullMessages")
    node = our_node(harness, 0, relay)
    wait_until(lambda: len(calls(jsonl, "ActivateNode")) == 2, "the node to activate again", harness)
    [refused] = [c for c in calls(jsonl, "PullMessages") if c["status"] == 401]
    assert "answered 401" in refused["fault"]
    # The relay took the node offline with the intercepted call's own signature ...
    [forged] = [c for c in calls(jsonl) if c.get("by")]
    assert (forged["rpc"], forged["status"], forged["node_id"]) == ("DeactivateNode", 200, refused["node_id"])
    # ... the node waited its backoff (1 s, fedproto/node.py REREGISTER_FIRST) and registered again,
    # answered by the relay with its id, since the SuperLink never lets a key register twice.
    registered = calls(jsonl, "RegisterNode")
    assert [c["node_id"] for c in registered] == [refused["node_id"]] * 2
    assert "answered by the relay" in registered[1]["fault"]
    assert registered[1]["elapsed_s"] - refused["elapsed_s"] >= 1.0
    assert [c["status"] for c in calls(jsonl, "ActivateNode")] == [200, 200]
    assert "registering again in 1 s" in node.log()
    one_node_run(harness, tmp_path, "after_401")
    assert stop_node(harness, node) == 0


def test_corrupted_object_is_refused_by_the_node_and_logged(superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    dump = tmp_path / "objects"
    relay, _ = harness.start_fleet_relay("relay", "--jsonl", str(jsonl), "--corrupt-object", "ArrayChunk",
                                         "--fault-times", "1", "--dump-objects", str(dump))
    node = our_node(harness, 0, relay)
    harness.start_run("corrupted", run_config={"min-nodes": 1, "num-rounds": 1, "poll-interval": 0.2})
    assert node.wait(60) == 1, harness.logs()
    [corrupted] = [c for c in calls(jsonl, "PullObject") if "fault" in c]
    assert corrupted["object_type"] == "ArrayChunk" and "corrupted ArrayChunk" in corrupted["fault"]
    assert corrupted["object_error"].startswith("content hashes to ")
    assert "PullObject: object" in node.log() and "content hashes to" in node.log()
    # What is dumped is named by its hash: the corrupted chunk is not written, the objects before it are.
    dumped = {p.name: p.read_bytes() for p in dump.iterdir()}
    assert dumped and all(hashlib.sha256(data).hexdigest() == name for name, data in dumped.items())
    assert not any(name.startswith(corrupted["object_id"]) for name in dumped)


def test_dropped_object_costs_that_node_its_round(superlink_harness, tmp_path):
    """The first ArrayChunk pulled is answered "not found": that node drops the instruction and
    goes on; the round ends at its timeout with the other node's update alone."""
    harness = superlink_harness()
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, _ = harness.start_fleet_relay("relay", "--jsonl", str(jsonl), "--drop-object", "ArrayChunk",
                                         "--fault-times", "1")
    nodes = [our_node(harness, client, relay) for client in (0, 1)]
    report, arrays = run(harness, tmp_path, "dropped", strategy="message",
                         **{"num-rounds": 1, "round-timeout": 5.0})
    [dropped] = [c for c in calls(jsonl, "PullObject") if "fault" in c]
    assert "dropped ArrayChunk" in dropped["fault"] and (dropped["found"], dropped["available"]) == (False, False)
    [served] = train_clients(report, 1).items()
    assert served[1] != dropped["node_id"]
    assert_arrays_equal(arrays, expected_fedavg([[served[0]]]))
    loser = nodes[1 - served[0]]
    assert "not found on the SuperLink" in loser.log()
    assert [stop_node(harness, node) for node in nodes] == [0, 0]


def test_delayed_call_cut_response_and_bounded_message_memory(superlink_harness, tmp_path):
    """PushObject held 300 ms; the first PullObject answer cut in half (the node retries it);
    --max-message-length 1000: messages of more object bytes are not kept, the rest are shown."""
    harness = superlink_harness()
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, _ = harness.start_fleet_relay("relay", "--jsonl", str(jsonl), "--delay-ms", "300",
                                         "--delay-rpc", "PushObject", "--cut-response", "PullObject",
                                         "--fault-times", "1", "--max-message-length", "1000")
    node = our_node(harness, 0, relay)
    one_node_run(harness, tmp_path, "disturbed")
    assert stop_node(harness, node) == 0

    pushed = calls(jsonl, "PushObject")
    assert pushed and all(c["fault"] == "delayed 300 ms" for c in pushed)
    assert all(b["elapsed_s"] - a["elapsed_s"] >= 0.3 for a, b in zip(pushed, pushed[1:]))
    pulled = calls(jsonl, "PullObject")
    [cut] = [c for c in pulled if "cut" in c.get("fault", "")]
    assert [c["object_id"] for c in pulled].count(cut["object_id"]) == 2  # asked again after the cut
    assert "cut off after" in node.log()
    events = [r["event"] for r in records(jsonl) if r["kind"] == "event"]
    over = [e for e in events if "exceed --max-message-length (1000 B)" in e]
    shown = messages(jsonl)
    # The messages that carry the model (both instructions, the train reply) are over 1000 bytes.
    assert len(over) == 3 and all(m["object_bytes"] <= 1000 for m in shown)
    assert [(m["direction"], m["message_type"]) for m in shown] == [("N->SL", "evaluate")]


def test_grpc_rere_run_through_the_relay_with_tls_and_a_cut_answer(superlink_harness, tls_files, tmp_path):
    harness = superlink_harness(grpc_fleet=True, tls=tls_files)
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, _ = harness.start_fleet_relay(
        "relay", "--jsonl", str(jsonl), "--cut-response", "PullObject", "--fault-times", "1",
        "--root-certificates", str(tls_files.ca),
        "--certificates", str(tls_files.ca), str(tls_files.cert), str(tls_files.key), transport="grpc-rere")
    node = our_node(harness, 0, relay, transport="grpc-rere")
    one_node_run(harness, tmp_path, "grpc")
    assert stop_node(harness, node) == 0
    # The cut answer: the call ended UNAVAILABLE, the node asked again.
    [cut] = [c for c in calls(jsonl) if c["status"] != "OK"]
    assert (cut["rpc"], cut["status"]) == ("PullObject", "UNAVAILABLE") and "cut" in cut["fault"]
    assert [c["object_id"] for c in calls(jsonl, "PullObject")].count(cut["object_id"]) == 2
    assert {"RegisterNode", "PullObject", "PushObject", "UnregisterNode"} <= {c["rpc"] for c in calls(jsonl)}
    assert sorted(m["message_type"] for m in messages(jsonl)) == ["evaluate", "evaluate", "train", "train"]


def test_http_tls_on_both_sides(superlink_harness, tls_files, tmp_path):
    harness = superlink_harness(tls=tls_files)
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, _ = harness.start_fleet_relay(
        "relay", "--jsonl", str(jsonl), "--root-certificates", str(tls_files.ca),
        "--certificates", str(tls_files.ca), str(tls_files.cert), str(tls_files.key))
    node = our_node(harness, 0, relay)  # the harness gives it --root-certificates
    one_node_run(harness, tmp_path, "tls")
    assert stop_node(harness, node) == 0
    assert len(messages(jsonl)) == 4 and {c["status"] for c in calls(jsonl)} == {200}


# --------------------------------------------------------------------------- hostile peers

EVIL = "\r\n\x1b[31mforged line\u202e"


class HostileSuperLink(http.server.ThreadingHTTPServer):
    """Answers each Fleet path with something a SuperLink must not send."""

    daemon_threads = True

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:
            pass

        def do_POST(self) -> None:
            request = self.rfile.read(int(self.headers["Content-Length"]))
            if self.path == "/v1/fleet/send-node-heartbeat":  # a body cut off, then the connection closed
                self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort")
                self.close_connection = True
                return
            if self.path == "/v1/fleet/get-run":  # a reason phrase that would forge a header line
                self.wfile.write(b"HTTP/1.1 200 O\rForged: yes\x1b\r\nContent-Length: 0\r\n\r\n")
                return
            if self.path == "/v1/fleet/pull-messages":  # an object tree of no object ids
                tree = ObjectTree(object_id="not an id" + EVIL, children=[ObjectTree(object_id="x" * 5000)])
                body = PullMessagesResponse(messages_list=[Message()], message_object_trees=[tree])
            elif self.path == "/v1/fleet/pull-object":  # content that is not what its id says
                object_id = PullObjectRequest.FromString(request).object_id
                body = PullObjectResponse(object_found=True, object_available=True,
                                          object_content=b"Message  3\x00" + EVIL.encode())
                assert object_id
            else:
                body = None
            data = body.SerializeToString() if body is not None else b"\xff\x00 not protobuf" + EVIL.encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)


def raw_exchange(address: str, data: bytes) -> bytes:
    """Send ``data`` on a fresh connection, return what comes back until the relay closes it."""
    host, port = address.split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the relay closed while we were still sending: what it answered is read below
            pass
        answer = b""
        while piece := sock.recv(65536):
            answer += piece
        return answer


def post_raw(address: str, path: str, body: bytes) -> http.client.HTTPResponse:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    connection.request("POST", path, body=body, headers={"Content-Type": "application/protobuf"})
    response = connection.getresponse()
    response.read()
    connection.close()
    return response


def post(address: str, path: str, body: bytes) -> tuple[int, bytes]:
    host, port = address.split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request("POST", path, body=body, headers={"Content-Type": "application/protobuf"})
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def test_hostile_peers_get_one_bounded_line_each_and_the_relay_goes_on(spawn, tmp_path):
    upstream = HostileSuperLink(("127.0.0.1", 0), HostileSuperLink.Handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    port = upstream.server_address[1]
    listen = f"127.0.0.1:{free_port()}"
    jsonl = tmp_path / "fleet.jsonl"
    relay = spawn("relay", "-m", "fedproto.kit.trace", "--fleet", "--listen", listen,
                  "--upstream", f"127.0.0.1:{port}", "--jsonl", str(jsonl), "--max-message-length", "1000000")
    try:
        assert wait_listening(int(listen.split(":")[1]), 30, relay.popen), relay.log()
        node_request = PullMessagesRequest().SerializeToString()
        # A node that speaks no HTTP, sends a 1 MB header holding CR/LF/ESC, announces or sends too much.
        assert b"400 - Bad request" in raw_exchange(listen, b"\x00\xff\x1b[2J GARBAGE\r\n\r\n")  # as HTTP/0.9
        evil_header = b"X-Evil: " + (EVIL.encode() + b"A" * 100) * 10_000 + b"\r\n"
        answer = raw_exchange(listen, b"POST /v1/fleet/pull-messages HTTP/1.1\r\n" + evil_header + b"\r\n")
        assert answer.startswith(b"HTTP/1.1 431"), answer[:100]
        answer = raw_exchange(listen, b"POST /v1/fleet/pull-messages HTTP/1.1\r\nContent-Length: 1000000000000"
                                      b"\r\n\r\n")
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        # 2 MB announced, above the relay's 1 MB: answered before the body is read (only its start is sent,
        # so the relay's close cannot reset the connection before its answer is read here).
        answer = raw_exchange(listen, b"POST /v1/fleet/push-object HTTP/1.1\r\nContent-Length: 2000000\r\n\r\n"
                                      + b"x" * 1000)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:100]
        # A SuperLink that sends garbage: forwarded as it came (the relay never changes a byte), logged.
        assert post(listen, "/v1/fleet/push-messages", node_request) == (200, b"\xff\x00 not protobuf" + EVIL.encode())
        status, body = post(listen, "/v1/fleet/pull-messages", node_request)
        assert status == 200 and PullMessagesResponse.FromString(body).message_object_trees[0].object_id
        status, body = post(listen, "/v1/fleet/pull-object", PullObjectRequest(object_id="ab" * 32).SerializeToString())
        assert status == 200 and PullObjectResponse.FromString(body).object_content.startswith(b"Message")
        # A reason phrase with CR and ESC goes back as the standard one: no forged header line.
        forged = post_raw(listen, "/v1/fleet/get-run", node_request)
        assert (forged.status, forged.reason, forged.getheader("Forged")) == (200, "OK", None)
        # A SuperLink that cuts its answer: the node gets 502, the relay goes on.
        assert post(listen, "/v1/fleet/send-node-heartbeat", node_request)[0] == 502
        assert post(listen, "/v1/fleet/push-messages", node_request)[0] == 200
    finally:
        relay.kill()
        upstream.shutdown()
    log = relay.log()
    assert "Traceback" not in log and "\x1b" not in log and "\u202e" not in log, log[-3000:]
    assert max(len(line) for line in log.splitlines()) < 1500
    lines = records(jsonl)
    events = [r["event"] for r in lines if r["kind"] == "event"]
    assert sum("code 400" in e for e in events) == 1, events  # no HTTP
    assert sum("code 431" in e for e in events) == 1, events  # the 1 MB header
    assert sum("above --max-message-length" in e for e in events) == 2, events
    assert any("object tree refused" in e for e in events), events
    by_rpc = {c["rpc"]: c for c in lines if c["kind"] == "call"}
    assert by_rpc["SendNodeHeartbeat"]["status"] == 502
    assert "cut off after 5 of 100 bytes" in by_rpc["SendNodeHeartbeat"]["response_error"]
    assert by_rpc["PushMessages"]["response_error"] == "not a valid protobuf message"
    assert by_rpc["PullObject"]["object_error"].startswith("content hashes to")


# --------------------------------------------------------------------------- message lines


def message_line(content=None, error=None) -> tuple[dict, str]:
    """The relay's record and console line for one message, built as a node would push it."""
    metadata = Metadata(run_id=7, message_type="query" + EVIL, group_id="g", ttl=60.0, created_at=1.0,
                        reply_to_message_id="ab" * 32)
    deflated = deflate_message(metadata, content, error)
    record = {"kind": "message", "elapsed_s": 1.0, "node_id": 3, "direction": "N->SL", "message_id": "x",
              "objects": len(deflated.objects), "object_bytes": 0,
              **describe_message(deflated.object_tree, deflated.objects)}
    return record, format_line(record)


def test_message_line_shows_every_value_kind_bounded_and_escaped():
    config = ConfigRecord({"text": EVIL + "y" * 5000, "blob": b"\x00\xff" * 1000, "flag": True, "n": -3,
                           "x": 0.5, "many": list(range(100)), EVIL: "key"})
    arrays = ArrayRecord({"w": Array.from_numpy(np.arange(12, dtype=np.float32).reshape(3, 4)),
                          "i": Array.from_numpy(np.array([3, 4], dtype=np.int64))})
    record, line = message_line({"arrays": arrays, "config": config, "metrics": MetricRecord({"loss": 0.25})})
    assert "\n" not in line and "\x1b" not in line and "\u202e" not in line and len(line) < 2000
    assert record["message_type"].startswith("query\\r\\n\\x1b") and record["reply_to"] == "ab" * 6
    shown = record["content"]["arrays"]["arrays"]
    assert shown["w"] == {"dtype": "float32", "shape": [3, 4], "norm": pytest.approx(np.linalg.norm(np.arange(12))),
                          "first": [0.0, 1.0, 2.0, 3.0]}
    assert shown["i"]["first"] == [3, 4]
    values = record["content"]["config"]["values"]
    assert values["text"].endswith("more chars)") and values["blob"].startswith("bytes[2000]:00ff")
    assert values["many"][-1] == "... (92 more)" and (values["flag"], values["n"], values["x"]) == (True, -3, 0.5)
    assert "w: float32(3, 4) |x|=22.49" in line and "metrics={loss=0.25}" in line
    json.dumps(record)  # --jsonl writes it as it is


def test_message_line_shows_an_error_reply():
    record, line = message_line(error=Error(code=2, reason="handler raised" + EVIL))
    assert record["message_error"] == {"code": 2, "reason": "handler raised\\r\\n\\x1b[31mforged line\\u202e"}
    assert "error=2 (" in line and "\x1b" not in line
