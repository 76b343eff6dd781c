"""When a failed call is tried again, and how long to wait: Neon's retry rules as a stamina hook.

Neon (spec and docs): 423 and 503 are always safe to retry, 429 means back off; GET is always
safe; a POST/PATCH/PUT that failed after it was sent may already have run, so it is retried only
when Neon answered that it did not run it (423, 429, 503). A DELETE is idempotent: sent again
after a 5xx or a lost answer it either deletes or answers 404, which callers take as done.
Waiting stops at the call's deadline (`RetryPolicy.timeout`), not after a count of tries: a
busy project answers 423 for as long as its operations run.
"""

from __future__ import annotations

import email.utils
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ._errors import NeonHTTPError, NeonLocked, NeonRateLimited, NeonServerError, NeonTransportError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Methods that may be sent again whatever happened to the first try.
IDEMPOTENT_METHODS = SAFE_METHODS | {"DELETE"}
_UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter (stamina): wait `wait_initial * wait_exp_base**n` plus up
    to `wait_jitter` seconds, at most `wait_max`, for at most `attempts` tries and `timeout`
    seconds per call (the deadline: a caller sees Neon's 423 or 429 only once it passed). A
    `Retry-After` from Neon replaces the computed wait, capped at `retry_after_max`; one that
    would end past the deadline ends the waiting at once."""

    attempts: int = 1000
    timeout: float = 60.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0
    wait_exp_base: float = 2.0
    retry_after_max: float = 60.0


def retry_hook(
    method: str, policy: RetryPolicy, *, clock: Callable[[], float] = time.monotonic
) -> Callable[[Exception], bool | float]:
    """The stamina `on=` hook for one request: False = give up, True = back off as usual,
    a number = wait that many seconds (Neon's `Retry-After`)."""
    safe = method in IDEMPOTENT_METHODS
    deadline = clock() + policy.timeout

    def backoff(error: NeonHTTPError) -> bool | float:
        if error.retry_after is None:
            return True
        wait = max(0.0, min(error.retry_after, policy.retry_after_max))
        # Asking again before Neon's time is up only earns another 429.
        return wait if clock() + wait < deadline else False

    def hook(error: Exception) -> bool | float:
        if isinstance(error, NeonLocked | NeonRateLimited):
            return backoff(error)
        if isinstance(error, NeonServerError):
            return backoff(error) if safe or error.status == _UNAVAILABLE else False
        if isinstance(error, NeonTransportError):
            return safe or not error.sent
        return False

    return hook


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from a `Retry-After` header (delay-seconds or an HTTP date); None if absent."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())
