"""Compile the .proto files under proto/flwr/proto/ into fedproto/ with grpcio-tools.

Usage: python proto/compile.py [DEST_DIR]   (default: fedproto/)

protoc writes its output under each proto's own path (flwr/proto/...), and that path must stay
"flwr/proto/<name>.proto" so the descriptors are byte-identical to flwr's. We compile into a
scratch directory and copy the generated files (module + type stub) to DEST_DIR. No gRPC
service stub is generated: every fedproto endpoint exchanges raw bytes and decodes them
itself (see README, "The contract and the codec").

One edit is made to the generated text: protoc names a dependency by its proto package
(``from flwr.proto import node_pb2 as ...``), which would import flwr. Each such line is
rewritten to import our own compiled module (``from fedproto import node_pb2 as ...``); every
rewritten import must name a file compiled here, so nothing outside the list can slip in. The
serialized descriptors are untouched (tests/test_contract.py, tests/test_fleet_contract.py).
"""

import re
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
# transport.proto is the legacy Join contract; the rest is the Fleet API's import closure
# (fleet.proto and everything it imports, recursively), in dependency order.
PROTO_NAMES = ("transport", "node", "error", "recorddict", "heartbeat", "fab", "run", "message",
               "fleet")
PROTO_FILES = tuple(f"flwr/proto/{name}.proto" for name in PROTO_NAMES)
GENERATED = tuple(f"{name}_pb2{suffix}" for name in PROTO_NAMES for suffix in (".py", ".pyi"))

# `from flwr.proto import node_pb2 as flwr_dot_proto_dot_node__pb2` (module) or `... as _node_pb2` (stub).
_FLWR_IMPORT = re.compile(r"^from flwr\.proto import (\w+)_pb2 as (\w+)$", re.MULTILINE)


def _import_ours(match: re.Match) -> str:
    name, alias = match.groups()
    if name not in PROTO_NAMES:
        raise SystemExit(f"generated code imports flwr.proto.{name}_pb2, which is not compiled here")
    return f"from fedproto import {name}_pb2 as {alias}"


def compile_protos(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                *PROTO_FILES,
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        dest.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            text = Path(scratch, "flwr/proto", name).read_text()
            text = _FLWR_IMPORT.sub(_import_ours, text)
            if "flwr.proto import" in text:
                raise SystemExit(f"{name}: an import of flwr.proto was left in the generated code")
            (dest / name).write_text(text)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent / "fedproto"
    compile_protos(target)
    print(f"compiled {len(PROTO_FILES)} protos -> {target}/{{{','.join(GENERATED)}}}")
