"""Importing the protocol packages pulls in neither TensorFlow nor flwr, and the sans-IO core
(``fedproto``) not even gRPC: the transports in ``client/`` and ``server/`` bring it.

Each module is imported in a fresh interpreter, so nothing imported by another test (or by
pytest plugins) can hide or fake the result. Every module in fedproto/ is checked; to cover a
new module elsewhere, add its name to MODULES.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Every module of the core, found on disk: a new one is covered without being listed.
CORE = ["fedproto"] + sorted(f"fedproto.{path.stem}" for path in (ROOT / "fedproto").glob("*.py")
                             if path.stem != "__init__")

MODULES = CORE + [
    "fedproto.client",
    "fedproto.client.app",
    "fedproto.client.cli",
    "fedproto.client.fleet",
    "fedproto.client.demo",
    "fedproto.server",
    "fedproto.server.cli",
    "fedproto.kit.trace",
    "fedproto.kit.conformance",
    "fedproto.kit.make_vectors",
]

# Top-level packages that must stay out: TensorFlow (and its Keras) belong to the HAR model
# only; flwr is what we test against, never what we run on.
FORBIDDEN = ("tensorflow", "keras", "flwr")
# The core is sans-IO: no transport library either.
FORBIDDEN_IN_CORE = (*FORBIDDEN, "grpc")

REPORT = """
import importlib, sys
importlib.import_module(sys.argv[1])
forbidden = tuple(sys.argv[2:])
print(sorted(name for name in sys.modules if name.split(".")[0] in forbidden))
"""


@pytest.mark.parametrize("module", MODULES)
def test_import_pulls_in_neither_tensorflow_nor_flwr(module):
    run = subprocess.run([sys.executable, "-c", REPORT, module, *FORBIDDEN], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[]\n", f"importing {module} imported {run.stdout.strip()}"


def imported(module: str, forbidden: tuple[str, ...]) -> str:
    run = subprocess.run([sys.executable, "-c", REPORT, module, *forbidden], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    return run.stdout


@pytest.mark.parametrize("module", CORE)
def test_the_core_imports_no_grpc(module):
    assert imported(module, FORBIDDEN_IN_CORE) == "[]\n", f"importing {module} imported grpc, TensorFlow or flwr"


def test_the_check_sees_an_import_of_grpc():
    assert "'grpc'" in imported("fedproto.server.endpoint", FORBIDDEN_IN_CORE)


def test_the_check_sees_an_import_of_flwr():
    """The probe itself works: a module that does import flwr is reported."""
    run = subprocess.run([sys.executable, "-c", REPORT, "flwr.proto.transport_pb2", *FORBIDDEN],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "'flwr.proto.transport_pb2'" in run.stdout
