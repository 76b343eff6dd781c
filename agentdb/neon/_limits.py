"""Client-side rate limits: at most N requests start in any window of `period` seconds.

Hand-written rather than taken from a library: `aiolimiter` (the small, well-kept choice) is a
leaky bucket, which after an idle spell admits a full bucket *and* its drip rate, i.e. up to
twice its rate in one sliding minute; Neon counts per minute (700 overall, 30 on consumption
endpoints), so a sliding-window log is the exact fit. It keeps one timestamp per admitted
request (at most `limit` of them) and takes an injectable clock, so tests need no real waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable, Callable


class SlidingWindowLimiter:
    """Admits at most `limit` acquisitions per `period` seconds, in arrival order."""

    def __init__(
        self,
        limit: int,
        period: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        if limit < 1 or period <= 0:
            raise ValueError("a rate limit needs limit >= 1 and period > 0")
        self.limit = limit
        self.period = period
        self._clock = clock
        self._sleep = sleep
        self._starts: deque[float] = deque()
        # asyncio.Lock wakes waiters first come, first served: nobody starves behind a burst.
        self._lock = asyncio.Lock()

    async def acquire(self) -> float:
        """Waits until one more request fits in the window; returns the seconds waited."""
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                while self._starts and self._starts[0] <= now - self.period:
                    self._starts.popleft()
                if len(self._starts) < self.limit:
                    self._starts.append(now)
                    return waited
                delay = self._starts[0] + self.period - now
                await self._sleep(delay)
                waited += delay

    def __repr__(self) -> str:
        return f"SlidingWindowLimiter(limit={self.limit}, period={self.period:g})"
