"""fedproto-trace --fleet between a real flower-superlink and real nodes: transparent, logged, disturbable.

Each test starts `flower-superlink`, the relay in front of its Fleet API, nodes pointed at the
relay (ours, and flwr's `flower-supernode`), and `flwr run` of examples/superlink_app (message-API
FedAvg). The relay's --jsonl records are what the assertions read; its console is in its log.
"""

from __future__ import annotations

import json
import socket
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from superlink_harness import EXAMPLE_APP, Harness, Process
from test_fleet_interop import APP, NODE_ARGS, assert_arrays_equal, run, stop_node

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
    report, arrays = run(harness, tmp_path, "traced", strategy="message", **{"num-rounds": 2})
    assert_arrays_equal(arrays, expected_fedavg([[0, 1]] * 2))
    assert stop_node(harness, ours) == 0
    theirs.stop()
    wait_until(lambda: calls(jsonl, "UnregisterNode"), "our node's UnregisterNode", harness)

    assert {c["rpc"] for c in calls(jsonl)} == set(FLEET_RPCS)
    assert all(c["status"] == 200 for c in calls(jsonl)), [c for c in calls(jsonl) if c["status"] != 200]
    shown = messages(jsonl)
    assert all("error" not in m for m in shown), [m for m in shown if "error" in m]
    # 2 rounds x (train + evaluate) x 2 nodes, each an instruction down and a reply up.
    for direction in ("SL->N", "N->SL"):
        kinds = sorted(m["message_type"] for m in shown if m["direction"] == direction)
        assert kinds == ["evaluate"] * 4 + ["train"] * 4, kinds
    pushed = {m["message_id"]: m for m in shown if m["direction"] == "N->SL"}
    pulled = {m["message_id"]: m for m in shown if m["direction"] == "SL->N"}
    assert {m["reply_to"] for m in pushed.values()} == set(pulled)
    train = next(m for m in pulled.values() if m["message_type"] == "train")
    assert train["content"]["config"]["values"]["server-round"] in (1, 2)
    arrays_shown = train["content"]["arrays"]["arrays"]
    assert [a["dtype"] for a in arrays_shown.values()] == [str(a.dtype) for a in arrays]
    assert [tuple(a["shape"]) for a in arrays_shown.values()] == [a.shape for a in arrays]
    reply = next(m for m in pushed.values() if m["message_type"] == "train")
    assert "num-examples" in reply["content"]["metrics"]["values"]
    # Every object of the run was written under its id, and is what its id says.
    dumped = list((tmp_path / "objects").iterdir())
    assert dumped and all(len(p.name) == 64 for p in dumped)
    assert all(__import__("hashlib").sha256(p.read_bytes()).hexdigest() == p.name for p in dumped)
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
    relay, _ = harness.start_fleet_relay("relay", "--jsonl", str(jsonl), "--corrupt-object", "ArrayChunk",
                                         "--fault-times", "1")
    node = our_node(harness, 0, relay)
    harness.start_run("corrupted", run_config={"min-nodes": 1, "num-rounds": 1, "poll-interval": 0.2})
    assert node.wait(60) == 1, harness.logs()
    [corrupted] = [c for c in calls(jsonl, "PullObject") if "fault" in c]
    assert corrupted["object_type"] == "ArrayChunk" and "corrupted ArrayChunk" in corrupted["fault"]
    assert corrupted["object_error"].startswith("content hashes to ")
    assert "PullObject: object" in node.log() and "content hashes to" in node.log()


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


def test_grpc_rere_run_through_the_relay(superlink_harness, tmp_path):
    harness = superlink_harness(grpc_fleet=True)
    harness.start_superlink()
    jsonl = tmp_path / "fleet.jsonl"
    relay, _ = harness.start_fleet_relay("relay", "--jsonl", str(jsonl), transport="grpc-rere")
    node = our_node(harness, 0, relay, transport="grpc-rere")
    one_node_run(harness, tmp_path, "grpc")
    assert stop_node(harness, node) == 0
    assert {c["status"] for c in calls(jsonl)} == {"OK"}
    assert {"RegisterNode", "PullObject", "PushObject", "UnregisterNode"} <= {c["rpc"] for c in calls(jsonl)}
    assert sorted(m["message_type"] for m in messages(jsonl)) == ["evaluate", "evaluate", "train", "train"]


def test_tls_on_both_sides(superlink_harness, tls_files, tmp_path):
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
