"""fedproto-client: run a NumPyClient-style handler against any Flower (grpc-bidi) server."""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from client.app import Retry, run_client
from fedproto.wire import MAX_MESSAGE_LENGTH

EPILOG = """\
The handler is any object with flwr NumPyClient method names (no flwr import needed):
  get_parameters(config)        -> list[np.ndarray]
  fit(parameters, config)       -> (list[np.ndarray], num_examples, metrics dict)
  evaluate(parameters, config)  -> (loss, num_examples, metrics dict)
  get_properties(config)        -> dict            (optional, like every method)
A missing method is answered with its *_NOT_IMPLEMENTED status; an exception inside one is
logged and answered with a non-OK status, so the server counts a failure and we stay joined.

examples:
  # two clients next to flwr's own server (python examples/flwr_server.py --address 127.0.0.1:8080 ...)
  DEMO_PARTITION=0 fedproto-client --server 127.0.0.1:8080 --app client.demo:make_client
  DEMO_PARTITION=1 python -m client --server 127.0.0.1:8080 --app client.demo:make_client
  # TLS: trust the CA that signed the server's certificate
  fedproto-client --server example.org:8443 --root-certificates ca.pem --app my_app:MyClient

exit codes:
  0  the server ended the session (ReconnectIns with seconds = 0)
  1  the server sent something that is not a valid instruction
  2  usage error (bad option, --app cannot be loaded, PEM file unreadable)
  3  retries used up without a working stream (server down, wrong port, message too big)
  4  TLS handshake failed (wrong CA, name not in the server's certificate, not a TLS server)
"""


HANDLER_METHODS = ("get_properties", "get_parameters", "fit", "evaluate")


def load_handler(spec: str) -> Any:
    """'module:attr' -> handler. A class or function is called with no arguments."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ValueError(f"--app must look like MODULE:ATTR, got {spec!r}")
    target = getattr(importlib.import_module(module_name), attr)
    if inspect.isclass(target) or inspect.isfunction(target):
        target = target()
    if not any(callable(getattr(target, name, None)) for name in HANDLER_METHODS):
        raise ValueError(f"{attr} is not a handler ({type(target).__name__} has none of {', '.join(HANDLER_METHODS)})")
    return target


def server_address(text: str) -> str:
    """argparse type for --server: HOST:PORT or [IPv6]:PORT, port 1..65535."""
    if ":" not in text or text.endswith("]"):
        raise argparse.ArgumentTypeError(f"{text!r} has no port; expected HOST:PORT, e.g. 127.0.0.1:8080")
    host, _, port = text.rpartition(":")
    if not host:
        raise argparse.ArgumentTypeError(f"{text!r} has no host; expected HOST:PORT, e.g. 127.0.0.1:8080")
    if ":" in host and not (host.startswith("[") and host.endswith("]")):
        raise argparse.ArgumentTypeError(f"{text!r}: an IPv6 host goes in brackets, e.g. [::1]:8080")
    if not (port.isascii() and port.isdigit()) or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r}: the port must be a number from 1 to 65535, not {port!r}")
    return text


def positive_int(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}")
    return int(text)


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-client",
        description="Join a Flower server over FlowerService.Join and serve a NumPy handler.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--server", required=True, type=server_address, metavar="HOST:PORT",
                        help="server address, e.g. 127.0.0.1:8080 or [::1]:8080")
    parser.add_argument("--app", required=True, metavar="MODULE:ATTR",
                        help="handler instance, class or zero-argument factory, e.g. client.demo:make_client")
    parser.add_argument("--root-certificates", type=Path, metavar="PEM",
                        help="CA bundle that signed the server's certificate; enables TLS")
    parser.add_argument("--max-message-length", type=positive_int, default=MAX_MESSAGE_LENGTH, metavar="BYTES",
                        help="largest message sent or accepted (default: %(default)s = 512 MiB, as flwr documents)")
    parser.add_argument("--retries", type=positive_int, default=Retry.attempts, metavar="N",
                        help="joins in a row that fail before the server's first message, then exit 3 (default: %(default)s)")
    parser.add_argument("--retry-delay", type=non_negative_float, default=Retry.first_delay, metavar="SECONDS",
                        help="first backoff delay, doubled each failure up to 30 s (default: %(default)s)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        root_certificates = args.root_certificates.read_bytes() if args.root_certificates else None
    except OSError as error:
        print(f"fedproto-client: cannot read --root-certificates: {error}", file=sys.stderr)
        return 2
    try:
        handler = load_handler(args.app)
    except Exception as error:  # the user's module or factory: any failure is a usage error
        print(f"fedproto-client: cannot load --app {args.app}: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    try:
        return run_client(
            args.server,
            handler,
            root_certificates=root_certificates,
            max_message_length=args.max_message_length,
            retry=Retry(attempts=args.retries, first_delay=args.retry_delay),
        )
    except KeyboardInterrupt:
        return 130
