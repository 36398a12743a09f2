"""The wheel installs one top-level package, ``fedproto``: the tools ship as its subpackages.

``client/``, ``server/``, ``kit/``, ``har/`` and ``bench/`` are top-level folders of the
repository, but a top-level ``client`` or ``server`` in site-packages would collide with any
other package so named, so pyproject.toml maps them to ``fedproto.client`` ... (package-dir).
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_has_one_top_level_package_and_the_kits_vectors(tmp_path):
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
         "--wheel-dir", str(tmp_path), str(ROOT)],
        capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    [wheel] = tmp_path.glob("fedproto-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"fedproto"}
    for module in ("client/app.py", "client/fleet.py", "server/loop.py", "kit/conformance.py",
                   "har/cli.py", "bench/run.py", "node.py", "transport_pb2.pyi"):
        assert f"fedproto/{module}" in names
    assert "fedproto/kit/vectors/manifest.json" in names
    assert "fedproto/kit/fleet_vectors/manifest.json" in names
    assert any(name.startswith("fedproto/kit/fleet_vectors/train_instruction/") for name in names)
    entry_points = next(name for name in names if name.endswith(".dist-info/entry_points.txt"))
    scripts = zipfile.ZipFile(wheel).read(entry_points).decode()
    assert "fedproto-client = fedproto.client.cli:main" in scripts
    assert "fedproto-server = fedproto.server.cli:main" in scripts
