"""Every benchmark, each side by side with flwr (``make bench``).

    python -m bench.run                    # all of them, with their defaults
    python -m bench.run --only scale       # just one

- ``scale`` (``bench.scale``): N = 100 ... 10,000 concurrent clients, seconds per FedAvg round
  and server peak RSS, our server vs ``flwr.server.start_server``. Several minutes.
- ``client_rss`` (``bench.client_rss``): peak RSS of our edge client vs flwr's client.
- ``codec`` (``bench.codec``): .npy tensor decoding, fedproto's codec vs numpy's reader vs flwr's.

Each benchmark prints its own table; ``python -m bench.<name> --help`` lists its options.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from importlib import import_module

log = logging.getLogger("bench.run")

BENCHMARKS = ("scale", "client_rss", "codec")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.run",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:\n  python -m bench.run\n  python -m bench.run --only client_rss",
    )
    parser.add_argument("--only", choices=BENCHMARKS, action="append",
                        help="run only this benchmark (repeatable; default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")

    failed = []
    for name in args.only or BENCHMARKS:
        log.info("=== %s ===", name)
        started = time.monotonic()
        code = import_module(f"bench.{name}").main([])
        log.info("=== %s: exit %d after %.0f s ===", name, code, time.monotonic() - started)
        if code != 0:
            failed.append(name)
    if failed:
        log.error("benchmarks that did not meet their checks: %s", ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
