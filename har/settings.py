"""The knobs of one run, shared by the three paradigms (so they get the same budget)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Settings:
    clients: int = 4
    rounds: int = 10
    local_epochs: int = 2
    batch_size: int = 32
    learning_rate: float = 1e-3
    hidden: tuple[int, ...] = (64, 32)
    window: int = 128  # samples (2.56 s at 50 Hz)
    step: int = 64  # samples between window starts (50 % overlap)
    seed: int = 0

    @property
    def epochs(self) -> int:
        """Passes over a data set each paradigm gets: federated rounds x local epochs."""
        return self.rounds * self.local_epochs

    def as_dict(self) -> dict:
        return {**asdict(self), "hidden": list(self.hidden), "epochs_per_paradigm": self.epochs}
