"""Bounding text a peer sent before it reaches a log line, a report or a History file.

A peer controls ``Status.message``, metric and property keys, string and bytes values. Any of
them may be megabytes long or hold a newline that forges a log line, an ANSI escape or a
right-to-left override. :func:`bound_text` makes such text safe to print on one line:

- every character that is not printable (``str.isprintable``: newlines, tabs, control and
  format characters, lone surrogates) and the backslash are escaped as ``repr`` escapes them
  (``\\n``, ``\\x1b``, ``\\u202e``, ``\\\\``), so the result is one line and unambiguous;
- the escaped text is cut at ``limit`` characters (an escape is never split), followed by
  ``... (N more chars)`` where N counts the characters of the original left out.

Only the first ``limit`` characters of the input are ever looked at, so the cost does not grow
with what the peer sent. :func:`bound_metrics` caps the number of entries of one message's
metrics (or properties) and bounds each key and text value.
"""

from __future__ import annotations

from collections.abc import Mapping

TEXT_LIMIT = 200  # characters of a reason, a status message or a text value
KEY_LIMIT = 100  # characters of a metric or property key
BYTES_LIMIT = 100  # bytes of a bytes value kept (the rest is counted, not kept)
MAX_METRICS = 64  # entries of one message's metrics or properties
DROPPED_METRICS_KEY = "(dropped metrics)"  # its value: how many entries were cut


def escape_char(char: str) -> str:
    """``char`` as it may appear on a log line: itself if printable, else its repr escape."""
    if char.isprintable() and char != "\\":
        return char
    return repr(char)[1:-1]


def bound_text(text: str, limit: int = TEXT_LIMIT) -> str:
    """``text`` escaped onto one line and cut to ``limit`` characters, saying how much was cut."""
    kept: list[str] = []
    length = 0
    for index, char in enumerate(text[:limit]):
        escaped = escape_char(char)
        if length + len(escaped) > limit:
            return "".join(kept) + f"... ({len(text) - index} more chars)"
        kept.append(escaped)
        length += len(escaped)
    if len(text) > limit:
        return "".join(kept) + f"... ({len(text) - limit} more chars)"
    return "".join(kept)


def bound_bytes(data: bytes, limit: int = BYTES_LIMIT) -> tuple[bytes, int]:
    """The first ``limit`` bytes of ``data`` and how many were left out."""
    return data[:limit], max(len(data) - limit, 0)


def bound_metrics(
    metrics: Mapping[str, object], max_entries: int = MAX_METRICS
) -> dict[str, object]:
    """At most ``max_entries`` entries, keys and str values bounded.

    Within the cap the order is kept; over it the first ``max_entries`` keys in sorted order
    are kept (a protobuf map has no order to honour) and one more entry
    ``DROPPED_METRICS_KEY`` holds how many were cut. Bytes, numbers and bools are kept as they
    are. Keys that become equal once bounded keep the value of the later one.
    """
    names = list(metrics) if len(metrics) <= max_entries else sorted(metrics)
    out: dict[str, object] = {}
    for name in names[:max_entries]:
        value = metrics[name]
        out[bound_text(name, KEY_LIMIT)] = bound_text(value) if isinstance(value, str) else value
    if len(names) > max_entries:
        out[DROPPED_METRICS_KEY] = len(names) - max_entries
    return out
