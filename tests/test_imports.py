"""Importing the protocol packages pulls in neither TensorFlow nor flwr, and the sans-IO core
(``fedproto``) not even gRPC: the transports in ``client/`` and ``server/`` bring it.

Each module is imported in a fresh interpreter, so nothing imported by another test (or by
pytest plugins) can hide or fake the result. Every module in fedproto/ is checked; to cover a
new module elsewhere, add its name to MODULES.
"""

from __future__ import annotations

import ast
import graphlib
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
    "fedproto.kit.fleet_trace",
    "fedproto.kit.fleet_conformance",
    "fedproto.kit.make_fleet_vectors",
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


# ---------------------------------------------------------------------------- no import circle


def package_imports(package_dir: Path, package: str) -> dict[str, set[str]]:
    """Each module of ``package`` -> the modules of ``package`` it imports, read with ``ast``.

    Every import statement counts, at the top or inside a function (a late import only hides a
    circle until the function runs). ``from package import name`` is an import of the submodule
    when ``name`` is one, else of the package itself. The implicit import of the package when a
    submodule is first loaded is not counted: the package's ``__init__`` re-exports its modules.
    """
    modules = {package if path.stem == "__init__" else f"{package}.{path.stem}": path
               for path in package_dir.glob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(part for part in (package if node.level else "", node.module or "") if part)
                found.update(f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                             for alias in node.names)
        graph[name] = {target for target in found if target in modules and target != name}
    return graph


def import_circle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of imports in ``graph`` (its first module repeated at the end), or None."""
    try:
        graphlib.TopologicalSorter(graph).prepare()
    except graphlib.CycleError as error:
        return error.args[1]
    return None


def test_no_module_of_the_core_imports_one_that_imports_it_back():
    circle = import_circle(package_imports(ROOT / "fedproto", "fedproto"))
    assert circle is None, "fedproto modules import each other: " + " -> ".join(reversed(circle))


def test_the_circle_check_sees_a_circle_through_a_late_import(tmp_path):
    """The walker itself works: a function-level import that closes a circle is found."""
    (tmp_path / "__init__.py").write_text("")
    (tmp_path / "first.py").write_text("from pkg.second import helper\n")
    (tmp_path / "second.py").write_text("def helper():\n    from pkg import first\n    return first\n")
    (tmp_path / "third.py").write_text("from . import second\n")
    graph = package_imports(tmp_path, "pkg")
    assert graph == {"pkg": set(), "pkg.first": {"pkg.second"}, "pkg.second": {"pkg.first"},
                     "pkg.third": {"pkg.second"}}
    assert sorted(import_circle(graph)[1:]) == ["pkg.first", "pkg.second"]
