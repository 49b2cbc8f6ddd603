"""Stacks are woken by the Secrets their pods read (present or still missing), and only by those."""

from __future__ import annotations

from h2ogpt_operator.handlers import SecretReaders


def test_a_stack_is_woken_only_by_the_secrets_it_reads_now() -> None:
    readers = SecretReaders()
    readers.read(("ns", "a"), ["upstream", "users"])
    readers.read(("ns", "b"), ["upstream"])
    assert readers.readers("ns", "upstream") == {("ns", "a"), ("ns", "b")}
    assert readers.readers("other", "upstream") == set()

    readers.read(("ns", "a"), ["users"])  # a's spec no longer references upstream
    assert readers.readers("ns", "upstream") == {("ns", "b")}
    assert readers.readers("ns", "users") == {("ns", "a")}

    readers.read(("ns", "a"), [])
    readers.read(("ns", "b"), [])
    assert readers.reading == {}
