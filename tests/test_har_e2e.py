"""python -m fedproto.har end to end, small: real edge client processes, real gRPC, real outputs."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from conftest import free_port
from fedproto.har import synthetic

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CHANCE = 1 / 6


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """Four synthetic subjects in the MotionSense layout: two per client."""
    return synthetic.generate(tmp_path_factory.mktemp("motionsense"), seed=0, subjects=4)


def run_har(spawn, out: Path, data: Path, *extra: str):
    proc = spawn("har", "-m", "fedproto.har", "--data", str(data), "--clients", "2", "--rounds", "2",
                 "--local-epochs", "1", "--hidden", "16", "--port", str(free_port()), "--out", str(out), *extra)
    code = proc.wait(timeout=150)
    assert code == 0, proc.log()[-4000:]
    return proc.log()


def check_png(path: Path) -> None:
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 200 and image.shape[1] > 200


def check_outputs(out: Path, server: str) -> dict:
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["clients"] == 2 and results["settings"]["epochs_per_paradigm"] == 2
    assert results["data"]["client_subjects"] == [[1, 2], [3, 4]]
    federated = results["federated"]
    assert federated["server"] == server
    assert [r["round"] for r in federated["rounds"]] == [0, 1, 2]
    # Every client evaluated the global model on its own subjects in both rounds.
    assert [sorted(r["client_accuracy"]) for r in federated["rounds"][1:]] == [["1", "2"], ["1", "2"]]
    assert federated["final"]["accuracy"] == federated["rounds"][-1]["accuracy"]
    assert federated["final"]["accuracy"] > CHANCE
    confusion = federated["final"]["confusion_matrix"]
    assert len(confusion) == 6 and sum(map(sum, confusion)) == results["data"]["test_windows"]
    assert len(results["local_only"]["clients"]) == 2
    assert 0.0 <= results["centralized"]["accuracy"] <= 1.0
    check_png(out / "federated_accuracy.png")
    check_png(out / "confusion_matrix.png")
    for number in (1, 2):  # each client was a real process that the server dismissed
        client_log = (out / "logs" / f"client_{number}.log").read_text()
        assert "joined 127.0.0.1:" in client_log
        assert client_log.count("fit_ins") == 2 and "server ended the session" in client_log
    return results


def test_har_end_to_end_with_our_server(spawn, small_dataset, tmp_path):
    log = run_har(spawn, tmp_path / "out", small_dataset)
    results = check_outputs(tmp_path / "out", "fedproto")
    assert "fedproto.server: round 2/2: fit 2 ok 0 failed" in log
    final = results["federated"]["final"]
    table_row = next(line for line in log.splitlines() if line.startswith("federated (fedproto) round 2 "))
    assert table_row.split()[-2:] == [f"{final['accuracy']:.4f}", f"{final['macro_f1']:.4f}"]


def test_har_end_to_end_with_flwr_server(spawn, small_dataset, tmp_path):
    log = run_har(spawn, tmp_path / "out", small_dataset, "--server", "flwr")
    check_outputs(tmp_path / "out", "flwr")
    assert "Starting Flower server, config: num_rounds=2" in log
    assert "GrpcBridgeClosed" not in log


def test_a_client_that_cannot_start_is_reported_with_its_log(small_dataset, tmp_path, monkeypatch):
    """The server stops waiting and the error carries the client's own explanation."""
    from fedproto.har import data, federated
    from fedproto.har.metrics import Scores
    from fedproto.har.settings import Settings

    monkeypatch.setattr(federated, "CLIENT_APP", "fedproto.har.client_app:missing_factory")
    monkeypatch.setattr(federated, "WAIT_FOR_CLIENTS_SECONDS", 3)
    prepared = data.prepare(small_dataset, clients=2)
    unscored = Scores(loss=1.0, accuracy=0.0, macro_f1=0.0, confusion=np.zeros((6, 6), np.int64))
    with pytest.raises(federated.FederatedError) as caught:
        federated.run_federated(prepared, Settings(clients=2, rounds=1), [np.zeros(3, np.float32)], tmp_path,
                                "fedproto", evaluate=lambda parameters: unscored, port=free_port())
    message = str(caught.value)
    assert message.startswith("fedproto server stopped: ClientsUnavailable:")
    assert "edge client 1 exited with code 2" in message and "edge client 2 exited with code 2" in message
    assert "cannot load --app fedproto.har.client_app:missing_factory" in message
