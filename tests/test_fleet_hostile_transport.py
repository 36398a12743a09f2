"""The Fleet node's transport under a hostile or broken SuperLink (issue 16): real node processes
(``python -m fedproto.client --superlink ...``) against the scriptable fakes of hostile_superlink.py.

Each test breaks one thing: a response that dribbles, a call that never ends, a body cut off or
too big, peer text meant to flood or forge log lines. The node must give up a call at its
deadline (per call, not per read) and retry with backoff, leave within seconds of SIGTERM (still
deactivating), take a body only when it is whole, and log peer text bounded and escaped.

The nodes poll every 30 s (``--poll-interval``), so a second PullMessages within a few seconds can
only be a retry of the first.
"""

from __future__ import annotations

import re
import signal
import time
from pathlib import Path

import grpc
import pytest

from fedproto.fleet_pb2 import PushMessagesRequest, PushMessagesResponse
from fedproto.message_pb2 import PushObjectRequest
from hostile_superlink import (
    Exchange,
    HostileGrpcSuperLink,
    HostileSuperLink,
    chunked,
    cut_off,
    dribble,
    grpc_abort,
    push_messages_response,
    raw,
    refuse,
    stall,
    train_message,
    trickle,
)

pytestmark = pytest.mark.timeout(60)

TESTS = Path(__file__).resolve().parent
NODE_ARGS = ["--poll-interval", "30", "--retry-delay", "0.2", "--heartbeat-interval", "30"]
LEAVE_SECONDS = 5.0  # SIGTERM to exit, a stalled call included
# Peer text that tries to flood the log (1 MB), forge a line (CR/LF) and drive the terminal (ESC).
HOSTILE_TEXT = b'{"detail": "\x1b[2J\r\nINFO forged line\n' + b"A" * 1_000_000 + b'"}'
LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR) ")
LONGEST_LOG_LINE = 400


@pytest.fixture
def fake():
    server = HostileSuperLink()
    yield server
    server.stop()


@pytest.fixture
def grpc_fake():
    server = HostileGrpcSuperLink()
    yield server
    server.stop()


@pytest.fixture
def start_node(spawn):
    def start(address: str, *extra: str, transport: str = "http"):
        args = ["-m", "fedproto.client", "--superlink", address, "--app", "hostile_superlink:EchoHandler",
                "--fleet-transport", transport, *NODE_ARGS, *extra]
        return spawn("node", *args, env={"PYTHONPATH": str(TESTS)})
    return start


def leave(node, server) -> float:
    """SIGTERM the node; it must exit 0 within LEAVE_SECONDS. Returns how long it took."""
    started = time.monotonic()
    node.popen.send_signal(signal.SIGTERM)
    assert node.wait(LEAVE_SECONDS + 5) == 0, node.log()
    took = time.monotonic() - started
    assert took < LEAVE_SECONDS, f"left after {took:.1f} s\n{node.log()}"
    return took


def assert_left_properly(server, node) -> None:
    assert server.count("DeactivateNode") == 1 and server.count("UnregisterNode") == 1, node.log()


def test_dribbling_response_is_given_up_at_its_deadline_and_retried(fake, start_node):
    """100 MiB announced, one byte every 2 s: the call ends at its deadline (2 s floor here, the
    dribbled bytes add almost nothing), not at a per-read timeout, and PullMessages is retried."""
    fake.script("PullMessages", dribble(announced=100 * 2**20, every=0.5))
    node = start_node(fake.address, "--call-timeout", "2", "--min-transfer-rate", "1000")
    assert fake.wait_for("PullMessages", 1), node.log()
    started = time.monotonic()
    assert fake.wait_for("PullMessages", 2, timeout=6), f"no retry within 6 s\n{node.log()}"
    assert 1.5 < time.monotonic() - started < 5
    assert "deadline" in node.log()
    leave(node, fake)
    assert_left_properly(fake, node)


def test_slow_but_steady_response_outlasting_the_floor_is_taken(fake, start_node):
    """60 kB at about twice the minimum rate takes ~1.5 s, past the 1 s floor: its bytes extend
    the deadline, so it is taken whole, not retried."""
    fake.script("PullMessages", trickle(b"\x78\x00" * 30_000, rate=40_000))  # an unknown field, parses as empty
    node = start_node(fake.address, "--call-timeout", "1", "--min-transfer-rate", "20000")
    assert fake.wait_for("PullMessages", 1), node.log()
    time.sleep(3)  # the answer takes ~1.5 s; cut at 1 s, it would have been asked again 0.2 s later
    assert fake.count("PullMessages") == 1 and "PullMessages to" not in node.log(), node.log()
    leave(node, fake)
    assert_left_properly(fake, node)


def test_sigterm_during_a_stalled_call_leaves_at_once_and_deactivates(fake, start_node):
    fake.script("PullMessages", stall)
    node = start_node(fake.address)  # the default deadline: 60 s
    assert fake.wait_for("PullMessages", 1), node.log()
    time.sleep(0.5)
    leave(node, fake)
    assert_left_properly(fake, node)
    assert fake.count("PullMessages") == 1


def test_second_sigterm_gives_up_a_stalled_deactivation(fake, start_node):
    fake.script("PullMessages", stall)
    fake.script("DeactivateNode", stall)
    node = start_node(fake.address)
    assert fake.wait_for("PullMessages", 1), node.log()
    node.popen.send_signal(signal.SIGTERM)
    assert fake.wait_for("DeactivateNode", 1, timeout=LEAVE_SECONDS), node.log()
    leave(node, fake)  # the second signal
    assert fake.count("UnregisterNode") == 0
    assert "DeactivateNode given up on a second signal" in node.log()


def test_body_cut_midway_is_retried_not_a_protocol_error(fake, start_node):
    """Content-Length 1000, 7 bytes sent (a field cut inside), then the connection closes."""
    fake.script("PullMessages", cut_off(b"\x0a\x20\x0a\x05abc", announced=1000))
    node = start_node(fake.address)
    assert fake.wait_for("PullMessages", 2, timeout=5), f"no retry\n{node.log()}"
    assert "cut off after 7 of 1000 bytes" in node.log()
    leave(node, fake)
    assert_left_properly(fake, node)


def cut_after_first_object(exchange: Exchange) -> None:
    """The PushMessagesResponse cut right after its first objects_to_push entry: the prefix is
    itself a valid response asking for one object, with no session id."""
    whole = push_messages_response(PushMessagesRequest.FromString(exchange.body))
    prefix = PushMessagesResponse(objects_to_push=whole.objects_to_push[:1]).SerializeToString()
    whole_bytes = whole.SerializeToString()
    assert whole_bytes.startswith(prefix) and len(whole.objects_to_push) > 1
    cut_off(prefix, announced=len(whole_bytes))(exchange)


def test_push_messages_response_cut_at_a_field_boundary_is_retried(fake, start_node):
    message = train_message()
    fake.hand_out(message)
    fake.script("PushMessages", cut_after_first_object)
    node = start_node(fake.address)
    assert fake.wait_for("PushMessages", 2, timeout=10), f"PushMessages not retried\n{node.log()}"
    pushed_tree = PushMessagesRequest.FromString(fake.requests("PushMessages")[1])
    wanted = push_messages_response(pushed_tree).objects_to_push
    assert fake.wait_for("PushObject", len(wanted), timeout=10), node.log()
    assert fake.wait_for("PullMessages", 2, timeout=5), node.log()  # done with the message: polls at once
    pushes = [PushObjectRequest.FromString(body) for body in fake.requests("PushObject")]
    assert [push.object_id for push in pushes] == list(wanted)
    assert {push.session_id for push in pushes} == {"push-session"}
    assert "answered in" in node.log()
    leave(node, fake)
    assert_left_properly(fake, node)


def test_chunked_body_above_max_message_length_is_refused_and_retried(fake, start_node):
    body = b"\x78\x00" * 150_000  # 300 kB of a valid (unknown) field: it would parse if taken
    fake.script("PullMessages", chunked(body))
    node = start_node(fake.address, "--max-message-length", "100000")
    assert fake.wait_for("PullMessages", 2, timeout=5), f"no retry\n{node.log()}"
    assert "chunked response above --max-message-length (100000 bytes)" in node.log()
    leave(node, fake)
    assert_left_properly(fake, node)


def assert_log_is_bounded_and_escaped(log: str) -> None:
    """Every line is one of the node's log lines (none forged by a peer's CR/LF), short, without ESC."""
    lines = log.splitlines(keepends=True)
    assert lines
    for line in lines:
        assert LOG_LINE.match(line), f"not a log line of the node: {line[:300]!r}"
        assert len(line) < LONGEST_LOG_LINE, f"{len(line)} chars: {line[:300]!r}"
        assert "\x1b" not in line and "\r" not in line


def test_peer_text_in_a_refusal_and_a_bad_status_line_is_bounded(fake, start_node):
    fake.script("PullMessages", refuse(503, HOSTILE_TEXT))
    status_line = b"HTTP/1.1 2\x1b[31m00 " + HOSTILE_TEXT[:60_000].replace(b"\n", b" ") + b"\r\n"
    fake.script("PullMessages", raw(status_line + b"\r\n"))
    node = start_node(fake.address)
    assert fake.wait_for("PullMessages", 3, timeout=5), node.log()
    leave(node, fake)
    log = node.log()
    assert "HTTP 503: {\"detail\": \"\\x1b[2J\\r\\nINFO forged line\\nAAA" in log
    assert "BadStatusLine" in log
    assert_log_is_bounded_and_escaped(log)


def test_peer_text_in_a_registration_refusal_is_bounded(fake, start_node):
    fake.script("RegisterNode", refuse(412, HOSTILE_TEXT))
    node = start_node(fake.address)
    assert node.wait(10) == 5, node.log()
    assert "HTTP 412" in node.log()
    assert_log_is_bounded_and_escaped(node.log())


def test_grpc_stalled_call_ends_at_its_deadline_and_sigterm_interrupts_the_next(grpc_fake, start_node):
    grpc_fake.script("PullMessages", grpc_fake.grpc_stall, times=2)
    node = start_node(grpc_fake.address, "--call-timeout", "1", transport="grpc-rere")
    assert grpc_fake.wait_for("PullMessages", 1, timeout=10), node.log()
    started = time.monotonic()
    assert grpc_fake.wait_for("PullMessages", 2, timeout=5), f"no retry after the deadline\n{node.log()}"
    assert time.monotonic() - started > 0.8
    assert "DEADLINE_EXCEEDED" in node.log()
    time.sleep(0.3)
    leave(node, grpc_fake)  # the second stall is cut by the signal, not by its deadline
    assert_left_properly(grpc_fake, node)


def test_grpc_sigterm_during_a_stalled_call_leaves_at_once(grpc_fake, start_node):
    grpc_fake.script("PullMessages", grpc_fake.grpc_stall)
    node = start_node(grpc_fake.address, transport="grpc-rere")  # the default deadline: 60 s
    assert grpc_fake.wait_for("PullMessages", 1, timeout=10), node.log()
    time.sleep(0.5)
    leave(node, grpc_fake)
    assert_left_properly(grpc_fake, node)


def test_grpc_details_are_bounded(grpc_fake, start_node):
    details = "\x1b[2J\r\nINFO forged line\n" + "A" * 4000
    grpc_fake.script("PullMessages", grpc_abort(grpc.StatusCode.UNAVAILABLE, details))
    node = start_node(grpc_fake.address, transport="grpc-rere")
    assert grpc_fake.wait_for("PullMessages", 2, timeout=10), node.log()
    leave(node, grpc_fake)
    assert "UNAVAILABLE: \\x1b[2J\\r\\nINFO forged line\\nAAA" in node.log()
    assert_log_is_bounded_and_escaped(node.log())
