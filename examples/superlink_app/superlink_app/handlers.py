"""Entry point for ``fedproto-client --app superlink_app.handlers:make_client``.

Environment: FLEET_CLIENT (index, default 0), FLEET_FAIL_FIT_ROUND (fit raises in that round),
FLEET_FIT_SLEEP (seconds fit sleeps), FLEET_IN_PLACE=1 (the handler trains in place: InPlaceClient).
"""

from __future__ import annotations

import os

from superlink_app.arithmetic import ArithmeticClient, InPlaceClient


def make_client() -> ArithmeticClient:
    kind = InPlaceClient if os.environ.get("FLEET_IN_PLACE") == "1" else ArithmeticClient
    return kind(
        client=int(os.environ.get("FLEET_CLIENT", "0")),
        fail_fit_round=int(os.environ.get("FLEET_FAIL_FIT_ROUND", "0")),
        fit_sleep=float(os.environ.get("FLEET_FIT_SLEEP", "0")),
    )
