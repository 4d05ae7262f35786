"""What a user of the cluster sees while a step of `up` runs: one check from the host, every few seconds.

Used around an upgrade or a resize (tests/e2e/test_lifecycle.py) to report how often kuard, through
its load-balancer address, did not answer, and the longest stretch without an answer.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType


@dataclass
class Outages:
    """Checks as they come (ok or not, when); an outage runs from its first failed check to the next
    good one, or to the end when none came."""

    checks: int = 0
    failed: int = 0
    longest_seconds: float = 0.0
    first_error: str | None = None
    _down_since: float | None = field(default=None, repr=False)

    def record(self, error: str | None, at: float) -> None:
        self.checks += 1
        if error is None:
            self._close(at)
            return
        self.failed += 1
        self.first_error = self.first_error or error
        if self._down_since is None:
            self._down_since = at

    def finish(self, at: float) -> None:
        self._close(at)

    def _close(self, at: float) -> None:
        if self._down_since is not None:
            self.longest_seconds = max(self.longest_seconds, at - self._down_since)
            self._down_since = None

    def summary(self) -> dict[str, object]:
        return {
            "checks": self.checks,
            "failed": self.failed,
            "longest_gap_seconds": round(self.longest_seconds, 1),
            "first_error": self.first_error,
        }


class HostProbe:
    """`with HostProbe(check) as probe:` runs `check` (None = answered, else why not) every `every`
    seconds on a thread until the block ends; `probe.outages` holds the figures."""

    def __init__(self, check: Callable[[], str | None], every: float = 2.0) -> None:
        self.check, self.every = check, every
        self.outages = Outages()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="host-probe", daemon=True)

    def __enter__(self) -> HostProbe:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()
        self.outages.finish(time.monotonic())

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                error = self.check()
            except Exception as err:  # a check that raises is a failed check, not a dead probe
                error = f"{type(err).__name__}: {err}"
            self.outages.record(error, time.monotonic())
            self._stop.wait(self.every)
