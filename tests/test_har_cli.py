"""python -m fedproto.har and the HAR edge client refuse bad input with a named error, before any training."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedproto.har import client_app, synthetic

ROOT = Path(__file__).resolve().parents[1]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def four_subjects(tmp_path_factory) -> Path:
    return synthetic.generate(tmp_path_factory.mktemp("motionsense"), seed=0, subjects=4)


def test_help_teaches_the_options_and_says_the_default_data_is_synthetic():
    result = run("-m", "fedproto.har", "--help")
    assert result.returncode == 0
    for option in ("--data PATH", "--clients N", "--rounds R", "--local-epochs E", "--server KIND[,KIND...]",
                   "--out DIR", "--seed SEED"):
        assert option in result.stdout
    assert "SYNTHETIC" in result.stdout and "python -m fedproto.har --server flwr" in result.stdout


@pytest.mark.parametrize(("args", "message"), [
    (["--clients", "0"], "--clients must be at least 1, got 0"),
    (["--rounds", "0"], "--rounds must be at least 1, got 0"),
    (["--hidden", "3,x"], "argument --hidden: hidden layer sizes must look like 64,32, got '3,x'"),
    (["--learning-rate", "-1"], "--learning-rate must be positive, got -1.0"),
    (["--server", "grpc"], "argument --server: expected distinct servers among fedproto, flwr, superlink, got 'grpc'"),
])
def test_bad_options_are_usage_errors(args, message, tmp_path):
    result = run("-m", "fedproto.har", "--out", str(tmp_path), *args)
    assert result.returncode == 2
    assert message in result.stderr


def test_bad_data_paths_are_named(tmp_path):
    missing = tmp_path / "nowhere"
    result = run("-m", "fedproto.har", "--data", str(missing), "--out", str(tmp_path / "out"))
    assert result.returncode == 2
    assert f"python -m fedproto.har: error: {missing}: no such folder" in result.stderr


def test_more_clients_than_subjects_is_refused(four_subjects, tmp_path):
    result = run("-m", "fedproto.har", "--data", str(four_subjects), "--clients", "5", "--out", str(tmp_path))
    assert result.returncode == 2
    assert "--clients must be between 1 and the number of subjects (4), got 5" in result.stderr


def test_client_handler_needs_a_partition_file(tmp_path, monkeypatch):
    monkeypatch.delenv("HAR_PARTITION_FILE", raising=False)
    with pytest.raises(ValueError, match="HAR_PARTITION_FILE is not set"):
        client_app.make_client()
    not_npz = tmp_path / "client_1.npz"
    not_npz.write_text("not a partition")
    with pytest.raises(ValueError, match=f"HAR_PARTITION_FILE={not_npz}: not a partition file"):
        client_app.read_partition(not_npz)


def test_partition_file_round_trip(tmp_path):
    import numpy as np

    arrays = (np.ones((3, 2), np.float32), np.array([0, 1, 2]), np.zeros((1, 2), np.float32), np.array([5]))
    client_app.write_partition(tmp_path / "p.npz", 7, *arrays)
    read, partition = client_app.read_partition(tmp_path / "p.npz")
    assert partition == 7
    for got, expected in zip(read, arrays, strict=True):
        np.testing.assert_array_equal(got, expected)
    missing_key = tmp_path / "q.npz"
    np.savez(missing_key, x_train=arrays[0])
    with pytest.raises(ValueError, match="not a partition file"):
        client_app.read_partition(missing_key)


def test_edge_client_cli_reports_a_bad_partition_file(tmp_path):
    bad = tmp_path / "client_1.npz"
    bad.write_bytes(b"PK\x03\x04 truncated")
    result = run("-m", "fedproto.client", "--server", "127.0.0.1:9", "--app", "fedproto.har.client_app:make_client",
                 env={"HAR_PARTITION_FILE": str(bad)})
    assert result.returncode == 2
    assert (f"cannot load --app fedproto.har.client_app:make_client: ValueError: HAR_PARTITION_FILE={bad}: "
            "not a partition file written by python -m fedproto.har (File is not a zip file)") \
        in result.stderr
