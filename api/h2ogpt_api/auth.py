"""Who is asking: API keys, `user="name:password"` logins, open or closed access, guests.

Keys are the `--h2ogpt_api_keys` list, or a JSON file of them re-read when it changes.
Users come from `--auth`: a JSON file `{"name": {"password": "..."}}`, or inline
`[("name", "pass")]` / a JSON dict. With `--auth_access open` a request without a login is
the guest, and a login with a new name registers it for this process's lifetime (h2oGPT's
behaviour); with `closed` only known users get in.
"""

from __future__ import annotations

import ast
import hmac
import json
import threading
from pathlib import Path

from h2ogpt_api.retrieval.base import Identity
from h2ogpt_api.settings import Settings

NO_KEY = "EMPTY"  # what OpenAI clients send when the server needs no key


class AuthError(Exception):
    """401: the message says what was wrong, never what was sent."""


def parse_users(spec: str) -> dict[str, str]:
    """`--auth` as {name: password}. A path to a JSON file, or an inline list/dict literal."""
    text = spec.strip()
    if text and not text.startswith(("[", "{", "(")):
        path = Path(text)
        try:
            text = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ValueError(f"--auth: cannot read {path}: {exc.strerror}") from None
    if not text:
        return {}
    try:
        data = json.loads(text)
    except ValueError:
        try:
            data = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            raise ValueError("--auth: expected a JSON file or a literal like [('user', 'pass')]") from None
    return _users_from(data)


def _users_from(data: object) -> dict[str, str]:
    users: dict[str, str] = {}
    if isinstance(data, dict):
        for name, entry in data.items():
            password = entry.get("password") if isinstance(entry, dict) else entry
            if not isinstance(password, str):
                raise ValueError(f"--auth: user {name!r} has no password string")
            users[str(name)] = password
        return users
    if isinstance(data, list | tuple):
        for entry in data:
            if not (
                isinstance(entry, list | tuple) and len(entry) == 2 and all(isinstance(x, str) for x in entry)
            ):
                raise ValueError("--auth: each entry must be a (user, password) pair")
            users[entry[0]] = entry[1]
        return users
    raise ValueError("--auth: expected a dict of users or a list of (user, password) pairs")


class ApiKeys:
    """The accepted keys; a file source is re-read when its modification time changes."""

    def __init__(self, source: list[str] | str) -> None:
        self._source = source
        self._lock = threading.Lock()
        self._mtime: float | None = None
        self._keys: frozenset[str] = frozenset(source) if isinstance(source, list) else frozenset()
        if isinstance(source, str) and source:
            self.current()  # fail at start-up on an unreadable file

    def current(self) -> frozenset[str]:
        if not isinstance(self._source, str) or not self._source:
            return self._keys
        path = Path(self._source)
        with self._lock:
            try:
                mtime = path.stat().st_mtime
            except OSError as exc:
                raise ValueError(f"--h2ogpt_api_keys: cannot read {path}: {exc.strerror}") from None
            if mtime != self._mtime:
                keys = json.loads(path.read_text(encoding="utf-8") or "[]")
                if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
                    raise ValueError(f"--h2ogpt_api_keys: {path} must hold a JSON list of strings")
                self._keys, self._mtime = frozenset(keys), mtime
            return self._keys

    def accepts(self, key: str) -> bool:
        return any(hmac.compare_digest(key.encode(), known.encode()) for known in self.current())


class Authenticator:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self.keys = ApiKeys(settings.h2ogpt_api_keys)
        self._users = parse_users(settings.auth)
        self._registered: dict[str, str] = {}
        self._lock = threading.Lock()

    def check_key(self, bearer: str | None, body_key: str | None) -> None:
        """With `--enforce_h2ogpt_api_key`, one of the Bearer key or the body's `h2ogpt_key` must be valid."""
        if not self._settings.enforce_h2ogpt_api_key:
            return
        offered = [key for key in (bearer, body_key) if key and key != NO_KEY]
        if not offered:
            raise AuthError("this server needs an API key: send 'Authorization: Bearer <key>' or h2ogpt_key")
        if not any(self.keys.accepts(key) for key in offered):
            raise AuthError("invalid API key")

    def identify(self, user: str | None) -> Identity:
        """The identity for OpenAI's `user` field ('name:password'), or the guest when access is open."""
        closed = self._settings.auth_access == "closed"
        if not user:
            if closed:
                raise AuthError("this server needs a login: pass user='username:password'")
            return Identity(username=self._settings.guest_name or "guest", authenticated=False)
        name, has_colon, password = user.partition(":")
        if not has_colon or not name:
            if closed:
                raise AuthError("user must be 'username:password'")
            # Open access: OpenAI clients use `user` as a plain end-user id; treat it as a guest name.
            return Identity(username=self._settings.guest_name or "guest", authenticated=False)
        known = self._users.get(name)
        if known is not None:
            if not hmac.compare_digest(known.encode(), password.encode()):
                raise AuthError("wrong username or password")
            return Identity(username=name, authenticated=True)
        if closed:
            raise AuthError("wrong username or password")
        with self._lock:
            registered = self._registered.setdefault(name, password)
        if not hmac.compare_digest(registered.encode(), password.encode()):
            raise AuthError("wrong username or password")
        return Identity(username=name, authenticated=True)

    def require_listing_access(self, bearer: str | None) -> None:
        """Model information: refused when access is closed (h2oGPT's rule; no login can be sent
        with a GET), unless the request carries a valid API key."""
        if self._settings.auth_access == "closed" and not (bearer and self.keys.accepts(bearer)):
            raise AuthError("access is closed on this server: model information needs a valid API key")
