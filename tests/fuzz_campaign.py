"""``make fuzz``: a time-boxed, coverage-guided fuzzing campaign (atheris / libFuzzer) of every
decoder of peer bytes (issue 9). Not collected by pytest; the quick properties run in
``tests/test_codec_properties.py``.

Targets, each seeded with the golden vectors (``kit/vectors``):

- ``npy``: ``bytes_to_ndarray`` - any bytes decode to a plain array or raise CodecError;
- ``session``: ``ClientSession.receive_bytes`` (the client role) - an answer or a FedprotoError;
- ``reply``: the server role's reply decoders (``fedproto.server_role``) - a result or a
  FedprotoError.

Any other exception is a crash: libFuzzer stops and writes the exact input to
``results/fuzz-crashes/<target>-crash-<sha1>``; this script then prints it as a Python bytes literal,
ready to become a case in ``tests/test_fuzz_regressions.py``.

    .venv/bin/python tests/fuzz_campaign.py --seconds 300            # all targets, split evenly
    .venv/bin/python tests/fuzz_campaign.py --seconds 60 --target npy
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
VECTORS = ROOT / "kit" / "vectors"
CRASH_DIR = ROOT / "results" / "fuzz-crashes"  # /results/ is git-ignored
TARGETS = ("npy", "session", "reply")


def seeds(target: str) -> list[bytes]:
    """Inputs the target accepts, so that mutations start deep inside it."""
    from fedproto.transport_pb2 import ClientMessage, ServerMessage
    servers = [p.read_bytes() for p in sorted(VECTORS.glob("server_*.bin"))]
    clients = [p.read_bytes() for p in sorted(VECTORS.glob("client_*.bin"))]
    if target == "npy":
        return [t for data in servers for t in ServerMessage.FromString(data).fit_ins.parameters.tensors] + [
            t for data in clients for t in ClientMessage.FromString(data).fit_res.parameters.tensors]
    return servers if target == "session" else clients


def one_input(target: str):
    """The function libFuzzer calls with each input."""
    import numpy as np

    from fedproto import server_role
    from fedproto.codec import bytes_to_ndarray
    from fedproto.dispatch import ClientSession
    from fedproto.errors import FedprotoError
    from test_codec_properties import EchoHandler  # the suite's handler: the fuzzing is of the wire

    model = [np.zeros((2, 3), np.float32)]
    decoders = (lambda r: server_role.decode_fit_res(r, model), server_role.decode_evaluate_res,
                server_role.decode_get_parameters_res, server_role.decode_get_properties_res,
                server_role.decode_disconnect_res)

    def npy(data: bytes) -> None:
        try:
            bytes_to_ndarray(data)
        except FedprotoError:
            pass

    def session(data: bytes) -> None:
        try:
            ClientSession(EchoHandler()).receive_bytes(data)
        except FedprotoError:
            pass

    def reply(data: bytes) -> None:
        try:
            message = server_role.parse_reply(data)
        except FedprotoError:
            return
        for decode in decoders:
            try:
                decode(message)
            except FedprotoError:
                pass

    return {"npy": npy, "session": session, "reply": reply}[target]


def run_target(target: str, libfuzzer_args: list[str]) -> None:
    """In a child process: atheris never returns, libFuzzer exits at -max_total_time or a crash."""
    import atheris
    with atheris.instrument_imports(include=["fedproto"]):
        test_one_input = one_input(target)
    atheris.Setup([sys.argv[0], *libfuzzer_args], test_one_input)
    atheris.Fuzz()


def campaign(seconds: int, targets: list[str]) -> int:
    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    crashes = 0
    share = max(seconds // len(targets), 1)
    for target in targets:
        with tempfile.TemporaryDirectory(prefix=f"fuzz-{target}-") as corpus:
            for i, data in enumerate(seeds(target)):
                Path(corpus, f"seed{i}").write_bytes(data)
            before = set(CRASH_DIR.iterdir())
            print(f"fuzzing {target} for {share} s", flush=True)
            subprocess.run([sys.executable, __file__, "--run-target", target, "--",
                            f"-max_total_time={share}", f"-artifact_prefix={CRASH_DIR}/{target}-",
                            "-rss_limit_mb=4096", "-print_final_stats=1", corpus], cwd=ROOT)
            for path in sorted(set(CRASH_DIR.iterdir()) - before):
                crashes += 1
                print(f"CRASH {path}: {path.read_bytes()!r}")
    print(f"{crashes} crash(es) found" + (f"; inputs in {CRASH_DIR}" if crashes else ""))
    return 1 if crashes else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=300, help="total time budget (default 300)")
    parser.add_argument("--target", choices=TARGETS, action="append", help="default: all")
    parser.add_argument("--run-target", choices=TARGETS, help=argparse.SUPPRESS)
    arguments, libfuzzer_args = parser.parse_known_args()
    if arguments.run_target:
        run_target(arguments.run_target, [a for a in libfuzzer_args if a != "--"])
        return 0
    if arguments.seconds < 1:
        parser.error("--seconds must be at least 1")
    return campaign(arguments.seconds, arguments.target or list(TARGETS))


if __name__ == "__main__":
    sys.exit(main())
