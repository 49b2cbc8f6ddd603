"""Per-key limits: requests per minute and tokens per minute, per subject (an API key's name, else
a login, else all anonymous callers together), in this process.

Counting is the `limits` library's sliding-window counter in memory: O(1) per request and a
cost argument for tokens. Each replica counts on its own, so N replicas admit up to N times a
limit in total (no shared store on the hot path: the 0.2 ms budget in docs/benchmarks.md).

Tokens are known only after a generation, so a request is admitted while the subject's token
window has room, and its prompt and completion tokens are charged when it ends (the last
request of a window may overshoot it; the next one waits).
"""

from __future__ import annotations

import math
import time

from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import SlidingWindowCounterRateLimiter

from h2ogpt_api import metrics


class RateLimitedError(Exception):
    """429: which limit, and how long to wait (seconds, for Retry-After)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class RateLimits:
    def __init__(self, requests_per_minute: int, tokens_per_minute: int) -> None:
        self._limiter = SlidingWindowCounterRateLimiter(MemoryStorage())
        self._requests = RateLimitItemPerMinute(requests_per_minute) if requests_per_minute > 0 else None
        self._tokens = RateLimitItemPerMinute(tokens_per_minute) if tokens_per_minute > 0 else None

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def admit(self, subject: str) -> None:
        """Count one request for `subject`, or raise RateLimitedError when a limit is reached."""
        if self._tokens is not None and not self._limiter.test(self._tokens, subject):
            metrics.RATE_LIMITED.labels(limit="tokens").inc()
            raise RateLimitedError(
                f"token limit reached: {self._tokens.amount} tokens per minute for this key or user",
                self._retry_after(self._tokens, subject),
            )
        if self._requests is not None and not self._limiter.hit(self._requests, subject):
            metrics.RATE_LIMITED.labels(limit="requests").inc()
            raise RateLimitedError(
                f"request limit reached: {self._requests.amount} requests per minute for this key or user",
                self._retry_after(self._requests, subject),
            )

    def charge(self, subject: str, tokens: int) -> None:
        """Count the tokens a finished request used; a window it overflows is simply full."""
        if self._tokens is None or tokens <= 0:
            return
        if not self._limiter.hit(self._tokens, subject, cost=tokens):
            remaining = self._limiter.get_window_stats(self._tokens, subject).remaining
            if remaining > 0:
                self._limiter.hit(self._tokens, subject, cost=remaining)

    def _retry_after(self, item: RateLimitItemPerMinute, subject: str) -> int:
        reset = self._limiter.get_window_stats(item, subject).reset_time
        return max(1, math.ceil(reset - time.time()))
