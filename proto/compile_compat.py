"""Compile proto/fedproto_compat/*.proto (messages only older Flower releases have) into fedproto/.

Usage: python proto/compile_compat.py [DEST_DIR]   (default: fedproto/)

These files import nothing, so the generated modules are copied as protoc writes them.
"""

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

PROTO_ROOT = Path(__file__).resolve().parent
PROTO_NAMES = ("fleet_1_20",)


def compile_compat(dest: Path) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        files = [f"fedproto_compat/{name}.proto" for name in PROTO_NAMES]
        status = protoc.main(["grpc_tools.protoc", f"--proto_path={PROTO_ROOT}", f"--python_out={scratch}",
                              f"--pyi_out={scratch}", *files])
        if status != 0:
            raise SystemExit(f"protoc failed with status {status}")
        for name in PROTO_NAMES:
            for suffix in (".py", ".pyi"):
                generated = Path(scratch, "fedproto_compat", f"{name}_pb2{suffix}").read_text()
                Path(dest, f"{name}_pb2{suffix}").write_text(generated)


if __name__ == "__main__":
    compile_compat(Path(sys.argv[1]) if len(sys.argv) > 1 else PROTO_ROOT.parent / "fedproto")
