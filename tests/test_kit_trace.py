"""fedproto-trace between real clients and servers over loopback: transparent, logged, disturbable."""

from __future__ import annotations

import json
import re
import socket
import time
from pathlib import Path

import numpy as np

from conftest import Proc, free_port

ROUNDS = 2
FLWR_DEMO_CLIENT = """
import sys
from flwr.client import NumPyClient, start_client
from fedproto.client.demo import SoftmaxClient

class Demo(NumPyClient):
    def __init__(self, partition):
        self.inner = SoftmaxClient(partition=partition)
    def get_parameters(self, config):
        return self.inner.get_parameters(config)
    def fit(self, parameters, config):
        return self.inner.fit(parameters, config)
    def evaluate(self, parameters, config):
        return self.inner.evaluate(parameters, config)

start_client(server_address=sys.argv[1], client=Demo(int(sys.argv[2])).to_client(), insecure=True)
"""


def wait_for(condition, what: str, proc: Proc, timeout: float = 30, also: tuple[Proc, ...] = ()) -> None:
    """Poll until ``condition()``; on failure show the logs of ``proc`` and of ``also``."""
    deadline = time.monotonic() + timeout
    while not condition():
        logs = "\n".join(f"--- {p.name}:\n{p.log()[-3000:]}" for p in (proc, *also))
        assert proc.popen.poll() is None, f"{proc.name} exited while waiting for {what}:\n{logs}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}:\n{logs}"
        time.sleep(0.05)


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def start_relay(spawn, upstream: str, jsonl: Path, *faults: str) -> tuple[str, Proc]:
    address = f"127.0.0.1:{free_port()}"
    relay = spawn("relay", "-m", "fedproto.kit.trace", "--listen", address, "--upstream", upstream,
                  "--jsonl", str(jsonl), *faults)
    wait_for(lambda: "relaying Join from" in relay.log(), "the relay to listen", relay)
    return address, relay


def start_conformance(spawn) -> tuple[str, Proc]:
    address = f"127.0.0.1:{free_port()}"
    runner = spawn("conformance", "-m", "fedproto.kit.conformance", "--address", address, "--timeout", "20")
    wait_for(lambda: "waiting for a client" in runner.log(), "the conformance runner", runner)
    return address, runner


def records(jsonl: Path) -> list[dict]:
    return [json.loads(line) for line in jsonl.read_text().splitlines()]


def flwr_training(spawn, tmp_path: Path, name: str, through_relay: bool):
    """flwr's server + 2 flwr clients (demo model), directly or via the relay, started.

    Returns (record dir, history file, server, clients)."""
    port = free_port()
    record_dir, history = tmp_path / f"{name}_rounds", tmp_path / f"{name}_history.json"
    server = spawn(f"{name}_server", "examples/flwr_server.py", "--address", f"127.0.0.1:{port}",
                   "--rounds", str(ROUNDS), "--min-clients", "2", "--history", str(history),
                   "--record-dir", str(record_dir), "--initial-zeros", "[[20, 4], [4]]")
    wait_for(lambda: listening(port), "flwr's server", server)
    address = f"127.0.0.1:{port}"
    if through_relay:
        address, _ = start_relay(spawn, address, tmp_path / f"{name}.jsonl")
    clients = [spawn(f"{name}_client{p}", "-c", FLWR_DEMO_CLIENT, address, str(p)) for p in (0, 1)]
    return record_dir, history, server, clients


def test_flwr_server_and_flwr_clients_train_identically_through_the_relay(spawn, tmp_path):
    direct = flwr_training(spawn, tmp_path, "direct", through_relay=False)
    relayed = flwr_training(spawn, tmp_path, "relayed", through_relay=True)
    for _, _, server, clients in (direct, relayed):
        assert server.wait(timeout=90) == 0, server.log()[-3000:]
        for client in clients:
            assert client.wait(timeout=30) == 0, client.log()[-3000:]

    for round_number in range(1, ROUNDS + 1):
        with np.load(direct[0] / f"round_{round_number}.npz") as a, \
                np.load(relayed[0] / f"round_{round_number}.npz") as b:
            assert a.files == b.files == ["arr_0", "arr_1"]
            for key in a.files:
                assert a[key].dtype == b[key].dtype and np.array_equal(a[key], b[key])
                assert np.any(a[key] != 0)  # training moved the model off its zero start
    direct_history, relayed_history = (json.loads(h[1].read_text()) for h in (direct, relayed))
    assert direct_history["losses_distributed"] == relayed_history["losses_distributed"]
    assert len(direct_history["losses_distributed"]) == ROUNDS

    trace = records(tmp_path / "relayed.jsonl")
    messages = [r for r in trace if "direction" in r]
    fits = [r for r in messages if r["oneof"] == "fit_ins"]
    assert len(fits) == 2 * ROUNDS
    assert fits[0]["tensors"] == [{"dtype": "<f4", "shape": [20, 4], "size": 448},
                                  {"dtype": "<f4", "shape": [4], "size": 144}]
    assert {r["config"]["server_round"] for r in fits} == set(range(1, ROUNDS + 1))
    replies = [r for r in messages if r["oneof"] == "fit_res"]
    assert len(replies) == 2 * ROUNDS
    assert all(r["status"]["code"] == "OK" and r["num_examples"] == 400 and r["rtt_ms"] > 0
               and r["reply_to"] == "fit_ins" for r in replies)
    # Each client's session as flwr's server runs it (initial parameters given, so no
    # GetParametersIns): Fit then Evaluate per round, then ReconnectIns with seconds unset (0).
    for stream in (1, 2):
        instructions = [r["oneof"] for r in messages if r["stream"] == stream and r["direction"] == "server_to_client"]
        assert instructions == ["fit_ins", "evaluate_ins"] * ROUNDS + ["reconnect_ins"]
    assert [r["seconds"] for r in messages if r["oneof"] == "reconnect_ins"] == [0, 0]


def test_our_client_through_the_relay_passes_every_conformance_check(spawn, tmp_path):
    upstream, runner = start_conformance(spawn)
    jsonl = tmp_path / "trace.jsonl"
    address, relay = start_relay(spawn, upstream, jsonl)
    client = spawn("client", "-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
    assert client.wait(timeout=60) == 0, client.log()
    assert runner.wait(timeout=60) == 0, runner.log()
    assert "all 16 checks passed" in runner.log()

    trace = records(jsonl)
    opened = [r for r in trace if r.get("event") == "opened"]
    assert [r["stream"] for r in opened] == [1, 2]  # the rejoin after ReconnectIns(seconds=1)
    oneofs = [(r["stream"], r["oneof"]) for r in trace if "direction" in r]
    assert oneofs[-4:] == [(2, "evaluate_ins"), (2, "evaluate_res"),
                           (2, "reconnect_ins"), (2, "disconnect_res")]
    assert len(oneofs) == 2 * 11  # 4 instructions on stream 1, 7 on stream 2, each answered
    first_properties = next(r for r in trace if r.get("oneof") == "get_properties_ins")
    assert first_properties["config"]["f_bytes"] == {"bytes_hex": "00ff"}
    assert first_properties["config"]["b_uint64"] == 2**64 - 1
    # The console shows the same, one line per message.
    assert "S->C  reconnect_ins" in relay.log() and "reason=ACK" in relay.log()


def test_delay_holds_every_message_in_both_directions(spawn, tmp_path):
    upstream, runner = start_conformance(spawn)
    jsonl = tmp_path / "trace.jsonl"
    address, relay = start_relay(spawn, upstream, jsonl, "--delay-ms", "150")
    client = spawn("client", "-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
    assert client.wait(timeout=60) == 0, client.log()
    assert runner.wait(timeout=60) == 0, runner.log()
    # The runner times each exchange: instruction and reply are each held 150 ms.
    table_rows = [line for line in runner.log().splitlines() if re.match(r"\s*\d+  ", line)]
    exchange_ms = [int(m) for row in table_rows for m in re.findall(r"\((\d+) ms\)$", row)]
    assert len(exchange_ms) == 11 and min(exchange_ms) >= 300, runner.log()
    # The relay's rtt starts when it forwards the instruction and stops when the reply
    # arrives, so both of its own delays are left out (+1: the runner rounds to whole ms).
    replies = [r for r in records(jsonl) if r.get("direction") == "client_to_server"]
    assert len(replies) == 11
    for reply, exchange in zip(replies, exchange_ms):
        assert reply["rtt_ms"] + 300 <= exchange + 1, (reply, exchange)


def test_drop_after_cuts_the_stream_and_the_client_sees_it_end(spawn, tmp_path):
    upstream, runner = start_conformance(spawn)
    jsonl = tmp_path / "trace.jsonl"
    address, relay = start_relay(spawn, upstream, jsonl, "--drop-after", "2")
    client = spawn("client", "-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
    wait_for(lambda: "UNAVAILABLE: fedproto-trace dropped the stream after 2 messages; joining again"
             in client.log(), "the client to see the cut", client, also=(relay, runner))
    dropped = [r for r in records(jsonl) if r.get("event") == "dropped"]
    assert dropped[0]["after_messages"] == 2
    assert [r["oneof"] for r in records(jsonl) if r["stream"] == 1 and "direction" in r] == \
        ["get_parameters_ins", "get_parameters_res"]


def test_corrupt_rate_one_makes_the_client_report_a_named_decode_error(spawn, tmp_path):
    upstream, runner = start_conformance(spawn)
    jsonl = tmp_path / "trace.jsonl"
    address, relay = start_relay(spawn, upstream, jsonl, "--corrupt-rate", "1.0", "--seed", "7")
    client = spawn("client", "-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
    assert client.wait(timeout=30) == 1, client.log()  # EXIT_PROTOCOL_ERROR
    assert "protocol error, leaving: ServerMessage: not a valid protobuf message" in client.log()
    first = next(r for r in records(jsonl) if "direction" in r)
    assert first["oneof"] == "get_parameters_ins"
    assert first["fault"].startswith("corrupted: cut to ") and first["fault"].endswith(f" of {first['size']} bytes")
    # The runner waits its --timeout (20 s) for the client to join again, then gives up.
    assert runner.wait(timeout=45) == 1
    assert re.search(r"GetParametersIns \[get_parameters\]\s+FAIL\s+client ended the stream instead of replying",
                     runner.log()), runner.log()
