"""Keys, logins, open/closed access and guests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from h2ogpt_api.auth import ApiKeys, Authenticator, AuthError, parse_users
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


def test_open_access_gives_the_guest_and_checks_known_users() -> None:
    auth = authenticator("--auth", "[('alice', 'pw1')]", "--guest_name", "visitor")
    guest = auth.identify(None)
    assert (guest.username, guest.authenticated) == ("visitor", False)
    alice = auth.identify("alice:pw1")
    assert (alice.username, alice.authenticated) == ("alice", True)
    with pytest.raises(AuthError, match="wrong username or password"):
        auth.identify("alice:nope")


def test_open_access_registers_a_new_user_with_its_first_password() -> None:
    auth = authenticator()
    assert auth.identify("dave:pw").username == "dave"
    assert auth.identify("dave:pw").authenticated
    with pytest.raises(AuthError):
        auth.identify("dave:other")


def test_closed_access_needs_a_known_user() -> None:
    auth = authenticator("--auth", "[('alice', 'pw1')]", "--auth_access", "closed")
    assert auth.identify("alice:pw1").username == "alice"
    for user in (None, "eve:pw", "alice", "alice:wrong"):
        with pytest.raises(AuthError):
            auth.identify(user)


def test_closed_access_hides_model_listing_without_a_valid_key() -> None:
    closed = authenticator("--auth_access", "closed", "--h2ogpt_api_keys", "['k1']")
    closed.require_listing_access("k1")
    with pytest.raises(AuthError, match="access is closed"):
        closed.require_listing_access(None)
    authenticator().require_listing_access(None)
