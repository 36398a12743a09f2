"""What ``bench.run`` writes besides the raw JSON: the machine, summary.md tables and the plots."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import subprocess
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from fedproto.bench import codec, fleet_rss, rounds

ROOT = Path(__file__).resolve().parents[1]
SERVERS = ("ours", "flwr")


def machine() -> dict:
    """The machine and software a run measured, and how busy it was when it started."""
    cpu = next((line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    memory_kib = next((int(line.split()[1]) for line in _read("/proc/meminfo").splitlines()
                       if line.startswith("MemTotal:")), 0)
    packages = {}
    for name in ("numpy", "grpcio", "protobuf", "flwr"):
        try:
            packages[name] = version(name)
        except PackageNotFoundError:
            packages[name] = "not installed"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    # The results this run writes as it goes (bench/results) are no change to the code measured.
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "fedproto", "server", "client", "bench",
                            ":(exclude)bench/results"],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    if commit and dirty:
        commit += " + uncommitted changes"
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(memory_kib / 2**20, 1),
            "os": platform.platform(), "python": sys.version.split()[0], **packages,
            "load_average": [round(value, 2) for value in os.getloadavg()], "commit": commit or "unknown",
            "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M")}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def describe(machine: dict) -> str:
    return (f"{machine['date_utc']} UTC, commit {machine['commit']}; {machine['cpu']}, {machine['cores']} cores, "
            f"{machine['memory_gib']} GiB; {machine['os']}; Python {machine['python']}, numpy {machine['numpy']}, "
            f"grpcio {machine['grpcio']}, protobuf {machine['protobuf']}, flwr {machine['flwr']}; "
            f"load average at start {machine['load_average']}")


def spread(values: list[float], spec: str) -> str:
    return rounds.spread(values, spec)


# ---------------------------------------------------------------------------- tables


def codec_section(result: dict) -> str:
    return "\n".join([
        "## Codec: a FitRes ClientMessage, encoded and decoded",
        "",
        "GB/s of payload: median of the repeats (min-max). *ours speed / flwr* above 1 means ours is faster. "
        "Encode: the edge client's whole work for a FitIns (instruction decoded, handler, FitRes reply "
        "encoded; ours: `ClientSession.receive_bytes`; flwr: `ServerMessage.FromString` + `fit_ins_from_proto` "
        "+ `parameters_to_ndarrays` + fit + `ndarrays_to_parameters` + `fit_res_to_proto` + serialize). "
        "Decode: the server's, wire bytes -> ndarrays (ours: `server_role.decode_fit_reply`, protobuf's parse "
        "below 256 KiB, read-only views of the tensors in the wire bytes above; flwr: "
        "`serde.fit_res_from_proto` + `parameters_to_ndarrays`). "
        "memcpy: `numpy.ndarray.copy` of the same bytes, same run.",
        "",
        codec.format_table(result),
    ])


def client_table(result: dict) -> str:
    lines = ["| parameters | ours peak RSS MiB | flwr peak RSS MiB | flwr / ours | ours wall s | flwr wall s |",
             "|---|---:|---:|---:|---:|---:|"]
    for label in dict.fromkeys(run["label"] for run in result["runs"]):
        mine = [run for run in result["runs"] if run["label"] == label]
        rss = {s: [run["peak_rss_mib"] for run in mine if run["server"] == s] for s in SERVERS}
        wall = {s: [run["wall_seconds"] for run in mine if run["server"] == s] for s in SERVERS}
        lines.append(f"| {label} | {spread(rss['ours'], '.1f')} | {spread(rss['flwr'], '.1f')} "
                     f"| {statistics.median(rss['flwr']) / statistics.median(rss['ours']):.2f}x "
                     f"| {spread(wall['ours'], '.1f')} | {spread(wall['flwr'], '.1f')} |")
    return "\n".join(lines)


def client_section(result: dict) -> str:
    return "\n".join([
        "## Edge client peak RSS, against flwr's server",
        "",
        f"`bench.client_rss`: flwr's `start_server` (FedAvg, {result['rounds']} rounds) with our edge client "
        "and flwr's `start_client` in the same run, each in its own process; the model is one float32 tensor. "
        "Peak RSS includes the interpreter and imports (about 45 MiB for ours). Median (min-max) of the repeats.",
        "",
        client_table(result),
    ])


def rounds_section(result: dict) -> str:
    return "\n".join([
        f"## {result['clients']} clients, FedAvg rounds with a large model",
        "",
        f"`bench.rounds`: our server + {result['clients']} of our clients vs flwr's `start_server` + "
        f"{result['clients']} flwr clients, {result['rounds']} rounds per run, fit does no compute. "
        "s/round: the server's clock from configure_fit to aggregate_evaluate; server peak RSS: its `VmHWM`, polled, "
        "interpreter included. Median (min-max) of the runs; *flwr / ours* above 1 means ours is faster or smaller.",
        "",
        rounds.format_table(result),
    ])


SCALE_SERVERS = ("floor", "ours", "flwr")  # floor: bench.floor_server, the bare grpc.aio Join server


def scale_table(result: dict) -> str:
    lines = ["| N | floor s/round | ours s/round | flwr s/round | ours / floor | flwr / ours | floor peak RSS MB "
             "| ours peak RSS MB | flwr peak RSS MB | floor CPU s | ours CPU s | flwr CPU s |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for clients in sorted({run["clients"] for run in result["runs"]}):
        cells, medians = {}, {}
        for server in SCALE_SERVERS:
            mine = [run for run in result["runs"] if run["clients"] == clients and run["server"] == server]
            done = [run["seconds_per_round"] for run in mine if run["completed"]]
            if not mine:
                cells[server] = ("not run", "not run", "not run")
                continue
            stuck = [run for run in mine if not run["completed"]]
            time_cell = spread(done, ".3f") if done else stuck[0]["note"].split(" (")[0]
            if done and stuck:
                time_cell += f" ({len(stuck)} of {len(mine)} runs did not complete)"
            if done:
                medians[server] = statistics.median(done)
            cells[server] = (time_cell, spread([run["peak_rss_mb"] for run in mine], ".0f"),
                             spread([run["cpu_seconds"] for run in mine], ".1f"))
        over_floor = _scale_ratio(result, clients, "ours", "floor")
        ratio = f"{medians['flwr'] / medians['ours']:.1f}x" if "flwr" in medians and "ours" in medians else "—"
        lines.append(f"| {clients} | {' | '.join(cells[s][0] for s in SCALE_SERVERS)} | {over_floor} | {ratio} "
                     f"| {' | '.join(cells[s][1] for s in SCALE_SERVERS)} "
                     f"| {' | '.join(cells[s][2] for s in SCALE_SERVERS)} |")
    return "\n".join(lines)


def _scale_ratio(result: dict, clients: int, numerator: str, denominator: str) -> str:
    """Median over the repeats of numerator / denominator s/round, each repeat's pair measured back to back,
    with its min-max; a dash if no repeat completed on both sides."""
    by_repeat: dict[int, dict[str, float]] = {}
    for run in result["runs"]:
        if run["clients"] == clients and run["server"] in (numerator, denominator) and run["completed"]:
            by_repeat.setdefault(run.get("repeat", 0), {})[run["server"]] = run["seconds_per_round"]
    ratios = [pair[numerator] / pair[denominator] for pair in by_repeat.values() if len(pair) == 2]
    if not ratios:
        return "—"
    median = f"{statistics.median(ratios):.2f}x"
    return median if len(ratios) == 1 else f"{median} ({min(ratios):.2f}-{max(ratios):.2f})"


def scale_section(result: dict) -> str:
    return "\n".join([
        "## Server scale: N concurrent clients",
        "",
        f"`bench.scale`: each server against the load generator ({result['processes']} processes, "
        f"{result['streams_per_channel']} streams per channel), 1,000-parameter model, {result['rounds']} rounds "
        "per run. Median (min-max) of the runs. *floor* is a bare grpc.aio Join server (`bench.floor_server`) "
        "that sends the same instructions and only counts the replies; *ours / floor* is the median of each "
        "repeat's ratio (its two runs back to back), min-max in brackets: target at most 1.15x at 10,000. "
        "flwr's legacy server admits at most 1,000 streams, so above "
        f"that it is run once with a {result['flwr_capped_timeout']:.0f} s timeout (it waits forever for the "
        "clients it refuses).",
        "",
        scale_table(result),
    ])


SECTIONS = {"codec": codec_section, "client": client_section, "rounds": rounds_section, "scale": scale_section,
            "fleet": fleet_rss.summary_section}


def summary(results: dict[str, dict]) -> str:
    """summary.md: one section per benchmark found, each with the machine it ran on."""
    parts = ["# `make bench` results", "",
             "Written by `python -m fedproto.bench.run`; raw numbers with every repeat in the JSON files "
             "next to this one.",
             "Ratios are flwr / ours (above 1: ours is faster or smaller), except where a column says otherwise."]
    for name, section in SECTIONS.items():
        if name in results:
            result = results[name]
            parts += ["", section(result), "", f"Measured {describe(result['machine'])}; "
                      f"`{result['command']}`. Plot: [{name}.png]({name}.png)."]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def _bars(axis, labels: list[str], values: dict[str, list[list[float]]], ylabel: str, title: str) -> None:
    """Grouped bars: one group per label, one bar per server; height median, whiskers min-max."""
    x = np.arange(len(labels))
    width = 0.8 / len(values)
    for index, (server, per_label) in enumerate(values.items()):
        medians = [statistics.median(v) for v in per_label]
        errors = [[m - min(v) for m, v in zip(medians, per_label, strict=True)],
                  [max(v) - m for m, v in zip(medians, per_label, strict=True)]]
        axis.bar(x + (index - (len(values) - 1) / 2) * width, medians, width, yerr=errors, capsize=3, label=server)
    axis.set(xticks=x, xticklabels=labels, ylabel=ylabel, title=title)
    axis.grid(True, axis="y", alpha=0.3)
    axis.legend(fontsize=8)


def plot_client(result: dict, path: Path) -> None:
    plt = _pyplot()
    labels = list(dict.fromkeys(run["label"] for run in result["runs"]))
    values = {s: [[r["peak_rss_mib"] for r in result["runs"] if r["label"] == label and r["server"] == s]
                  for label in labels] for s in SERVERS}
    figure, axis = plt.subplots(figsize=(6, 4.2))
    _bars(axis, [f"{label} parameters" for label in labels], values, "client peak RSS (MiB)",
          "Edge client memory against flwr's server")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_rounds(result: dict, path: Path) -> None:
    plt = _pyplot()
    labels = list(dict.fromkeys(run["label"] for run in result["runs"]))
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for axis, key, ylabel in ((axes[0], "seconds_per_round", "seconds per round"),
                              (axes[1], "server_peak_rss_mb", "server peak RSS (MB)")):
        values = {s: [[r[key] for r in result["runs"] if r["label"] == label and r["server"] == s]
                      for label in labels] for s in SERVERS}
        _bars(axis, [f"{label} parameters" for label in labels], values, ylabel,
              f"{result['clients']} clients, FedAvg")
    axes[0].set_yscale("log")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_scale(result: dict, path: Path) -> None:
    plt = _pyplot()
    from matplotlib.ticker import FormatStrFormatter, NullFormatter

    figure, (time_axis, rss_axis) = plt.subplots(1, 2, figsize=(11, 4.2))
    for server, marker in zip(SCALE_SERVERS, ("^", "o", "s"), strict=True):
        mine = [run for run in result["runs"] if run["server"] == server]
        counts = sorted({run["clients"] for run in mine})
        for axis, key in ((time_axis, "seconds_per_round"), (rss_axis, "peak_rss_mb")):
            points = [(n, [run[key] for run in mine if run["clients"] == n and run["completed"]]) for n in counts]
            points = [(n, v) for n, v in points if v]
            if points:
                medians = [statistics.median(v) for _, v in points]
                errors = [[m - min(v) for m, (_, v) in zip(medians, points, strict=True)],
                          [max(v) - m for m, (_, v) in zip(medians, points, strict=True)]]
                axis.errorbar([n for n, _ in points], medians, yerr=errors, marker=marker, capsize=3, label=server)
        stuck = [run for run in mine if not run["completed"]]
        if stuck:
            time_axis.scatter([run["clients"] for run in stuck], [run["timeout"] for run in stuck], marker="x",
                              color="red", zorder=3, label=f"{server}: did not complete (at the timeout)")
    time_axis.set(xscale="log", yscale="log", xlabel="concurrent clients N",
                  ylabel="seconds per FedAvg round (fit + evaluate)", title="Round time")
    rss_axis.set(xscale="log", xlabel="concurrent clients N", ylabel="server peak RSS (MB, completed runs)",
                 title="Server memory")
    time_axis.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    time_axis.yaxis.set_minor_formatter(NullFormatter())
    for axis in (time_axis, rss_axis):
        axis.xaxis.set_major_formatter(FormatStrFormatter("%d"))
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


PLOTS = {"codec": codec.plot, "client": plot_client, "rounds": plot_rounds, "scale": plot_scale,
         "fleet": fleet_rss.plot}
