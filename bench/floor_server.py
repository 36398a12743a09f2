"""The floor: a bare ``grpc.aio`` Join server that only sends the instructions and counts the replies.

    python -m fedproto.bench.floor_server --address 127.0.0.1:8080 --clients 1000 --rounds 3 --report floor.json

It is what any grpc.aio Join server has to spend, whatever it does with the replies: the
round time of ``bench.scale``'s other servers is read against it (the *ours / floor* column).
Per stream, one coroutine (the RPC handler itself) writes and reads; no queue, reader task,
future or timer per stream. The FitIns and EvaluateIns (the model of ``bench.servers``, config
{}) are encoded once, before any client connects, and the same ``bytes`` object is written to
every stream. A reply is checked only as far as counting needs: its first byte must be the
ClientMessage tag of the answer expected (``fit_res``, ``evaluate_res``, ``disconnect_res``);
nothing is decoded or aggregated. The model is never updated.

The round clock is ``bench.servers``'s: a round starts once all N are connected (where our
server's ``configure_fit`` returns) and ends with the N-th EvaluateIns reply; all N FitIns
replies are in before any EvaluateIns goes out, as in a FedAvg round. After the last round
every client gets ReconnectIns(seconds=0), and the report is written once every stream has
ended (the server's ``--report`` JSON, the format ``bench.scale`` reads). Like our server it
uses ``server.transport.server_options`` and the same garbage-collector threshold.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys
from dataclasses import dataclass, field

import grpc

from fedproto.bench.loadgen import loopback_address, positive_int
from fedproto.bench.servers import RoundClock, initial_model
from fedproto.server.app import GC_YOUNG_THRESHOLD, STOP_GRACE_SECONDS
from fedproto.server.endpoint import join_handler
from fedproto.server.transport import server_options
from fedproto.server_role import EvaluateIns, FitIns, encode_evaluate_ins, encode_fit_ins, encode_reconnect_ins

log = logging.getLogger("fedproto.bench.floor_server")

# The first byte of a ClientMessage that answers each instruction: (field number << 3) | 2.
FIT_RES_TAG, EVALUATE_RES_TAG, DISCONNECT_RES_TAG = (4 << 3) | 2, (5 << 3) | 2, (1 << 3) | 2


@dataclass
class Step:
    """One instruction to every stream, and the replies counted so far."""

    message: bytes
    reply_tag: int
    go: asyncio.Event = field(default_factory=asyncio.Event)
    all_replied: asyncio.Event = field(default_factory=asyncio.Event)
    replies: int = 0  # replies with the expected tag
    wrong: int = 0  # replies of another kind


class FloorServer:
    """Counts streams, releases the steps one at a time, counts replies (see module docstring)."""

    def __init__(self, clients: int, rounds: int, side: int | None = None) -> None:
        model = initial_model(side)
        fit = encode_fit_ins(FitIns(model, {}))
        evaluate = encode_evaluate_ins(EvaluateIns(model, {}))
        self.clients = clients
        self.rounds = [(Step(fit, FIT_RES_TAG), Step(evaluate, EVALUATE_RES_TAG)) for _ in range(rounds)]
        self.goodbye = Step(encode_reconnect_ins(0), DISCONNECT_RES_TAG)
        self.steps = [step for pair in self.rounds for step in pair] + [self.goodbye]
        self.connected = 0
        self.all_connected = asyncio.Event()
        self.lost = 0  # streams that ended before the goodbye
        self.ended = 0  # streams whose handler has returned
        self.all_ended = asyncio.Event()

    async def join(self, request_iterator: object, context: grpc.aio.ServicerContext) -> None:
        self.connected += 1
        if self.connected == self.clients:
            self.all_connected.set()
        try:
            for step in self.steps:
                await step.go.wait()
                await context.write(step.message)
                reply = await context.read()
                if reply is grpc.aio.EOF:
                    self.lost += 1
                    return
                if reply[:1] == bytes((step.reply_tag,)):
                    step.replies += 1
                    if step.replies == self.clients:
                        step.all_replied.set()
                else:
                    step.wrong += 1
        finally:
            # A client may cancel its call soon after its DisconnectRes (the load generator waits
            # 1 s for the status): the goodbye is over when every stream has ended, however.
            self.ended += 1
            if self.ended == self.connected and self.goodbye.go.is_set():
                self.all_ended.set()

    async def run(self, clock: RoundClock) -> None:
        """The N streams through every round, timed by ``clock``, then the goodbye."""
        await self.all_connected.wait()
        log.info("all %d clients connected", self.clients)
        gc.freeze()  # as our server does during its exchanges: the live streams are not re-scanned
        for number, (fit, evaluate) in enumerate(self.rounds, start=1):
            clock.fit_configured(number)
            for step in (fit, evaluate):
                step.go.set()
                await step.all_replied.wait()
            clock.fit_aggregated(fit.replies, fit.wrong)
            clock.evaluate_aggregated(evaluate.replies, evaluate.wrong, None)
        gc.unfreeze()
        self.goodbye.go.set()
        if self.ended < self.connected:
            await self.all_ended.wait()


async def serve(address: str, clients: int, rounds: int, report: str, side: int | None) -> None:
    floor = FloorServer(clients, rounds, side)
    server = grpc.aio.server(options=server_options())
    server.add_generic_rpc_handlers((join_handler(floor.join),))
    if server.add_insecure_port(address) == 0:
        raise OSError(f"cannot listen on {address}")
    await server.start()
    log.info("floor server listening on %s for %d clients, %d round(s)", address, clients, rounds)
    clock = RoundClock()
    try:
        await floor.run(clock)
    finally:
        await server.stop(STOP_GRACE_SECONDS)
    for entry in clock.rounds:
        log.info("round %d: %d fit, %d evaluate replies in %.3f s", entry["round"], entry["fit_results"],
                 entry["evaluate_results"], entry["seconds"])
    clock.write(report, "floor", clients)


def run(address: str, clients: int, rounds: int, report: str, side: int | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    previous = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *previous[1:])
    try:
        asyncio.run(serve(address, clients, rounds, report, side))
    finally:
        gc.set_threshold(*previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedproto.bench.floor_server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", type=loopback_address, required=True,
                        help="HOST:PORT to listen on, on this machine")
    parser.add_argument("--clients", type=positive_int, required=True, help="N: streams every round waits for")
    parser.add_argument("--rounds", type=positive_int, default=2, help="rounds (default 2)")
    parser.add_argument("--report", required=True, help="write the round timings here (JSON)")
    parser.add_argument("--side", type=positive_int,
                        help="model: one SIDE x SIDE float32 tensor (default: a 1,000-parameter vector)")
    args = parser.parse_args(argv)
    run(args.address, args.clients, args.rounds, args.report, args.side)
    return 0


if __name__ == "__main__":
    sys.exit(main())
