"""Our Fleet API .proto files are flwr 1.42's contract, byte for byte.

The Fleet API's messages live in fleet.proto and its import closure (heartbeat, node, run, fab,
message, error, recorddict and the legacy transport.proto). For each file, "ours" is compiled
fresh from proto/ by protoc and "flwr's" is the serialized FileDescriptorProto embedded in
flwr's shipped <name>_pb2.py, both read without importing either module (once one is imported
the other shares its descriptor-pool entry, and a comparison in this process would be of a
thing with itself). tests/test_contract.py does the same, field by field, for transport.proto.
"""

from __future__ import annotations

import ast
import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
FLEET_NAMES = ["fleet", "heartbeat", "node", "run", "fab", "message", "error", "recorddict"]
FLWR_PROTO_DIR = Path(next(iter(importlib.util.find_spec("flwr.proto").submodule_search_locations)))


def embedded_descriptor(module_path: Path) -> bytes:
    """The bytes a generated *_pb2.py passes to DescriptorPool.AddSerializedFile."""
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return node.args[0].value
    raise AssertionError(f"{module_path}: no AddSerializedFile call")


def _strip_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> dict[str, descriptor_pb2.FileDescriptorProto]:
    """fleet.proto and everything it imports, through protoc, as the Python generator embeds them."""
    out = tmp_path_factory.mktemp("protoc") / "fleet.desc"
    status = protoc.main(["protoc", f"--proto_path={PROTO_ROOT}", "--include_imports",
                          f"--descriptor_set_out={out}", "flwr/proto/fleet.proto"])
    assert status == 0, f"protoc failed with status {status}"
    files = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        _strip_json_names(file.message_type)  # the Python generator leaves json_name out
        files[file.name] = file
    return files


def test_import_closure_is_the_one_flwr_ships(ours):
    def closure(name: str, seen: dict[str, list[str]]) -> dict[str, list[str]]:
        file = descriptor_pb2.FileDescriptorProto.FromString(
            embedded_descriptor(FLWR_PROTO_DIR / f"{Path(name).stem}_pb2.py"))
        seen[name] = list(file.dependency)
        for dependency in file.dependency:
            if dependency not in seen:
                closure(dependency, seen)
        return seen

    flwr_closure = closure("flwr/proto/fleet.proto", {})
    assert {name: list(file.dependency) for name, file in ours.items()} == flwr_closure
    assert set(flwr_closure) == {f"flwr/proto/{n}.proto" for n in FLEET_NAMES + ["transport"]}


@pytest.mark.parametrize("name", FLEET_NAMES)
def test_serialized_descriptor_is_byte_identical(ours, name):
    flwr_bytes = embedded_descriptor(FLWR_PROTO_DIR / f"{name}_pb2.py")
    assert ours[f"flwr/proto/{name}.proto"].SerializeToString() == flwr_bytes
    assert embedded_descriptor(ROOT / "fedproto" / f"{name}_pb2.py") == flwr_bytes


def test_fleet_service_has_the_rpcs_a_node_calls(ours):
    fleet = ours["flwr/proto/fleet.proto"]
    methods = {m.name: (m.input_type, m.output_type, m.client_streaming, m.server_streaming)
               for m in fleet.service[0].method}
    assert fleet.service[0].name == "Fleet"
    assert methods["PullMessages"] == (".flwr.proto.PullMessagesRequest",
                                       ".flwr.proto.PullMessagesResponse", False, False)
    assert methods["PushObject"] == (".flwr.proto.PushObjectRequest",
                                     ".flwr.proto.PushObjectResponse", False, False)
    assert {"RegisterNode", "ActivateNode", "SendNodeHeartbeat", "PushMessages", "PullObject",
            "ConfirmMessageReceived", "DeactivateNode", "UnregisterNode"} <= set(methods)


IMPORT_BOTH = """
import importlib, sys
names = ["fleet", "heartbeat", "node", "run", "fab", "message", "error", "recorddict", "transport"]
first, second = sys.argv[1:3]
a = {n: importlib.import_module(f"{first}.{n}_pb2") for n in names}
b = {n: importlib.import_module(f"{second}.{n}_pb2") for n in names}
for n in names:
    assert a[n].DESCRIPTOR.serialized_pb == b[n].DESCRIPTOR.serialized_pb, n
# A request built with one side's classes parses with the other's, field for field.
sent = a["fleet"].PushMessagesRequest(
    node=a["node"].Node(node_id=7),
    messages_list=[a["message"].Message(
        metadata=a["message"].Metadata(run_id=3, message_id="m", message_type="train", ttl=60.0),
        error=a["error"].Error(code=2, reason="boom"))],
    message_object_trees=[a["message"].ObjectTree(object_id="m")])
received = b["fleet"].PushMessagesRequest.FromString(sent.SerializeToString())
assert received.node.node_id == 7
assert received.messages_list[0].metadata.message_type == "train"
assert received.messages_list[0].error.reason == "boom"
assert received.message_object_trees[0].object_id == "m"
print("both imported:", first, "then", second)
"""


@pytest.mark.parametrize("first, second", [("fedproto", "flwr.proto"), ("flwr.proto", "fedproto")])
def test_both_sides_import_in_one_process(first, second):
    run = subprocess.run([sys.executable, "-c", IMPORT_BOTH, first, second], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"both imported: {first} then {second}\n"


def test_generated_modules_do_not_import_flwr():
    code = ("import sys, fedproto.fleet_pb2\n"
            "print(sorted(m for m in sys.modules if m == 'flwr' or m.startswith('flwr.')))")
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == "[]\n"


def test_committed_generated_code_is_current(tmp_path):
    run = subprocess.run([sys.executable, str(PROTO_ROOT / "compile.py"), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for name in FLEET_NAMES + ["transport"]:
        for suffix in (".py", ".pyi"):
            generated = (tmp_path / f"{name}_pb2{suffix}").read_bytes()
            assert generated == (ROOT / "fedproto" / f"{name}_pb2{suffix}").read_bytes(), (
                f"fedproto/{name}_pb2{suffix} is stale: run `make proto` and commit the result"
            )
