"""The floor server of the scale benchmark (bench.floor_server): the same exchanges as a FedAvg round, counted."""

from __future__ import annotations

import json

from conftest import free_port
from fedproto.bench.floor_server import DISCONNECT_RES_TAG, EVALUATE_RES_TAG, FIT_RES_TAG
from fedproto.transport_pb2 import ClientMessage
from test_bench_smoke import wait_listening

CLIENTS = 20


def test_reply_tags_are_the_first_byte_of_each_client_message():
    for tag, message in ((FIT_RES_TAG, ClientMessage(fit_res=ClientMessage.FitRes(num_examples=1))),
                         (EVALUATE_RES_TAG, ClientMessage(evaluate_res=ClientMessage.EvaluateRes(loss=1.0))),
                         (DISCONNECT_RES_TAG, ClientMessage(disconnect_res=ClientMessage.DisconnectRes()))):
        assert message.SerializeToString()[0] == tag


def test_load_generator_clients_go_through_every_round_of_the_floor(spawn, tmp_path):
    port = free_port()
    address = f"127.0.0.1:{port}"
    rounds_report, load_report = tmp_path / "rounds.json", tmp_path / "loadgen.json"
    server = spawn("floor", "-m", "fedproto.bench.servers", "floor", "--address", address,
                   "--clients", str(CLIENTS), "--rounds", "2", "--report", str(rounds_report))
    wait_listening(port, timeout=10)
    loadgen = spawn("loadgen", "-m", "fedproto.bench.loadgen", "--server", address, "--clients", str(CLIENTS),
                    "--processes", "1", "--streams-per-channel", "8", "--duration", "15",
                    "--report", str(load_report))

    assert server.wait(timeout=15) == 0, server.log()
    assert loadgen.wait(timeout=15) == 0, loadgen.log()

    report = json.loads(rounds_report.read_text())
    assert report["server"] == "floor"
    assert [{key: entry[key] for key in ("round", "fit_results", "fit_failures", "evaluate_results",
                                         "evaluate_failures")} for entry in report["rounds"]] == [
        {"round": r, "fit_results": CLIENTS, "fit_failures": 0, "evaluate_results": CLIENTS, "evaluate_failures": 0}
        for r in (1, 2)]
    assert all(entry["seconds"] > 0 for entry in report["rounds"])
    load = json.loads(load_report.read_text())
    assert load["done"] == CLIENTS and load["stream_errors"] == {}
    assert load["answered"] == {"fit_ins": 2 * CLIENTS, "evaluate_ins": 2 * CLIENTS, "reconnect_ins": CLIENTS}
