"""Real `flower-superlink`, `flwr run` and Fleet nodes as subprocesses, for interop tests.

Every process is started in its own session with stdout+stderr going to a file, and stopped with
its whole process tree (the SuperLink spawns `flower-superexec`, which spawns `flwr-serverapp`;
`flower-supernode` spawns `flwr-clientapp`). A test that fails shows the logs (`Harness.logs()`).

The facts used here were read from flwr 1.42's source:
- `flower-superlink` serves the Fleet, Control and Runtime APIs over HTTP on `--host`/`--port`
  (`flwr/superlink/cli/flower_superlink.py`); with `FLWR_INTERNAL_GRPC_FLEET_API=1` it also serves
  the gRPC-rere Fleet API on `--fleet-api-address` (deprecated flag, still honoured; default
  0.0.0.0:9092), with the same TLS certificates.
- `flwr` reads `$FLWR_HOME/config.toml`: `[superlink] default = NAME`, `[superlink.NAME]` with
  `address`, `insecure`, `root-certificates` (`flwr/cli/constant.py`, `flwr/cli/flower_config.py`).
- `flwr run APP NAME --stream --run-config FILE.toml` prints "Successfully started run ID" and the
  run's logs until it ends; it exits 0 even when the ServerApp fails, so the outcome is read with
  `flwr ls NAME --run-id ID --format json` -> {"runs": [{"status": "finished:completed", ...}]}
  (`flwr/cli/run/run.py`, `flwr/cli/log.py`, `flwr/cli/ls.py`).
- `flower-supernode --insecure --superlink HOST:PORT --host 127.0.0.1 --port Q --node-config ...`:
  Q is the SuperNode's own Runtime API port for its ClientApp process
  (`flwr/supernode/cli/flower_supernode.py`; `--clientappio-api-address` is rejected in 1.42).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
EXAMPLE_APP = ROOT / "examples" / "superlink_app"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_listening(port: int, timeout: float, proc: subprocess.Popen | None = None) -> bool:
    """True once something accepts TCP connections on 127.0.0.1:port; False on timeout or if
    ``proc`` exited first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return False
        with socket.socket() as sock:
            sock.settimeout(0.5)
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return True
        time.sleep(0.1)
    return False


def stop_tree(popen: subprocess.Popen, grace: float = 5.0) -> None:
    """SIGTERM the process and all its descendants, SIGKILL whatever is left after ``grace``."""
    try:
        parent = psutil.Process(popen.pid)
        procs = [parent, *parent.children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for proc in procs:
        try:
            proc.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(procs, timeout=grace)
    for proc in alive:
        try:
            proc.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)
    if popen.poll() is None:
        popen.kill()
    popen.wait()


@dataclass
class Process:
    """A started subprocess whose stdout+stderr go to ``log_path``."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait(self, timeout: float) -> int | None:
        """Exit code, or None if it is still running after ``timeout`` seconds."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def stop(self, grace: float = 5.0) -> None:
        stop_tree(self.popen, grace)


@dataclass
class RunOutcome:
    run_id: int
    status: str  # e.g. "finished:completed", "finished:failed"
    details: str  # flwr's "status-details" (the failure reason, if any)
    output: str  # what `flwr run --stream` printed: the ServerApp's log
    flwr_exit_code: int


@dataclass
class Harness:
    """Starts and stops the processes of one test module or test; see the module docstring."""

    workdir: Path
    tls: object | None = None  # conftest.TlsFiles: ca, cert, key
    grpc_fleet: bool = False
    port: int = 0
    fleet_grpc_port: int = 0
    processes: list[Process] = field(default_factory=list)
    superlink: Process | None = None

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.home = self.workdir / "flwr_home"
        self.home.mkdir(exist_ok=True)
        self.port = self.port or free_port()
        if self.grpc_fleet:
            self.fleet_grpc_port = self.fleet_grpc_port or free_port()
        self._write_flwr_config()

    # --- environment -------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The Fleet HTTP API (and Control/Runtime API) address."""
        return f"127.0.0.1:{self.port}"

    @property
    def fleet_grpc_address(self) -> str:
        return f"127.0.0.1:{self.fleet_grpc_port}"

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}",
            FLWR_HOME=str(self.home),
            FLWR_TELEMETRY_ENABLED="0",
            PYTHONUNBUFFERED="1",
        )
        env.update(extra or {})
        return env

    def _write_flwr_config(self) -> None:
        lines = ['[superlink]', 'default = "local"', '', '[superlink.local]',
                 f'address = "{self.address}"']
        if self.tls is None:
            lines.append("insecure = true")
        else:
            lines.append(f'root-certificates = "{self.tls.ca}"')
        (self.home / "config.toml").write_text("\n".join(lines) + "\n")

    # --- processes ---------------------------------------------------------------------------

    def spawn(self, name: str, args: list[str], env: dict[str, str] | None = None,
              cwd: Path = ROOT) -> Process:
        log_path = self.workdir / f"{name}.log"
        suffix = 1
        while log_path.exists():  # a restarted process keeps its earlier log
            suffix += 1
            log_path = self.workdir / f"{name}.{suffix}.log"
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                args, cwd=cwd, env=self.env(env), stdout=log_file, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc = Process(name, popen, log_path)
        self.processes.append(proc)
        return proc

    def start_superlink(self, timeout: float = 60.0) -> Process:
        args = [str(VENV_BIN / "flower-superlink"), "--host", "127.0.0.1", "--port", str(self.port),
                "--disable-runtime-dependency-installation"]
        if self.tls is None:
            args.append("--insecure")
        else:
            args += ["--ssl-ca-certfile", str(self.tls.ca), "--ssl-certfile", str(self.tls.cert),
                     "--ssl-keyfile", str(self.tls.key)]
        env = {}
        if self.grpc_fleet:
            env["FLWR_INTERNAL_GRPC_FLEET_API"] = "1"
            args += ["--fleet-api-address", self.fleet_grpc_address]
        self.superlink = self.spawn("superlink", args, env)
        ports = [self.port] + ([self.fleet_grpc_port] if self.grpc_fleet else [])
        for port in ports:
            if not wait_listening(port, timeout, self.superlink.popen):
                raise RuntimeError(f"flower-superlink does not listen on {port}:\n{self.logs()}")
        return self.superlink

    def restart_superlink(self, down_seconds: float = 0.0) -> Process:
        """Kill the SuperLink (and its ServerApp) and start a new one on the same ports."""
        assert self.superlink is not None
        self.superlink.stop()
        time.sleep(down_seconds)
        return self.start_superlink()

    def start_supernode(self, name: str, node_config: str = "", superlink: str | None = None) -> Process:
        """flwr's own `flower-supernode`, running the ClientApp of the app being run; ``superlink``
        replaces the SuperLink's address (e.g. a relay's)."""
        args = [str(VENV_BIN / "flower-supernode"), "--superlink", superlink or self.address,
                "--host", "127.0.0.1", "--port", str(free_port())]
        args += ["--insecure"] if self.tls is None else ["--root-certificates", str(self.tls.ca)]
        if node_config:
            args += ["--node-config", node_config]
        return self.spawn(name, args)

    def start_fedproto_node(self, name: str, app: str, env: dict[str, str] | None = None,
                            extra_args: list[str] | None = None,
                            transport: str = "http", superlink: str | None = None) -> Process:
        """Our node: `python -m fedproto.client --superlink ... --app MODULE:ATTR` (the CLI contract);
        ``superlink`` replaces the SuperLink's address (e.g. a relay's)."""
        address = superlink or (self.fleet_grpc_address if transport == "grpc-rere" else self.address)
        args = [sys.executable, "-m", "fedproto.client", "--superlink", address, "--app", app]
        if transport != "http":
            args += ["--fleet-transport", transport]
        if self.tls is not None:
            args += ["--root-certificates", str(self.tls.ca)]
        args += extra_args or []
        pythonpath = os.pathsep.join(
            [str(EXAMPLE_APP), str(ROOT), os.environ.get("PYTHONPATH", "")]
        )
        return self.spawn(name, args, {"PYTHONPATH": pythonpath, **(env or {})})

    def start_fleet_relay(self, name: str, *flags: str, transport: str = "http") -> tuple[str, Process]:
        """`fedproto-trace --fleet` in front of the SuperLink's Fleet API; returns (its address, process)."""
        listen = f"127.0.0.1:{free_port()}"
        upstream = self.fleet_grpc_address if transport == "grpc-rere" else self.address
        args = [sys.executable, "-m", "fedproto.kit.trace", "--fleet", "--listen", listen, "--upstream", upstream,
                "--fleet-transport", transport, *flags]
        relay = self.spawn(name, args)
        if not wait_listening(int(listen.rpartition(":")[2]), 30, relay.popen):
            raise RuntimeError(f"fedproto-trace --fleet does not listen on {listen}:\n{self.logs()}")
        return listen, relay

    # --- runs --------------------------------------------------------------------------------

    def flwr(self, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(VENV_BIN / "flwr"), *args], cwd=self.workdir, env=self.env(),
            capture_output=True, text=True, timeout=timeout,
        )

    def start_run(self, name: str, app_dir: Path = EXAMPLE_APP,
                  run_config: dict | None = None) -> Process:
        """`flwr run APP_DIR local --stream` in the background; finish it with ``finish_run``."""
        args = [str(VENV_BIN / "flwr"), "run", str(app_dir), "local", "--stream"]
        if run_config:
            config_file = self.workdir / f"{name}.run_config.toml"
            config_file.write_text(
                "".join(f"{json.dumps(key)} = {_toml_value(value)}\n"
                        for key, value in run_config.items())
            )
            args += ["--run-config", str(config_file)]
        return self.spawn(name, args, cwd=self.workdir)

    def finish_run(self, run: Process, timeout: float) -> RunOutcome:
        """Wait for `flwr run --stream` to end, then read the run's status from the SuperLink."""
        code = run.wait(timeout)
        if code is None:
            raise RuntimeError(f"flwr run did not end within {timeout} s\n{self.logs()}")
        output = run.log()
        match = re.search(r"Successfully started run (\d+)", output)
        if match is None:
            raise RuntimeError(f"flwr run started no run (exit {code})\n{self.logs()}")
        run_id = int(match.group(1))
        status, details = self.run_status(run_id)
        return RunOutcome(run_id, status, details, output, code)

    def run_status(self, run_id: int) -> tuple[str, str]:
        """(status, status-details) of a run, waiting briefly for it to reach "finished:*"."""
        deadline = time.monotonic() + 30
        while True:
            listed = self.flwr("ls", "local", "--run-id", str(run_id), "--format", "json")
            if listed.returncode != 0:
                raise RuntimeError(f"flwr ls failed:\n{listed.stdout}\n{listed.stderr}")
            run = json.loads(listed.stdout)["runs"][0]
            if run["status"].startswith("finished") or time.monotonic() > deadline:
                return run["status"], run["status-details"]
            time.sleep(0.5)

    # --- teardown and diagnostics -----------------------------------------------------------

    def logs(self, tail: int = 3000) -> str:
        """The end of every process log, for assertion messages."""
        return "\n".join(
            f"----- {proc.name} ({proc.log_path.name}) -----\n{proc.log()[-tail:]}"
            for proc in self.processes
        )

    def stop_all(self) -> None:
        for proc in reversed(self.processes):
            proc.stop()


def _toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))  # a JSON string literal is a valid TOML basic string
