"""Named kill points for crash tests: a process armed with one SIGKILLs itself when it reaches
that point, so a test can cut a workflow off between any two of its steps."""

from __future__ import annotations

import os
import signal
from typing import ClassVar


class KillSwitch:
    """SIGKILLs the current process when it reaches the armed kill point for the n-th time:
    a crash at a step boundary, with no `finally` or `except` running on the way out.
    A spec is `point` or `point:n`; subclasses name their points and the setting that arms
    them (for the error message)."""

    POINTS: ClassVar[frozenset[str]] = frozenset()
    SETTING: ClassVar[str] = "kill point"

    def __init__(self, spec: str = "") -> None:
        self._point: str | None = None
        self._remaining = 0
        self.arm(spec)

    def arm(self, spec: str) -> None:
        """Arms `point` or `point:n` (the n-th time it is reached); an empty spec disarms."""
        point, _, count = spec.strip().partition(":")
        if not point:
            self._point, self._remaining = None, 0
            return
        if point not in self.POINTS:
            raise ValueError(
                f"{self.SETTING}: {point!r} is not a kill point; use one of {sorted(self.POINTS)}"
            )
        try:
            remaining = int(count) if count else 1
        except ValueError:
            remaining = 0
        if remaining < 1:
            raise ValueError(f"{self.SETTING}: {count!r} after ':' must be a positive integer")
        self._point, self._remaining = point, remaining

    def point(self, name: str) -> None:
        if name != self._point:
            return
        self._remaining -= 1
        if self._remaining == 0:
            os.kill(os.getpid(), signal.SIGKILL)
