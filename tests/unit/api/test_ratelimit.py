"""Per-key limits: requests and tokens per minute, per subject, with a Retry-After."""

from __future__ import annotations

import pytest
from h2ogpt_api.errors import as_api_error
from h2ogpt_api.ratelimit import RateLimitedError, RateLimits, SlidingWindowCounter


def test_requests_per_minute_are_counted_per_subject() -> None:
    limits = RateLimits(requests_per_minute=3, tokens_per_minute=0)
    for _ in range(3):
        limits.admit("key:alice")
    with pytest.raises(RateLimitedError, match="3 requests per minute") as caught:
        limits.admit("key:alice")
    # This minute's rest plus the part of the next one until the 3 requests, weighted down by the
    # sliding window, leave room for one more: 20 s of it here (never past two minutes).
    assert 1 <= caught.value.retry_after <= 120
    limits.admit("key:bob")  # another key has its own window


def test_retry_after_is_when_the_sliding_window_next_has_room() -> None:
    counter = SlidingWindowCounter(3)
    start = 6000.0  # a minute boundary
    for _ in range(3):
        counter.add("k", start + 10)
    # 50 s left in this minute, then 20 s into the next: 3 * (1 - 20/60) + 1 = 3.
    assert counter.retry_after("k", start + 10) == 70
    assert not counter.has_room("k", start + 60 + 19)
    assert counter.has_room("k", start + 60 + 20.5)


def test_tokens_per_minute_admit_until_the_window_is_spent() -> None:
    limits = RateLimits(requests_per_minute=0, tokens_per_minute=100)
    limits.admit("user:carol")
    limits.charge("user:carol", 60)
    limits.admit("user:carol")
    limits.charge("user:carol", 60)  # overshoots: the window is full, not left at 60
    with pytest.raises(RateLimitedError, match="100 tokens per minute"):
        limits.admit("user:carol")
    limits.admit("anonymous")


def test_a_limit_is_a_429_with_retry_after_in_openai_shape() -> None:
    error = as_api_error(RateLimitedError("request limit reached", 17))
    response = error.response()
    assert response.status_code == 429
    assert response.headers["retry-after"] == "17"
    assert error.body()["error"]["type"] == "rate_limit_error"
    assert error.body()["error"]["code"] == "rate_limit_exceeded"


def test_no_limits_configured_is_disabled() -> None:
    assert not RateLimits(0, 0).enabled


def test_the_sliding_window_weighs_last_minute_by_its_overlap() -> None:
    counter = SlidingWindowCounter(10)
    counter.add("s", 59.0, 10)  # the whole limit, at the end of minute 0
    assert not counter.has_room("s", 59.5)
    # Retry-After from 59.5: the first whole second at which one more unit fits (6.5 s: 66 s).
    wait = counter.retry_after("s", 59.5)
    assert wait == 7
    assert not counter.has_room("s", 65.0)
    assert counter.has_room("s", 59.5 + wait)
    # 15 s into minute 1, 3/4 of minute 0 still overlaps: 7.5 used, room for 2.
    assert counter.used("s", 75.0) == 7.5
    assert counter.has_room("s", 75.0, 2)
    assert not counter.has_room("s", 75.0, 3)
    assert counter.used("s", 130.0) == 0  # two minutes on, nothing is left
