"""fedproto-conformance --fleet against real nodes over loopback: ours, flwr's flower-supernode, broken ones.

The runner starts each node itself (``-- NODE COMMAND``), so every step is graded, SIGTERM included.
Our node runs with short timings (``--heartbeat-interval 10 --poll-interval 0.2``): the runner's
own waits follow the interval the node announces, so a whole graded run takes about 15 s.
The broken nodes are our node with one function patched (tests/fleet_conformance_broken_node.py).
"""

from __future__ import annotations

import json
import os
import re
import sys

import pytest

from conftest import ROOT, free_port

ROW = re.compile(r"^\s*(\d+)  (.+?)\s+(PASS|FAIL|SKIP)\s+(.*)$")
STEP = re.compile(r"\[(\w+)\]$")
ALL_STEPS = 23
VENV_BIN = os.path.dirname(sys.executable)
EXAMPLE_APP = ROOT / "examples" / "superlink_app"
FAST_NODE = ["--app", "superlink_app.handlers:make_client", "--heartbeat-interval", "10", "--poll-interval", "0.2"]


def run_runner(spawn, node_command, *runner_args, env=None, timeout=120, node_by_hand=False):
    """The runner, starting ``node_command(address)``; returns (exit code, {step: (result, detail)}, its log)."""
    address = f"127.0.0.1:{free_port()}"
    env = {"PYTHONPATH": os.pathsep.join([str(EXAMPLE_APP), os.environ.get("PYTHONPATH", "")]), "FLEET_CLIENT": "0",
           **(env or {})}
    command = ["--", *node_command(address)] if not node_by_hand else []
    runner = spawn("fleet_conformance", "-m", "fedproto.kit.conformance", "--fleet", "--address", address,
                   "--timeout", "20", *runner_args, *command, env=env)
    if node_by_hand:
        spawn("node", *node_command(address)[1:], env=env)
    code = runner.wait(timeout=timeout)
    rows = {}
    for line in runner.log().splitlines():
        match = ROW.match(line)
        if match:
            rows[STEP.search(match.group(2)).group(1)] = (match.group(3), match.group(4))
    assert len(rows) == ALL_STEPS, runner.log()[-6000:]
    return code, rows, runner.log()


def our_node(*extra):
    return lambda address: [sys.executable, "-m", "fedproto.client", "--superlink", address, *FAST_NODE, *extra]


def broken_node(defect):
    script = str(ROOT / "tests" / "fleet_conformance_broken_node.py")
    return lambda address: [sys.executable, script, defect, "--superlink", address, *FAST_NODE]


def failing(rows) -> set[str]:
    return {step for step, (result, _) in rows.items() if result == "FAIL"}


@pytest.mark.parametrize("transport", ["http", "grpc-rere"])
def test_our_node_passes_every_step(spawn, tmp_path, transport):
    verdicts = tmp_path / "verdicts.json"
    code, rows, log = run_runner(spawn, our_node("--fleet-transport", transport),
                                 "--fleet-transport", transport, "--json", str(verdicts))
    assert code == 0, log[-6000:]
    assert failing(rows) == set() and "all 23 checks passed" in log
    assert rows["train"][1].startswith("OK, 2 arrays float32(3, 2), float32(4,), num-examples=10")
    assert rows["big_model"][1].startswith("OK, 2 arrays float32(1600000,), float32(4,)")
    assert rows["reregister"][1].startswith("same key registered 1.0")  # fedproto's documented 1 s backoff
    assert rows["sigterm"][1] == "DeactivateNode, UnregisterNode, exit code 0"
    # The handler has no get_properties: a refusal with Message.error is a valid answer to an optional step.
    assert rows["query"][1].startswith("refused: Message.error code 2")
    saved = json.loads(verdicts.read_text())
    assert saved["passed"] is True and [s["name"] for s in saved["steps"]][:2] == ["register", "signatures"]


def test_a_node_started_by_hand_gets_every_step_but_sigterm(spawn):
    code, rows, log = run_runner(spawn, our_node(), "--only", "train", "--only", "sigterm", node_by_hand=True)
    assert code == 0, log[-6000:]
    assert rows["train"][0] == "PASS"
    assert rows["sigterm"] == ("SKIP", "not run: the runner did not start the node (-- NODE COMMAND)")
    assert rows["heartbeat"] == ("SKIP", "skipped (--only)")


def test_flwr_supernode_passes_every_required_step_but_re_registration(spawn, tmp_path):
    """flwr 1.42's own SuperNode, running examples/superlink_app's ClientApp from the FAB the runner serves.

    Its one deviation: after a 401 it does not register again, it exits (supernode/fleet_http_connection.py
    sends itself SIGINT when a heartbeat is refused), counting on a supervisor to start it again, with a new
    key unless one is configured. The runner then starts it afresh and goes on.
    """
    home = tmp_path / "flwr_home"
    home.mkdir()
    env = {"FLWR_HOME": str(home), "FLWR_TELEMETRY_ENABLED": "0", "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}"}

    def supernode(address):
        return [os.path.join(VENV_BIN, "flower-supernode"), "--insecure", "--superlink", address,
                "--host", "127.0.0.1", "--port", str(free_port())]

    code, rows, log = run_runner(spawn, supernode, "--fab-dir", str(EXAMPLE_APP), "--timeout", "30", env=env,
                                 timeout=240)
    assert code == 1
    assert failing(rows) == {"reregister"}, log[-8000:]
    assert rows["reregister"][1] == "the node exited with code 0 after the 401 instead of registering again"
    assert rows["heartbeat"][1].endswith("(interval 30 s)")  # flwr's fixed HEARTBEAT_DEFAULT_INTERVAL
    # Its ClientApp serves train and evaluate only; flwr refuses the rest with Message.error.
    assert rows["legacy_get_parameters"][1].startswith("refused: Message.error code 2")
    assert rows["legacy_fit"][1].startswith("OK, 2 arrays float32(3, 2), float32(4,), num_examples=10")


# A reply whose objects do not hash to their ids cannot be read at all: every step that reads a
# reply fails with it. Every other defect fails its own step and nothing else.
UNREADABLE_REPLIES = {"train", "evaluate", "big_model", "unservable", "query", "legacy_fit", "legacy_evaluate",
                      "legacy_get_parameters", "legacy_get_properties", "config_kinds", "other_dtypes",
                      "deflate_layout"}


@pytest.mark.parametrize("defect, step, detail, also_failing", [
    ("wrong_hash", "reply_objects", "content hashes to", UNREADABLE_REPLIES),
    ("no_heartbeat", "heartbeat", "no heartbeat for", set()),
    ("unsigned", "signatures", "no signature header", set()),
    ("long_ttl", "reply_metadata", "created_at + ttl ends 100.0", set()),
    # A Message.error would be a valid refusal of other dtypes; a reply in the wrong dtype is not.
    ("float32_only", "other_dtypes", "0: float32(3, 2) returned, float64(3, 2) sent", set()),
    ("exit_on_sigterm", "sigterm", "after SIGTERM: neither DeactivateNode nor UnregisterNode", set()),
])
def test_a_broken_node_fails_at_the_step_named_for_its_defect(spawn, defect, step, detail, also_failing):
    code, rows, log = run_runner(spawn, broken_node(defect))
    assert code == 1
    assert rows[step][0] == "FAIL" and detail in rows[step][1], log[-6000:]
    # The runner serves a defective node on, so the steps its defect cannot touch still pass.
    assert failing(rows) == {step} | also_failing, log[-6000:]
