"""The floor server of the scale benchmark (bench.floor_server): the same exchanges as a FedAvg round, counted."""

from __future__ import annotations

from fedproto.bench.floor_server import DISCONNECT_RES_TAG, EVALUATE_RES_TAG, FIT_RES_TAG
from fedproto.transport_pb2 import ClientMessage
from test_bench_smoke import CLIENTS, serve_load


def test_reply_tags_are_the_first_byte_of_each_client_message():
    for tag, message in ((FIT_RES_TAG, ClientMessage(fit_res=ClientMessage.FitRes(num_examples=1))),
                         (EVALUATE_RES_TAG, ClientMessage(evaluate_res=ClientMessage.EvaluateRes(loss=1.0))),
                         (DISCONNECT_RES_TAG, ClientMessage(disconnect_res=ClientMessage.DisconnectRes()))):
        assert message.SerializeToString()[0] == tag


def test_load_generator_clients_go_through_every_round_of_the_floor(spawn, tmp_path):
    report, load = serve_load(spawn, tmp_path, "floor", rounds=2, processes=1)

    assert report["server"] == "floor"
    assert [{key: entry[key] for key in ("round", "fit_results", "fit_failures", "evaluate_results",
                                         "evaluate_failures")} for entry in report["rounds"]] == [
        {"round": r, "fit_results": CLIENTS, "fit_failures": 0, "evaluate_results": CLIENTS, "evaluate_failures": 0}
        for r in (1, 2)]
    assert all(entry["seconds"] > 0 for entry in report["rounds"])
    assert load["done"] == CLIENTS and load["stream_errors"] == {}
    assert load["answered"] == {"fit_ins": 2 * CLIENTS, "evaluate_ins": 2 * CLIENTS, "reconnect_ins": CLIENTS}
