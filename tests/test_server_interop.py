"""Our server against flwr's: the same clients must end up with the same global model.

Everything runs as real processes over loopback gRPC: flwr's ``start_server`` (via
examples/flwr_server.py), our ``python -m fedproto.server``, flwr's ``start_client`` with a NumPyClient
and our edge client, all training the demo softmax model on deterministic partitions.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import free_port
from fedproto.server.checkpoint import load_npz
from fedproto.server.history import History

ROUNDS = 3


def start_flwr_server(spawn, tmp_path, port: int, clients: int):
    record = tmp_path / "flwr_rounds"
    proc = spawn("flwr_server", "examples/flwr_server.py", "--address", f"127.0.0.1:{port}",
                 "--rounds", str(ROUNDS), "--min-clients", str(clients),
                 "--history", str(tmp_path / "flwr_history.json"), "--record-dir", str(record))
    return proc, record / f"round_{ROUNDS}.npz", tmp_path / "flwr_history.json"


def start_our_server(spawn, tmp_path, port: int, clients: int, *extra: str):
    checkpoints = tmp_path / "ours"
    proc = spawn("our_server", "-m", "fedproto.server", "--address", f"127.0.0.1:{port}",
                 "--rounds", str(ROUNDS), "--min-clients", str(clients),
                 "--history", str(tmp_path / "our_history.json"),
                 "--checkpoint-dir", str(checkpoints), *extra)
    return proc, checkpoints / f"parameters-round-{ROUNDS:04d}.npz", tmp_path / "our_history.json"


def start_clients(spawn, port: int, kinds: list[str], tag: str):
    """One client per entry of ``kinds`` ("flwr" or "edge"), on partitions 0, 1, ..."""
    procs = []
    for partition, kind in enumerate(kinds):
        env = {"DEMO_PARTITION": str(partition), "DEMO_PARTITIONS": str(len(kinds))}
        address = f"127.0.0.1:{port}"
        if kind == "flwr":
            args = ("tests/server_clients.py", "flwr", "--server", address)
        else:
            args = ("-m", "fedproto.client", "--server", address, "--app", "fedproto.client.demo:make_client")
        procs.append(spawn(f"{tag}_{kind}_{partition}", *args, env=env))
    return procs


def run_side_by_side(spawn, tmp_path, our_kinds: list[str], flwr_kinds: list[str]):
    """Both servers with their clients at once; returns (ours, theirs) as (parameters, losses)."""
    flwr_port, our_port = free_port(), free_port()
    flwr_server, flwr_params, flwr_history = start_flwr_server(spawn, tmp_path, flwr_port, len(flwr_kinds))
    our_server, our_params, our_history = start_our_server(spawn, tmp_path, our_port, len(our_kinds))
    clients = (start_clients(spawn, flwr_port, flwr_kinds, "on_flwr")
               + start_clients(spawn, our_port, our_kinds, "on_ours"))
    assert our_server.wait(120) == 0, our_server.log()
    assert flwr_server.wait(120) == 0, flwr_server.log()
    for client in clients:
        assert client.wait(60) == 0, client.log()
    ours = History.from_json(our_history.read_text())
    theirs = json.loads(flwr_history.read_text())
    return (load_npz(our_params), ours), (load_npz(flwr_params), theirs)


def assert_same_model(ours, theirs, clients: int):
    (our_params, our_history), (flwr_params, flwr_history) = ours, theirs
    assert [a.shape for a in our_params] == [(20, 4), (4,)]
    assert [a.dtype for a in our_params] == [a.dtype for a in flwr_params] == [np.float32, np.float32]
    for mine, reference in zip(our_params, flwr_params, strict=True):
        np.testing.assert_allclose(mine, reference, rtol=0, atol=1e-6)
    assert np.abs(our_params[0]).max() > 0.1  # it trained: not still the zero initial model
    flwr_losses = [(r, loss) for r, loss in flwr_history["losses_distributed"]]
    assert [r for r, _ in our_history.losses_distributed] == [r for r, _ in flwr_losses] == [1, 2, 3]
    for (_, mine), (_, reference) in zip(our_history.losses_distributed, flwr_losses, strict=True):
        assert mine == pytest.approx(reference, abs=1e-6)
    assert [(r.fit_ok, r.evaluate_ok) for r in our_history.rounds] == [(clients, clients)] * ROUNDS
    assert all(not r.fit_failures and not r.evaluate_failures for r in our_history.rounds)
    assert all(not failures for failures in flwr_history["failures"].values())


def test_flwr_clients_get_the_same_model_from_our_server_as_from_flwrs(spawn, tmp_path):
    ours, theirs = run_side_by_side(spawn, tmp_path, ["flwr", "flwr"], ["flwr", "flwr"])
    assert_same_model(ours, theirs, clients=2)


def test_edge_and_flwr_clients_mixed_in_one_round(spawn, tmp_path):
    """Two edge clients and two flwr clients train together on our server; flwr's server with
    the same four clients reaches the same model."""
    kinds = ["edge", "flwr", "edge", "flwr"]
    ours, theirs = run_side_by_side(spawn, tmp_path, kinds, kinds)
    assert_same_model(ours, theirs, clients=4)


def test_tls_edge_client_trains_and_an_untrusting_one_is_refused(spawn, tmp_path, tls_files):
    port = free_port()
    server = spawn("tls_server", "-m", "fedproto.server", "--address", f"localhost:{port}", "--rounds", "1",
                   "--min-clients", "1", "--history", str(tmp_path / "history.json"),
                   "--certificates", str(tls_files.ca), str(tls_files.cert), str(tls_files.key))
    stranger = spawn("stranger", "-m", "fedproto.client", "--server", f"localhost:{port}",
                     "--app", "fedproto.client.demo:make_client", "--root-certificates", str(tls_files.other_ca))
    assert stranger.wait(60) == 4, stranger.log()  # EXIT_TLS_ERROR
    trusted = spawn("trusted", "-m", "fedproto.client", "--server", f"localhost:{port}",
                    "--app", "fedproto.client.demo:make_client", "--root-certificates", str(tls_files.ca))
    assert server.wait(60) == 0, server.log()
    assert trusted.wait(30) == 0, trusted.log()
    history = History.from_json((tmp_path / "history.json").read_text())
    assert [(r.server_round, r.fit_ok, r.evaluate_ok) for r in history.rounds] == [(1, 1, 1)]
    assert "listening on localhost:" in server.log() and "(TLS)" in server.log()
