"""Keeping a source registry's pull budget above a floor (Docker Hub's ``ratelimit-*`` headers).

Docker Hub reports ``ratelimit-limit: 100;w=21600`` and ``ratelimit-remaining: 76;w=21600`` on
every manifest response, HEADs included, and HEADs are free. So the budget is known before any
copy, refreshed by every HEAD, and re-checking it while waiting costs nothing.

Before a copy the runner asks :meth:`RateLimitGate.acquire` for the copy's (over-)estimated pulls.
If that would take the remaining budget below ``floor``, the gate either waits — re-checking
with a free HEAD every ``poll_interval`` seconds, up to ``max_wait`` — or stops: that copy and
every later copy from the same registry fail with a message saying what happened and what to do,
while images that are already up to date still pass (they cost no pulls). A registry that sends
no such headers has no known limit and is never held back.

Clock and sleep are injectable, so the rules are unit-tested without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from kiln.errors import RegistryTransientError
from kiln.mirror.config import RateLimitPolicy
from kiln.registry.media import RateLimit


class RateLimitStop(RegistryTransientError):
    """A copy was not started because it would exhaust the source's pull limit."""


@dataclass
class _Budget:
    remaining: int | None = None
    limit: int | None = None
    window: int | None = None
    reserved: int = 0  # pulls of copies in flight
    stopped: str | None = None  # the message once copying from this registry was stopped


class RateLimitGate:
    """Per-registry pull budgets shared by the worker threads of one mirror run."""

    def __init__(self, policy: RateLimitPolicy, *,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 notify: Callable[[str], None] | None = None) -> None:
        self.policy = policy
        self._clock = clock
        self._sleep = sleep
        self._notify = notify or (lambda message: None)
        self._lock = threading.Lock()
        self._budgets: dict[str, _Budget] = {}
        self.waited: dict[str, float] = {}

    def _budget(self, host: str) -> _Budget:
        return self._budgets.setdefault(host, _Budget())

    def observe(self, host: str, ratelimit: RateLimit | None) -> None:
        """Record what a response's headers said (the newest answer wins)."""
        if ratelimit is None or ratelimit.remaining is None:
            return
        with self._lock:
            budget = self._budget(host)
            budget.remaining = ratelimit.remaining
            budget.limit = ratelimit.limit
            budget.window = ratelimit.window_seconds

    def snapshot(self, host: str) -> tuple[int | None, int | None, int | None]:
        """``(remaining, limit, window seconds)`` as last seen for ``host``."""
        with self._lock:
            budget = self._budget(host)
            return budget.remaining, budget.limit, budget.window

    def stopped(self, host: str) -> str | None:
        with self._lock:
            return self._budget(host).stopped

    def stop(self, host: str, message: str) -> None:
        """Stop all further copies from ``host`` (e.g. after a 429 from the copy itself)."""
        with self._lock:
            budget = self._budget(host)
            budget.stopped = budget.stopped or message

    def acquire(self, host: str, pulls: int, what: str,
                refresh: Callable[[], RateLimit | None]) -> None:
        """Reserve ``pulls`` for a copy, waiting or raising :class:`RateLimitStop`.

        ``refresh`` re-reads the headers with a free HEAD while waiting.
        """
        deadline = self._clock() + self.policy.max_wait
        while True:
            with self._lock:
                budget = self._budget(host)
                if budget.stopped:
                    raise RateLimitStop(f"{what}: not copied: {budget.stopped}",
                                        hint=self._hint())
                if budget.remaining is None:
                    budget.reserved += pulls
                    return
                available = budget.remaining - budget.reserved - pulls
                if available >= self.policy.floor:
                    budget.reserved += pulls
                    return
                state = self._describe(host, budget, pulls)
            now = self._clock()
            if now >= deadline:
                message = (f"{state}; stopped copying from {host}"
                           + (f" after waiting {self.policy.max_wait:g}s"
                              if self.policy.max_wait > 0 else ""))
                self.stop(host, message)
                raise RateLimitStop(f"{what}: not copied: {message}", hint=self._hint())
            pause = min(self.policy.poll_interval, max(deadline - now, 0.0))
            self._notify(f"{state}; waiting {pause:g}s (up to {self.policy.max_wait:g}s in all) "
                         "for the limit to recover")
            self._sleep(pause)
            with self._lock:
                self.waited[host] = self.waited.get(host, 0.0) + pause
            try:
                self.observe(host, refresh())
            except Exception as exc:  # noqa: BLE001 - a failed re-check just means "still wait"
                self._notify(f"{host}: re-checking the rate limit failed: {exc}")

    def release(self, host: str, pulls: int, *, spent: bool) -> None:
        """A copy finished: free its reservation; if it ran, count its pulls as spent until the
        next header says otherwise."""
        with self._lock:
            budget = self._budget(host)
            budget.reserved = max(0, budget.reserved - pulls)
            if spent and budget.remaining is not None:
                budget.remaining = max(0, budget.remaining - pulls)

    def _describe(self, host: str, budget: _Budget, pulls: int) -> str:
        limit = f" of {budget.limit}" if budget.limit is not None else ""
        window = f" per {budget.window}s" if budget.window else ""
        busy = f", {budget.reserved} reserved by copies in progress" if budget.reserved else ""
        return (f"{host} rate limit: {budget.remaining}{limit}{window} pulls remaining{busy}; "
                f"this copy needs up to {pulls}, the floor is {self.policy.floor}")

    def _hint(self) -> str:
        return ("rerun when the limit window has passed (up-to-date images cost no pulls), "
                "authenticate for a higher limit (REGISTRY_AUTH_FILE), or set ratelimit.max-wait "
                "/ lower ratelimit.floor in the mirror configuration")
