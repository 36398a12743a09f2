"""Our Fleet node with one deliberate defect, for tests/test_kit_fleet_conformance.py.

``python tests/fleet_conformance_broken_node.py DEFECT [fedproto-client arguments...]`` patches one
function of fedproto, then runs the edge client's own main(). Each defect breaks exactly one rule
the conformance runner grades, so a runner that passes everything fails the test.
"""

from __future__ import annotations

import os
import sys

from fedproto import fleet_content, objects
from fedproto.client import fleet
from fedproto.client.cli import main
from fedproto.node import NodeSession


def wrong_hash() -> None:
    """Every pushed object has one byte changed after its id was computed."""
    send = NodeSession._send_push_object

    def corrupted(self, now):
        rpc, request = send(self, now)
        request.object_content = request.object_content[:-1] + bytes([request.object_content[-1] ^ 1])
        return rpc, request

    NodeSession._send_push_object = corrupted


def no_heartbeat() -> None:
    """The first heartbeat after activation, then none."""
    init = NodeSession.__init__

    def once(self, *args, **kwargs):
        init(self, *args, **kwargs)
        self.heartbeat_period = 1e9

    NodeSession.__init__ = once


def unsigned() -> None:
    """Requests go without the signature header."""
    headers = fleet.NodeKey.http_headers

    def without_signature(self):
        signed = headers(self)
        del signed["flwr-signature"]
        return signed

    fleet.NodeKey.http_headers = without_signature


def long_ttl() -> None:
    """Replies outlive their instruction by 100 s (the SuperLink drops such a reply without a word)."""
    build = fleet_content.build_reply

    def longer(answer, instruction, node_id, now):
        metadata = build(answer, instruction, node_id, now).message.metadata
        metadata.ttl += 100
        if answer.content is None:
            return objects.deflate_message(metadata, error=build(answer, instruction, node_id, now).message.error)
        return objects.deflate_message(metadata, answer.content)

    fleet_content.build_reply = longer


def float32_only() -> None:
    """Every array of a reply is cast to float32: a wrong answer to a dtype the port does not support."""
    from_numpy = objects.Array.from_numpy.__func__

    def as_float32(cls, ndarray, field="array"):
        return from_numpy(cls, ndarray.astype("float32"), field)

    objects.Array.from_numpy = classmethod(as_float32)


def exit_on_sigterm() -> None:
    """SIGTERM ends the process at once, without DeactivateNode or UnregisterNode."""
    NodeSession.stop = lambda self, now: os._exit(0)


DEFECTS = {f.__name__: f for f in (wrong_hash, no_heartbeat, unsigned, long_ttl, float32_only, exit_on_sigterm)}

if __name__ == "__main__":
    DEFECTS[sys.argv[1]]()
    sys.exit(main(sys.argv[2:]))
