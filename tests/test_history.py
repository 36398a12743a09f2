"""History holds text and numbers that clients chose: bounded, escaped, strict JSON (issue 9)."""

from __future__ import annotations

import json
import math

import pytest

from fedproto.server.history import History, RoundRecord
from fedproto.server_role import Failure, FailureKind
from fedproto.text import DROPPED_METRICS_KEY, MAX_METRICS, bound_metrics, bound_text


def strict_loads(text: str):
    """json.loads that refuses NaN/Infinity tokens, as a strict JSON reader does."""
    def refuse(token: str):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------------- bound_text


@pytest.mark.parametrize("text, bounded", [
    ("plain reason", "plain reason"),
    ("héllo wörld", "héllo wörld"),  # printable unicode stays as it is
    ("line one\nround 9/9: fit 100 ok", "line one\\nround 9/9: fit 100 ok"),  # no forged log line
    ("\r\t\x00", "\\r\\t\\x00"),
    ("\x1b[31mred", "\\x1b[31mred"),  # no terminal escape
    ("\u202eevil", "\\u202eevil"),  # no right-to-left override
    ("\u2028sep", "\\u2028sep"),  # a line separator in some viewers
    ("back\\slash", "back\\\\slash"),  # so an escape in the output is always ours
    ("\ud800", "\\ud800"),  # a lone surrogate (protobuf would refuse it, Python strs allow it)
])
def test_bound_text_escapes_onto_one_line(text, bounded):
    assert bound_text(text) == bounded


def test_bound_text_cuts_and_says_how_much():
    assert bound_text("x" * 10_000_000) == "x" * 200 + "... (9999800 more chars)"
    assert bound_text("abcdef", 3) == "abc... (3 more chars)"
    assert bound_text("abc", 3) == "abc"
    assert bound_text("", 3) == ""


def test_bound_text_never_splits_an_escape():
    # 3 raw chars = 6 escaped chars: with limit 5, the third escape does not fit.
    assert bound_text("\n\n\n", 5) == "\\n\\n... (1 more chars)"
    assert len(bound_text("\x00" * 1000)) <= 200 + len("... (1000 more chars)")


def test_bound_metrics_caps_entries_and_counts_the_rest():
    metrics = {f"m{i:06d}": float(i) for i in range(100_000)}
    bounded = bound_metrics(metrics)
    assert len(bounded) == MAX_METRICS + 1
    assert list(bounded)[:3] == ["m000000", "m000001", "m000002"]  # the first keys in sorted order
    assert bounded[DROPPED_METRICS_KEY] == 100_000 - MAX_METRICS


def test_bound_metrics_within_the_cap_keeps_order_and_numbers():
    metrics = {"b": 1, "a": 0.5, "flag": True, "blob": b"\x00" * 10}
    assert bound_metrics(metrics) == metrics
    assert list(bound_metrics(metrics)) == ["b", "a", "flag", "blob"]


# ---------------------------------------------------------------------------- History


def history_with(reason: str = "ok", metrics=None, loss: float = 0.5) -> History:
    history = History()
    history.add_loss_distributed(1, loss)
    history.add_metrics_distributed_fit(1, metrics or {})
    history.rounds.append(RoundRecord(1, fit_ok=1, fit_failures=[
        Failure("a1b2c3", FailureKind.STATUS, reason)]))
    return history


def test_a_huge_status_message_is_stored_bounded():
    history = history_with(reason="status FIT_NOT_IMPLEMENTED: " + "A" * 10_000_000)
    text = history.to_json()
    assert len(text) < 2_000
    failure = strict_loads(text)["rounds"][0]["fit_failures"][0]
    assert failure["reason"].endswith("... (9999828 more chars)")


def test_a_newline_in_a_reason_or_metric_stays_one_escaped_line():
    forged = "oops\n2026-01-01 INFO round 5/5: fit 100 ok 0 failed"
    history = history_with(reason=forged, metrics={"note" + "\n": forged})
    data = strict_loads(history.to_json())
    assert data["rounds"][0]["fit_failures"][0]["reason"] == forged.replace("\n", "\\n")
    assert data["metrics_distributed_fit"] == {"note\\n": [[1, forged.replace("\n", "\\n")]]}


@pytest.mark.parametrize("value, encoded", [
    (math.nan, {"float": "NaN"}), (math.inf, {"float": "Infinity"}), (-math.inf, {"float": "-Infinity"}),
])
def test_non_finite_losses_and_metrics_are_strict_json_and_read_back(value, encoded):
    history = history_with(metrics={"accuracy": value, "name": "NaN"}, loss=value)
    text = history.to_json()
    json.dumps(json.loads(text), allow_nan=False)  # nothing non-standard in it
    data = strict_loads(text)
    assert data["losses_distributed"] == [[1, encoded]]
    assert data["metrics_distributed_fit"]["accuracy"] == [[1, encoded]]
    assert data["metrics_distributed_fit"]["name"] == [[1, "NaN"]]  # a str metric stays a str
    back = History.from_json(text)
    (_, loss), = back.losses_distributed
    (_, metric), = back.metrics_distributed_fit["accuracy"]
    assert math.isnan(loss) if math.isnan(value) else loss == value
    assert math.isnan(metric) if math.isnan(value) else metric == value
    assert back.metrics_distributed_fit["name"] == [(1, "NaN")]


def test_100k_metric_entries_make_a_small_history():
    history = history_with(metrics={f"key{i}": i for i in range(100_000)})
    text = history.to_json()
    assert len(text) < 10_000
    fit_metrics = strict_loads(text)["metrics_distributed_fit"]
    assert len(fit_metrics) == MAX_METRICS + 1
    assert fit_metrics[DROPPED_METRICS_KEY] == [[1, 100_000 - MAX_METRICS]]


def test_long_keys_strings_and_bytes_are_bounded():
    history = history_with(metrics={"k" * 5000: "v" * 5000, "blob": b"\xff" * 5000})
    data = strict_loads(history.to_json())["metrics_distributed_fit"]
    assert data == {
        "k" * 100 + "... (4900 more chars)": [[1, "v" * 200 + "... (4800 more chars)"]],
        "blob": [[1, {"bytes_hex": "ff" * 100, "dropped_bytes": 4900}]],
    }


def test_values_within_the_bounds_round_trip_exactly():
    history = history_with(reason="status FIT_NOT_IMPLEMENTED: 'no fit'",
                           metrics={"acc": 0.75, "n": 3, "flag": False, "blob": b"\x00\x01", "s": "ünï"})
    history.add_loss_centralized(0, 1.25)
    assert History.from_json(history.to_json()) == history
