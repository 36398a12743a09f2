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
