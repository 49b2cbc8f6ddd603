"""Stacks waiting for a Secret that does not exist yet are woken by that Secret, and only by it."""

from __future__ import annotations

from h2ogpt_operator.handlers import SecretWaiters


def test_a_stack_waits_only_for_the_secrets_it_still_misses() -> None:
    waiters = SecretWaiters()
    waiters.wait(("ns", "a"), ["upstream", "users"])
    waiters.wait(("ns", "b"), ["upstream"])
    assert waiters.waiters("ns", "upstream") == {("ns", "a"), ("ns", "b")}
    assert waiters.waiters("other", "upstream") == set()

    waiters.wait(("ns", "a"), ["users"])  # upstream appeared for a
    assert waiters.waiters("ns", "upstream") == {("ns", "b")}
    assert waiters.waiters("ns", "users") == {("ns", "a")}

    waiters.wait(("ns", "a"), [])
    waiters.wait(("ns", "b"), [])
    assert waiters.waiting == {}
