"""fedproto-client: serve a NumPyClient-style handler to a Flower server.

``--server`` joins a grpc-bidi server (``FlowerService.Join``: flwr's ``start_server``, ours);
``--superlink`` joins the Fleet API of ``flower-superlink`` as a node (``client/fleet.py``).
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import logging
import sys
from pathlib import Path
from typing import Any

from fedproto.client.app import (
    IDLE_TIMEOUT_SECONDS,
    KEEPALIVE_SECONDS,
    MAX_RECONNECT_WAIT_SECONDS,
    Retry,
    return_freed_memory_to_os,
    run_client,
)
from fedproto.client.fleet import TRANSPORTS, CallLimits, run_node
from fedproto.node import Generation, generation_for_release
from fedproto.wire import MAX_MESSAGE_LENGTH

EPILOG = """\
The handler is any object with flwr NumPyClient method names (no flwr import needed):
  get_parameters(config)        -> list[np.ndarray]
  fit(parameters, config)       -> (list[np.ndarray], num_examples, metrics dict)
  evaluate(parameters, config)  -> (loss, num_examples, metrics dict)
  get_properties(config)        -> dict            (optional, like every method)
A missing method is answered with its *_NOT_IMPLEMENTED status; an exception inside one is
logged and answered with a non-OK status, so the server counts a failure and we stay joined.
On a SuperLink both become the reply's Message.error (code 2, like flwr's ClientApp).

The same handler serves both. On a SuperLink it answers the ServerApp's "train" / "evaluate"
messages, in the message-API layout ({"arrays", "config"} -> fit; the reply carries the metrics
plus "num-examples", evaluate's loss under "eval_loss") and in the layout of legacy strategies
run in a ServerApp (fitins.* / evaluateins.*): see docs/fleet-node.md.

examples:
  # a node of flower-superlink (started with --insecure); stop it with Ctrl-C or SIGTERM
  fedproto-client --superlink 127.0.0.1:8000 --app fedproto.client.demo:make_client
  # gRPC-rere Fleet API (SuperLink run with FLWR_INTERNAL_GRPC_FLEET_API=1, --fleet-api-address)
  fedproto-client --superlink 127.0.0.1:9092 --fleet-transport grpc-rere --app my_app:MyClient
  # a flwr 1.20-1.22 SuperLink (gRPC-rere on --fleet-api-address, default 9092; joins with CreateNode)
  fedproto-client --superlink 127.0.0.1:9092 --fleet-transport grpc-rere --superlink-release 1.22 --app my_app:MyClient
  # two clients next to flwr's own server (python examples/flwr_server.py --address 127.0.0.1:8080 ...)
  DEMO_PARTITION=0 fedproto-client --server 127.0.0.1:8080 --app fedproto.client.demo:make_client
  DEMO_PARTITION=1 python -m fedproto.client --server 127.0.0.1:8080 --app fedproto.client.demo:make_client
  # TLS: trust the CA that signed the server's certificate
  fedproto-client --server example.org:8443 --root-certificates ca.pem --app my_app:MyClient

exit codes:
  0  --server: the server ended the session (ReconnectIns with seconds = 0)
     --superlink: stopped by SIGINT/SIGTERM (after DeactivateNode and UnregisterNode)
  1  the server sent something that is not a valid instruction / breaks the Fleet protocol
  2  usage error (bad option, --app cannot be loaded, PEM file unreadable, the [fleet] extra
     missing: pip install 'fedproto[fleet]')
  3  retries used up without a working stream or answer (server down, wrong port, message too big,
     or a server that accepts the stream and never speaks: each such stream costs --idle-timeout)
  4  TLS handshake failed (wrong CA, name not in the server's certificate, not a TLS server)
  5  --superlink: the SuperLink refused to register or activate this node (key already in use,
     SuperNode authentication enabled and this key not registered with `flwr supernode register`)
  130  --server: interrupted (Ctrl-C)
Every exit says why in one last line: an INFO or ERROR log line, or for 2 and 130 a line on
stderr (argparse's usage errors add its usage line above it).

bounded waits (--server):
  ReconnectIns(seconds=S) pauses min(S, --max-reconnect-wait) before joining again. A stream on
  which the server sends nothing for --idle-timeout seconds (the wait for its next instruction,
  not our handler's time) is left and joined again with backoff. gRPC keepalive pings every
  --keepalive seconds drop a connection whose peer is gone (no PING ACK within 20 s); below
  300 s a gRPC server with default settings (flwr's start_server, ours) may answer GOAWAY
  "too_many_pings" while it has nothing to send us.
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


def heartbeat_seconds(text: str) -> float:
    """argparse type for --heartbeat-interval: the SuperLink accepts 10 to 1800 s."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 10 <= value <= 1800:
        raise argparse.ArgumentTypeError(f"expected seconds from 10 to 1800 (what the SuperLink accepts), got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds > 0, got {text!r}")
    return value


def bytes_per_second(text: str) -> float:
    """argparse type for --min-transfer-rate: a rate > 0."""
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected bytes per second > 0, got {text!r}")
    return value


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


def superlink_generation(text: str) -> Generation:
    try:
        return generation_for_release(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedproto-client",
        description="Serve a NumPy handler to a Flower server: join a grpc-bidi server (--server) "
                    "or become a node of flower-superlink's Fleet API (--superlink).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument("--server", type=server_address, metavar="HOST:PORT",
                        help="grpc-bidi server (FlowerService.Join), e.g. 127.0.0.1:8080 or [::1]:8080")
    target.add_argument("--superlink", type=server_address, metavar="HOST:PORT",
                        help="flower-superlink's Fleet API, e.g. 127.0.0.1:8000, its default "
                             "(needs pip install 'fedproto[fleet]')")
    parser.add_argument("--app", required=True, metavar="MODULE:ATTR",
                        help="handler instance, class or zero-argument factory, e.g. fedproto.client.demo:make_client")
    parser.add_argument("--root-certificates", type=Path, metavar="PEM",
                        help="CA bundle that signed the server's certificate; enables TLS (https / secure channel)")
    parser.add_argument("--max-message-length", type=positive_int, default=MAX_MESSAGE_LENGTH, metavar="BYTES",
                        help="largest message sent or accepted (default: %(default)s = 512 MiB, as flwr documents)")
    parser.add_argument("--retries", type=positive_int, default=Retry.attempts, metavar="N",
                        help="failures in a row (no stream / no answer) before exiting with 3 (default: %(default)s)")
    parser.add_argument("--retry-delay", type=non_negative_float, default=Retry.first_delay, metavar="SECONDS",
                        help="first backoff delay, doubled each failure up to 30 s (default: %(default)s)")
    bidi = parser.add_argument_group("grpc-bidi (--server only)")
    bidi.add_argument("--max-reconnect-wait", type=non_negative_float, default=MAX_RECONNECT_WAIT_SECONDS,
                      metavar="SECONDS", help="longest pause a ReconnectIns may impose (default: %(default)s)")
    bidi.add_argument("--idle-timeout", type=non_negative_float, default=IDLE_TIMEOUT_SECONDS, metavar="SECONDS",
                      help="leave and rejoin a stream on which the server sent nothing this long; "
                           "0 waits forever, as flwr's client does (default: %(default)s)")
    bidi.add_argument("--keepalive", type=positive_seconds, default=KEEPALIVE_SECONDS, metavar="SECONDS",
                      help="gRPC keepalive ping interval (default: %(default)s; see 'bounded waits')")
    fleet = parser.add_argument_group("Fleet API (--superlink only)")
    fleet.add_argument("--fleet-transport", choices=TRANSPORTS, default="http",
                       help="http: POST /v1/fleet/... on the SuperLink's port (default); grpc-rere: unary gRPC, "
                            "for a SuperLink started with FLWR_INTERNAL_GRPC_FLEET_API=1")
    fleet.add_argument("--superlink-release", type=superlink_generation, default=Generation.REGISTER_ACTIVATE,
                       metavar="X.Y", help="the SuperLink's flwr release, if older than 1.23: 1.20-1.22 join nodes "
                                           "with CreateNode/DeleteNode (gRPC-rere only). Default: 1.23 or later")
    fleet.add_argument("--node-key", type=Path, metavar="PEM",
                       help="unencrypted EC private key (PKCS#8 or SEC1 PEM) that signs every request; "
                            "default: a fresh SECP384R1 key per run. Make one with: openssl ecparam "
                            "-name secp384r1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out node.pem")
    fleet.add_argument("--heartbeat-interval", type=heartbeat_seconds, default=30.0, metavar="SECONDS",
                       help="interval announced to the SuperLink; heartbeats go every (interval - 5) x 0.8 s, "
                            "the node counts as offline 2 x interval after the last one (default: %(default)s)")
    fleet.add_argument("--poll-interval", type=positive_seconds, default=3.0, metavar="SECONDS",
                       help="how often an idle node asks for messages (default: %(default)s, like flower-supernode)")
    fleet.add_argument("--call-timeout", type=positive_seconds, default=CallLimits.floor, metavar="SECONDS",
                       help="each request may take this long plus the time its bytes take at --min-transfer-rate; "
                            "past that deadline it counts as unanswered and is retried (default: %(default)s)")
    fleet.add_argument("--min-transfer-rate", type=bytes_per_second, default=CallLimits.min_rate,
                       metavar="BYTES_PER_SECOND",
                       help="slowest link the deadline allows for: every byte sent or received adds "
                            "1/rate s to it (default: %(default)s, 64 kbit/s)")
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
    if args.superlink is None and (args.fleet_transport != "http" or args.node_key is not None
                                   or args.superlink_release is not Generation.REGISTER_ACTIVATE):
        print("fedproto-client: --fleet-transport, --superlink-release and --node-key need --superlink",
              file=sys.stderr)
        return 2
    if args.superlink_release is Generation.CREATE_DELETE and args.fleet_transport != "grpc-rere":
        print("fedproto-client: flwr 1.20-1.22 SuperLinks serve the Fleet API over gRPC-rere "
              "(--fleet-api-address, default 9092): add --fleet-transport grpc-rere", file=sys.stderr)
        return 2
    try:
        node_key = args.node_key.read_bytes() if args.node_key else None
    except OSError as error:
        print(f"fedproto-client: cannot read --node-key: {error}", file=sys.stderr)
        return 2
    retry = Retry(attempts=args.retries, first_delay=args.retry_delay)
    return_freed_memory_to_os()  # before the first model arrives: it shapes every buffer after it
    try:
        if args.superlink is not None:
            return run_node(
                args.superlink,
                handler,
                transport=args.fleet_transport,
                root_certificates=root_certificates,
                node_key_pem=node_key,
                heartbeat_interval=args.heartbeat_interval,
                poll_interval=args.poll_interval,
                max_message_length=args.max_message_length,
                retry=retry,
                call_limits=CallLimits(args.call_timeout, args.min_transfer_rate),
                generation=args.superlink_release,
            )
        return run_client(
            args.server,
            handler,
            root_certificates=root_certificates,
            max_message_length=args.max_message_length,
            retry=retry,
            max_reconnect_wait=args.max_reconnect_wait,
            idle_timeout=args.idle_timeout or None,
            keepalive=args.keepalive,
        )
    except KeyboardInterrupt:
        print("fedproto-client: interrupted", file=sys.stderr)
        return 130
