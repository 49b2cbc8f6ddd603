"""Read-your-writes over the watches: a write shows until the watch shows it or something newer."""

from __future__ import annotations

from typing import Any

from h2ogpt_operator.watchcache import SecretFacts, WatchCache, value_digest

STACK = ("ns", "s")


def obj(version: str, **extra: Any) -> dict[str, Any]:
    return {"metadata": {"name": "s-openai", "resourceVersion": version}, **extra}


def test_a_create_shows_until_the_watch_has_it() -> None:
    cache = WatchCache()
    created = obj("5")
    cache.wrote(STACK, "Deployment", "s-openai", None, created)
    assert cache.fresh(STACK, "Deployment", "s-openai", None) is created
    watched = obj("5")
    assert cache.fresh(STACK, "Deployment", "s-openai", watched) is watched
    # Caught up: the write is forgotten, an absent watch means absent again.
    assert cache.fresh(STACK, "Deployment", "s-openai", None) is None


def test_two_writes_before_the_watch_catches_up_show_the_second() -> None:
    cache = WatchCache()
    first, second = obj("2"), obj("3")
    cache.wrote(STACK, "H2oGPTDeployment", "s", "1", first)
    cache.wrote(STACK, "H2oGPTDeployment", "s", "2", second)  # based on the first write's answer
    assert cache.fresh(STACK, "H2oGPTDeployment", "s", obj("1")) is second
    assert cache.fresh(STACK, "H2oGPTDeployment", "s", obj("2")) is second


def test_someone_elses_newer_version_wins() -> None:
    cache = WatchCache()
    cache.wrote(STACK, "Deployment", "s-openai", "1", obj("2"))
    theirs = obj("7")
    assert cache.fresh(STACK, "Deployment", "s-openai", theirs) is theirs
    stale = obj("1")  # the watch is never behind itself once it moved on: no write is shown any more
    assert cache.fresh(STACK, "Deployment", "s-openai", stale) is stale


def test_a_delete_hides_the_object_until_the_watch_drops_it() -> None:
    cache = WatchCache()
    cache.wrote(STACK, "ServiceMonitor", "s-metrics", "4", None)
    assert cache.fresh(STACK, "ServiceMonitor", "s-metrics", obj("4")) is None
    cache.forget(STACK)
    assert cache.fresh(STACK, "ServiceMonitor", "s-metrics", obj("4")) is not None


def test_secret_facts_hold_no_values() -> None:
    secret = {"metadata": {"name": "s-auth", "resourceVersion": "9"}, "data": {"KEY": "c2VjcmV0"}}
    facts = SecretFacts.of(secret)
    assert facts == SecretFacts("s-auth", "9", (("KEY", value_digest("KEY", "c2VjcmV0")),))
    assert facts.keys == frozenset({"KEY"})
    assert "c2VjcmV0" not in repr(facts)
    rotated = SecretFacts.of({**secret, "data": {"KEY": "bmV3"}})
    assert rotated.key_digests["KEY"] != facts.key_digests["KEY"]
    # The same value under another key name is another digest: moving a value is a change too.
    assert value_digest("OTHER", "c2VjcmV0") != value_digest("KEY", "c2VjcmV0")


def test_only_the_echo_of_our_last_write_is_recognised() -> None:
    cache = WatchCache()
    cache.wrote(STACK, "H2oGPTDeployment", "s", "1", obj("2"))
    assert cache.echoes_own_write(STACK, "H2oGPTDeployment", "s", obj("2"))
    assert not cache.echoes_own_write(STACK, "H2oGPTDeployment", "s", obj("3"))  # someone else's change
    assert not cache.echoes_own_write(STACK, "Deployment", "s", obj("2"))  # another object
    assert not cache.echoes_own_write(("ns", "other"), "H2oGPTDeployment", "s", obj("2"))
    cache.wrote(STACK, "ServiceMonitor", "s-metrics", "4", None)  # a delete: its event is news
    assert not cache.echoes_own_write(STACK, "ServiceMonitor", "s-metrics", obj("4"))
