"""Shared test fixtures: free ports, real subprocesses that are always stopped, TLS material."""

from __future__ import annotations

import datetime
import ipaddress
import os
import signal
import socket
import subprocess
import sys
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    """A port nothing listens on now. gRPC binds with SO_REUSEPORT, so never reuse a fixed one."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_raw_join_server(join, workers: int, options=()):
    """A blocking gRPC server on a free loopback port serving ``join(requests, context)`` as Flower's
    Join, raw bytes both ways (no (de)serializers); returns (the started server, its address)."""
    import grpc

    from fedproto.wire import JOIN_METHOD

    _, service, method = JOIN_METHOD.split("/")
    address = f"127.0.0.1:{free_port()}"
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=list(options))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(
        service, {method: grpc.stream_stream_rpc_method_handler(join)}),))
    server.add_insecure_port(address)
    server.start()
    return server, address


@dataclass
class Proc:
    """A started subprocess and the file its stdout+stderr go to."""

    name: str
    popen: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait(self, timeout: float) -> int:
        """Exit code; on timeout the process is killed and the test fails showing its log."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait()
            pytest.fail(f"{self.name} did not exit within {timeout} s; log:\n{self.log()[-4000:]}")

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait()


def _give_children_sigint() -> None:
    """A suite started as a background job (``make test &``, nohup) inherits SIGINT *ignored*, and
    exec keeps an ignored signal ignored in every process the tests start. A handled signal is reset
    to its default by exec, so handling SIGINT here gives children what a terminal gives them.
    (Not ``preexec_fn``: Python code between fork and exec can deadlock when the tests spawn a
    process while a server's threads run in this one.)"""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


_give_children_sigint()


@pytest.fixture
def spawn(tmp_path):
    """spawn(name, *python_args, env={...}) -> Proc, run from the repo root; killed at teardown."""
    started: list[Proc] = []

    def start(name: str, *args: str, env: dict[str, str] | None = None) -> Proc:
        log_path = tmp_path / f"{name}.log"
        full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(log_path, "wb") as log_file:
            popen = subprocess.Popen(
                [PYTHON, *args], cwd=ROOT, env=full_env, stdout=log_file, stderr=subprocess.STDOUT
            )
        proc = Proc(name, popen, log_path)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        proc.kill()


@dataclass
class TlsFiles:
    ca: Path  # CA certificate (PEM): what a client passes as root certificates
    cert: Path  # server certificate for localhost/127.0.0.1, signed by the CA
    key: Path  # server private key
    other_ca: Path  # an unrelated CA: a client trusting only this one must fail the handshake


def _make_ca(name: str):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


@pytest.fixture
def tls_files(tmp_path) -> TlsFiles:
    """A self-signed CA and a server certificate for localhost and 127.0.0.1, made on the spot."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    ca_key, ca_cert = _make_ca("fedproto test CA")
    _, other_ca_cert = _make_ca("unrelated CA")
    server_key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    server_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
        .issuer_name(ca_cert.subject)
        .public_key(server_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    files = TlsFiles(tmp_path / "ca.pem", tmp_path / "server.pem", tmp_path / "server.key",
                     tmp_path / "other_ca.pem")
    files.ca.write_bytes(ca_cert.public_bytes(pem))
    files.cert.write_bytes(server_cert.public_bytes(pem))
    files.key.write_bytes(
        server_key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    files.other_ca.write_bytes(other_ca_cert.public_bytes(pem))
    return files


# --- Fleet interop: real flower-superlink / flwr run / nodes (tests/superlink_harness.py) -------


@pytest.hookimpl(hookwrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test at teardown."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def superlink_harness(request, tmp_path):
    """superlink_harness(tls=None, grpc_fleet=False) -> a tests.superlink_harness.Harness.

    Everything it started is stopped at teardown (process trees); if the test failed, the end of
    every process log is printed, so it shows in pytest's report.
    """
    from superlink_harness import Harness

    harnesses = []

    def make(tls=None, grpc_fleet: bool = False) -> Harness:
        harness = Harness(tmp_path / f"harness{len(harnesses)}", tls=tls, grpc_fleet=grpc_fleet)
        harnesses.append(harness)
        return harness

    yield make
    failed = getattr(request.node, "report_call", None) is not None and request.node.report_call.failed
    for harness in harnesses:
        if failed:
            print(harness.logs())
        harness.stop_all()
