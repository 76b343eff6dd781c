"""When a failed call is tried again, and how long to wait: Neon's retry rules as a stamina hook.

Neon (spec and docs): 423 and 503 are always safe to retry, 429 means back off; GET is always
safe; a POST/PATCH/PUT/DELETE that failed after it was sent may already have run, so it is
retried only when Neon answered that it did not run it (423, 429, 503).
"""

from __future__ import annotations

import email.utils
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from ._errors import NeonHTTPError, NeonLocked, NeonRateLimited, NeonServerError, NeonTransportError

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_UNAVAILABLE = 503


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter (stamina): wait `wait_initial * wait_exp_base**n` plus up
    to `wait_jitter` seconds, at most `wait_max`, for at most `attempts` tries and `timeout`
    seconds per call. A `Retry-After` from Neon replaces the computed wait, capped at
    `retry_after_max`."""

    attempts: int = 10
    timeout: float = 120.0
    wait_initial: float = 0.5
    wait_max: float = 10.0
    wait_jitter: float = 1.0
    wait_exp_base: float = 2.0
    retry_after_max: float = 60.0


def retry_hook(method: str, policy: RetryPolicy) -> Callable[[Exception], bool | float]:
    """The stamina `on=` hook for one request: False = give up, True = back off as usual,
    a number = wait that many seconds (Neon's `Retry-After`)."""
    safe = method in SAFE_METHODS

    def backoff(error: NeonHTTPError) -> bool | float:
        if error.retry_after is None:
            return True
        return max(0.0, min(error.retry_after, policy.retry_after_max))

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
