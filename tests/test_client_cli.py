"""fedproto-client's command line: usage errors (exit 2) and an unreachable server (exit 3)."""

from __future__ import annotations

import re

import pytest

from conftest import free_port
from fedproto.client.cli import main
from test_client_interop import log_time


@pytest.mark.parametrize("server, complaint", [
    ("127.0.0.1", "'127.0.0.1' has no port"),
    ("[::1]", "'[::1]' has no port"),
    (":8080", "':8080' has no host"),
    ("::1:8080", "'::1:8080': an IPv6 host goes in brackets"),
    ("localhost:http", "'localhost:http': the port must be a number from 1 to 65535, not 'http'"),
    ("localhost:0", "'localhost:0': the port must be a number from 1 to 65535, not '0'"),
    ("localhost:65536", "'localhost:65536': the port must be a number from 1 to 65535, not '65536'"),
])
def test_bad_server_address_is_a_usage_error(server, complaint, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--server", server, "--app", "fedproto.client.demo:make_client"])
    assert exit_info.value.code == 2
    assert f"fedproto-client: error: argument --server: {complaint}" in capsys.readouterr().err


@pytest.mark.parametrize("option, value", [
    ("--retries", "0"), ("--retries", "many"), ("--max-message-length", "-1"),
    ("--retry-delay", "-0.5"), ("--retry-delay", "nan"),
])
def test_bad_numbers_are_usage_errors(option, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--server", "127.0.0.1:8080", "--app", "fedproto.client.demo:make_client", option, value])
    assert exit_info.value.code == 2
    assert f"argument {option}: expected" in capsys.readouterr().err


@pytest.mark.parametrize("app, complaint", [
    ("fedproto.client.demo", "ValueError: --app must look like MODULE:ATTR, got 'fedproto.client.demo'"),
    ("fedproto.client.nosuchmodule:make_client",
     "ModuleNotFoundError: No module named 'fedproto.client.nosuchmodule'"),
    ("fedproto.client.demo:no_such_factory",
     "AttributeError: module 'fedproto.client.demo' has no attribute 'no_such_factory'"),
    ("fedproto.client.demo:FEATURES", "ValueError: FEATURES is not a handler (int has none of get_properties, "
                             "get_parameters, fit, evaluate)"),
    ("fedproto.client.demo:SoftmaxClient.fit",
     "AttributeError: module 'fedproto.client.demo' has no attribute 'SoftmaxClient.fit'"),
])
def test_unloadable_app_is_a_usage_error(app, complaint, capsys):
    assert main(["--server", "127.0.0.1:8080", "--app", app]) == 2
    assert capsys.readouterr().err == f"fedproto-client: cannot load --app {app}: {complaint}\n"


def test_unreadable_root_certificates_is_a_usage_error(tmp_path, capsys):
    missing = tmp_path / "missing.pem"
    assert main(["--server", "127.0.0.1:8080", "--app", "fedproto.client.demo:make_client",
                 "--root-certificates", str(missing)]) == 2
    assert capsys.readouterr().err == (
        f"fedproto-client: cannot read --root-certificates: [Errno 2] No such file or directory: '{missing}'\n")


def test_usage_error_exit_code_of_the_real_process(spawn):
    proc = spawn("edge_client", "-m", "fedproto.client", "--server", "127.0.0.1",
                 "--app", "fedproto.client.demo:make_client")
    assert proc.wait(30) == 2
    assert "fedproto-client: error: argument --server: '127.0.0.1' has no port" in proc.log()


def test_unreachable_server_is_retried_with_backoff_then_exit_3(spawn):
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    proc = spawn("edge_client", "-m", "fedproto.client", "--server", address,
                 "--app", "fedproto.client.demo:make_client", "--retries", "4", "--retry-delay", "0.1")
    assert proc.wait(30) == 3
    lines = proc.log().splitlines()
    retries = [line for line in lines if "joining again in" in line]
    assert [re.search(r"joining again in ([\d.]+) s", line).group(1) for line in retries] == ["0.1", "0.2", "0.4"]
    assert all(f"WARNING fedproto.client: stream to {address} ended: UNAVAILABLE" in line for line in retries)
    assert f"ERROR fedproto.client: giving up on {address} after 4 attempts: UNAVAILABLE" in lines[-1]
    # Each attempt starts only after its backoff delay.
    attempts = [log_time(line) for line in retries + lines[-1:]]
    gaps = [(later - earlier).total_seconds() for earlier, later in zip(attempts, attempts[1:])]
    assert all(gap >= delay for gap, delay in zip(gaps, [0.1, 0.2, 0.4])), gaps
