"""Who is asking: API keys (optionally naming a user), `user="name:password"` logins, open or
closed access, guests.

Keys are `--h2ogpt_api_keys`: a list (`['k1', 'k2']`, each key named `key-1`, `key-2` by position
in metrics and limits) or a dict `{"alice": "k1"}` whose names are identities: MyData follows a
named key (its own tenant, `key:alice`, apart from any login called alice). Either form may be
a JSON file, re-read when it changes (a rotated Kubernetes Secret), as is an `--auth` users file.

With `--auth_access open`, a login with a new name registers it with its first password (h2oGPT's
behaviour). Registrations are kept as argon2 hashes in a `LoginRegistry`: Weaviate when the server
has a document store (every replica and every restart sees them), else this process's memory.
Anonymous OpenAI callers have no MyData (nothing tells two of them apart); anonymous Gradio
sessions each have their own (see `GradioService.identity`).
"""

from __future__ import annotations

import ast
import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from h2ogpt_api.retrieval.base import Identity
from h2ogpt_api.settings import Settings
from h2ogpt_api.workers import open_state_db

log = logging.getLogger("h2ogpt_api.auth")

NO_KEY = "EMPTY"  # what OpenAI clients send when the server needs no key
KEY_IDENTITY_PREFIX = "key:"  # a named key's identity; login names cannot hold ':'
# Verified logins remembered per process, so a request does not pay for argon2 every time.
VERIFIED_CACHE_SIZE = 10_000
# How often a key or users file is checked for a rewrite: a stat on every request is a system
# call on the hot path; once a second bounds a rotation's delay at one second.
RECHECK_SECONDS = 1.0


class AuthError(Exception):
    """401: the message says what was wrong, never what was sent."""


# -- files re-read when they change -------------------------------------------------------------

_Parsed = TypeVar("_Parsed")


class WatchedSource(Generic[_Parsed]):
    """An inline value, or a file parsed again whenever its (mtime, size, inode) changes: checked
    with one stat at most every RECHECK_SECONDS (by the first request after that), so a rewritten
    file (or a Secret volume's symlink swap) counts within a second. A rewrite that does not
    parse keeps the last good value and logs why (never the content); at start-up it is an
    error."""

    def __init__(self, flag: str, path: str | None, inline: _Parsed, parse: Callable[[str], _Parsed]) -> None:
        self._flag = flag
        self._path = Path(path) if path else None
        self._parse = parse
        self._value = inline
        self._signature: tuple[int, int, int] | None = None
        self._lock = threading.Lock()
        self._next_check = 0.0  # time.monotonic() from which the file is looked at again
        if self._path is not None:
            self._reload(strict=True)

    def current(self) -> _Parsed:
        if self._path is not None:
            now = time.monotonic()
            if now >= self._next_check:
                self._next_check = now + RECHECK_SECONDS
                self._reload(strict=False)
        return self._value

    def _reload(self, *, strict: bool) -> None:
        assert self._path is not None
        try:
            stat = self._path.stat()
        except OSError as exc:
            if strict:
                raise ValueError(f"{self._flag}: cannot read {self._path}: {exc.strerror}") from None
            log.error("%s: cannot read %s (%s); keeping the last good value", self._flag, self._path,
                      exc.strerror)
            return
        signature = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if signature == self._signature:
            return
        with self._lock:
            if signature == self._signature:
                return
            try:
                value = self._parse(self._path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                if strict:
                    raise ValueError(str(exc)) from None
                log.error("%s: %s changed but cannot be used (%s); keeping the last good value",
                          self._flag, self._path, exc)
                return
            self._value, self._signature = value, signature
            if not strict:
                log.info("%s: re-read %s", self._flag, self._path)


# -- users (--auth) ------------------------------------------------------------------------------


def parse_users(spec: str) -> dict[str, str]:
    """`--auth` as {name: password}. A path to a JSON file, or an inline list/dict literal."""
    text = spec.strip()
    if text and not text.startswith(("[", "{", "(")):
        path = Path(text)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"--auth: cannot read {path}: {exc.strerror}") from None
    return users_from_text(text)


def users_from_text(text: str) -> dict[str, str]:
    text = text.strip()
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


def _users_source(spec: str) -> WatchedSource[dict[str, str]]:
    text = spec.strip()
    if text and not text.startswith(("[", "{", "(")):
        no_users: dict[str, str] = {}
        return WatchedSource("--auth", text, no_users, users_from_text)
    return WatchedSource("--auth", None, users_from_text(text), users_from_text)


# -- API keys ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyEntry:
    """A known key's name (for metrics, limits, logs) and whether the name is a user identity."""

    name: str
    names_user: bool


def keys_from(data: object, flag: str = "--h2ogpt_api_keys") -> dict[str, KeyEntry]:
    """{key: entry} from a list of keys (named key-1, key-2, ...) or a dict {name: key}."""
    if isinstance(data, list) and all(isinstance(key, str) for key in data):
        return {key: KeyEntry(f"key-{index}", False) for index, key in enumerate(data, start=1) if key}
    if isinstance(data, dict) and all(isinstance(n, str) and isinstance(k, str) for n, k in data.items()):
        keys: dict[str, KeyEntry] = {}
        for name, key in data.items():
            if not name or ":" in name or not key:
                raise ValueError(f"{flag}: key names must be non-empty, without ':', and keys non-empty")
            if key in keys:
                raise ValueError(f"{flag}: names {keys[key].name!r} and {name!r} share one key")
            keys[key] = KeyEntry(name, True)
        return keys
    raise ValueError(f"{flag}: expected a JSON list of keys or a JSON object {{name: key}}")


def keys_from_text(text: str) -> dict[str, KeyEntry]:
    try:
        data = json.loads(text or "[]")
    except ValueError:
        raise ValueError("--h2ogpt_api_keys: the file must hold JSON: a list of keys or {name: key}") \
            from None
    return keys_from(data)


class ApiKeys:
    """The accepted keys and their names; a file source is re-read when it changes."""

    def __init__(self, source: list[str] | dict[str, str] | str) -> None:
        self._source: WatchedSource[dict[str, KeyEntry]]
        if isinstance(source, str) and source:
            self._source = WatchedSource("--h2ogpt_api_keys", source, {}, keys_from_text)
        else:
            self._source = WatchedSource("--h2ogpt_api_keys", None, keys_from(source or []), keys_from_text)

    def current(self) -> dict[str, KeyEntry]:
        return self._source.current()

    def match(self, key: str) -> KeyEntry | None:
        """The entry of `key`, comparing against every known key in constant time each."""
        found: KeyEntry | None = None
        offered = key.encode()
        for known, entry in self.current().items():
            if hmac.compare_digest(offered, known.encode()):
                found = entry
        return found

    def accepts(self, key: str) -> bool:
        return self.match(key) is not None


# -- registered logins ---------------------------------------------------------------------------


class LoginRegistry(Protocol):
    """Where open-access registrations live: name -> argon2 hash."""

    async def password_hash(self, name: str) -> str | None: ...

    async def register(self, name: str, password_hash: str) -> str:
        """Store the hash unless the name is taken; the hash stored for the name either way
        (another replica may have registered it first)."""
        ...


class MemoryLogins:
    """Registrations for this process only: the fallback for a server without a document store
    (which has no MyData to protect)."""

    def __init__(self) -> None:
        self._hashes: dict[str, str] = {}

    async def password_hash(self, name: str) -> str | None:
        return self._hashes.get(name)

    async def register(self, name: str, password_hash: str) -> str:
        return self._hashes.setdefault(name, password_hash)


class SharedLogins:
    """Registrations in a SQLite file that every --workers process opens: the first registration
    of a name wins in all of them, as in one process. For a server without a document store (with
    one, Weaviate holds them). One short statement on a local file per call, on the event loop."""

    def __init__(self, path: Path) -> None:
        self._db = open_state_db(path)
        self._db.execute("CREATE TABLE IF NOT EXISTS logins (name TEXT PRIMARY KEY, hash TEXT NOT NULL)")

    async def password_hash(self, name: str) -> str | None:
        row = self._db.execute("SELECT hash FROM logins WHERE name = ?", (name,)).fetchone()
        return str(row[0]) if row else None

    async def register(self, name: str, password_hash: str) -> str:
        self._db.execute("INSERT OR IGNORE INTO logins VALUES (?, ?)", (name, password_hash))
        stored = await self.password_hash(name)
        assert stored is not None  # inserted now or before, never deleted
        return stored


class PasswordChecker:
    """argon2id hashing (argon2-cffi's defaults) off the event loop, with the logins verified
    in this process remembered as a keyed digest, so steady traffic costs one HMAC, not argon2."""

    def __init__(self) -> None:
        self._hasher = PasswordHasher()
        self._secret = secrets.token_bytes(32)
        self._verified: dict[str, tuple[str, bytes]] = {}

    def _digest(self, password: str) -> bytes:
        return hmac.new(self._secret, password.encode(), hashlib.sha256).digest()

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def matches(self, name: str, stored_hash: str, password: str) -> bool:
        remembered = self._verified.get(name)
        digest = self._digest(password)
        if remembered is not None and remembered[0] == stored_hash:
            return hmac.compare_digest(remembered[1], digest)
        try:
            await asyncio.to_thread(self._hasher.verify, stored_hash, password)
        except (VerificationError, InvalidHashError):
            return False
        if len(self._verified) >= VERIFIED_CACHE_SIZE:
            self._verified.clear()
        self._verified[name] = (stored_hash, digest)
        return True

    def remember(self, name: str, stored_hash: str, password: str) -> None:
        self._verified[name] = (stored_hash, self._digest(password))


# -- the authenticator ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Principal:
    """Who is asking, and the key they came with (its name, for metrics and limits)."""

    identity: Identity
    key_name: str | None = None

    @property
    def limit_subject(self) -> str:
        """What per-key limits count against: the key's name, else the login, else all anonymous."""
        if self.key_name is not None:
            return f"key:{self.key_name}"
        if self.identity.authenticated:
            return f"user:{self.identity.username}"
        return "anonymous"


ANONYMOUS = Identity(username="", authenticated=False)


def anonymous_session_prefix(settings: Settings) -> str:
    """The start of every anonymous Gradio session's user name (its MyData tenant is swept)."""
    return f"{settings.guest_name or 'guest'}-session-"


class Authenticator:
    def __init__(self, settings: Settings, logins: LoginRegistry | None = None) -> None:
        self._settings = settings
        self.keys = ApiKeys(settings.h2ogpt_api_keys)
        self._users = _users_source(settings.auth)
        self._logins: LoginRegistry = logins if logins is not None else MemoryLogins()
        self._passwords = PasswordChecker()

    @property
    def reserved_prefix(self) -> str:
        """Login names that look like an anonymous Gradio session's identity are refused."""
        return anonymous_session_prefix(self._settings)

    def check_key(self, bearer: str | None, body_key: str | None) -> KeyEntry | None:
        """The entry of the first known key offered (Bearer, then the body's `h2ogpt_key`). With
        `--enforce_h2ogpt_api_key` one of them must be known."""
        offered = [key for key in (bearer, body_key) if key and key != NO_KEY]
        for key in offered:
            entry = self.keys.match(key)
            if entry is not None:
                return entry
        if not self._settings.enforce_h2ogpt_api_key:
            return None
        if not offered:
            raise AuthError("this server needs an API key: send 'Authorization: Bearer <key>' or h2ogpt_key")
        raise AuthError("invalid API key")

    async def authenticate(self, bearer: str | None, body_key: str | None, user: str | None) -> Principal:
        """The key (checked), then the identity: a `user` login when one is sent, else the key's
        user when the key names one, else anonymous."""
        entry = self.check_key(bearer, body_key)
        if entry is not None and entry.names_user and not (user and ":" in user):
            return Principal(Identity(KEY_IDENTITY_PREFIX + entry.name, authenticated=True), entry.name)
        return Principal(await self.identify(user), entry.name if entry else None)

    async def identify(self, user: str | None) -> Identity:
        """The identity for OpenAI's `user` field ('name:password'), or anonymous when access is open."""
        closed = self._settings.auth_access == "closed"
        if not user:
            if closed:
                raise AuthError("this server needs a login: pass user='username:password'")
            return ANONYMOUS
        name, has_colon, password = user.partition(":")
        if not has_colon or not name:
            if closed:
                raise AuthError("user must be 'username:password'")
            # Open access: OpenAI clients use `user` as a plain end-user id; unverified, so anonymous.
            return ANONYMOUS
        known = self._users.current().get(name)
        if known is not None:
            if not hmac.compare_digest(known.encode(), password.encode()):
                raise AuthError("wrong username or password")
            return Identity(username=name, authenticated=True)
        if closed:
            raise AuthError("wrong username or password")
        if name.startswith(self.reserved_prefix):
            raise AuthError(f"login names starting with {self.reserved_prefix!r} are reserved")
        await self._check_registered(name, password)
        return Identity(username=name, authenticated=True)

    async def _check_registered(self, name: str, password: str) -> None:
        """Open access: the first login with a name registers it; later ones must match its hash."""
        stored = await self._logins.password_hash(name)
        if stored is None:
            fresh = await self._passwords.hash(password)
            stored = await self._logins.register(name, fresh)
            if stored == fresh:
                self._passwords.remember(name, stored, password)
                log.info("registered a new login")
                return
        if not await self._passwords.matches(name, stored, password):
            raise AuthError("wrong username or password")

    def require_listing_access(self, bearer: str | None) -> None:
        """Model information: refused when access is closed (h2oGPT's rule; no login can be sent
        with a GET), unless the request carries a valid API key."""
        if self._settings.auth_access == "closed" and not (bearer and self.keys.accepts(bearer)):
            raise AuthError("access is closed on this server: model information needs a valid API key")

