"""fedproto-conformance against the C++ SDK stand-in (tests/cpp_sdk_client.py), which aborts on
GetPropertiesIns, on a uint64 config value and on a bias tensor shorter than one double; and
``--skip`` / ``--only``.

Under a supervisor that restarts it (as a device's init system would), the stand-in comes back
after each crash and every step gets a verdict. Alone, every required step still gets one.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT
from test_kit_conformance import failing, run_conformance

# Restarts the stand-in whenever it dies (non-zero exit), as systemd's Restart=on-failure would.
SUPERVISOR = """
import subprocess, sys
for attempt in range(6):
    code = subprocess.call([sys.executable, "tests/cpp_sdk_client.py", *sys.argv[1:]])
    print(f"supervisor: the client exited with {code}", flush=True)
    if code == 0:
        break
"""

CRASHED = "client ended the stream instead of replying; it joined again after "


def start_standin(spawn, address: str):
    return spawn("cpp_client", "tests/cpp_sdk_client.py", "0", address)


def test_a_client_that_crashes_on_optional_steps_and_is_restarted_gets_a_verdict_for_every_step(spawn):
    code, rows, runner = run_conformance(spawn, lambda address: spawn("supervisor", "-c", SUPERVISOR, "0", address),
                                         timeout=10)
    assert code == 1
    assert not [n for n, (_, detail) in rows.items() if detail.startswith("not run")], runner.log()
    # The SDK rejoins at once after ReconnectIns(seconds=1) (its sleep is commented out), and
    # dies on GetPropertiesIns, on the uint64 in "every Scalar kind", and on zero-size tensors.
    assert failing(rows) == {7, 9, 10, 12}, runner.log()
    assert rows[7][1].startswith("came back after 0.")
    for row in (9, 10, 12):
        assert rows[row][1].startswith(CRASHED) and rows[row][1].endswith(" s, the script goes on")
    assert rows[2][1].startswith("OK, 2 tensors float64(2,), float64(1,) as cpp_double")
    assert rows[3][1].startswith("OK, 2 tensors float64(2,), float64(1,), num_examples=1000, metrics {}")
    assert rows[4][1].startswith("OK, loss=")
    assert rows[11][1].startswith("OK, 2 tensors float64(2,), float64(1,), num_examples=1000")
    assert rows[14][1].startswith("DisconnectRes(reason=ACK)") and rows[16][0] == "PASS"
    assert "4 of 16 checks FAILED: 7 rejoin; 9 get_properties; 10 fit_every_scalar; 12 fit_zero_size" in runner.log()


def test_a_client_that_crashes_and_stays_down_still_gets_a_verdict_on_every_required_step(spawn):
    code, rows, runner = run_conformance(spawn, lambda address: start_standin(spawn, address), timeout=3)
    assert code == 1
    assert {n for n in range(1, 9) if rows[n][0] == "PASS"} == {1, 2, 3, 4, 5, 6, 8}, runner.log()
    assert rows[9] == ("FAIL", "client ended the stream instead of replying; it did not join again within 3 s")
    assert all(rows[n] == ("FAIL", "not run: the client left at step 9 (get_properties) and did not join again")
               for n in range(10, 17))


def test_skipping_the_steps_the_sdk_dies_on_leaves_only_its_real_deviation(spawn):
    code, rows, runner = run_conformance(spawn, lambda address: start_standin(spawn, address),
                                         "--skip", "get_properties", "--skip", "10", "--skip", "fit_zero_size")
    assert code == 1
    assert {n for n, (result, _) in rows.items() if result == "SKIP"} == {9, 10, 12}
    assert rows[9] == ("SKIP", "skipped (--skip)")
    assert failing(rows) == {7}, runner.log()
    assert "1 of 13 checks FAILED: 7 rejoin (3 skipped)" in runner.log()


def test_only_runs_the_step_with_join_and_what_it_needs(spawn):
    code, rows, runner = run_conformance(spawn, lambda address: start_standin(spawn, address), "--only", "fit")
    assert code == 0, runner.log()
    assert [rows[n][0] for n in (1, 2, 3)] == ["PASS"] * 3
    assert all(rows[n] == ("SKIP", "skipped (--only)") for n in range(4, 17))
    assert "all 3 checks passed (13 skipped)" in runner.log()


@pytest.mark.parametrize("argv, message", [
    (["--skip", "join"], "step 1 (join) cannot be skipped"),
    (["--skip", "17"], "no step '17': use 1-16 or one of join, get_parameters,"),
    (["--only", "fit", "--skip", "evaluate"], "not allowed with argument"),
])
def test_bad_step_arguments_are_usage_errors(argv, message):
    run = subprocess.run([sys.executable, "-m", "fedproto.kit.conformance", "--address", "127.0.0.1:0", *argv],
                         cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2 and message in run.stderr, run.stderr
