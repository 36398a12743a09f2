"""The compatibility matrix: fedproto against every listed flwr release, each in a venv of its own.

Usage: python -m fedproto.bench.compat [--versions 1.22.0,1.39.0,...] [--out DIR] [--record-vectors]
       (make compat; FLWR_VERSIONS=1.22.0,1.42.0 make compat)

For each release: a venv under ~/.cache/fedproto-compat/flwr-<release> (kept between runs; pip
from the configured index), then the Fleet cells: flwr's ``flower-superlink`` of that release,
two of our nodes (``python -m fedproto.client``, this checkout) on each Fleet transport the
release serves, and ``flwr run`` of examples/superlink_app (message-API and legacy FedAvg, 2
rounds), judged as tests/test_fleet_interop.py judges a run: the run's status, the exact FedAvg
model the ServerApp ended with, and our nodes' exit codes after SIGTERM. Releases before 1.20
have a Fleet API of another generation: their Fleet cells are n/a. Writes compat.json and
compat.md to --out (default build/compat). Not part of make test: it downloads releases.

Transports by release (checked against the releases' flower-superlink --help and source):
1.20-1.39 serve the Fleet API over gRPC-rere on --fleet-api-address (their REST transport is not
supported by fedproto); 1.40 and later over HTTP on --port (and gRPC-rere with
FLWR_INTERNAL_GRPC_FLEET_API=1). 1.20-1.23's ``flwr run`` reads the SuperLink from the app's
``[tool.flwr.federations]``, later releases from ``$FLWR_HOME/config.toml``; before 1.40 every API
gets its own loopback address, or the SuperLink binds 9091-9093 on 0.0.0.0.

``--record-vectors`` puts a recording gRPC proxy between one node and a gRPC-rere SuperLink and
writes what they exchanged to tests/data/compat_vectors/flwr-<release>.json (see
tests/test_compat_vectors.py, which replays it against NodeSession in make test).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "examples" / "superlink_app"))
from superlink_app.arithmetic import expected_fedavg  # type: ignore[import-not-found]  # noqa: E402
from superlink_harness import free_port, stop_tree, wait_listening  # type: ignore[import-not-found]  # noqa: E402

CACHE = Path(os.environ.get("FEDPROTO_COMPAT_CACHE", Path.home() / ".cache" / "fedproto-compat"))
# A spread from 1.0, every release of the 1.20-1.23 transition, and the newest release and nightly the package
# index has ("latest", "nightly": resolved by pip when the run starts).
DEFAULT_VERSIONS = ("1.0.0,1.5.0,1.10.0,1.13.1,1.18.0,1.20.0,1.21.0,1.22.0,1.23.0,1.30.0,1.39.0,1.40.0,1.42.0,"
                    "latest,nightly")
INDEX_PACKAGES = {"latest": "flwr", "nightly": "flwr-nightly"}
VECTORS = ROOT / "tests" / "data" / "compat_vectors"
APP = "superlink_app.handlers:make_client"
ROUNDS = 2
RUN_TIMEOUT = 240.0


def release_tuple(release: str) -> tuple[int, int]:
    major, minor = release.split(".")[:2]
    return int(major), int(minor)


@dataclass
class Cell:
    release: str
    kind: str  # "fleet message grpc-rere", ...
    verdict: str  # "pass", "fail", "n/a"
    reason: str
    seconds: float


def package_of(release: str) -> str:
    """flwr's nightlies are another package on the index, versioned X.Y.Z.devDATE."""
    return "flwr-nightly" if ".dev" in release else "flwr"


def newest_on_index(package: str) -> str | None:
    """The newest version of ``package`` the configured package index offers (None: it has none)."""
    listed = subprocess.run([sys.executable, "-m", "pip", "index", "versions", package, "--pre"],
                            capture_output=True, text=True, timeout=180)
    first = listed.stdout.splitlines()[0] if listed.returncode == 0 and listed.stdout else ""
    return first.partition("(")[2].rstrip(")") or None  # "flwr (1.42.0)"


def resolve_releases(tokens: str) -> tuple[list[str], list[Cell]]:
    """The releases to run, in order, once each; "latest" and "nightly" asked of the index."""
    releases, unresolved = [], []
    for token in (t.strip() for t in tokens.split(",") if t.strip()):
        release = newest_on_index(INDEX_PACKAGES[token]) if token in INDEX_PACKAGES else token
        if release is None:
            unresolved.append(Cell(token, "install", "n/a", f"the package index has no {INDEX_PACKAGES[token]}", 0.0))
        elif release not in releases:
            releases.append(release)
    return releases, unresolved


def venv_for(release: str) -> Path:
    """The release's venv bin/, created once (pip install flwr==release, or flwr-nightly==...)."""
    venv = CACHE / f"{package_of(release)}-{release}"
    marker = venv / ".installed"
    if not marker.exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check",
                        f"{package_of(release)}=={release}"], check=True)
        marker.touch()
    return venv / "bin"


class Recorder:
    """A gRPC proxy that forwards every unary call (bytes) upstream and records the exchange."""

    def __init__(self, upstream: str) -> None:
        import grpc

        self.grpc = grpc
        self.channel = grpc.insecure_channel(upstream)
        self.exchanges: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = free_port()
        recorder = self

        class Handler(grpc.GenericRpcHandler):
            def service(self, details: Any) -> Any:
                method = details.method
                return grpc.unary_unary_rpc_method_handler(lambda request, context: recorder.forward(
                    method, request, context))

        self.server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[Handler()])
        self.server.add_insecure_port(f"127.0.0.1:{self.port}")
        self.server.start()

    def forward(self, method: str, request: bytes, context: Any) -> bytes:
        sent_at = time.time()
        metadata = [(key, value) for key, value in context.invocation_metadata() if key.startswith("flwr-")]
        entry: dict[str, Any] = {"rpc": method.rpartition("/")[2], "at": sent_at,
                                 "request": base64.b64encode(request).decode()}
        try:
            response = self.channel.unary_unary(method)(request, metadata=metadata, timeout=30)
            entry["response"] = base64.b64encode(response).decode()
        except self.grpc.RpcError as error:
            entry["code"] = error.code().name
            with self.lock:
                self.exchanges.append(entry)
            context.abort(error.code(), error.details() or "")
        with self.lock:
            self.exchanges.append(entry)
        return response

    def stop(self) -> None:
        self.server.stop(0)
        self.channel.close()


class Fleet:
    """One release's flower-superlink, our nodes and a flwr run, in a scratch directory."""

    def __init__(self, bin_dir: Path, release: str, workdir: Path) -> None:
        self.bin, self.release, self.workdir = bin_dir, release, workdir
        self.procs: list[subprocess.Popen] = []
        self.home = workdir / "flwr_home"
        self.home.mkdir(parents=True)
        self.modern = release_tuple(release) >= (1, 40)

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              cwd: Path | None = None) -> subprocess.Popen:
        full_env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", "FLWR_HOME": str(self.home),
                    "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.workdir / f"{name}.log", "wb") as log_file:
            popen = subprocess.Popen(args, cwd=cwd or self.workdir, env=full_env, stdout=log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(popen)
        return popen

    def log(self, name: str) -> str:
        path = self.workdir / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def start_superlink(self, grpc_fleet: bool) -> tuple[str, str]:
        """Start it; returns (the address flwr run talks to, the Fleet API address for the nodes)."""
        control, fleet = free_port(), free_port()
        args = [str(self.bin / "flower-superlink"), "--insecure"]
        env = {}
        if self.modern:
            args += ["--host", "127.0.0.1", "--port", str(control), "--disable-runtime-dependency-installation"]
            if grpc_fleet:
                env["FLWR_INTERNAL_GRPC_FLEET_API"] = "1"
                args += ["--fleet-api-address", f"127.0.0.1:{fleet}"]
            else:
                fleet = control
        else:
            # Each API on a loopback port of its own; the flags differ between releases: ask this one.
            offered = subprocess.run([str(self.bin / "flower-superlink"), "--help"], capture_output=True, text=True,
                                     timeout=120).stdout
            args += ["--fleet-api-address", f"127.0.0.1:{fleet}"]
            if "--port" in offered:  # the Control and Runtime APIs over HTTP on one port (1.3x)
                args += ["--host", "127.0.0.1", "--port", str(control)]
            else:
                control_flag = "--control-api-address" if "--control-api-address" in offered else "--exec-api-address"
                args += [control_flag, f"127.0.0.1:{control}"]
            for flag in ("--serverappio-api-address", "--simulationio-api-address"):
                if flag in offered:
                    args += [flag, f"127.0.0.1:{free_port()}"]
        popen = self.spawn("superlink", args, env)
        for port in {control, fleet}:
            if not wait_listening(port, 60, popen):
                raise RuntimeError(f"flower-superlink does not listen on {port}: {self.log('superlink')[-800:]}")
        return f"127.0.0.1:{control}", f"127.0.0.1:{fleet}"

    def write_app(self, control: str) -> Path:
        app = self.workdir / "app"
        shutil.copytree(ROOT / "examples" / "superlink_app", app, ignore=shutil.ignore_patterns("__pycache__"))
        if release_tuple(self.release) < (1, 24):  # flwr run reads the federation from the app
            with open(app / "pyproject.toml", "a") as pyproject:
                pyproject.write(f'\n[tool.flwr.federations]\ndefault = "local"\n\n[tool.flwr.federations.local]\n'
                                f'address = "{control}"\ninsecure = true\n')
        (self.home / "config.toml").write_text(f'[superlink]\ndefault = "local"\n\n[superlink.local]\n'
                                               f'address = "{control}"\ninsecure = true\n')
        return app

    def start_node(self, client: int, fleet: str, transport: str) -> subprocess.Popen:
        args = [sys.executable, "-m", "fedproto.client", "--superlink", fleet, "--app", APP,
                "--poll-interval", "0.2", "--fleet-transport", transport]
        if release_tuple(self.release) < (1, 23):
            args += ["--superlink-release", self.release]
        pythonpath = os.pathsep.join([str(ROOT / "examples" / "superlink_app"), str(ROOT)])
        return self.spawn(f"node{client}", args, {"PYTHONPATH": pythonpath, "FLEET_CLIENT": str(client)})

    def run(self, app: Path, strategy: str) -> tuple[str, str]:
        """flwr run to its end; returns (run status, reason when it is not the expected result)."""
        result_dir = self.workdir / f"result-{strategy}"
        config = self.workdir / f"{strategy}.toml"
        config.write_text(f'strategy = "{strategy}"\n"num-rounds" = {ROUNDS}\n"poll-interval" = 0.2\n'
                          f'"result-dir" = "{result_dir}"\n')
        run = self.spawn(f"run-{strategy}", [str(self.bin / "flwr"), "run", str(app), "local", "--stream",
                                             "--run-config", str(config)])
        try:
            run.wait(RUN_TIMEOUT)
        except subprocess.TimeoutExpired:
            return "timeout", f"flwr run did not end within {RUN_TIMEOUT:.0f} s"
        output = self.log(f"run-{strategy}")
        run_id = next((word for line in output.splitlines() if "Successfully started run" in line
                       for word in line.split() if word.isdigit()), None)
        if run_id is None:
            return "no run", f"flwr run started no run: {output[-400:]}"
        listed = subprocess.run([str(self.bin / "flwr"), "ls", str(app), "local", "--run-id", run_id, "--format",
                                 "json"] if release_tuple(self.release) < (1, 24) else
                                [str(self.bin / "flwr"), "ls", "local", "--run-id", run_id, "--format", "json"],
                                cwd=self.workdir, capture_output=True, text=True, timeout=60,
                                env={**os.environ, "FLWR_HOME": str(self.home)})
        try:
            status = json.loads(listed.stdout)["runs"][0]["status"]
        except (ValueError, KeyError, IndexError):
            status = "unknown"
        if status != "finished:completed":
            return status, f"run status {status}: {output[-400:]}"
        import numpy as np

        with np.load(result_dir / "final_arrays.npz") as npz:
            arrays = [npz[f"arr_{index}"] for index in range(len(npz.files))]
        expected = expected_fedavg([[0, 1]] * ROUNDS)
        # As tests/test_fleet_interop.py: the weighted mean, to float32 aggregation's rounding.
        if [a.shape for a in arrays] != [e.shape for e in expected] or not all(
                np.allclose(a, e, rtol=0, atol=1e-6) for a, e in zip(arrays, expected)):
            return status, "the final model is not the FedAvg of the two nodes' updates"
        return status, ""

    def stop_all(self) -> None:
        for popen in reversed(self.procs):
            stop_tree(popen)


def fleet_cells(release: str, bin_dir: Path, record: bool) -> list[Cell]:
    if release_tuple(release) < (1, 20):
        why = ("before 1.20 the Fleet API is of another generation (TaskIns/TaskRes before 1.15, no ObjectTree "
               "before 1.20): fedproto's node serves 1.20 and later")
        return [Cell(release, "fleet", "n/a", why, 0.0)]
    # The legacy strategy (flwr.server.strategy in ServerApp(server_fn=...)) runs on every release with a
    # Fleet API of this generation; the message-API strategies (flwr.serverapp.strategy) arrived in 1.21.
    has_message_api = subprocess.run([str(bin_dir / "python"), "-c", "import flwr.serverapp.strategy"],
                                     capture_output=True, timeout=120).returncode == 0
    transports = ["grpc-rere"] if release_tuple(release) < (1, 40) else ["http", "grpc-rere"]
    cells = []
    for transport in transports:
        for strategy in ("message", "legacy"):
            if strategy == "message" and not has_message_api:
                cells.append(Cell(release, f"fleet {strategy} {transport}", "n/a",
                                  "this release has no message-API strategies (flwr.serverapp.strategy: 1.21+)", 0.0))
                continue
            started = time.monotonic()
            # The exchange kept for tests/test_compat_vectors.py: gRPC-rere, the newest strategy the release has.
            recorded = record and transport == "grpc-rere" and strategy == ("message" if has_message_api else "legacy")
            verdict, reason = fleet_cell(release, bin_dir, transport, strategy, recorded)
            cells.append(Cell(release, f"fleet {strategy} {transport}", verdict, reason,
                              round(time.monotonic() - started, 1)))
            print(f"{release} fleet {strategy} {transport}: {verdict} {reason}", flush=True)
    if (1, 23) <= release_tuple(release) < (1, 40):
        cells.append(hint_cell(release, bin_dir))
        print(f"{release} {cells[-1].kind}: {cells[-1].verdict} {cells[-1].reason}", flush=True)
    return cells


def join_cell(release: str, bin_dir: Path) -> Cell:
    """Our edge client (Join, grpc-bidi) x2 against the release's start_server (examples/flwr_server.py),
    2 rounds of FedAvg, judged as tests/test_client_interop.py does: exit codes and every round's model."""
    import numpy as np

    import interop_handlers as handlers  # type: ignore[import-not-found]

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedproto-compat-") as scratch:
        fleet = Fleet(bin_dir, release, Path(scratch))
        address, record = f"127.0.0.1:{free_port()}", Path(scratch) / "aggregated"
        try:
            server = fleet.spawn("flwr_server", [str(bin_dir / "python"), str(ROOT / "examples" / "flwr_server.py"),
                                                 "--address", address, "--rounds", str(ROUNDS), "--min-clients", "2",
                                                 "--history", f"{scratch}/history.json", "--record-dir", str(record)])
            clients = [fleet.spawn(f"client{k}", [sys.executable, "-m", "fedproto.client", "--server", address,
                                                  "--app", "interop_handlers:delta_client", "--retry-delay", "0.5"],
                                   {"PYTHONPATH": str(ROOT / "tests"), "HANDLER_CLIENT": str(k)}) for k in (0, 1)]
            codes: list[int | None] = []
            for proc in [server, *clients]:
                try:
                    codes.append(proc.wait(RUN_TIMEOUT))
                except subprocess.TimeoutExpired:
                    codes.append(None)
            reason = "" if codes == [0, 0, 0] else (f"exit codes (server, clients) {codes}: "
                                                    f"{fleet.log('flwr_server')[-300:]} {fleet.log('client0')[-300:]}")
            params = [array.astype(np.float64) for array in handlers.initial_parameters()]
            for rnd in range(1, ROUNDS + 1):
                if reason:
                    break
                results = [(handlers.fit_examples(k), [a + d for a, d in zip(params, handlers.fit_delta(k, rnd))])
                           for k in (0, 1)]
                total = sum(n for n, _ in results)
                params = [sum(n * arrays[i] for n, arrays in results) / total for i in range(len(params))]
                with np.load(record / f"round_{rnd}.npz") as npz:
                    got = [npz[f"arr_{i}"] for i in range(len(npz.files))]
                close = all(np.allclose(g, e, rtol=0, atol=1e-6) for g, e in zip(got, params))
                if len(got) != len(params) or not close:
                    reason = f"round {rnd}: the aggregated model is not the weighted mean of the two clients' results"
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        finally:
            fleet.stop_all()
    return Cell(release, "join: our edge client x2 -> their start_server", "pass" if not reason else "fail",
                reason.replace("\n", " ")[:600], round(time.monotonic() - started, 1))


def reverse_join_cell(release: str, bin_dir: Path) -> Cell:
    """The release's NumPyClient x2 (tests/flwr_numpy_client.py, start_client) against our server
    (python -m fedproto.server), 2 rounds of FedAvg; pass = every exit code 0, no failures, and each
    round's distributed loss the one the exact weighted mean of the two clients' results gives."""
    import numpy as np

    import interop_handlers as handlers

    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedproto-compat-") as scratch:
        fleet = Fleet(bin_dir, release, Path(scratch))
        address, history = f"127.0.0.1:{free_port()}", Path(scratch) / "history.json"
        initial = Path(scratch) / "initial.npz"
        np.savez(initial, *handlers.initial_parameters())
        try:
            server = fleet.spawn("our_server", [sys.executable, "-m", "fedproto.server", "--address", address,
                                                "--rounds", str(ROUNDS), "--min-clients", "2", "--wait-timeout", "60",
                                                "--initial-parameters", str(initial), "--history", str(history)])
            wait_listening(int(address.rpartition(":")[2]), 30, server)
            clients = [fleet.spawn(f"flwr_client{k}", [str(bin_dir / "python"),
                                                       str(ROOT / "tests" / "flwr_numpy_client.py"), address],
                                   {"PYTHONPATH": str(ROOT / "tests"), "HANDLER_CLIENT": str(k)}) for k in (0, 1)]
            codes: list[int | None] = []
            for proc in [server, *clients]:
                try:
                    codes.append(proc.wait(RUN_TIMEOUT))
                except subprocess.TimeoutExpired:
                    codes.append(None)
            logs = f"{fleet.log('our_server')[-300:]} {fleet.log('flwr_client0')[-300:]}"
            reason = "" if codes == [0, 0, 0] else f"exit codes (server, clients) {codes}: {logs}"
            if not reason:
                recorded = json.loads(history.read_text())
                params = [array.astype(np.float64) for array in handlers.initial_parameters()]
                for rnd in range(1, ROUNDS + 1):
                    results = [(handlers.fit_examples(k), [a + d for a, d in zip(params, handlers.fit_delta(k, rnd))])
                               for k in (0, 1)]
                    total = sum(n for n, _ in results)
                    params = [sum(n * arrays[i] for n, arrays in results) / total for i in range(len(params))]
                    losses = [(handlers.evaluate_examples(k), float(np.float32(handlers.evaluate_loss(k, params))))
                              for k in (0, 1)]
                    expected = sum(n * loss for n, loss in losses) / sum(n for n, _ in losses)
                    got = dict((int(r), loss) for r, loss in recorded["losses_distributed"]).get(rnd)
                    if got is None or abs(got - expected) > 1e-9:  # EvaluateRes.loss is a float32
                        reason = f"round {rnd}: distributed loss {got}, the weighted mean gives {expected}"
                        break
        except Exception as error:
            reason = f"{type(error).__name__}: {error}"
        finally:
            fleet.stop_all()
    return Cell(release, "join: their NumPyClient x2 -> our server", "pass" if not reason else "fail",
                reason.replace("\n", " ")[:600], round(time.monotonic() - started, 1))


def hint_cell(release: str, bin_dir: Path) -> Cell:
    """Our node pointed at a 1.23-1.39 SuperLink's Control API address with the default HTTP transport: it
    must exit with the one line that names the gRPC-rere Fleet API (client/fleet.py transport_hint): exit 5
    after a 404 where that port is HTTP (1.3x's --port), exit 3 where it is gRPC (1.23's Control API)."""
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="fedproto-compat-") as scratch:
        fleet = Fleet(bin_dir, release, Path(scratch))
        try:
            control, _ = fleet.start_superlink(grpc_fleet=True)
            node = fleet.start_node(0, control, "http")
            try:
                code = node.wait(60)
            except subprocess.TimeoutExpired:
                code = None
            shown = [line for line in fleet.log("node0").splitlines() if "--fleet-transport grpc-rere" in line]
            verdict = "pass" if code in (3, 5) and len(shown) == 1 else "fail"
            reason = f"exit {code}; shown: {shown[0].split(': ', 1)[-1] if shown else fleet.log('node0')[-300:]}"
        finally:
            fleet.stop_all()
    return Cell(release, "fleet http on the SuperLink's Control API address (hint)", verdict, reason.replace("\n", " "),
                round(time.monotonic() - started, 1))


def fleet_cell(release: str, bin_dir: Path, transport: str, strategy: str, record: bool) -> tuple[str, str]:
    with tempfile.TemporaryDirectory(prefix="fedproto-compat-") as scratch:
        fleet = Fleet(bin_dir, release, Path(scratch))
        recorder = None
        try:
            control, fleet_address = fleet.start_superlink(grpc_fleet=transport == "grpc-rere")
            app = fleet.write_app(control)
            node_address = [fleet_address, fleet_address]
            if record:
                recorder = Recorder(fleet_address)
                node_address[0] = f"127.0.0.1:{recorder.port}"
            nodes = [fleet.start_node(client, node_address[client], transport) for client in (0, 1)]
            status, reason = fleet.run(app, strategy)
            codes: list[int | None] = []
            for node in nodes:
                if node.poll() is None:
                    node.send_signal(signal.SIGTERM)
                try:
                    codes.append(node.wait(30))
                except subprocess.TimeoutExpired:
                    codes.append(None)
            if not reason and codes != [0, 0]:
                reason = f"node exit codes {codes} after SIGTERM, expected [0, 0]: {fleet.log('node0')[-300:]}"
            if record and recorder is not None and not reason:
                VECTORS.mkdir(parents=True, exist_ok=True)
                (VECTORS / f"flwr-{release}.json").write_text(json.dumps(
                    {"release": release, "transport": transport, "client": 0, "app": APP,
                     "exchanges": recorder.exchanges}, indent=1) + "\n")
            if reason and "node" not in reason:
                reason += f" | node0: {fleet.log('node0')[-300:]}"
            return ("pass" if not reason else "fail"), reason.replace("\n", " ")
        except Exception as error:  # a release that cannot even start is a failed cell, with why
            return "fail", f"{type(error).__name__}: {error}".replace("\n", " ")[:600]
        finally:
            if recorder is not None:
                recorder.stop()
            fleet.stop_all()


def write_reports(cells: list[Cell], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    meta = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.node()} {platform.machine()} {platform.system()} {platform.release()}, "
                       f"Python {platform.python_version()}, {os.cpu_count()} CPUs"}
    (out / "compat.json").write_text(json.dumps({**meta, "cells": [asdict(cell) for cell in cells]}, indent=1))
    lines = [f"Run {meta['date']} on {meta['machine']}.", "", "| release | cell | verdict | seconds | reason |",
             "|---|---|---|---|---|"]
    lines += [f"| {c.release} | {c.kind} | {c.verdict} | {c.seconds} | {c.reason.replace('|', '/')[:300]} |"
              for c in cells]
    (out / "compat.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--versions", default=os.environ.get("FLWR_VERSIONS", DEFAULT_VERSIONS),
                        help="comma-separated flwr releases; 'latest' and 'nightly' are the index's newest flwr and "
                             "flwr-nightly (default: $FLWR_VERSIONS or a spread from 1.0 to latest and nightly)")
    parser.add_argument("--out", type=Path, default=ROOT / "build" / "compat")
    parser.add_argument("--record-vectors", action="store_true",
                        help="record one node's gRPC-rere exchange per release into tests/data/compat_vectors/")
    args = parser.parse_args(argv)
    releases, cells = resolve_releases(args.versions)
    for release in releases:
        try:
            bin_dir = venv_for(release)
        except subprocess.CalledProcessError as error:
            cells.append(Cell(release, "install", "fail",
                              f"pip install {package_of(release)}=={release} failed: {error}", 0.0))
            continue
        for cell in (join_cell, reverse_join_cell):
            cells.append(cell(release, bin_dir))
            print(f"{release} {cells[-1].kind}: {cells[-1].verdict} {cells[-1].reason}", flush=True)
        cells += fleet_cells(release, bin_dir, args.record_vectors)
        write_reports(cells, args.out)
    write_reports(cells, args.out)
    print(f"wrote {args.out / 'compat.md'} and {args.out / 'compat.json'}")
    return 0 if all(cell.verdict != "fail" for cell in cells) else 1


if __name__ == "__main__":
    sys.exit(main())
