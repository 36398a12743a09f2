"""The HAR data pipeline on small generated data in the real MotionSense layout (NumPy only)."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fedproto.har import data, synthetic
from fedproto.har.data import CHANNELS, MOTION_DIR, SUBJECTS_FILE, TRIALS, DataError
from fedproto.har.metrics import confusion_matrix, macro_f1, score

ROOT = Path(__file__).resolve().parents[1]
HEADER = "," + ",".join(CHANNELS)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Three synthetic subjects, every trial folder of the real dataset."""
    return synthetic.generate(tmp_path_factory.mktemp("motionsense"), seed=0, subjects=3)


@pytest.fixture
def copy(dataset, tmp_path) -> Path:
    """A private copy to break."""
    return Path(shutil.copytree(dataset, tmp_path / "copy"))


def write_recording(path: Path, header: str, rows: list[str]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")


def digest(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------- the synthetic layout


def test_synthetic_dataset_has_the_motionsense_layout(dataset):
    folders = sorted(p.name for p in (dataset / MOTION_DIR).iterdir())
    assert folders == sorted(f"{act}_{trial}" for act, trials in TRIALS.items() for trial in trials)
    assert len(folders) == 15
    for folder in folders:
        assert sorted(p.name for p in (dataset / MOTION_DIR / folder).iterdir()) == ["sub_1.csv", "sub_2.csv",
                                                                                     "sub_3.csv"]
    lines = (dataset / MOTION_DIR / "wlk_7" / "sub_2.csv").read_text().splitlines()
    assert lines[0] == HEADER == ",attitude.roll,attitude.pitch,attitude.yaw,gravity.x,gravity.y,gravity.z," \
                                 "rotationRate.x,rotationRate.y,rotationRate.z," \
                                 "userAcceleration.x,userAcceleration.y,userAcceleration.z"
    assert [line.split(",")[0] for line in lines[1:4]] == ["0", "1", "2"]  # the index column
    assert len(lines[1].split(",")) == 13
    # 50 Hz: first-session trials last about 36 s, second-session ones about 20 s (+-15 %).
    assert 0.85 * 36 * 50 <= len(lines) - 1 <= 1.15 * 36 * 50
    second = (dataset / MOTION_DIR / "wlk_15" / "sub_2.csv").read_text().count("\n") - 1
    assert 0.85 * 20 * 50 <= second <= 1.15 * 20 * 50
    info = (dataset / SUBJECTS_FILE).read_text().splitlines()
    assert info[0] == "code,weight,height,age,gender"
    assert [line.split(",")[0] for line in info[1:]] == ["1", "2", "3"]


def test_synthetic_generation_is_deterministic(dataset, tmp_path):
    again = synthetic.generate(tmp_path / "again", seed=0, subjects=3)
    other = synthetic.generate(tmp_path / "other", seed=1, subjects=3)
    assert digest(again) == digest(dataset)
    assert digest(other) != digest(dataset)


def test_synthetic_signals_are_consistent_and_differ_per_subject(dataset):
    recordings = data.load_recordings(dataset)
    for rec in recordings:
        gravity_norm = np.linalg.norm(rec.signals[:, 3:6], axis=1)
        assert np.all(np.abs(gravity_norm - 1.0) < 0.02), (rec.activity, rec.trial, rec.subject)
    # Non-IID by person: how the phone sits in the pocket moves a subject's standing gravity
    # vector more than repeating the trial does (8 simulated subjects, trials 6 and 14).
    people = synthetic.make_subjects(seed=0, count=8)
    standing = np.array([[synthetic.simulate("std", trial, p, seed=0)[:, 3:6].mean(axis=0) for trial in (6, 14)]
                         for p in people])
    within = np.linalg.norm(standing[:, 0] - standing[:, 1], axis=1).mean()
    centres = standing.mean(axis=1)
    between = np.mean([np.linalg.norm(a - b) for i, a in enumerate(centres) for b in centres[i + 1:]])
    assert between > 1.5 * within  # measured: 0.263 vs 0.126
    jogging = [r.signals[:, 9:12].std() for r in recordings if r.activity == "jog"]
    sitting = [r.signals[:, 9:12].std() for r in recordings if r.activity == "sit"]
    assert min(jogging) > 5 * max(sitting)


# ---------------------------------------------------------------------------- reading


def test_loader_reads_every_recording_in_channel_order(dataset):
    recordings = data.load_recordings(dataset)
    assert len(recordings) == 15 * 3
    assert {(r.activity, r.trial) for r in recordings} == {(a, t) for a, ts in TRIALS.items() for t in ts}
    one = next(r for r in recordings if (r.activity, r.trial, r.subject) == ("ups", 12, 3))
    table = np.loadtxt(dataset / MOTION_DIR / "ups_12" / "sub_3.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(one.signals, table[:, 1:])
    assert one.signals.shape[1] == 12


def test_loader_maps_columns_by_name_not_position(tmp_path):
    shuffled = list(reversed(CHANNELS))
    row = [str(float(i)) for i in range(len(shuffled))]  # value i in column shuffled[i]
    write_recording(tmp_path / MOTION_DIR / "sit_5" / "sub_1.csv", ",".join(["", *shuffled]),
                    [",".join(["0", *row]), ",".join(["1", *row])])
    (tmp_path / SUBJECTS_FILE).write_text("code,weight,height,age,gender\n1,70,175,30,1\n")
    [recording] = data.load_recordings(tmp_path)
    expected = [float(shuffled.index(channel)) for channel in CHANNELS]
    np.testing.assert_array_equal(recording.signals, [expected, expected])


def test_malformed_csv_is_named(copy):
    path = copy / MOTION_DIR / "jog_9" / "sub_2.csv"
    lines = path.read_text().splitlines()
    lines[5] = lines[5].replace(",", ",abc,", 1)  # one field too many, and not a number
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as caught:
        data.load_recordings(copy)
    assert str(caught.value).startswith(f"{path}: malformed CSV")


def test_non_numeric_value_is_named(copy):
    path = copy / MOTION_DIR / "dws_1" / "sub_1.csv"
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[4] = "n/a"
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="malformed CSV") as caught:
        data.load_recordings(copy)
    assert str(path) in str(caught.value)


def test_missing_column_is_named(copy):
    path = copy / MOTION_DIR / "std_6" / "sub_3.csv"
    table = np.loadtxt(path, delimiter=",", skiprows=1)
    header = HEADER.replace(",gravity.z", "")
    keep = [i for i in range(13) if i != 6]  # gravity.z is the 7th column (after the index)
    np.savetxt(path, table[:, keep], delimiter=",", header=header, comments="", fmt="%.6f")
    with pytest.raises(DataError) as caught:
        data.load_recordings(copy)
    assert str(caught.value) == f"{path}: missing column(s) gravity.z"


def test_empty_trial_folder_is_named(copy):
    folder = copy / MOTION_DIR / "wlk_8"
    for path in folder.iterdir():
        path.unlink()
    with pytest.raises(DataError) as caught:
        data.load_recordings(copy)
    assert str(caught.value) == f"{folder}: empty trial folder (no sub_<n>.csv inside)"


def test_missing_subjects_info_is_named(copy):
    (copy / SUBJECTS_FILE).unlink()
    with pytest.raises(DataError) as caught:
        data.load_recordings(copy)
    assert str(caught.value).startswith(f"{copy / SUBJECTS_FILE}: missing")


def test_subject_without_info_row_is_named(copy):
    info = copy / SUBJECTS_FILE
    info.write_text("\n".join(info.read_text().splitlines()[:-1]) + "\n")  # drop subject 3
    with pytest.raises(DataError, match=r"sub_3\.csv: subject 3 is not listed in .*data_subjects_info\.csv"):
        data.load_recordings(copy)


def test_unknown_trial_folder_and_empty_file_are_named(copy, tmp_path):
    strange = copy / MOTION_DIR / "swim_1"
    strange.mkdir()
    with pytest.raises(DataError, match=r"swim_1: not a trial folder"):
        data.load_recordings(copy)
    strange.rmdir()
    empty = copy / MOTION_DIR / "sit_13" / "sub_1.csv"
    empty.write_text("")
    with pytest.raises(DataError) as caught:
        data.load_recordings(copy)
    assert str(caught.value).startswith(f"{empty}: empty file")


def test_missing_motion_folder_is_named(tmp_path):
    (tmp_path / SUBJECTS_FILE).write_text("code,weight,height,age,gender\n1,70,175,30,1\n")
    with pytest.raises(DataError) as caught:
        data.load_recordings(tmp_path)
    assert str(caught.value).startswith(f"{tmp_path / MOTION_DIR}: missing folder")


# ---------------------------------------------------------------------------- windows, split, scaling


def test_windows_have_fixed_length_and_overlap():
    signals = np.arange(300 * 12, dtype=float).reshape(300, 12)
    windows = data.make_windows([data.Recording("wlk", 7, 4, signals)], window=128, step=64)
    assert windows.x.shape == (3, 128, 12)  # starts 0, 64, 128; 192 + 128 > 300
    for i, start in enumerate((0, 64, 128)):
        np.testing.assert_array_equal(windows.x[i], signals[start:start + 128])
    assert windows.label.tolist() == [data.ACTIVITIES.index("wlk")] * 3
    assert windows.subject.tolist() == [4] * 3 and windows.trial.tolist() == [7] * 3


def test_features_have_one_name_each(dataset):
    windows = data.make_windows(data.load_recordings(dataset)[:2], 128, 64)
    features = data.window_features(windows.x)
    assert features.shape == (len(windows), len(data.feature_names())) == (len(windows), 58)
    assert features.dtype == np.float32 and np.isfinite(features).all()
    names = data.feature_names()
    np.testing.assert_allclose(features[:, names.index("gravity.y.mean")], windows.x[:, :, 4].mean(axis=1), rtol=1e-5)


def test_split_never_shares_a_trial_between_train_and_test(dataset):
    windows = data.make_windows(data.load_recordings(dataset), 128, 64)
    train, test = data.split_by_trial(windows)
    train_recordings = set(zip(train.subject.tolist(), train.trial.tolist()))
    test_recordings = set(zip(test.subject.tolist(), test.trial.tolist()))
    assert train_recordings.isdisjoint(test_recordings)
    assert {t for _, t in test_recordings} == {11, 12, 13, 14, 15, 16}
    assert {t for _, t in train_recordings} == {1, 2, 3, 4, 5, 6, 7, 8, 9}
    assert len(train) + len(test) == len(windows)
    assert set(test.label.tolist()) == set(range(6))  # every activity is tested


def test_standardization_is_fitted_on_training_windows_only(dataset, copy):
    before = data.prepare(dataset, clients=3)
    # Change test recordings only (second session): scale them tenfold.
    for folder in (copy / MOTION_DIR).iterdir():
        if int(folder.name.split("_")[1]) >= 11:
            for path in folder.iterdir():
                table = np.loadtxt(path, delimiter=",", skiprows=1)
                table[:, 1:] *= 10
                np.savetxt(path, table, delimiter=",", header=HEADER, comments="", fmt=["%d"] + ["%.6f"] * 12)
    after = data.prepare(copy, clients=3)
    np.testing.assert_array_equal(after.standardizer.mean, before.standardizer.mean)
    np.testing.assert_array_equal(after.standardizer.std, before.standardizer.std)
    np.testing.assert_array_equal(after.train.x, before.train.x)
    assert not np.array_equal(after.test.x, before.test.x)
    # And it is exactly the training set's statistics: train features are centred and unit-scaled.
    np.testing.assert_allclose(before.train.x.mean(axis=0), 0.0, atol=1e-4)
    spread = before.train.x.std(axis=0)
    np.testing.assert_allclose(spread[spread > 0], 1.0, atol=1e-3)


def test_partition_by_subject_is_contiguous_disjoint_and_complete():
    groups = data.partition_subjects(list(range(1, 25)) * 3, 4)
    assert [g.tolist() for g in groups] == [list(range(1, 7)), list(range(7, 13)),
                                             list(range(13, 19)), list(range(19, 25))]
    assert [len(g) for g in data.partition_subjects(range(1, 25), 5)] == [5, 5, 5, 5, 4]
    with pytest.raises(ValueError, match="between 1 and the number of subjects"):
        data.partition_subjects([1, 2, 3], 4)


def test_prepared_clients_hold_only_their_subjects(dataset):
    prepared = data.prepare(dataset, clients=3)
    for client in range(3):
        own = prepared.client_train(client)
        assert set(own.subject.tolist()) == {client + 1}
        assert set(prepared.client_test(client).subject.tolist()) == {client + 1}
    assert sum(len(prepared.client_train(c)) for c in range(3)) == len(prepared.train)


# ---------------------------------------------------------------------------- scores, imports


def test_scores_accuracy_macro_f1_and_confusion():
    labels = np.array([0, 0, 1, 1, 2, 2])
    probabilities = np.eye(3)[[0, 1, 1, 1, 2, 0]] * 0.8 + 0.2 / 3
    scores = score(probabilities, labels)
    assert scores.accuracy == pytest.approx(4 / 6)
    assert scores.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    # F1 per class: 2TP/(pred+true): 2/4, 4/5, 2/3.
    assert scores.macro_f1 == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro_f1(confusion_matrix(np.array([0, 1]), np.array([0, 1]), 3)) == pytest.approx(2 / 3)
    assert scores.loss == pytest.approx(-np.mean(np.log([0.8 + 0.2 / 3] * 4 + [0.2 / 3] * 2)))


def test_only_the_model_module_imports_tensorflow():
    modules = ["fedproto.har"] + [f"fedproto.har.{name}" for name in
                                  ("data", "synthetic", "metrics", "settings", "client_app", "federated", "report",
                                   "cli")]
    code = (f"import sys\nfor m in {modules!r}:\n    __import__(m)\n"
            "print('tensorflow' in sys.modules, 'keras' in sys.modules, 'flwr' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False", "False"]
