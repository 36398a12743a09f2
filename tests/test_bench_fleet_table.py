"""The Fleet part of ``make bench``: its summary.md table from the runs' raw numbers (no processes)."""

from __future__ import annotations

from fedproto.bench import fleet_rss


def _run(label: str, side: str, repeat: int, node_mib: list[float], seconds_per_round: float) -> dict:
    return {"label": label, "side": side, "repeat": repeat, "seconds_per_round": seconds_per_round,
            "nodes": [{"sum_kib": mib * 1024} for mib in node_mib]}


def test_the_table_gives_per_node_peaks_and_seconds_per_round_as_median_min_max_with_the_ratio():
    result = {"nodes_per_run": 2, "rounds": 3, "runs": [
        _run("1M", "ours", 0, [80, 82], 6.0), _run("1M", "flwr", 0, [400, 420], 15.0),
        _run("1M", "ours", 1, [81, 90], 7.0), _run("1M", "flwr", 1, [410, 460], 14.0),
        _run("10M", "ours", 0, [288, 289], 8.5), _run("10M", "flwr", 0, [860, 870], 19.0),
    ]}
    rows = fleet_rss.bench_table(result).splitlines()
    assert rows[0] == ("| parameters | ours peak RSS MiB | flwr sum MiB | flwr / ours | ours s/round | flwr s/round |")
    assert rows[2] == "| 1M | 81.5 (80.0-90.0) | 415.0 (400.0-460.0) | 5.09x | 6.50 (6.00-7.00) | 14.50 (14.00-15.00) |"
    assert rows[3] == "| 10M | 288.5 (288.0-289.0) | 865.0 (860.0-870.0) | 3.00x | 8.50 | 19.00 |"
    section = fleet_rss.summary_section(result)
    assert section.startswith("## Fleet node on flower-superlink") and section.endswith(rows[-1])
