"""The Fleet node's session under a hostile or broken SuperLink (issue 16): real node processes
(``python -m fedproto.client --superlink ...``) against the scriptable fake of hostile_superlink.py.

Where tests/test_fleet_hostile_transport.py breaks the transport (deadlines, bodies), these break
what the session decides: a SuperLink that forgets the node at every heartbeat or answers every
PullMessages with 401 (no re-registration storm), a message that names more object bytes than
the node's limit (memory follows the limit), peer text in the fields the node logs (bounded and
escaped), and metadata the message id does not cover (refused).
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import numpy as np
import pytest

from fedproto.heartbeat_pb2 import SendNodeHeartbeatResponse
from fedproto.message_pb2 import Message, Metadata, PullObjectRequest
from fedproto.objects import Array, ArrayRecord, ConfigRecord, deflate_message
from hostile_superlink import NODE_ID, Exchange, HostileSuperLink, refuse, train_message

pytestmark = pytest.mark.timeout(90)

TESTS = Path(__file__).resolve().parent
NODE_ARGS = ["--poll-interval", "0.2", "--retry-delay", "0.2", "--heartbeat-interval", "10"]
LONGEST_LOG_LINE = 400
PEER_TEXT = "\x1b[2J\r\nINFO forged line\n" + "A" * 1_000_000  # floods, forges a line, drives a terminal


@pytest.fixture
def superlink():
    server = HostileSuperLink()
    yield server
    server.stop()


@pytest.fixture
def node(spawn):
    def start(address: str, *extra: str):
        args = ["-m", "fedproto.client", "--superlink", address, "--app", "hostile_superlink:EchoHandler",
                *NODE_ARGS, *extra]
        return spawn("node", *args, env={"PYTHONPATH": str(TESTS)})
    return start


def wait_with_peak_rss(popen, timeout: float) -> tuple[int | None, float]:
    """The node's exit code and its peak RSS in MiB (from the kernel's accounting at exit)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, usage = os.wait4(popen.pid, os.WNOHANG)
        if pid:
            popen.returncode = os.waitstatus_to_exitcode(status)
            return popen.returncode, usage.ru_maxrss / 1024
        time.sleep(0.02)
    return None, 0.0


def forgets_the_node(exchange: Exchange) -> None:
    exchange.answer(SendNodeHeartbeatResponse(success=False).SerializeToString())


@pytest.mark.parametrize("how", ["heartbeat answered success=false", "PullMessages answered 401"])
def test_a_superlink_that_keeps_forgetting_the_node_gets_no_storm(superlink, node, how):
    if how.startswith("heartbeat"):
        superlink.script("SendNodeHeartbeat", forgets_the_node, times=10_000)
    else:
        superlink.script("PullMessages", refuse(401, b'{"detail": "node unknown"}'), times=10_000)
    started = node(superlink.address)
    time.sleep(8.0)
    requests, registrations = len(superlink.received), superlink.count("RegisterNode")
    started.popen.terminate()
    started.wait(10)
    # Re-registration waits 1, 2, 4 s: in 8 s at most 4 registrations of 3-4 requests each. Without
    # a backoff the node re-registered 1,200-1,500 times a second.
    assert registrations <= 4, f"{registrations} RegisterNode in 8 s\n{started.log()[-3000:]}"
    assert requests <= 20, f"{requests} requests in 8 s"
    assert "registering again in 4 s" in started.log()


def big_message(arrays: int, elements: int, legacy: bool) -> object:
    """A train instruction of ``arrays`` float32 arrays of ``elements`` each (4 bytes per element)."""
    values = [np.full(elements, index, np.float32) for index in range(arrays)]
    metadata = Metadata(run_id=5, src_node_id=1, dst_node_id=NODE_ID, message_type="train",
                        created_at=time.time(), ttl=600.0)
    if legacy:  # flwr's legacy layout announces no dtype or shape: only the running total can stop it
        record = ArrayRecord({str(i): Array("", (), "numpy.ndarray", Array.from_numpy(v).data)
                              for i, v in enumerate(values)})
        return deflate_message(metadata, {"fitins.parameters": record, "fitins.config": ConfigRecord({})})
    record = ArrayRecord({f"w{i}": Array.from_numpy(v) for i, v in enumerate(values)})
    return deflate_message(metadata, {"arrays": record, "config": ConfigRecord({"server-round": 1})})


def baseline_rss(superlink: HostileSuperLink, node) -> float:
    """Peak RSS of a node that registers, polls and leaves: what the node costs without a message."""
    started = node(superlink.address)
    assert superlink.wait_for("PullMessages", 3, timeout=20)
    started.popen.terminate()
    code, peak = wait_with_peak_rss(started.popen, 20)
    assert code == 0, started.log()
    return peak


@pytest.mark.parametrize("legacy", [False, True], ids=["message-api", "legacy"])
def test_memory_follows_the_message_limit_not_what_the_superlink_names(superlink, node, legacy):
    limit_mib = 16
    message = big_message(arrays=12, elements=1 << 20, legacy=legacy)  # 12 x 4 MiB named, 48 MiB
    baseline = baseline_rss(superlink, node)
    superlink.hand_out(message)
    started = node(superlink.address, "--max-message-length", str(limit_mib << 20))
    code, peak = wait_with_peak_rss(started.popen, 60)
    assert code == 1, started.log()
    assert f"exceed the {limit_mib << 20}-byte message limit" in started.log()
    chunk_ids = {oid for oid, data in message.objects.items() if data.startswith(b"ArrayChunk ")}
    pulled = [PullObjectRequest.FromString(body).object_id for body in superlink.requests("PullObject")]
    if legacy:
        assert len(chunk_ids.intersection(pulled)) <= limit_mib // 4 + 1  # stopped at the running total
    else:
        assert not chunk_ids.intersection(pulled)  # refused from the Arrays' announced sizes
    assert peak < baseline + limit_mib + 16, f"peak {peak:.0f} MiB, baseline {baseline:.0f} MiB"
    assert superlink.count("PushMessages") == 0


def test_peer_text_in_logged_fields_is_bounded_and_escaped(superlink, node):
    """Record names and a message type full of control characters and a megabyte long."""
    metadata = Metadata(run_id=5, src_node_id=1, dst_node_id=NODE_ID, message_type="train" + PEER_TEXT,
                        created_at=time.time(), ttl=600.0)
    content = {f"rec{i}{PEER_TEXT}": ConfigRecord({"k": 1}) for i in range(3)}
    superlink.hand_out(deflate_message(metadata, content))
    started = node(superlink.address)
    assert superlink.wait_for("PushObject", 1, timeout=20), started.log()
    superlink.hand_out(bad_id_message())
    assert started.wait(20) == 1, started.log()  # the oversized message id is a protocol error
    log = started.log()
    assert "unsupported message" in log and "protocol error" in log
    for line in log.splitlines():
        assert len(line) <= LONGEST_LOG_LINE, line[:200]
        assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", line), repr(line[:200])
    assert "forged line" not in "\n".join(line for line in log.splitlines() if line.startswith("INFO"))


def bad_id_message():
    """A PullMessages entry whose message id (and tree root) is a megabyte of peer text."""
    message = train_message()
    pulled = Message()
    pulled.CopyFrom(message.message)
    pulled.metadata.message_id = PEER_TEXT
    tree = type(message.object_tree)()
    tree.CopyFrom(message.object_tree)
    tree.object_id = PEER_TEXT
    return message._replace(message=pulled, object_tree=tree)


def test_metadata_the_message_id_does_not_cover_is_refused(superlink, node):
    """PullMessages says evaluate / run 999; the hashed Message object says train / run 5."""
    message = train_message()
    forged = Message()
    forged.CopyFrom(message.message)
    forged.metadata.message_type, forged.metadata.run_id = "evaluate", 999
    superlink.hand_out(message._replace(message=forged))
    started = node(superlink.address)
    assert started.wait(20) == 1, started.log()
    assert "PullMessages says run_id = 999, the hashed Message object 5" in started.log()
    assert superlink.count("ConfirmMessageReceived") == 0 and superlink.count("PushMessages") == 0
