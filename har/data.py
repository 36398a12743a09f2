"""MotionSense (DeviceMotion, 50 Hz) from disk to standardized feature windows. NumPy only.

The layout read here is the one of the published dataset (and of ``har.synthetic``)::

    ROOT/data_subjects_info.csv                 code, weight, height, age, gender
    ROOT/A_DeviceMotion_data/<act>_<trial>/sub_<n>.csv
        a leading index column, then attitude.roll, attitude.pitch, attitude.yaw,
        gravity.x/y/z, rotationRate.x/y/z, userAcceleration.x/y/z

Pipeline: recordings (one per subject x trial) -> fixed-length windows with overlap ->
per-window features -> train/test split by trial number (a recording is never cut between
train and test) -> standardization fitted on the training windows only -> partition of the
training windows by subject, one group of subjects per client.

Anything wrong on disk raises :class:`DataError` naming the file or folder.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

SAMPLE_RATE_HZ = 50
ACTIVITIES = ("dws", "ups", "wlk", "jog", "sit", "std")
ACTIVITY_NAMES = {
    "dws": "downstairs", "ups": "upstairs", "wlk": "walking",
    "jog": "jogging", "sit": "sitting", "std": "standing",
}
# The dataset's trial folders: trials 1-9 are the first (long) session, 11-16 the second.
TRIALS = {
    "dws": (1, 2, 11), "ups": (3, 4, 12), "wlk": (7, 8, 15),
    "jog": (9, 16), "sit": (5, 13), "std": (6, 14),
}
SECOND_SESSION_TRIALS = (11, 12, 13, 14, 15, 16)
CHANNELS = (
    "attitude.roll", "attitude.pitch", "attitude.yaw",
    "gravity.x", "gravity.y", "gravity.z",
    "rotationRate.x", "rotationRate.y", "rotationRate.z",
    "userAcceleration.x", "userAcceleration.y", "userAcceleration.z",
)
SUBJECT_COLUMNS = ("code", "weight", "height", "age", "gender")
MOTION_DIR = "A_DeviceMotion_data"
SUBJECTS_FILE = "data_subjects_info.csv"

_TRIAL_DIR = re.compile(r"^([a-z]{3})_(\d+)$")
_SUBJECT_FILE = re.compile(r"^sub_(\d+)\.csv$")


class DataError(ValueError):
    """The dataset on disk is not in the MotionSense layout; the message names the file."""


@dataclass(frozen=True)
class Recording:
    """One subject doing one trial: samples x 12 channels, in CHANNELS order."""

    activity: str
    trial: int
    subject: int
    signals: np.ndarray


@dataclass(frozen=True)
class Windows:
    """Fixed-length windows and where each came from (one row per window)."""

    x: np.ndarray  # (n, window, channels) raw windows, or (n, features) once featurized
    label: np.ndarray  # activity index into ACTIVITIES
    subject: np.ndarray
    trial: np.ndarray

    def __len__(self) -> int:
        return len(self.label)

    def select(self, mask: np.ndarray) -> Windows:
        return Windows(self.x[mask], self.label[mask], self.subject[mask], self.trial[mask])

    def with_x(self, x: np.ndarray) -> Windows:
        return Windows(x, self.label, self.subject, self.trial)


# ---------------------------------------------------------------------------- reading


def load_subjects_info(root: Path) -> dict[int, dict[str, float]]:
    """data_subjects_info.csv -> {code: {weight, height, age, gender}}."""
    path = Path(root) / SUBJECTS_FILE
    if not path.is_file():
        raise DataError(f"{path}: missing (every MotionSense copy has {SUBJECTS_FILE} next to {MOTION_DIR}/)")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in SUBJECT_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
        info: dict[int, dict[str, float]] = {}
        for line, row in enumerate(reader, start=2):
            try:
                code = int(float(row["code"]))
                info[code] = {c: float(row[c]) for c in SUBJECT_COLUMNS[1:]}
            except (TypeError, ValueError):
                raise DataError(f"{path}, line {line}: malformed row {row!r}") from None
    if not info:
        raise DataError(f"{path}: no subjects listed")
    return info


def read_recording_csv(path: Path) -> np.ndarray:
    """One sub_<n>.csv -> (samples, 12) float64 in CHANNELS order, whatever the column order."""
    with open(path, newline="") as handle:
        header = next(csv.reader(handle), None)
    if header is None:
        raise DataError(f"{path}: empty file (expected a header with {', '.join(CHANNELS)})")
    header = [name.strip() for name in header]
    missing = [c for c in CHANNELS if c not in header]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    columns = [header.index(c) for c in CHANNELS]
    try:
        table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2, dtype=np.float64)
    except ValueError as error:
        raise DataError(f"{path}: malformed CSV ({error})") from None
    if table.shape[0] == 0:
        raise DataError(f"{path}: no samples after the header")
    if table.shape[1] != len(header):
        raise DataError(f"{path}: rows have {table.shape[1]} fields, the header has {len(header)}")
    signals = table[:, columns]
    if not np.isfinite(signals).all():
        row = int(np.argwhere(~np.isfinite(signals))[0, 0]) + 2
        raise DataError(f"{path}, line {row}: non-finite value")
    return signals


def load_recordings(root: Path) -> list[Recording]:
    """Every sub_<n>.csv under ROOT/A_DeviceMotion_data, sorted by (activity, trial, subject)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (expected {MOTION_DIR}/ and {SUBJECTS_FILE} inside)")
    info = load_subjects_info(root)
    motion = root / MOTION_DIR
    if not motion.is_dir():
        raise DataError(f"{motion}: missing folder (expected {MOTION_DIR}/<act>_<trial>/sub_<n>.csv)")
    recordings = []
    for trial_dir in sorted(p for p in motion.iterdir() if not p.name.startswith((".", "_"))):
        match = _TRIAL_DIR.match(trial_dir.name)
        if not trial_dir.is_dir() or not match or match.group(1) not in ACTIVITIES:
            raise DataError(f"{trial_dir}: not a trial folder <act>_<trial> with act in {', '.join(ACTIVITIES)}")
        activity, trial = match.group(1), int(match.group(2))
        files = sorted(p for p in trial_dir.iterdir() if _SUBJECT_FILE.match(p.name))
        if not files:
            raise DataError(f"{trial_dir}: empty trial folder (no sub_<n>.csv inside)")
        for path in files:
            subject = int(_SUBJECT_FILE.match(path.name).group(1))
            if subject not in info:
                raise DataError(f"{path}: subject {subject} is not listed in {root / SUBJECTS_FILE}")
            recordings.append(Recording(activity, trial, subject, read_recording_csv(path)))
    if not recordings:
        raise DataError(f"{motion}: no trial folders")
    recordings.sort(key=lambda r: (ACTIVITIES.index(r.activity), r.trial, r.subject))
    return recordings


# ---------------------------------------------------------------------------- windows, features


def make_windows(recordings: Sequence[Recording], window: int, step: int) -> Windows:
    """Cut each recording into windows of ``window`` samples every ``step`` samples.

    The tail shorter than a window is dropped; so is a recording shorter than one window.
    """
    if window < 2 or step < 1:
        raise ValueError(f"window must be >= 2 and step >= 1, got window={window}, step={step}")
    pieces, labels, subjects, trials = [], [], [], []
    for rec in recordings:
        count = (len(rec.signals) - window) // step + 1
        if count <= 0:
            continue
        starts = np.arange(count) * step
        pieces.append(rec.signals[starts[:, None] + np.arange(window)])
        labels.append(np.full(count, ACTIVITIES.index(rec.activity)))
        subjects.append(np.full(count, rec.subject))
        trials.append(np.full(count, rec.trial))
    if not pieces:
        raise DataError(f"no recording is at least {window} samples long")
    return Windows(np.concatenate(pieces), np.concatenate(labels),
                   np.concatenate(subjects), np.concatenate(trials))


# Frequency bands (Hz) of the acceleration magnitude spectrum: gait cadence lives in 1.5-3 Hz.
SPECTRAL_BANDS_HZ = ((0.3, 1.2), (1.2, 2.0), (2.0, 2.8), (2.8, 4.0), (4.0, 8.0), (8.0, 25.0))


def feature_names() -> list[str]:
    names = [f"{c}.{s}" for c in CHANNELS for s in ("mean", "std", "min", "max")]
    for signal in ("userAcceleration", "rotationRate"):
        names += [f"|{signal}|.mean", f"|{signal}|.std"]
    names += [f"|userAcceleration|.band_{lo:g}-{hi:g}Hz" for lo, hi in SPECTRAL_BANDS_HZ]
    return names


def window_features(x: np.ndarray) -> np.ndarray:
    """(n, window, 12) raw windows -> (n, len(feature_names())) per-window features."""
    stats = np.stack([x.mean(axis=1), x.std(axis=1), x.min(axis=1), x.max(axis=1)], axis=2)
    per_channel = stats.reshape(len(x), -1)  # channel-major, matching feature_names()
    acceleration = np.linalg.norm(x[:, :, 9:12], axis=2)
    rotation = np.linalg.norm(x[:, :, 6:9], axis=2)
    magnitudes = np.stack([acceleration.mean(1), acceleration.std(1), rotation.mean(1), rotation.std(1)], axis=1)
    spectrum = np.abs(np.fft.rfft(acceleration - acceleration.mean(axis=1, keepdims=True), axis=1)) ** 2
    frequencies = np.fft.rfftfreq(x.shape[1], d=1.0 / SAMPLE_RATE_HZ)
    bands = np.stack(
        [spectrum[:, (frequencies >= lo) & (frequencies < hi)].sum(axis=1) for lo, hi in SPECTRAL_BANDS_HZ], axis=1
    )
    log_bands = np.log1p(bands / x.shape[1])
    return np.concatenate([per_channel, magnitudes, log_bands], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------- split, scale, partition


def split_by_trial(windows: Windows, test_trials: Sequence[int] = SECOND_SESSION_TRIALS) -> tuple[Windows, Windows]:
    """Train = windows of trials not in ``test_trials``; test = the others.

    A trial number names one recording per subject, so the windows of a (subject, trial)
    recording all land on the same side.
    """
    is_test = np.isin(windows.trial, np.asarray(test_trials))
    train, test = windows.select(~is_test), windows.select(is_test)
    if not len(train) or not len(test):
        raise DataError(f"split by test trials {tuple(test_trials)} leaves an empty train or test set")
    return train, test


@dataclass(frozen=True)
class Standardizer:
    """Per-feature (x - mean) / std, with mean and std taken from the training windows only."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray) -> Standardizer:
        std = x.std(axis=0)
        return cls(x.mean(axis=0), np.where(std > 1e-8, std, 1.0))  # constant features stay finite

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32)


def partition_subjects(subjects: Sequence[int], clients: int) -> list[np.ndarray]:
    """Sorted subject codes in ``clients`` contiguous groups of near-equal size (non-IID by person)."""
    unique = np.unique(np.asarray(subjects))
    if not 1 <= clients <= len(unique):
        raise ValueError(f"--clients must be between 1 and the number of subjects ({len(unique)}), got {clients}")
    return np.array_split(unique, clients)


@dataclass(frozen=True)
class Prepared:
    """What every paradigm trains and tests on."""

    train: Windows  # standardized features
    test: Windows
    standardizer: Standardizer
    client_subjects: list[np.ndarray]
    subjects_info: dict[int, dict[str, float]]

    def client_train(self, client: int) -> Windows:
        return self.train.select(np.isin(self.train.subject, self.client_subjects[client]))

    def client_test(self, client: int) -> Windows:
        return self.test.select(np.isin(self.test.subject, self.client_subjects[client]))


def prepare(root: Path, *, clients: int, window: int = 128, step: int = 64,
            test_trials: Sequence[int] = SECOND_SESSION_TRIALS) -> Prepared:
    """Read ROOT, window, featurize, split by trial, standardize on train, partition by subject."""
    recordings = load_recordings(root)
    windows = make_windows(recordings, window, step)
    train, test = split_by_trial(windows.with_x(window_features(windows.x)), test_trials)
    standardizer = Standardizer.fit(train.x)
    return Prepared(
        train=train.with_x(standardizer.transform(train.x)),
        test=test.with_x(standardizer.transform(test.x)),
        standardizer=standardizer,
        client_subjects=partition_subjects(train.subject, clients),
        subjects_info=load_subjects_info(root),
    )
