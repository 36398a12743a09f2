"""What a run leaves behind: the console table, results.json and two PNGs (matplotlib, Agg)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fedproto.har.data import ACTIVITIES, ACTIVITY_NAMES
from fedproto.har.federated import FederatedOutcome
from fedproto.har.metrics import Scores

ACCURACY_PLOT = "federated_accuracy.png"
CONFUSION_PLOT = "confusion_matrix.png"
RESULTS_JSON = "results.json"


def mean_scores(scores: list[Scores]) -> dict[str, float]:
    return {"accuracy": float(np.mean([s.accuracy for s in scores])),
            "macro_f1": float(np.mean([s.macro_f1 for s in scores]))}


def table(centralized: Scores, local: list[Scores], client_subjects: list[np.ndarray],
          outcomes: list[FederatedOutcome], epochs: int) -> str:
    """The results as aligned text: one line per paradigm, federated one per server and round."""
    rows = [(f"centralized ({epochs} epochs on all training windows)", centralized.accuracy, centralized.macro_f1)]
    for number, (scores, subjects) in enumerate(zip(local, client_subjects), start=1):
        rows.append((f"local-only client {number} (subjects {_span(subjects)})", scores.accuracy, scores.macro_f1))
    local_mean = mean_scores(local)
    rows.append(("local-only, mean over clients", local_mean["accuracy"], local_mean["macro_f1"]))
    for federated in outcomes:
        for record in federated.rounds:
            name = "initial model" if record.round == 0 else f"round {record.round}"
            rows.append((f"federated ({federated.server}) {name}", record.scores.accuracy, record.scores.macro_f1))
    width = max(len(name) for name, _, _ in rows)
    lines = [f"{'paradigm':<{width}}  accuracy  macro-F1", "-" * (width + 20)]
    lines += [f"{name:<{width}}  {accuracy:8.4f}  {f1:8.4f}" for name, accuracy, f1 in rows]
    return "\n".join(lines)


def _span(subjects: np.ndarray) -> str:
    codes = [int(s) for s in subjects]
    if codes == list(range(codes[0], codes[-1] + 1)) and len(codes) > 2:
        return f"{codes[0]}-{codes[-1]}"
    return ",".join(map(str, codes))


def results_document(data: dict, settings: dict, centralized: Scores, local: list[Scores],
                     client_subjects: list[np.ndarray], outcomes: list[FederatedOutcome]) -> dict:
    """Everything measured, and nothing that changes between two identical runs (no timings).

    ``federated`` is the first server's run; ``federated_by_server`` holds every server's run of
    the same job, side by side (one entry when a single server ran).
    """
    return {
        "classes": list(ACTIVITIES),
        "data": data,
        "settings": settings,
        "centralized": centralized.as_dict(),
        "local_only": {
            "clients": [{"client": number, "subjects": [int(s) for s in subjects], **scores.as_dict()}
                        for number, (scores, subjects) in enumerate(zip(local, client_subjects), start=1)],
            "mean": mean_scores(local),
        },
        "federated": _federated_entry(outcomes[0]),
        "federated_by_server": {outcome.server: _federated_entry(outcome) for outcome in outcomes},
    }


def _federated_entry(federated: FederatedOutcome) -> dict:
    return {
        "server": federated.server,
        "rounds": [{"round": r.round, "loss": r.scores.loss, "accuracy": r.scores.accuracy,
                    "macro_f1": r.scores.macro_f1,
                    "client_accuracy": {str(k): v for k, v in sorted(r.client_accuracy.items())}}
                   for r in federated.rounds],
        "final": federated.final.scores.as_dict(),
    }


def write_json(document: dict, out: Path) -> Path:
    path = out / RESULTS_JSON
    path.write_text(json.dumps(document, indent=1) + "\n")
    return path


def plot_accuracy(outcomes: list[FederatedOutcome], centralized: Scores, local: list[Scores], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r.round for r in outcomes[0].rounds]
    figure, axes = plt.subplots(figsize=(7, 4.2), dpi=110)
    markers, colors = ["o", "s", "^"], ["tab:blue", "tab:orange", "tab:purple"]  # green and red: baselines
    for index, federated in enumerate(outcomes):  # same job, so identical curves overlap: offset the markers
        axes.plot([r.round for r in federated.rounds], [r.scores.accuracy for r in federated.rounds],
                  marker=markers[index % len(markers)], color=colors[index % len(colors)],
                  markersize=7 - 2 * index, linewidth=2.2 - 0.6 * index,
                  label=f"federated, FedAvg ({federated.server} server, {len(local)} clients)")
    axes.axhline(centralized.accuracy, color="tab:green", linestyle="--",
                 label=f"centralized ({centralized.accuracy:.3f})")
    local_mean = mean_scores(local)["accuracy"]
    axes.axhline(local_mean, color="tab:red", linestyle=":", label=f"local-only, mean ({local_mean:.3f})")
    axes.set_xlabel("round (0 = initial model)")
    axes.set_ylabel("test accuracy")
    axes.set_xticks(rounds)
    axes.set_ylim(0.0, 1.0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    axes.set_title("HAR: federated test accuracy per round")
    figure.tight_layout()
    path = out / ACCURACY_PLOT
    figure.savefig(path)
    plt.close(figure)
    return path


def plot_confusion(scores: Scores, out: Path, title: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = scores.confusion
    share = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)  # per true class
    names = [ACTIVITY_NAMES[a] for a in ACTIVITIES]
    figure, axes = plt.subplots(figsize=(6.2, 5.4), dpi=110)
    image = axes.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    for true in range(len(names)):
        for predicted in range(len(names)):
            axes.text(predicted, true, f"{counts[true, predicted]}\n{share[true, predicted]:.0%}",
                      ha="center", va="center", fontsize=8,
                      color="white" if share[true, predicted] > 0.6 else "black")
    axes.set_xticks(range(len(names)), names, rotation=35, ha="right")
    axes.set_yticks(range(len(names)), names)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axes, fraction=0.046, pad=0.04, label="share of the true class")
    figure.tight_layout()
    path = out / CONFUSION_PLOT
    figure.savefig(path)
    plt.close(figure)
    return path
