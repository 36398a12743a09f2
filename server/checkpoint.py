"""Save the global parameters and the History after every round, so a run can resume.

Layout of the checkpoint directory::

    parameters-round-0003.npz   global parameters after round 3 (arr_0, arr_1, ... in order)
    strategy-round-0003.npz     the strategy's own arrays, if it has any (FedAdam's moments)
    history.json                History up to and including round 3

Each file is written to a temporary name, flushed to disk and renamed into place, and the
arrays always go first: ``history.json`` is the commit point. Whatever instant the server
dies at, history.json names a round whose parameters file is complete, so no completed round
is lost and no half-written one is read back.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedproto.errors import FedprotoError
from fedproto.server.history import History
from fedproto.server_role import NDArrays

log = logging.getLogger("fedproto.server")

HISTORY_FILE = "history.json"


class CheckpointError(FedprotoError):
    """A checkpoint directory whose files are missing or unreadable."""


@dataclass
class Restored:
    """What a checkpoint gives back: the state after its last complete round."""

    parameters: NDArrays
    history: History
    strategy_state: dict[str, NDArrays] = field(default_factory=dict)


def parameters_file(directory: Path, server_round: int) -> Path:
    return directory / f"parameters-round-{server_round:04d}.npz"


def strategy_file(directory: Path, server_round: int) -> Path:
    return directory / f"strategy-round-{server_round:04d}.npz"


def save_npz(path: Path, parameters: NDArrays) -> None:
    """Global parameters as an .npz archive (arr_0, arr_1, ...), written atomically."""
    write_atomically(path, lambda file: np.savez(file, *parameters))


def load_npz(path: Path) -> NDArrays:
    """An .npz archive as a list of arrays, in arr_0, arr_1, ... order. Never unpickles."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return [archive[f"arr_{index}"] for index in range(len(archive.files))]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a parameters archive ({error})") from None


def save(
    directory: Path, server_round: int, parameters: NDArrays, history: History,
    strategy_state: dict[str, NDArrays] | None = None,
) -> None:
    """Record round ``server_round`` as complete; older round files are removed after."""
    directory.mkdir(parents=True, exist_ok=True)
    keep = [parameters_file(directory, server_round)]
    save_npz(keep[0], parameters)
    if strategy_state:
        keep.append(strategy_file(directory, server_round))
        # One archive entry per array: "m_t.0", "m_t.1", ... keeps each list in order. Values typed Any:
        # mypy would match a ** dict of arrays against savez's keyword allow_pickle: bool as well.
        arrays: dict[str, Any] = {f"{name}.{index}": array for name, values in strategy_state.items()
                                  for index, array in enumerate(values)}
        write_atomically(keep[1], lambda file: np.savez(file, **arrays))
    history_text = history.to_json()
    write_atomically(directory / HISTORY_FILE, lambda file: file.write(history_text.encode()))
    for old in [*directory.glob("parameters-round-*.npz"), *directory.glob("strategy-round-*.npz")]:
        if old not in keep:
            old.unlink()


def load(directory: Path) -> Restored | None:
    """The state after the last complete round, or None if nothing was saved yet."""
    history_path = directory / HISTORY_FILE
    if not history_path.exists():
        return None
    try:
        history = History.from_json(history_path.read_text())
    except (ValueError, KeyError, TypeError) as error:
        raise CheckpointError(f"{history_path}: not a History ({error})") from None
    path = parameters_file(directory, history.last_round)
    if not path.exists():
        raise CheckpointError(f"{path} is missing (history.json says round {history.last_round} is complete)")
    return Restored(load_npz(path), history, _load_strategy_state(strategy_file(directory, history.last_round)))


def _load_strategy_state(path: Path) -> dict[str, NDArrays]:
    if not path.exists():
        return {}
    state: dict[str, dict[int, np.ndarray]] = {}
    try:
        with np.load(path, allow_pickle=False) as archive:
            for key in archive.files:
                name, _, index = key.rpartition(".")
                state.setdefault(name, {})[int(index)] = archive[key]
    except (OSError, ValueError, zipfile.BadZipFile) as error:
        raise CheckpointError(f"{path}: not a strategy state archive ({error})") from None
    return {name: [arrays[i] for i in sorted(arrays)] for name, arrays in state.items()}


def write_atomically(path: Path, write) -> None:
    """``write(file)`` fills a temporary file next to ``path``, which then replaces ``path``."""
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            write(file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # make the rename itself durable
    finally:
        os.close(directory)
