"""Per-key limits: requests per minute and tokens per minute, per subject (an API key's name, else
a login, else all anonymous callers together), in this process.

Counting is a sliding-window counter (this minute's count plus last minute's, weighted by how
much of it still overlaps the window): O(1) per request, a cost argument for tokens. Written
here rather than taken from the `limits` library because its in-memory storage starts a timer
thread every 10 ms of traffic to expire entries, and on the event loop's hot path every such
thread competes for the GIL (measured: bench/limits_overhead.py, docs/benchmarks.md).

Each replica counts on its own, so N replicas admit up to N times a limit in total (no shared
store on the hot path). Tokens are known only after a generation, so a request is admitted
while the subject's token window has room and its tokens are charged when it ends (the last
request of a window may overshoot it; the next one waits). Called only from the event loop.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from h2ogpt_api import metrics

WINDOW_S = 60.0
# Subjects kept before idle ones (no traffic for two windows) are dropped.
MAX_SUBJECTS = 100_000


class RateLimitedError(Exception):
    """429: which limit, and how long to wait (seconds, for Retry-After; also in the message, for
    the Gradio side's error dict, which has no header)."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(f"{message}; try again in {retry_after} s")
        self.retry_after = retry_after


@dataclass
class _Window:
    start: float  # start of the current fixed minute
    current: float = 0.0
    previous: float = 0.0


class SlidingWindowCounter:
    """`limit` units per minute per subject."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._windows: dict[str, _Window] = {}

    def _window(self, subject: str, now: float) -> _Window:
        start = now - now % WINDOW_S
        window = self._windows.get(subject)
        if window is None:
            if len(self._windows) >= MAX_SUBJECTS:
                self._drop_idle(start)
            window = self._windows[subject] = _Window(start)
        elif window.start != start:
            window.previous = window.current if start - window.start == WINDOW_S else 0.0
            window.current, window.start = 0.0, start
        return window

    def _drop_idle(self, start: float) -> None:
        for subject in [s for s, w in self._windows.items() if start - w.start > WINDOW_S]:
            del self._windows[subject]

    def used(self, subject: str, now: float) -> float:
        window = self._window(subject, now)
        overlap = 1.0 - (now - window.start) / WINDOW_S
        return window.previous * overlap + window.current

    def has_room(self, subject: str, now: float, cost: float = 1.0) -> bool:
        return self.used(subject, now) + cost <= self.limit

    def add(self, subject: str, now: float, cost: float = 1.0) -> None:
        self._window(subject, now).current += cost

    def retry_after(self, subject: str, now: float, cost: float = 1.0) -> int:
        """Seconds until `cost` more units fit (whole seconds, at least 1)."""
        window = self._window(subject, now)
        room_needed = self.limit - cost
        if window.current > room_needed:
            # Only once this minute's count, weighted down in the next one, leaves room.
            fraction = 1.0 - room_needed / window.current if window.current else 1.0
            wait = window.start + WINDOW_S + WINDOW_S * fraction - now
        elif window.previous:
            fraction = 1.0 - (room_needed - window.current) / window.previous
            wait = window.start + WINDOW_S * fraction - now
        else:
            wait = 1.0
        return max(1, math.ceil(wait))


class RateLimits:
    def __init__(self, requests_per_minute: int, tokens_per_minute: int) -> None:
        self._requests = SlidingWindowCounter(requests_per_minute) if requests_per_minute > 0 else None
        self._tokens = SlidingWindowCounter(tokens_per_minute) if tokens_per_minute > 0 else None

    @property
    def enabled(self) -> bool:
        return self._requests is not None or self._tokens is not None

    def admit(self, subject: str) -> None:
        """Count one request for `subject`, or raise RateLimitedError when a limit is reached."""
        now = time.time()
        if self._tokens is not None and not self._tokens.has_room(subject, now):
            metrics.RATE_LIMITED.labels(limit="tokens").inc()
            raise RateLimitedError(
                f"token limit reached: {self._tokens.limit} tokens per minute for this key or user",
                self._tokens.retry_after(subject, now),
            )
        if self._requests is not None:
            if not self._requests.has_room(subject, now):
                metrics.RATE_LIMITED.labels(limit="requests").inc()
                raise RateLimitedError(
                    f"request limit reached: {self._requests.limit} requests per minute for this key or user",
                    self._requests.retry_after(subject, now),
                )
            self._requests.add(subject, now)

    def charge(self, subject: str, tokens: int) -> None:
        """Count the tokens a finished request used."""
        if self._tokens is not None and tokens > 0:
            self._tokens.add(subject, time.time(), tokens)
