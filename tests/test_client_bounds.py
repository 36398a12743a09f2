"""The edge client never waits without a bound (issue 9, item 4).

``python -m fedproto.client`` runs as a process against a raw gRPC server defined here, which sends
exactly the bytes a test scripts (a ReconnectIns with seconds = 2**62, or nothing at all), or
against flwr's real ``start_server`` (examples/flwr_server.py).
"""

from __future__ import annotations

import queue
import signal
import time

import pytest

from conftest import start_raw_join_server
from fedproto.server_role import encode_reconnect_ins
from test_client_interop import start_edge_client, start_flwr_server, wait_until_listening

DONE = encode_reconnect_ins(0)
SILENCE = "silence"  # a script step: send nothing until the client goes (at most SILENCE_CAP s)
SILENCE_CAP = 30.0


class ScriptedServer:
    """A grpc server whose n-th Join stream plays ``scripts[n]`` (the last script repeats).

    A step is the bytes of a ServerMessage (sent, then one reply read), a number of seconds to
    stay silent, or SILENCE. ``joins`` gets the monotonic time of every Join.
    """

    def __init__(self, scripts: list[list], options: list[tuple[str, int]] = ()) -> None:
        self.scripts, self.joins, self.count = scripts, queue.Queue(), 0
        self.server, self.address = start_raw_join_server(self.join, workers=4, options=options)

    def join(self, requests, context):
        script = self.scripts[min(self.count, len(self.scripts) - 1)]
        self.count += 1
        self.joins.put(time.monotonic())
        for step in script:
            if isinstance(step, bytes):
                yield step
                next(requests, None)
            else:
                deadline = time.monotonic() + (SILENCE_CAP if step == SILENCE else step)
                while context.is_active() and time.monotonic() < deadline:
                    time.sleep(0.02)

    def next_join(self, timeout: float) -> float:
        return self.joins.get(timeout=timeout)

    def stop(self) -> None:
        self.server.stop(0)


@pytest.fixture
def scripted_server():
    started = []

    def start(scripts, options=()):
        started.append(ScriptedServer(scripts, options))
        return started[-1]

    yield start
    for server in started:
        server.stop()


def edge(spawn, server, *options: str, name: str = "client"):
    return spawn(name, "-m", "fedproto.client", "--server", server.address, "--app", "fedproto.client.demo:make_client",
                 "--retry-delay", "0.1", *options)


def test_reconnect_ins_with_2_to_the_62_seconds_is_clamped_and_the_client_rejoins(spawn, scripted_server):
    server = scripted_server([[encode_reconnect_ins(2**62)], [DONE]])
    client = edge(spawn, server, "--max-reconnect-wait", "0.5")
    first = server.next_join(30)
    second = server.next_join(30)
    assert client.wait(30) == 0, client.log()
    assert second - first >= 0.5
    log = client.log()
    assert f"server asked us to reconnect in {2**62} s; waiting 0.5 s (the maximum, --max-reconnect-wait)" in log
    assert "OverflowError" not in log and "Traceback" not in log
    assert log.rstrip().splitlines()[-1].endswith("server ended the session after 1 messages; exiting")


def test_a_server_that_never_speaks_is_left_after_the_idle_timeout_and_joined_again(spawn, scripted_server):
    server = scripted_server([[SILENCE], [DONE]])
    client = edge(spawn, server, "--idle-timeout", "1")
    first = server.next_join(30)
    second = server.next_join(30)
    assert client.wait(30) == 0, client.log()
    assert second - first >= 1.0
    assert "ended: the server sent nothing for 1 s (idle timeout); joining again in 0.1 s" in client.log()


def test_a_server_that_goes_quiet_mid_session_is_left_too_and_the_handler_time_does_not_count(
        spawn, scripted_server, tmp_path):
    from fedproto.client.demo import SoftmaxClient
    from fedproto.server_role import FitIns, encode_fit_ins

    fit = encode_fit_ins(FitIns(SoftmaxClient().get_parameters({})))
    # The handler sleeps 1.5 s (> --idle-timeout) in fit: that is not server silence.
    server = scripted_server([[fit, SILENCE], [DONE]])
    client = spawn("client", "-m", "fedproto.client", "--server", server.address,
                   "--app", "tests.server_clients:SlowClient",
                   "--retry-delay", "0.1", "--idle-timeout", "1", env={"SLOW_FIT_SECONDS": "1.5"})
    server.next_join(30)
    server.next_join(30)
    assert client.wait(30) == 0, client.log()
    log = client.log()
    assert "fit_ins (" in log and "answered in 15" in log
    assert "the server sent nothing for 1 s (idle timeout)" in log


def test_a_server_that_never_speaks_costs_retries_then_exit_3_with_one_error_line(spawn, scripted_server):
    server = scripted_server([[SILENCE]])
    client = edge(spawn, server, "--idle-timeout", "0.3", "--retries", "2")
    assert client.wait(30) == 3, client.log()
    last = client.log().rstrip().splitlines()[-1]
    assert " ERROR fedproto.client: giving up on " in last
    assert last.endswith("after 2 attempts: the server sent nothing for 0.3 s (idle timeout)")
    assert server.count == 2


# gRPC servers police keepalive pings: one that arrives less than
# grpc.http2.min_ping_interval_without_data_ms after the previous one, while the server has sent
# no data, is a strike; after 2 strikes the server sends GOAWAY "too_many_pings". flwr's
# start_server keeps gRPC's default (5 minutes), hence KEEPALIVE_SECONDS = 300. Scaled down 100x:
# a 3 s floor, a client pinging every 3 s and every 1 s, 8 s of server silence.
SCALED_FLOOR = [("grpc.http2.min_ping_interval_without_data_ms", 3000)]


def test_keepalive_at_the_servers_ping_floor_is_never_refused(spawn, scripted_server):
    server = scripted_server([[8.0, DONE]], SCALED_FLOOR)
    client = edge(spawn, server, "--keepalive", "3")
    assert client.wait(30) == 0, client.log()
    assert server.count == 1
    assert "too many pings" not in client.log().lower()


def test_keepalive_below_the_servers_ping_floor_gets_goaway_too_many_pings(spawn, scripted_server):
    server = scripted_server([[8.0, DONE], [DONE]], SCALED_FLOOR)
    client = edge(spawn, server, "--keepalive", "1")
    assert client.wait(30) == 0, client.log()
    assert server.count == 2
    assert "ended: UNAVAILABLE: Too many pings; joining again" in client.log()


def test_default_keepalive_against_flwrs_start_server_runs_three_rounds_without_goaway(spawn, tmp_path):
    run = start_flwr_server(spawn, tmp_path)
    wait_until_listening(run)
    clients = [start_edge_client(spawn, run, tmp_path, k, "--idle-timeout", "20") for k in (0, 1)]
    history = run.history()
    for client in clients:
        assert client.wait(60) == 0, client.log()
        log = client.log()
        assert log.count("joined ") == 1 and "ended:" not in log and "too many pings" not in log.lower()
    assert sorted(dict(history["losses_distributed"])) == [1, 2, 3]


def test_flwrs_start_server_refuses_keepalive_pings_below_its_five_minute_floor(spawn, tmp_path):
    # Why the default is 300 s: the real server, a 10 s fit, our client pinging every second (the
    # server ends the connection at its third early ping; 10 s leaves room on a loaded machine).
    run = start_flwr_server(spawn, tmp_path, rounds=1, min_clients=1)
    wait_until_listening(run)
    client = spawn("client", "-m", "fedproto.client", "--server", run.address,
                   "--app", "tests.server_clients:SlowClient", "--keepalive", "1", env={"SLOW_FIT_SECONDS": "10"})
    run.history()
    assert client.wait(60) == 0, client.log()
    assert "ended: UNAVAILABLE: Too many pings; joining again" in client.log()


def test_ctrl_c_while_the_handler_runs_ends_the_client_at_once_with_130(spawn, tmp_path):
    # The handler runs in a thread of its own (the event loop carries keepalive pings meanwhile):
    # Ctrl-C must not wait for it to return.
    run = start_flwr_server(spawn, tmp_path, rounds=1, min_clients=1)
    wait_until_listening(run)
    marker = tmp_path / "fit_started"
    client = spawn("client", "-m", "fedproto.client", "--server", run.address,
                   "--app", "tests.server_clients:SlowClient",
                   env={"SLOW_FIT_SECONDS": "60", "SLOW_FIT_MARKER": str(marker)})
    deadline = time.monotonic() + 30
    while not marker.exists():
        assert time.monotonic() < deadline and client.popen.poll() is None, client.log()
        time.sleep(0.05)
    client.popen.send_signal(signal.SIGINT)
    assert client.wait(5) == 130, client.log()
    assert "fedproto-client: interrupted" in client.log()
