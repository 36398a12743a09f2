"""The C Fleet node (ports/c): its build, its core byte for byte, and real runs on flwr 1.42.

- The core is driven by ``ports/c/build/test_core``, a scripted driver: the test plays the
  SuperLink and the clock over its stdin/stdout (ScriptedSuperLink below), building instructions
  with fedproto's own object codec and the committed vectors (kit/fleet_vectors), and checks the
  reply's objects against what fedproto's codec builds for the expected reply, id for id.
- Real runs: `flower-superlink`, two `ports/c/fedproto-node-c` and `flwr run` of
  examples/superlink_app (message-API and legacy FedAvg); the final model must equal the weighted
  mean computed independently from the C handler's arithmetic (the same as ArithmeticClient's).
- The same runs under AddressSanitizer + UndefinedBehaviorSanitizer (clang), with no finding.

The packages the port needs are Debian's: if they are missing the build test fails naming them.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from superlink_harness import EXAMPLE_APP, ROOT, Harness, free_port

sys.path.insert(0, str(EXAMPLE_APP))
from fedproto import objects  # noqa: E402
from fedproto.error_pb2 import Error  # noqa: E402
from fedproto.fleet_pb2 import (  # noqa: E402
    ActivateNodeResponse,
    PullMessagesRequest,
    PullMessagesResponse,
    PushMessagesRequest,
    PushMessagesResponse,
    RegisterNodeFleetRequest,
    RegisterNodeFleetResponse,
)
from fedproto.heartbeat_pb2 import SendNodeHeartbeatResponse  # noqa: E402
from fedproto.message_pb2 import (  # noqa: E402
    Message,
    Metadata,
    ObjectTree,
    PullObjectRequest,
    PullObjectResponse,
    PushObjectRequest,
    PushObjectResponse,
)
from superlink_app.arithmetic import evaluate_examples, evaluate_loss, expected_fedavg, fit_examples  # noqa: E402

pytestmark = pytest.mark.timeout(240)

PORT = ROOT / "ports" / "c"
NODE = PORT / "fedproto-node-c"
DRIVER = PORT / "build" / "test_core"
VECTORS = ROOT / "kit" / "fleet_vectors"
PACKAGES = "nanopb libnanopb-dev libmbedtls-dev libcurl4-openssl-dev clang"
INSTALL = f"apt-get install -y {PACKAGES}"
NODE_ID = 17446744073709551615  # the vectors' reply sender
RUN_TIMEOUT = 150.0


def _missing_toolchain() -> list[str]:
    missing = [tool for tool in ("cc", "make", "nanopb_generator.py") if shutil.which(tool) is None]
    if shutil.which("cc"):
        missing += [header for header in ("pb.h", "mbedtls/sha256.h", "curl/curl.h")
                    if subprocess.run(["cc", "-E", "-x", "c", "-"], input=f"#include <{header}>\n", text=True,
                                      capture_output=True).returncode != 0]
    return missing


@pytest.fixture(scope="module")
def built() -> Path:
    missing = _missing_toolchain()
    assert not missing, f"the C port cannot build: missing {missing}; install them with: {INSTALL}"
    result = subprocess.run(["make", "-C", str(PORT)], capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, f"make -C ports/c failed:\n{result.stdout}\n{result.stderr}"
    return PORT


@pytest.fixture(scope="module")
def sanitized(built) -> Path:
    assert shutil.which("clang"), f"the sanitizer build needs clang: {INSTALL}"
    result = subprocess.run(["make", "-C", str(PORT), "sanitize"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"make -C ports/c sanitize failed:\n{result.stdout}\n{result.stderr}"
    return PORT / "build" / "asan"


def test_builds_warning_free_with_the_generated_nanopb_sources(built):
    assert NODE.is_file() and os.access(NODE, os.X_OK)
    assert (PORT / "build" / "gen" / "flwr" / "proto" / "fleet.pb.c").is_file()
    usage = subprocess.run([str(NODE)], capture_output=True, text=True, timeout=10)
    assert usage.returncode == 2 and "--superlink HOST:PORT" in usage.stderr


# ---- the core, scripted -------------------------------------------------------------------


class ScriptedSuperLink:
    """Plays a SuperLink (and the clock) for the driver: one instruction, then an idle poll, then stop."""

    def __init__(self, driver: Path, args: list[str], instruction: objects.DeflatedMessage | None,
                 now: float = 1767225602.625, node_id: int = NODE_ID) -> None:
        self.proc = subprocess.Popen([str(driver), *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE)
        self.instruction = instruction
        self.now = now
        self.node_id = node_id
        self.requests: list[tuple[str, bytes]] = []
        self.pushed: dict[str, bytes] = {}
        self.push_request: PushMessagesRequest | None = None
        self.handled: list[str] = []
        self.pulled_messages = 0
        self.outcome = ""
        self.error = ""
        self.tamper: dict[str, bytes] = {}  # object id -> the content served instead

    def answer(self, rpc: str, request: bytes) -> bytes:
        if rpc == "RegisterNode":
            assert RegisterNodeFleetRequest.FromString(request).public_key.startswith(b"-----BEGIN PUBLIC KEY")
            return RegisterNodeFleetResponse().SerializeToString()
        if rpc == "ActivateNode":
            return ActivateNodeResponse(node_id=self.node_id).SerializeToString()
        if rpc == "SendNodeHeartbeat":
            return SendNodeHeartbeatResponse(success=True).SerializeToString()
        if rpc == "PullMessages":
            assert PullMessagesRequest.FromString(request).node.node_id == self.node_id
            self.pulled_messages += 1
            if self.pulled_messages > 1 or self.instruction is None:
                return PullMessagesResponse().SerializeToString()
            return PullMessagesResponse(messages_list=[self.instruction.message],
                                        message_object_trees=[self.instruction.object_tree]).SerializeToString()
        if rpc == "PullObject":
            object_id = PullObjectRequest.FromString(request).object_id
            content = self.tamper.get(object_id, self.instruction.objects[object_id])
            return PullObjectResponse(object_found=True, object_available=True,
                                      object_content=content).SerializeToString()
        if rpc == "PushMessages":
            self.push_request = PushMessagesRequest.FromString(request)
            wanted = objects.tree_object_ids(self.push_request.message_object_trees[0])
            return PushMessagesResponse(objects_to_push=wanted, session_id="s1").SerializeToString()
        if rpc == "PushObject":
            pushed = PushObjectRequest.FromString(request)
            assert pushed.session_id == "s1" and pushed.node.node_id == self.node_id
            objects.check_object(pushed.object_id, pushed.object_content)  # hash and header
            self.pushed[pushed.object_id] = pushed.object_content
            return PushObjectResponse(stored=True).SerializeToString()
        return b""  # ConfirmMessageReceived, DeactivateNode, UnregisterNode: empty responses

    def run(self, timeout: float = 60.0) -> ScriptedSuperLink:
        out, inp = self.proc.stdout, self.proc.stdin
        try:
            while True:
                line = out.readline().decode()
                if not line:
                    raise AssertionError(f"the driver ended: {self.proc.wait(timeout)} {self.proc.stderr.read()!r}")
                word, _, rest = line.rstrip("\n").partition(" ")
                if word == "SEND":
                    rpc, length = rest.split()
                    request = out.read(int(length))
                    self.requests.append((rpc, request))
                    response = self.answer(rpc, request)
                    inp.write(f"200 {self.now:.6f} {len(response)}\n".encode() + response)
                    inp.flush()
                elif word == "WAIT":
                    stop = self.pulled_messages >= 2 and self.outcome == ""
                    inp.write(f"{'STOP ' if stop else ''}{max(self.now, float(rest)):.6f}\n".encode())
                    inp.flush()
                elif word == "HANDLE":
                    self.handled.append(rest)
                elif word == "FINISHED":
                    self.outcome = rest
                    break
                elif word == "ERROR":
                    self.error = rest
                    break
        finally:
            inp.close()
            self.proc.wait(timeout)
        return self

    def reply_objects(self) -> dict[str, bytes]:
        return self.pushed


def instruction_from_vector(name: str) -> objects.DeflatedMessage:
    """A committed vector served as flwr's SuperLink would: its files, its tree, its metadata."""
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    vector = next(v for v in manifest["vectors"] if v["name"] == name)
    contents = {o["object_id"]: (VECTORS / o["file"]).read_bytes() for o in vector["objects"]}

    def tree(node: dict) -> ObjectTree:
        return ObjectTree(object_id=node["object_id"], children=[tree(child) for child in node["children"]])

    message_id = vector["message_id"]
    header = objects.check_object(message_id, contents[message_id])
    metadata = objects.message_metadata(message_id, contents[message_id], header)
    metadata.message_id = message_id
    return objects.DeflatedMessage(message_id, Message(metadata=metadata), tree(vector["object_tree"]), contents)


def instruction(arrays: dict[str, np.ndarray], config: dict | None = None, message_type: str = "train",
                node_id: int = NODE_ID) -> objects.DeflatedMessage:
    metadata = Metadata(run_id=4242, src_node_id=1, dst_node_id=node_id, group_id="1", ttl=43200.0,
                        message_type=message_type, created_at=1767225600.125)
    record = objects.ArrayRecord({key: objects.Array.from_numpy(value) for key, value in arrays.items()})
    content = {"arrays": record, "config": objects.ConfigRecord(config or {"server-round": 1})}
    deflated = objects.deflate_message(metadata, content)
    deflated.message.metadata.message_id = deflated.message_id
    return deflated


def expected_reply(incoming: objects.DeflatedMessage, content: dict | None, error: str = "",
                   now: float = 1767225602.625) -> objects.DeflatedMessage:
    """What fedproto's node sends for this reply (fleet_content.build_reply's metadata)."""
    got = incoming.message.metadata
    metadata = Metadata(run_id=got.run_id, src_node_id=NODE_ID, dst_node_id=got.src_node_id,
                        reply_to_message_id=incoming.message_id, group_id=got.group_id,
                        message_type=got.message_type, created_at=now, ttl=got.created_at + got.ttl - now)
    if error:
        return objects.deflate_message(metadata, error=Error(code=2, reason=error))
    return objects.deflate_message(metadata, content)


@pytest.mark.parametrize("feed", [1, 7, 65536])
def test_train_vector_streams_in_any_pieces_and_the_reply_is_fedprotos_byte_for_byte(built, feed):
    incoming = instruction_from_vector("train_instruction")
    link = ScriptedSuperLink(DRIVER, ["--feed", str(feed), "--read", "13", "--deltas", "-0.125,0.25",
                                      "--examples", "120", "--metric", "train-loss=0.75"], incoming).run()
    assert link.error == "" and link.outcome.startswith("stopped")
    assert link.handled == ["fit 2 w:f4:6 b:f4:2"]
    w = np.array([[0.0, 0.25], [0.5, 0.75], [1.0, 1.25]], np.float32) - np.float32(0.125)
    b = np.array([0.5, -0.5], np.float32) + np.float32(0.25)
    record = objects.ArrayRecord({"w": objects.Array.from_numpy(w), "b": objects.Array.from_numpy(b)})
    want = expected_reply(incoming, {"arrays": record,
                                     "metrics": objects.MetricRecord({"train-loss": 0.75, "num-examples": 120})})
    assert link.push_request.messages_list[0] == want.message
    assert link.push_request.message_object_trees[0] == want.object_tree
    assert link.pushed == want.objects
    # The arrays are the train_reply vector's, object for object.
    vector = json.loads((VECTORS / "manifest.json").read_text())
    reply = next(v for v in vector["vectors"] if v["name"] == "train_reply")
    array_record_id = reply["object_tree"]["children"][0]["children"][0]["object_id"]
    assert array_record_id in link.pushed
    rpcs = [rpc for rpc, _ in link.requests]
    assert rpcs[:3] == ["RegisterNode", "ActivateNode", "SendNodeHeartbeat"]
    assert rpcs[-2:] == ["DeactivateNode", "UnregisterNode"]
    assert rpcs.count("PullObject") == len(incoming.objects)  # each object once


def test_handler_failure_is_the_error_reply_vector_byte_for_byte(built):
    incoming = instruction_from_vector("train_instruction")
    link = ScriptedSuperLink(DRIVER, ["--fail", "ValueError: the handler failed"], incoming).run()
    manifest = json.loads((VECTORS / "manifest.json").read_text())
    vector = next(v for v in manifest["vectors"] if v["name"] == "error_reply")
    assert link.push_request.messages_list[0].metadata.message_id == vector["message_id"]
    assert link.pushed == {vector["message_id"]: (VECTORS / vector["objects"][0]["file"]).read_bytes()}


def test_legacy_vector_reads_dtype_and_shape_from_the_npy_and_replies_in_fitres_layout(built):
    incoming = instruction_from_vector("legacy_fit_instruction")
    link = ScriptedSuperLink(DRIVER, ["--deltas", "1,2", "--examples", "7", "--metric", "acc=0.5"], incoming).run()
    assert link.error == ""
    content = objects.inflate_message(incoming.object_tree, incoming.objects).content
    tensors = [content["fitins.parameters"][key].to_numpy() for key in ("0", "1")]
    assert link.handled == [f"fit 2 0:{tensors[0].dtype.str[1:]}:{tensors[0].size} 1:{tensors[1].dtype.str[1:]}:"
                            f"{tensors[1].size}"]
    trained = [tensors[0] + tensors[0].dtype.type(1), tensors[1] + tensors[1].dtype.type(2)]
    want = expected_reply(incoming, {  # fedproto.fleet_content._legacy_reply's records, in its order
        "fitres.metrics": objects.ConfigRecord({"acc": 0.5}),
        "fitres.num_examples": objects.MetricRecord({"num_examples": 7}),
        "fitres.parameters": objects.ArrayRecord({str(i): objects.Array.from_numpy(t) for i, t in enumerate(trained)}),
        "fitres.status": objects.ConfigRecord({"code": 0, "message": "Success"}),
    })
    assert link.push_request.messages_list[0] == want.message
    assert link.pushed == want.objects


def test_legacy_evaluate_replies_in_evaluateres_layout_byte_for_byte(built):
    metadata = Metadata(run_id=7, src_node_id=1, dst_node_id=NODE_ID, group_id="2", ttl=600.0,
                        message_type="evaluate", created_at=1767225600.125)
    tensors = [np.full((2, 3), 0.5, np.float32), np.arange(4, dtype=np.float64)]
    record = objects.ArrayRecord({str(i): objects.Array("", (), "numpy.ndarray", objects.Array.from_numpy(t).data)
                                  for i, t in enumerate(tensors)})
    incoming = objects.deflate_message(metadata, {"evaluateins.parameters": record,
                                                  "evaluateins.config": objects.ConfigRecord({"server-round": 2})})
    incoming.message.metadata.message_id = incoming.message_id
    link = ScriptedSuperLink(DRIVER, ["--loss", "1.5", "--examples", "5"], incoming).run()
    assert link.handled == ["evaluate 2 0:f4:6 1:f8:4"]
    want = expected_reply(incoming, {  # fedproto.fleet_content._legacy_reply's records, in its order
        "evaluateres.loss": objects.MetricRecord({"loss": 1.5}),
        "evaluateres.num_examples": objects.MetricRecord({"num_examples": 5}),
        "evaluateres.metrics": objects.ConfigRecord({}),
        "evaluateres.status": objects.ConfigRecord({"code": 0, "message": "Success"}),
    })
    assert link.push_request.messages_list[0] == want.message
    assert link.pushed == want.objects


def test_a_persistent_key_already_registered_activates_and_never_unregisters(built):
    link = ScriptedSuperLink(DRIVER, ["--persistent-key", "1"], None)
    answer = link.answer
    link.answer = lambda rpc, request: (b"" if rpc != "RegisterNode" else answer(rpc, request))
    refusals = iter([412])
    original_run = link.run

    def refuse_register_once(timeout: float = 60.0):  # the first RegisterNode gets 412 "in use"
        out, inp = link.proc.stdout, link.proc.stdin
        line = out.readline().decode().split()
        assert line[:2] == ["SEND", "RegisterNode"]
        out.read(int(line[2]))
        inp.write(f"{next(refusals)} {link.now:.6f} 0\n".encode())
        inp.flush()
        link.answer = answer
        return original_run(timeout)

    refuse_register_once()
    rpcs = [rpc for rpc, _ in link.requests]
    assert rpcs[0] == "ActivateNode" and rpcs[-1] == "DeactivateNode" and "UnregisterNode" not in rpcs
    assert link.outcome.startswith("stopped")


def test_zero_array_with_a_repeated_chunk_under_two_keys_streams_into_two_arrays(built):
    zeros = np.zeros(4_000_000, np.float32)  # 16,000,128 .npy bytes: 4 slices, the middle two equal
    incoming = instruction({"a": zeros, "b": zeros.copy()})
    assert len(incoming.objects) == 8  # 3 distinct chunks, one Array, ArrayRecord, config, dict, message
    link = ScriptedSuperLink(DRIVER, ["--deltas", "0.5,-1", "--examples", "3"], incoming).run()
    assert link.error == ""
    assert link.handled == ["fit 2 a:f4:4000000 b:f4:4000000"]
    pulled_chunks = [PullObjectRequest.FromString(r).object_id for rpc, r in link.requests if rpc == "PullObject"]
    assert len(pulled_chunks) == len(set(pulled_chunks)) == 8
    record = objects.ArrayRecord({"a": objects.Array.from_numpy(zeros + np.float32(0.5)),
                                  "b": objects.Array.from_numpy(zeros - np.float32(1))})
    want = expected_reply(incoming, {"arrays": record, "metrics": objects.MetricRecord({"num-examples": 3})})
    assert link.push_request.messages_list[0].metadata.message_id == want.message_id
    assert link.pushed == want.objects
    peak = int(link.outcome.split()[1])
    assert peak <= 2 * zeros.nbytes + 64 * 1024, f"arena peak {peak} for a model of {2 * zeros.nbytes} bytes"


def pulled_ids(link: ScriptedSuperLink) -> list[str]:
    return [PullObjectRequest.FromString(request).object_id for rpc, request in link.requests if rpc == "PullObject"]


def test_float64_and_unsupported_dtype_becomes_a_message_error(built):
    incoming = instruction({"w": np.arange(6, dtype=np.float64).reshape(3, 2), "n": np.arange(3, dtype=np.int32)})
    link = ScriptedSuperLink(DRIVER, [], incoming).run()
    assert link.error == "" and link.handled == []
    reason = link.push_request.messages_list[0].error.reason
    assert link.push_request.messages_list[0].error.code == 2
    assert "dtype int32" in reason
    assert sorted(pulled_ids(link)) == sorted(incoming.objects)  # every object pulled once, the data dropped


def test_model_larger_than_the_arena_is_an_error_reply_in_bounded_memory(built):
    incoming = instruction({"w": np.ones(100_000, np.float32)})
    link = ScriptedSuperLink(DRIVER, ["--model-bytes", "100000"], incoming).run()
    assert "does not fit" in link.push_request.messages_list[0].error.reason
    assert sorted(pulled_ids(link)) == sorted(incoming.objects)
    assert int(link.outcome.split()[1]) < 100_000 + 64 * 1024  # the 400 kB array was hashed, not held


@pytest.mark.parametrize("elements", [10_000, 1_000_000])
def test_arena_peak_is_the_model_plus_at_most_32_kib(built, elements):
    incoming = instruction({"w": np.ones(elements, np.float32)})
    model = elements * 4
    link = ScriptedSuperLink(DRIVER, ["--deltas", "1", "--max-objects", "32", "--model-bytes", str(model),
                                      "--feed", "1400"], incoming).run()
    assert link.error == "" and link.handled == [f"fit 1 w:f4:{elements}"]
    overhead = int(link.outcome.split()[1]) - model
    print(f"arena peak for {elements} float32: model {model} + {overhead} bytes")
    assert 0 < overhead <= 32 * 1024


def test_an_object_whose_bytes_are_not_its_id_is_a_protocol_error(built):
    incoming = instruction({"w": np.ones(4, np.float32)})
    chunk_id = next(oid for oid, body in incoming.objects.items() if body.startswith(b"ArrayChunk "))
    body = bytearray(incoming.objects[chunk_id])
    body[-1] ^= 1
    link = ScriptedSuperLink(DRIVER, [], incoming)
    link.tamper[chunk_id] = bytes(body)
    link.run()
    assert "sha256 is not its id" in link.error


@pytest.mark.parametrize("npy", [b"\x93NUMPY\x01\x00\x00\x00", b"\x93NUMPY\x02\x00\x00\x00\x00\x00",
                                 b"NOTNUMPY\x00\x00", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f4'}"])
def test_an_npy_that_is_not_one_is_a_protocol_error_not_a_hang(built, npy):
    metadata = Metadata(run_id=1, src_node_id=1, dst_node_id=NODE_ID, group_id="1", ttl=600.0,
                        message_type="train", created_at=1767225600.125)
    record = objects.ArrayRecord({"0": objects.Array("", (), "numpy.ndarray", npy)})
    content = {"fitins.parameters": record, "fitins.config": objects.ConfigRecord({"server-round": 1})}
    incoming = objects.deflate_message(metadata, content)
    incoming.message.metadata.message_id = incoming.message_id
    link = ScriptedSuperLink(DRIVER, ["--feed", "3"], incoming).run(timeout=10)
    assert ".npy" in link.error


def test_metadata_the_message_id_does_not_cover_is_refused(built):
    incoming = instruction({"w": np.ones(4, np.float32)})
    incoming.message.metadata.ttl = 99999.0  # PullMessages' copy differs from the hashed object's
    link = ScriptedSuperLink(DRIVER, [], incoming).run()
    assert "differs from the hashed Message object" in link.error


def fuzz_seed(incoming: objects.DeflatedMessage) -> bytes:
    """A good run for tests/fuzz_core.c: its responses to PullMessages, each PullObject, Confirm, PushMessages."""
    def response(payload: bytes) -> bytes:
        return bytes([0]) + len(payload).to_bytes(4, "little") + payload

    seed = response(PullMessagesResponse(messages_list=[incoming.message],
                                         message_object_trees=[incoming.object_tree]).SerializeToString())
    for object_id in objects.pull_order(incoming.object_tree):
        seed += response(PullObjectResponse(object_found=True, object_available=True,
                                            object_content=incoming.objects[object_id]).SerializeToString())
    return seed + response(b"") + response(PushMessagesResponse().SerializeToString())


FUZZ_SEEDS = {
    "train_instruction": lambda: instruction_from_vector("train_instruction"),
    "legacy_fit_instruction": lambda: instruction_from_vector("legacy_fit_instruction"),
    "float64_and_int32": lambda: instruction({"w": np.ones((2, 2)), "n": np.arange(3, dtype=np.int32)}),
}


def test_committed_fuzz_seeds_are_current(built):
    for name, make in FUZZ_SEEDS.items():
        assert (PORT / "tests" / "fuzz-seeds" / name).read_bytes() == fuzz_seed(make()), name


def test_fuzz_every_parser_of_superlink_bytes_briefly(built, tmp_path):
    assert shutil.which("clang"), f"the fuzz target needs clang: {INSTALL}"
    result = subprocess.run(["make", "-C", str(PORT), "build/fuzz_core"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    fuzzed = subprocess.run([str(PORT / "build" / "fuzz_core"), "-max_total_time=8", "-timeout=10",
                             f"-artifact_prefix={tmp_path}/", str(corpus), str(PORT / "tests" / "fuzz-seeds")],
                            capture_output=True, text=True, timeout=120)
    assert fuzzed.returncode == 0, fuzzed.stderr[-4000:]
    assert "Done" in fuzzed.stderr and not list(tmp_path.glob("crash-*"))


def test_passes_the_fleet_conformance_runner(built, tmp_path):
    port = free_port()
    verdicts = tmp_path / "verdicts.json"
    graded = subprocess.run(
        [str(Path(sys.executable).parent / "fedproto-conformance"), "--fleet", "--address", f"127.0.0.1:{port}",
         "--timeout", "30", "--json", str(verdicts), "--",
         str(NODE), "--superlink", f"127.0.0.1:{port}", "--heartbeat-interval", "10", "--poll-interval", "0.2"],
        capture_output=True, text=True, timeout=200, cwd=ROOT)
    assert graded.returncode == 0, graded.stdout[-4000:] + graded.stderr[-4000:]
    assert "all 23 checks passed" in graded.stdout + graded.stderr


# ---- real runs on flwr 1.42 ------------------------------------------------------------------


def start_c_nodes(harness: Harness, clients: list[int], node: Path = NODE, extra: list[str] | None = None,
                  env: dict[str, str] | None = None):
    return [harness.spawn(f"cnode{client}", [str(node), "--superlink", harness.address, "--poll-interval", "0.2",
                                             "--client", str(client), *(extra or [])], env)
            for client in clients]


def run(harness: Harness, tmp_path, name: str, **config) -> tuple[dict, list[np.ndarray]]:
    result_dir = tmp_path / name
    outcome = harness.finish_run(harness.start_run(
        name, run_config={"poll-interval": 0.2, "result-dir": str(result_dir), **config}), RUN_TIMEOUT)
    assert outcome.status == "finished:completed", f"{outcome.status} ({outcome.details})\n{harness.logs()}"
    report = json.loads((result_dir / "report.json").read_text())
    with np.load(result_dir / "final_arrays.npz") as npz:
        arrays = [npz[f"arr_{i}"] for i in range(len(npz.files))]
    return report, arrays


def assert_model(actual: list[np.ndarray], expected: list[np.ndarray]) -> None:
    assert [a.shape for a in actual] == [e.shape for e in expected]
    for got, want in zip(actual, expected):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def stop(harness: Harness, nodes) -> list[int | None]:
    for node in nodes:
        node.popen.send_signal(signal.SIGTERM)
    codes = [node.wait(30) for node in nodes]
    assert None not in codes, f"a C node ignored SIGTERM\n{harness.logs()}"
    return codes


def test_message_api_fedavg_three_rounds_two_c_nodes(built, superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_c_nodes(harness, [0, 1])
    report, arrays = run(harness, tmp_path, "message", strategy="message", **{"num-rounds": 3})
    assert_model(arrays, expected_fedavg([[0, 1]] * 3))
    assert [a.dtype for a in arrays] == [np.float64, np.float32]
    for server_round in (1, 2, 3):
        train = report["replies"]["train"][str(server_round)]
        assert sorted((r["metrics"]["client"], r["metrics"]["num-examples"]) for r in train) == [
            (0, fit_examples(0)), (1, fit_examples(1))]
        model = expected_fedavg([[0, 1]] * server_round)
        for reply in report["replies"]["evaluate"][str(server_round)]:
            client = reply["metrics"]["client"]
            assert reply["metrics"]["num-examples"] == evaluate_examples(client)
            assert reply["metrics"]["eval_loss"] == pytest.approx(evaluate_loss(client, model), rel=1e-6)
    assert stop(harness, nodes) == [0, 0]


def test_legacy_fedavg_three_rounds_two_c_nodes(built, superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_c_nodes(harness, [0, 1])
    report, arrays = run(harness, tmp_path, "legacy", strategy="legacy", **{"num-rounds": 3})
    assert_model(arrays, expected_fedavg([[0, 1]] * 3))
    for server_round in ("1", "2", "3"):
        train = report["replies"]["train"][server_round]
        assert sorted((r["metrics"]["client"], r["num_examples"]) for r in train) == [
            (0, fit_examples(0)), (1, fit_examples(1))]
    assert stop(harness, nodes) == [0, 0]


def test_a_failing_fit_is_a_message_error_and_the_c_node_goes_on(built, superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = [*start_c_nodes(harness, [0]), *start_c_nodes(harness, [1], extra=["--fail-fit-round", "1"])]
    report, arrays = run(harness, tmp_path, "raises", strategy="message", **{"num-rounds": 2})
    [failure] = [r for r in report["replies"]["train"]["1"] if r["error"] is not None]
    assert failure["error"] == 2 and "client 1 refuses round 1" in failure["reason"]
    assert_model(arrays, expected_fedavg([[0], [0, 1]]))
    assert stop(harness, nodes) == [0, 0]


def test_model_above_one_chunk_both_directions_and_a_p384_key(built, superlink_harness, tmp_path):
    extra = 1_600_000  # float32: 6.4 MB of .npy data, two 5 MiB chunks each way
    harness = superlink_harness()
    harness.start_superlink()
    nodes = [*start_c_nodes(harness, [0]), *start_c_nodes(harness, [1], extra=["--curve", "p384"])]
    report, arrays = run(harness, tmp_path, "large", strategy="message", **{"num-rounds": 1, "extra-elements": extra})
    assert arrays[2].shape == (extra,)
    assert_model(arrays, expected_fedavg([[0, 1]], extra_elements=extra))
    assert stop(harness, nodes) == [0, 0]


def test_mixed_run_c_node_python_node_and_flower_supernode(built, superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    [c_node] = start_c_nodes(harness, [0])
    python_node = harness.start_fedproto_node("pynode1", "superlink_app.handlers:make_client",
                                              env={"FLEET_CLIENT": "1"}, extra_args=["--poll-interval", "0.2"])
    supernode = harness.start_supernode("supernode2", "client=2")
    report, arrays = run(harness, tmp_path, "mixed", strategy="message", **{"num-rounds": 2, "min-nodes": 3})
    assert_model(arrays, expected_fedavg([[0, 1, 2]] * 2))
    assert stop(harness, [c_node, python_node]) == [0, 0]
    supernode.stop()


def test_fit_outlasting_two_heartbeat_intervals_heartbeats_between_steps(built, superlink_harness, tmp_path):
    # The SuperLink counts a node offline 2 x interval after its last heartbeat: with the smallest
    # interval (10 s) a 22 s fit outlasts two: a node without heartbeats between its training steps
    # would be offline and its reply a NODE_UNAVAILABLE error for the ServerApp.
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_c_nodes(harness, [0, 1], extra=["--heartbeat-interval", "10", "--fit-seconds", "22"])
    report, arrays = run(harness, tmp_path, "long", strategy="message", **{"num-rounds": 1, "round-timeout": 90.0})
    assert [r["error"] for r in report["replies"]["train"]["1"]] == [None, None]
    assert_model(arrays, expected_fedavg([[0, 1]]))
    assert stop(harness, nodes) == [0, 0]


def test_https_with_the_superlinks_ca(built, superlink_harness, tls_files, tmp_path):
    harness = superlink_harness(tls=tls_files)
    harness.start_superlink()
    nodes = start_c_nodes(harness, [0, 1], extra=["--root-certificates", str(tls_files.ca)])
    _, arrays = run(harness, tmp_path, "tls", strategy="message", **{"num-rounds": 1})
    assert_model(arrays, expected_fedavg([[0, 1]]))
    assert stop(harness, nodes) == [0, 0]


def test_linear_regression_handler_learns_in_a_real_run(built, superlink_harness, tmp_path):
    harness = superlink_harness()
    harness.start_superlink()
    nodes = start_c_nodes(harness, [0, 1], extra=["--handler", "linreg"])
    report, arrays = run(harness, tmp_path, "linreg", strategy="message", **{"num-rounds": 4})
    losses = [np.mean([r["metrics"]["eval_loss"] for r in report["replies"]["evaluate"][str(n)]]) for n in range(1, 5)]
    assert losses[-1] < losses[0] / 4, losses  # the held-out MSE falls round after round
    weights = np.concatenate([a.ravel() for a in arrays])
    np.testing.assert_allclose(weights[:-1], np.sin(np.arange(1, weights.size)), atol=0.2)  # w*_i = sin(i + 1)
    assert abs(weights[-1] - 0.5) < 0.2  # b* = 0.5
    assert stop(harness, nodes) == [0, 0]


def test_node_key_is_kept_across_restarts(built, superlink_harness, tmp_path):
    key = tmp_path / "node.pem"
    harness = superlink_harness()
    harness.start_superlink()
    first = start_c_nodes(harness, [0], extra=["--node-key", str(key)])
    run(harness, tmp_path, "first", strategy="message", **{"num-rounds": 1, "min-nodes": 1})
    assert stop(harness, first) == [0]
    written = key.read_bytes()
    assert written.startswith(b"-----BEGIN EC PRIVATE KEY-----")
    second = start_c_nodes(harness, [0], extra=["--node-key", str(key)])
    run(harness, tmp_path, "second", strategy="message", **{"num-rounds": 1, "min-nodes": 1})
    assert stop(harness, second) == [0] and key.read_bytes() == written


def test_under_address_and_undefined_behaviour_sanitizers(sanitized, superlink_harness, tmp_path):
    incoming = instruction({"a": np.zeros(2_000_000, np.float32), "b": np.arange(5, dtype=np.float64)})
    link = ScriptedSuperLink(sanitized / "test_core", ["--feed", "4093", "--deltas", "1,2"], incoming).run()
    assert link.error == "" and link.push_request is not None
    harness = superlink_harness()
    harness.start_superlink()
    env = {"ASAN_OPTIONS": "detect_leaks=1:abort_on_error=0:exitcode=99",
           "UBSAN_OPTIONS": "halt_on_error=1:exitcode=98"}
    nodes = start_c_nodes(harness, [0, 1], node=sanitized / "fedproto-node-c", env=env)
    _, arrays = run(harness, tmp_path, "asan", strategy="legacy", **{"num-rounds": 1})
    assert_model(arrays, expected_fedavg([[0, 1]]))
    assert stop(harness, nodes) == [0, 0], harness.logs()
    for node in nodes:
        assert "ERROR: AddressSanitizer" not in node.log() and "runtime error" not in node.log()
