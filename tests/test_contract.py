"""Our transport.proto is flwr 1.42's contract: field by field, byte for byte, side by side.

"Ours" is compiled fresh from proto/ by protoc for each run; "flwr's" is the serialized
FileDescriptorProto embedded in flwr's shipped transport_pb2.py. Both are read without
importing either module, because once one of them is imported the other shares its
descriptor-pool entry and a comparison in this process would be of a thing with itself.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[1]
PROTO_ROOT = ROOT / "proto"
PROTO_FILE = "flwr/proto/transport.proto"


def _flwr_transport_pb2_path() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("flwr.proto")
    assert spec is not None and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "transport_pb2.py"


def embedded_descriptor(module_path: Path) -> bytes:
    """The bytes a generated *_pb2.py passes to DescriptorPool.AddSerializedFile."""
    for node in ast.walk(ast.parse(module_path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "AddSerializedFile":
            return node.args[0].value
    raise AssertionError(f"{module_path}: no AddSerializedFile call")


def compile_descriptor(tmp_dir: Path) -> descriptor_pb2.FileDescriptorProto:
    """Our .proto through protoc, as the FileDescriptorProto the Python generator embeds."""
    out = tmp_dir / "transport.desc"
    status = protoc.main(
        ["protoc", f"--proto_path={PROTO_ROOT}", f"--descriptor_set_out={out}", PROTO_FILE]
    )
    assert status == 0, f"protoc failed with status {status}"
    descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    assert [f.name for f in descriptor_set.file] == [PROTO_FILE]
    file = descriptor_set.file[0]
    _strip_json_names(file.message_type)  # the Python generator leaves json_name out
    return file


def _strip_json_names(messages) -> None:
    for message in messages:
        for field in message.field:
            field.ClearField("json_name")
        _strip_json_names(message.nested_type)


FLWR_BYTES = embedded_descriptor(_flwr_transport_pb2_path())
FLWR = descriptor_pb2.FileDescriptorProto.FromString(FLWR_BYTES)


@pytest.fixture(scope="module")
def ours(tmp_path_factory) -> descriptor_pb2.FileDescriptorProto:
    return compile_descriptor(tmp_path_factory.mktemp("protoc"))


def all_messages(file: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.DescriptorProto]:
    """Every message, nested ones included, by full name (e.g. flwr.proto.ServerMessage.FitIns)."""
    found = {}

    def walk(prefix: str, messages) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            found[name] = message
            walk(name, message.nested_type)

    walk(file.package, file.message_type)
    return found


def all_enums(file: descriptor_pb2.FileDescriptorProto) -> dict[str, descriptor_pb2.EnumDescriptorProto]:
    enums = {f"{file.package}.{e.name}": e for e in file.enum_type}
    for name, message in all_messages(file).items():
        enums.update({f"{name}.{e.name}": e for e in message.enum_type})
    return enums


def field_row(field: descriptor_pb2.FieldDescriptorProto) -> tuple:
    oneof = field.oneof_index if field.HasField("oneof_index") else None
    return (field.name, field.number, field.type, field.label, field.type_name, oneof,
            field.proto3_optional)


FLWR_MESSAGES = all_messages(FLWR)
FLWR_ENUMS = all_enums(FLWR)


def test_file_header_is_the_same(ours):
    assert (ours.name, ours.package, ours.syntax, list(ours.dependency)) == (
        FLWR.name, FLWR.package, FLWR.syntax, list(FLWR.dependency)
    ) == (PROTO_FILE, "flwr.proto", "proto3", [])
    assert ours.options == FLWR.options


def test_same_messages_in_the_same_order(ours):
    assert list(all_messages(ours)) == list(FLWR_MESSAGES)
    # The ones the protocol cannot do without, so an empty flwr descriptor cannot pass.
    assert {"flwr.proto.ServerMessage.FitIns", "flwr.proto.ClientMessage.EvaluateRes",
            "flwr.proto.Scalar", "flwr.proto.Parameters"} <= set(FLWR_MESSAGES)


@pytest.mark.parametrize("name", list(FLWR_MESSAGES))
def test_message_matches_field_by_field(ours, name):
    mine, theirs = all_messages(ours)[name], FLWR_MESSAGES[name]
    assert [field_row(f) for f in mine.field] == [field_row(f) for f in theirs.field]
    assert [o.name for o in mine.oneof_decl] == [o.name for o in theirs.oneof_decl]
    assert [n.name for n in mine.nested_type] == [n.name for n in theirs.nested_type]
    assert mine.options.map_entry == theirs.options.map_entry
    assert mine == theirs  # anything the rows above do not cover (reserved ranges, options...)


@pytest.mark.parametrize("name", list(FLWR_ENUMS))
def test_enum_matches_value_by_value(ours, name):
    values = [(v.name, v.number) for v in all_enums(ours)[name].value]
    assert values == [(v.name, v.number) for v in FLWR_ENUMS[name].value]


def test_enums_are_code_and_reason(ours):
    assert list(all_enums(ours)) == list(FLWR_ENUMS) == ["flwr.proto.Code", "flwr.proto.Reason"]


def test_service_join_is_a_bidirectional_stream(ours):
    def methods(file):
        return [
            (s.name, m.name, m.input_type, m.output_type, m.client_streaming, m.server_streaming)
            for s in file.service
            for m in s.method
        ]

    assert methods(ours) == methods(FLWR) == [
        ("FlowerService", "Join", ".flwr.proto.ClientMessage", ".flwr.proto.ServerMessage", True, True)
    ]


def test_serialized_descriptors_are_byte_identical(ours):
    committed = embedded_descriptor(ROOT / "fedproto" / "transport_pb2.py")
    assert committed == FLWR_BYTES
    assert ours.SerializeToString() == FLWR_BYTES


IMPORT_BOTH = """
import importlib, sys
first, second = (importlib.import_module(name) for name in sys.argv[1:3])
assert first.DESCRIPTOR.serialized_pb == second.DESCRIPTOR.serialized_pb
# A message built with one module's classes parses with the other's, field for field.
sent = first.ServerMessage(fit_ins=first.ServerMessage.FitIns(
    parameters=first.Parameters(tensors=[b"t"], tensor_type="numpy.ndarray"),
    config={"lr": first.Scalar(double=0.5)}))
received = second.ServerMessage.FromString(sent.SerializeToString())
assert received.fit_ins.config["lr"].double == 0.5
assert received.fit_ins.parameters.tensors == [b"t"]
print("both imported:", sys.argv[1], "then", sys.argv[2])
"""


@pytest.mark.parametrize(
    "first, second",
    [("fedproto.transport_pb2", "flwr.proto.transport_pb2"),
     ("flwr.proto.transport_pb2", "fedproto.transport_pb2")],
)
def test_both_modules_import_in_one_process(first, second):
    run = subprocess.run([sys.executable, "-c", IMPORT_BOTH, first, second], cwd=ROOT,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout == f"both imported: {first} then {second}\n"


def test_committed_generated_code_is_current(tmp_path):
    run = subprocess.run([sys.executable, str(PROTO_ROOT / "compile.py"), str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    for name in ("transport_pb2.py", "transport_pb2.pyi"):
        generated = (tmp_path / name).read_bytes()
        assert generated == (ROOT / "fedproto" / name).read_bytes(), (
            f"fedproto/{name} is stale: run `make proto` and commit the result"
        )
