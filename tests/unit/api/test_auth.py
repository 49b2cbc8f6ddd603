"""Keys, logins, open/closed access and guests."""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import pytest
from h2ogpt_api import auth as auth_module
from h2ogpt_api.auth import (
    ApiKeys,
    Authenticator,
    AuthError,
    MemoryLogins,
    SharedLogins,
    keys_from,
    parse_users,
)
from h2ogpt_api.retrieval.base import Identity
from h2ogpt_api.settings import parse_settings


def authenticator(*argv: str) -> Authenticator:
    return Authenticator(parse_settings(list(argv), {}))


def test_parse_users_from_literal_list_json_dict_and_file(tmp_path: Path) -> None:
    assert parse_users("[('alice', 'pw1'), ('bob', 'pw2')]") == {"alice": "pw1", "bob": "pw2"}
    assert parse_users('{"alice": {"password": "pw1"}}') == {"alice": "pw1"}
    users_file = tmp_path / "auth.json"
    users_file.write_text(json.dumps({"carol": {"password": "pw3", "userid": "x"}}))
    assert parse_users(str(users_file)) == {"carol": "pw3"}
    assert parse_users("") == {}


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/no/such/auth.json", "cannot read"),
        ("[('alice',)]", r"\(user, password\) pair"),
        ('{"alice": {"userid": 1}}', "no password"),
        ("[1, 2", "expected a JSON file or a literal"),
    ],
)
def test_parse_users_errors_are_clear(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_users(spec)


@pytest.fixture
def recheck_every_request(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files looked at on every call, so a test sees a rewrite without waiting out the interval."""
    monkeypatch.setattr(auth_module, "RECHECK_SECONDS", 0.0)


def test_a_rewritten_key_file_is_seen_within_the_recheck_interval_not_before(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('["old"]')
    keys = ApiKeys(str(keys_file))
    assert keys.accepts("old")  # the first look after start: the next is a second later
    keys_file.write_text('["new"]')
    stat = keys_file.stat()
    os.utime(keys_file, (stat.st_atime, stat.st_mtime + 5))
    assert keys.accepts("old")  # not stat'ed again within the second
    time.sleep(auth_module.RECHECK_SECONDS + 0.05)
    assert keys.accepts("new")
    assert not keys.accepts("old")


@pytest.mark.usefixtures("recheck_every_request")
def test_key_file_is_reread_when_it_changes(tmp_path: Path) -> None:
    keys_file = tmp_path / "keys.json"
    keys_file.write_text('["old"]')
    keys = ApiKeys(str(keys_file))
    assert keys.accepts("old")
    keys_file.write_text('["new"]')
    stat = keys_file.stat()
    os.utime(keys_file, (stat.st_atime, stat.st_mtime + 5))
    assert keys.accepts("new")
    assert not keys.accepts("old")
    # The dict form, written in place of the list: names come with it.
    keys_file.write_text('{"alice": "ka"}')
    entry = keys.match("ka")
    assert entry is not None
    assert (entry.name, entry.names_user) == ("alice", True)
    assert not keys.accepts("new")


def test_keys_are_not_checked_unless_enforced() -> None:
    authenticator("--h2ogpt_api_keys", "['k1']").check_key("wrong", None)


def test_enforced_keys_accept_bearer_or_body_key() -> None:
    auth = authenticator("--h2ogpt_api_keys", "['k1']", "--enforce_h2ogpt_api_key", "True")
    auth.check_key("k1", None)
    auth.check_key("EMPTY", "k1")
    with pytest.raises(AuthError, match="invalid API key"):
        auth.check_key("k2", None)
    with pytest.raises(AuthError, match="needs an API key"):
        auth.check_key(None, None)
    with pytest.raises(AuthError, match="needs an API key"):
        auth.check_key("EMPTY", None)


def identify(auth: Authenticator, user: str | None) -> Identity:
    return asyncio.run(auth.identify(user))


def test_open_access_gives_anonymous_callers_no_personal_identity_and_checks_known_users() -> None:
    auth = authenticator("--auth", "[('alice', 'pw1')]", "--guest_name", "visitor")
    for user in (None, "just-an-end-user-id"):
        anonymous = identify(auth, user)
        # No user name: MyData is refused for them (tenant_name needs one), never one shared tenant.
        assert (anonymous.username, anonymous.authenticated) == ("", False)
    alice = identify(auth, "alice:pw1")
    assert (alice.username, alice.authenticated) == ("alice", True)
    with pytest.raises(AuthError, match="wrong username or password"):
        identify(auth, "alice:nope")


def test_open_access_registers_a_new_user_with_its_first_password_as_an_argon2_hash() -> None:
    logins = MemoryLogins()
    auth = Authenticator(parse_settings([], {}), logins)
    assert identify(auth, "dave:pw").username == "dave"
    assert identify(auth, "dave:pw").authenticated
    with pytest.raises(AuthError):
        identify(auth, "dave:other")
    stored = asyncio.run(logins.password_hash("dave"))
    assert stored is not None
    assert stored.startswith("$argon2id$")
    # Another process on the same registry (a restart, a replica) checks the same hash.
    other = Authenticator(parse_settings([], {}), logins)
    assert identify(other, "dave:pw").username == "dave"
    with pytest.raises(AuthError):
        identify(other, "dave:wrong")


def test_login_names_shaped_like_anonymous_sessions_are_refused() -> None:
    auth = authenticator()
    with pytest.raises(AuthError, match="reserved"):
        identify(auth, "guest-session-abc:pw")


def test_closed_access_needs_a_known_user() -> None:
    auth = authenticator("--auth", "[('alice', 'pw1')]", "--auth_access", "closed")
    assert identify(auth, "alice:pw1").username == "alice"
    for user in (None, "eve:pw", "alice", "alice:wrong"):
        with pytest.raises(AuthError):
            identify(auth, user)


def test_named_keys_carry_their_user_and_list_keys_are_named_by_position() -> None:
    named = authenticator(
        "--h2ogpt_api_keys", "{'alice': 'ka', 'ci-bot': 'kc'}", "--enforce_h2ogpt_api_key", "1"
    )
    principal = asyncio.run(named.authenticate("ka", None, None))
    assert principal.identity == Identity("key:alice", authenticated=True)
    assert (principal.key_name, principal.limit_subject) == ("alice", "key:alice")
    # A login sent with the key wins: it proves who the person is.
    assert asyncio.run(named.authenticate("kc", None, "bob:pw")).identity.username == "bob"
    listed = authenticator("--h2ogpt_api_keys", "['k1', 'k2']")
    principal = asyncio.run(listed.authenticate("k2", None, None))
    assert (principal.key_name, principal.identity.username) == ("key-2", "")
    anonymous = asyncio.run(listed.authenticate(None, None, None))
    assert (anonymous.key_name, anonymous.limit_subject) == (None, "anonymous")


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ('{"a": "same", "b": "same"}', "share one key"),
        ('{"a:b": "k"}', "without ':'"),
        ('[1, 2]', "expected a JSON list"),
    ],
)
def test_bad_key_specs_are_refused_clearly(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        keys_from(json.loads(spec))


@pytest.mark.usefixtures("recheck_every_request")
def test_users_file_is_reread_and_a_broken_rewrite_keeps_the_last_good_users(tmp_path: Path) -> None:
    users_file = tmp_path / "users.json"
    users_file.write_text(json.dumps({"alice": {"password": "old"}}))
    auth = authenticator("--auth", str(users_file), "--auth_access", "closed")
    assert identify(auth, "alice:old").username == "alice"
    users_file.write_text(json.dumps({"alice": {"password": "new"}}))
    assert identify(auth, "alice:new").username == "alice"
    with pytest.raises(AuthError):
        identify(auth, "alice:old")
    users_file.write_text("{not json")
    assert identify(auth, "alice:new").username == "alice"


def test_closed_access_hides_model_listing_without_a_valid_key() -> None:
    closed = authenticator("--auth_access", "closed", "--h2ogpt_api_keys", "['k1']")
    closed.require_listing_access("k1")
    with pytest.raises(AuthError, match="access is closed"):
        closed.require_listing_access(None)
    authenticator().require_listing_access(None)


def test_workers_sharing_the_logins_file_keep_the_first_registration(tmp_path: Path) -> None:
    one, other = (SharedLogins(tmp_path / "state.sqlite3") for _ in range(2))
    assert asyncio.run(one.register("ada", "hash-1")) == "hash-1"
    assert asyncio.run(other.register("ada", "hash-2")) == "hash-1"  # taken: the first one stands
    assert asyncio.run(other.password_hash("ada")) == "hash-1"
    assert asyncio.run(one.password_hash("bob")) is None
