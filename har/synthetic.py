"""A deterministic stand-in for MotionSense, written in exactly the dataset's layout. NumPy only.

The machine that runs the tutorial cannot download the real dataset, so ``python -m fedproto.har``
generates this one by default and reads it back with the same loader (``har.data``) that
reads a real copy. It is synthetic: the signals come from a simple model of a phone in a
trouser front pocket, not from people.

The model, per recording (subject x trial, 50 Hz):

- Gait (dws, ups, wlk, jog): a step phase at the activity's cadence drives the thigh pitch
  (swinging at stride rate), a lateral roll sway, and vertical/forward/lateral body
  acceleration with impact harmonics. Stairs trials contain landings, stretches of level
  walking, so some of their windows look like ``wlk``; cadence and amplitude ranges of
  dws/ups/wlk overlap across subjects.
- Posture (sit, std): the thigh is horizontal or vertical, with slow sway, fidgeting and
  weight shifts. How the phone sits in the pocket differs per subject, which blurs the
  sit/std boundary across people.
- Per subject (so a partition by subject is genuinely non-IID): cadence, movement
  intensity (tied to weight and height), phone orientation in the pocket, sensor noise and
  gyroscope bias. Per trial: small changes of cadence, intensity and heading.

Gravity and user acceleration are expressed in the phone frame through the attitude
(roll, pitch, yaw), rotation rate is the attitude's rate of change plus gyroscope noise.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedproto.har.data import CHANNELS, MOTION_DIR, SAMPLE_RATE_HZ, SUBJECT_COLUMNS, SUBJECTS_FILE, TRIALS

SUBJECTS = 24
FIRST_SESSION_SECONDS = 36.0  # trials 1-9
SECOND_SESSION_SECONDS = 20.0  # trials 11-16, shorter as in the real dataset


@dataclass(frozen=True)
class Gait:
    cadence_hz: float  # steps per second
    vertical_g: float  # amplitude of vertical body acceleration
    forward_g: float
    lateral_g: float
    impact: float  # weight of the sharp heel-strike harmonics
    thigh_mean: float  # thigh angle above horizontal, rad (pi/2 = upright)
    thigh_swing: float  # thigh pitch swing amplitude, rad
    landing_share: float  # fraction of the trial walked on level ground (stairs landings)


GAITS = {
    "wlk": Gait(1.85, 0.30, 0.20, 0.08, 0.35, 1.32, 0.34, 0.0),
    "dws": Gait(1.93, 0.34, 0.18, 0.10, 0.50, 1.35, 0.31, 0.30),
    "ups": Gait(1.72, 0.28, 0.17, 0.08, 0.28, 1.22, 0.39, 0.30),
    "jog": Gait(2.70, 0.85, 0.40, 0.18, 0.55, 1.22, 0.62, 0.0),
}
POSTURE_THIGH = {"std": 1.50, "sit": 0.22}  # thigh angle above horizontal, rad


@dataclass(frozen=True)
class Subject:
    code: int
    weight: float
    height: float
    age: float
    gender: int
    cadence: float  # multiplies every cadence
    intensity: float  # multiplies every acceleration amplitude
    pocket_pitch: float  # phone pitch relative to the thigh, rad
    pocket_roll: float  # phone roll in the pocket, rad
    posture_offset: float  # how this person sits and stands (thigh angle offset), rad
    noise: float  # multiplies sensor noise
    gyro_bias: np.ndarray  # rad/s, per axis


def make_subjects(seed: int, count: int = SUBJECTS) -> list[Subject]:
    rng = np.random.default_rng([seed, 0])
    subjects = []
    for code in range(1, count + 1):
        gender = int(rng.random() < 0.58)
        height = rng.normal(178 if gender else 165, 7)
        weight = rng.normal(22.5, 3.0) * (height / 100) ** 2
        subjects.append(Subject(
            code=code, weight=round(weight), height=round(height), age=int(rng.integers(18, 47)), gender=gender,
            cadence=float(np.exp(rng.normal(0, 0.08)) * (1 - 0.004 * (height - 171))),
            intensity=float(np.exp(rng.normal(0, 0.22)) * (weight / 70) ** 0.25),
            pocket_pitch=float(rng.normal(0, 0.30)),
            pocket_roll=float(rng.normal(0, 0.60)),
            posture_offset=float(rng.normal(0, 0.25)),
            noise=float(rng.uniform(0.7, 1.5)),
            gyro_bias=rng.normal(0, 0.02, 3),
        ))
    return subjects


def _smooth_noise(rng: np.random.Generator, n: int, scale: float, seconds: float) -> np.ndarray:
    """Low-pass Gaussian noise: a random walk pulled back to 0 with time constant ``seconds``."""
    alpha = 1.0 / (seconds * SAMPLE_RATE_HZ)
    shocks = rng.normal(0, scale * np.sqrt(2 * alpha), n)
    out = np.empty(n)
    level = rng.normal(0, scale)
    for i in range(n):  # an AR(1) filter; n is a few thousand
        level += -alpha * level + shocks[i]
        out[i] = level
    return out


def _landing_mask(rng: np.random.Generator, n: int, share: float) -> np.ndarray:
    """True where a stairs trial is on a landing: flights of 6-10 s, landings sized for ``share``."""
    mask = np.zeros(n, dtype=bool)
    if share <= 0:
        return mask
    position = int(rng.uniform(0, 4) * SAMPLE_RATE_HZ)
    while position < n:
        flight = int(rng.uniform(6, 10) * SAMPLE_RATE_HZ)
        landing = int(flight * share / (1 - share) * rng.uniform(0.7, 1.3))
        mask[position + flight: position + flight + landing] = True
        position += flight + landing
    return mask


def _gait_motion(rng, n, gait, subject, trial_factor):
    """Thigh pitch, roll sway and body acceleration (lateral, forward, vertical) for a gait trial."""
    walking = GAITS["wlk"]
    landing = _landing_mask(rng, n, gait.landing_share)

    def per_sample(attribute: str) -> np.ndarray:
        return np.where(landing, getattr(walking, attribute), getattr(gait, attribute))

    cadence = per_sample("cadence_hz") * subject.cadence * trial_factor[0] * (1 + _smooth_noise(rng, n, 0.03, 2.0))
    phase = 2 * np.pi * np.cumsum(cadence) / SAMPLE_RATE_HZ + rng.uniform(0, 2 * np.pi)
    amplitude = subject.intensity * trial_factor[1] * (1 + _smooth_noise(rng, n, 0.10, 1.5))
    impact = per_sample("impact")
    vertical = per_sample("vertical_g") * amplitude * (
        np.sin(phase) + impact * (0.6 * np.sin(2 * phase + 0.8) + 0.4 * np.sin(3 * phase + 1.9)))
    forward = per_sample("forward_g") * amplitude * np.sin(phase + np.pi / 2 + 0.3 * np.sin(phase / 2))
    lateral = per_sample("lateral_g") * amplitude * np.sin(phase / 2)
    thigh = per_sample("thigh_mean") + per_sample("thigh_swing") * np.sqrt(amplitude) * (
        np.sin(phase / 2) + 0.25 * np.sin(phase + 0.5))
    roll_sway = 0.12 * amplitude * np.sin(phase / 2 + 1.1)
    return thigh, roll_sway, np.stack([lateral, forward, vertical], axis=1)


def _posture_motion(rng, n, activity, subject):
    """Thigh pitch, roll sway and body acceleration for sitting or standing: sway, fidgets, shifts."""
    thigh = POSTURE_THIGH[activity] + subject.posture_offset + rng.normal(0, 0.08) + _smooth_noise(rng, n, 0.04, 3.0)
    roll_sway = _smooth_noise(rng, n, 0.05, 3.0)
    acceleration = np.stack([_smooth_noise(rng, n, 0.012, 0.3) for _ in range(3)], axis=1)
    for _ in range(rng.poisson(n / SAMPLE_RATE_HZ / 8)):  # a weight shift or fidget every ~8 s
        start, length = int(rng.integers(0, n)), int(rng.integers(25, 100))
        burst = np.hanning(min(length, n - start))
        thigh[start:start + len(burst)] += rng.normal(0, 0.08) * burst
        acceleration[start:start + len(burst)] += rng.normal(0, 0.06, 3) * burst[:, None]
    return thigh, roll_sway, acceleration


def simulate(activity: str, trial: int, subject: Subject, seed: int) -> np.ndarray:
    """One recording, (samples, 12) in CHANNELS order."""
    rng = np.random.default_rng([seed, subject.code, trial])
    seconds = FIRST_SESSION_SECONDS if trial < 10 else SECOND_SESSION_SECONDS
    n = int(seconds * rng.uniform(0.85, 1.15) * SAMPLE_RATE_HZ)
    if activity in GAITS:
        trial_factor = np.exp(rng.normal(0, [0.03, 0.08]))
        thigh, roll_sway, body = _gait_motion(rng, n, GAITS[activity], subject, trial_factor)
    else:
        thigh, roll_sway, body = _posture_motion(rng, n, activity, subject)

    pitch = thigh + subject.pocket_pitch
    roll = subject.pocket_roll + roll_sway
    heading = rng.uniform(-np.pi, np.pi) + np.cumsum(rng.normal(0, 0.004, n))
    yaw = _wrap(heading)

    # Phone-to-world rotation R = Rx(pitch) @ Ry(roll); world z points up.
    cp, sp, cr, sr = np.cos(pitch), np.sin(pitch), np.cos(roll), np.sin(roll)
    gravity = np.stack([cp * sr, -sp, -cp * cr], axis=1)  # R^T (0, 0, -1)
    lat, fwd, up = body.T
    b1, b2 = cp * fwd + sp * up, -sp * fwd + cp * up  # Rx(pitch)^T
    user_acceleration = np.stack([cr * lat - sr * b2, b1, sr * lat + cr * b2], axis=1)  # Ry(roll)^T

    rates = np.stack([np.gradient(pitch), np.gradient(roll), np.gradient(heading)], axis=1) * SAMPLE_RATE_HZ
    noise = subject.noise
    signals = np.concatenate([
        _reported_attitude(roll, pitch, yaw) + rng.normal(0, 0.003 * noise, (n, 3)),
        gravity + rng.normal(0, 0.002 * noise, (n, 3)),
        rates + subject.gyro_bias + rng.normal(0, 0.04 * noise, (n, 3)),
        user_acceleration + rng.normal(0, 0.02 * noise, (n, 3)),
    ], axis=1)
    return signals


def _wrap(angle: np.ndarray) -> np.ndarray:
    return np.angle(np.exp(1j * angle))  # to (-pi, pi]


def _reported_attitude(roll: np.ndarray, pitch: np.ndarray, yaw: np.ndarray) -> np.ndarray:
    """(roll, pitch, yaw) as the phone reports them: pitch within [-pi/2, pi/2].

    Past upright, the same orientation is pitch' = +-pi - pitch with roll and yaw turned by pi,
    so the reported roll and yaw jump while the phone barely moves (as in the real data).
    """
    flipped = np.abs(pitch) > np.pi / 2
    reported_pitch = np.where(flipped, np.sign(pitch) * np.pi - pitch, pitch)
    turn = np.where(flipped, np.pi, 0.0)
    return np.stack([_wrap(roll + turn), reported_pitch, _wrap(yaw + turn)], axis=1)


def generate(root: Path, *, seed: int = 0, subjects: int = SUBJECTS) -> Path:
    """Write the synthetic dataset under ``root`` (same files and columns as MotionSense)."""
    root = Path(root)
    people = make_subjects(seed, subjects)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / SUBJECTS_FILE, "w") as handle:
        handle.write(",".join(SUBJECT_COLUMNS) + "\n")
        for p in people:
            handle.write(f"{p.code},{p.weight:g},{p.height:g},{p.age},{p.gender}\n")
    header = "," + ",".join(CHANNELS)  # the unnamed leading column is the row index
    for activity, trials in TRIALS.items():
        for trial in trials:
            folder = root / MOTION_DIR / f"{activity}_{trial}"
            folder.mkdir(parents=True, exist_ok=True)
            for person in people:
                signals = simulate(activity, trial, person, seed)
                table = np.column_stack([np.arange(len(signals)), signals])
                np.savetxt(folder / f"sub_{person.code}.csv", table, delimiter=",", header=header,
                           comments="", fmt=["%d"] + ["%.6f"] * len(CHANNELS))
    return root
