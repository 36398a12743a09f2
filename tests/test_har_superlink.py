"""python -m fedproto.har --server superlink, small: real flower-superlink, flwr run, our Fleet nodes."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from fedproto.har import synthetic

CHANCE = 1 / 6
ROOT = Path(__file__).resolve().parents[1]  # where spawn() runs python


@pytest.fixture(scope="module")
def small_dataset(tmp_path_factory) -> Path:
    """Four synthetic subjects in the MotionSense layout: two per client."""
    return synthetic.generate(tmp_path_factory.mktemp("motionsense"), seed=0, subjects=4)


@pytest.mark.timeout(300)
def test_har_on_superlink_with_fleet_nodes(spawn, small_dataset, tmp_path):
    out = tmp_path / "out"
    relative_out = os.path.relpath(out, ROOT)  # relative, as `make run` passes it (the default "results")
    proc = spawn("har", "-m", "fedproto.har", "--data", str(small_dataset), "--clients", "2", "--rounds", "2",
                 "--local-epochs", "1", "--hidden", "16", "--server", "superlink", "--out", relative_out)
    code = proc.wait(timeout=280)
    assert code == 0, proc.log()[-4000:]
    results = json.loads((out / "results.json").read_text())
    federated = results["federated"]
    assert federated["server"] == "superlink"
    assert results["federated_by_server"] == {"superlink": federated}
    assert [r["round"] for r in federated["rounds"]] == [0, 1, 2]
    for record in federated["rounds"]:
        assert all(math.isfinite(record[key]) for key in ("loss", "accuracy", "macro_f1"))
    # Both Fleet nodes evaluated the global model on their own subjects after each round.
    assert [sorted(r["client_accuracy"]) for r in federated["rounds"][1:]] == [["1", "2"], ["1", "2"]]
    assert federated["final"]["accuracy"] == federated["rounds"][-1]["accuracy"] > CHANCE
    confusion = federated["final"]["confusion_matrix"]
    assert sum(map(sum, confusion)) == results["data"]["test_windows"]
    assert "all 2 Fleet nodes exited with code 0" in proc.log()
    flwr_run_log = (out / "logs" / "flwr_run.log").read_text()
    assert "Starting HarFedAvg strategy" in flwr_run_log
    assert (out / "federated_accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_server_list_accepts_the_three_servers_once_each():
    import argparse

    from fedproto.har.cli import build_parser, server_list

    assert server_list("superlink") == ("superlink",)
    assert build_parser().parse_args(["--server", "fedproto,flwr,superlink"]).server == (
        "fedproto", "flwr", "superlink")
    for bad in ("superlinks", "flwr,flwr", "fedproto,", ""):
        with pytest.raises(argparse.ArgumentTypeError):
            server_list(bad)
