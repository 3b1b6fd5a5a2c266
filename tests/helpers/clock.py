"""A clock for unit tests of waits and deadlines: time moves only when the code sleeps."""

from __future__ import annotations


class FakeClock:
    """Call it for the time; pass ``sleep`` where the code sleeps (each sleep is recorded)."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
