"""Compile proto/flwr/proto/transport.proto into fedproto/ with grpcio-tools.

Usage: python proto/compile.py [DEST_DIR]   (default: fedproto/)

protoc writes its output under the proto's own path (flwr/proto/...), which must stay
"flwr/proto/transport.proto" so the descriptor is byte-identical to flwr's. We compile into
a scratch directory and copy the two generated files (module + type stub) to DEST_DIR
unchanged. No gRPC service stub is generated: every fedproto endpoint exchanges raw bytes
and decodes them itself (see README, "The contract and the codec").
"""

import shutil
import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_FILE = "flwr/proto/transport.proto"
GENERATED = ("transport_pb2.py", "transport_pb2.pyi")


def compile_proto(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        status = protoc.main(
            [
                "grpc_tools.protoc",
                f"--proto_path={PROTO_ROOT}",
                f"--python_out={scratch}",
                f"--pyi_out={scratch}",
                PROTO_FILE,
            ]
        )
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        dest.mkdir(parents=True, exist_ok=True)
        for name in GENERATED:
            shutil.copyfile(Path(scratch, "flwr/proto", name), dest / name)


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent / "fedproto"
    compile_proto(target)
    print(f"compiled {PROTO_FILE} -> {target}/{{{','.join(GENERATED)}}}")
