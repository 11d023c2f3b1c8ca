"""The one retry policy: bounded attempts, exponential backoff with full jitter, ``Retry-After``.

Every place that tries again (a request the transport resends, a download resumed from a
``Range``, a chunk of an upload resumed, a blob copy started over) waits by the same rule, and
every wait goes through the policy's ``sleep``, so tests inject one and never really sleep.
"""

from __future__ import annotations

import email.utils
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from typing import TypeVar

T = TypeVar("T")

TEMPORARY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
"""HTTP statuses that say "not now": asking again later may succeed."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date), or None."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = datetime.now(timezone.utc).timestamp() if now is None else now
    return max(0.0, when.timestamp() - current)


@dataclass(frozen=True)
class RetryPolicy:
    """How often to try again and how long to wait before each new attempt.

    ``retries`` new attempts at most after the first. Before attempt ``n + 1`` the wait is
    drawn uniformly from ``[0, min(max_delay, base * factor ** n)]`` ("full jitter": clients
    that failed together do not come back together), and is at least the server's
    ``Retry-After`` when one was given, capped at ``retry_after_max`` so a hostile or confused
    server cannot park cib for hours. ``sleep`` and ``random`` are injectable for tests.
    """

    retries: int = 4
    base: float = 0.5
    factor: float = 2.0
    max_delay: float = 20.0
    retry_after_max: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep, compare=False, repr=False)
    random: Callable[[], float] = field(default=random.random, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.retries < 0 or self.base < 0 or self.factor < 1 or self.max_delay < 0 \
                or self.retry_after_max < 0:
            raise ValueError(f"an impossible retry policy: {self!r}")

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """The wait before new attempt ``attempt + 1`` (``attempt`` counts from 0)."""
        ceiling = min(self.max_delay, self.base * self.factor ** min(attempt, 64))
        wait = self.random() * ceiling
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.retry_after_max))
        return wait

    def wait(self, attempt: int, retry_after: float | None = None) -> float:
        """Sleep :meth:`delay` seconds; returns them."""
        seconds = self.delay(attempt, retry_after)
        if seconds > 0:
            self.sleep(seconds)
        return seconds

    def with_retries(self, retries: int) -> RetryPolicy:
        """The same waits with another bound (a whole blob copy is started over less often
        than one request is resent)."""
        return replace(self, retries=retries)

    def run(self, fn: Callable[[], T], *, retryable: Callable[[BaseException], bool],
            on_retry: Callable[[BaseException, int, float], None] | None = None) -> T:
        """``fn()``, called again after a wait while it raises what ``retryable`` accepts, at
        most ``retries`` more times; the last failure is raised as it is. ``on_retry(error,
        attempt, seconds)`` hears of each new attempt before its wait."""
        attempt = 0
        while True:
            try:
                return fn()
            except Exception as exc:
                if attempt >= self.retries or not retryable(exc):
                    raise
                seconds = self.delay(attempt)
                if on_retry is not None:
                    on_retry(exc, attempt + 1, seconds)
                if seconds > 0:
                    self.sleep(seconds)
                attempt += 1


DEFAULT_POLICY = RetryPolicy()

__all__ = ["DEFAULT_POLICY", "TEMPORARY_STATUSES", "RetryPolicy", "parse_retry_after"]
