"""Save the global parameters and the History after every round, so a run can resume.

Layout of the checkpoint directory::

    parameters-round-0003.npz   global parameters after round 3 (arr_0, arr_1, ... in order)
    history.json                History up to and including round 3

Both files are written to a temporary name, flushed to disk and renamed into place, and the
parameters always go first: ``history.json`` is the commit point. Whatever instant the server
dies at, history.json names a round whose parameters file is complete, so no completed round
is lost and no half-written one is read back.
"""

from __future__ import annotations

import logging
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from server.history import History
from server.messages import NDArrays

log = logging.getLogger("fedproto.server")

HISTORY_FILE = "history.json"


class CheckpointError(Exception):
    """A checkpoint directory whose files are missing or unreadable."""


def parameters_file(directory: Path, server_round: int) -> Path:
    return directory / f"parameters-round-{server_round:04d}.npz"


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


def save(directory: Path, server_round: int, parameters: NDArrays, history: History) -> None:
    """Record round ``server_round`` as complete; older parameter files are removed after."""
    directory.mkdir(parents=True, exist_ok=True)
    save_npz(parameters_file(directory, server_round), parameters)
    history_text = history.to_json()
    write_atomically(directory / HISTORY_FILE, lambda file: file.write(history_text.encode()))
    for old in directory.glob("parameters-round-*.npz"):
        if old != parameters_file(directory, server_round):
            old.unlink()


def load(directory: Path) -> tuple[NDArrays, History] | None:
    """(parameters, history) of the last complete round, or None if nothing was saved yet."""
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
    return load_npz(path), history


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
