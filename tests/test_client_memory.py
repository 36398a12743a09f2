"""The edge client keeps no model between two messages (issue 20: 10M parameters in at most 200 MiB).

``python -m fedproto.client`` runs as a process against a raw gRPC server defined here: the server
asks for a 40 MB model (get_parameters), reads the reply, and then reads the client's resident
set while the client waits for the next instruction. With grpcio's blocking API the client's
sender thread kept that reply until the next one, so a whole model was still resident when the
next instruction arrived: the peak was one model higher.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import start_raw_join_server
from fedproto.bench.client_rss import SIDE_ENV
from fedproto.server_role import encode_get_parameters_ins, encode_reconnect_ins
from fedproto.wire import message_size_options

SIDE = 3163  # the model: one SIDE x SIDE float32 tensor, 40 MB
MODEL_MIB = SIDE * SIDE * 4 / 2**20
SETTLE_SECONDS = 0.5  # after the reply is in, before the client's memory is read
ROOT = Path(__file__).resolve().parents[1]


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


class ModelServer:
    """One Join stream: get_parameters_ins, the reply read, the client's VmRSS read, then ReconnectIns(0)."""

    def __init__(self) -> None:
        self.client_pid = 0
        self.rss_kib: dict[str, int] = {}
        self.reply_bytes = 0
        self.server, self.address = start_raw_join_server(self.join, workers=2, options=message_size_options(2**30))

    def join(self, requests, context):
        self.rss_kib["joined"] = vm_rss_kib(self.client_pid)
        yield encode_get_parameters_ins()
        self.reply_bytes = len(next(requests))
        time.sleep(SETTLE_SECONDS)
        self.rss_kib["waiting after its reply"] = vm_rss_kib(self.client_pid)
        yield encode_reconnect_ins(0)
        next(requests, None)


@pytest.fixture
def model_server():
    server = ModelServer()
    yield server
    server.server.stop(0)


def test_a_sent_model_is_not_resident_while_the_client_waits_for_the_next_instruction(spawn, model_server):
    client = spawn("client", "-m", "fedproto.client", "--server", model_server.address,
                   "--app", "fedproto.bench.client_rss:BenchHandler", env={SIDE_ENV: str(SIDE)})
    model_server.client_pid = client.popen.pid
    assert client.wait(30) == 0, client.log()
    assert model_server.reply_bytes > SIDE * SIDE * 4  # the whole model went out
    grown_mib = (model_server.rss_kib["waiting after its reply"] - model_server.rss_kib["joined"]) / 1024
    assert grown_mib < MODEL_MIB / 2, (model_server.rss_kib, client.log())



# Run in a fresh interpreter: after a freed 16 MiB buffer (an mmap that raises glibc's threshold
# to 16 MiB), 64 buffers of 1 MiB are written and all but the last freed; prints the MiB still
# resident. The last buffer stays so that glibc cannot just shrink the heap from its top.
FREED_HEAP_PROBE = """
import sys
from fedproto.client.app import return_freed_memory_to_os

def vm_rss_kib():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))

if sys.argv[1] == "set":
    return_freed_memory_to_os()
big = b"x" * (16 * 2**20)
del big
before = vm_rss_kib()
buffers = [b"x" * 2**20 for _ in range(64)]
del buffers[:-1]
print((vm_rss_kib() - before) / 1024)
"""


def _retained_mib(setting: str) -> float:
    environment = {key: value for key, value in os.environ.items() if not key.startswith("MALLOC_")}
    result = subprocess.run([sys.executable, "-c", FREED_HEAP_PROBE, setting], cwd=ROOT, env=environment,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return float(result.stdout)


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the setting is glibc's (a no-op elsewhere)")
def test_the_clients_allocator_setting_gives_freed_buffers_back_to_the_system():
    assert _retained_mib("default") > 32  # glibc's default keeps them: the case the setting is for
    assert _retained_mib("set") < 8
