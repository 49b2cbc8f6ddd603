"""Which URLs document ingestion may fetch: URL ingestion must not be a proxy into the cluster.

A URL is fetched only when its scheme is http(s) and every address its host resolves to is a
public (globally routable) one, or the operator allowed it with `--allowed_url_hosts` (host
names, addresses or CIDRs). Refused by default: loopback, link-local (cloud metadata at
169.254.169.254 included), private and unique-local ranges, shared (CGNAT), reserved,
multicast and unspecified addresses, and the ranges in `--blocked_url_cidrs` (a cluster's
Service and Pod CIDRs when they are not private ranges).

The check is on addresses, not on the spelling of the URL: `http://2130706433/`,
`http://[::ffff:127.0.0.1]/` and a DNS name that points at 10.0.0.1 are all refused, because
the host is resolved first and the connection is then made to the checked address (see
`fetch_url` in ingest.py), so a second DNS answer (rebinding) never reaches a socket.

Everything but `resolve_host` is pure, so the policy is unit-tested without a network.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from h2ogpt_api.retrieval.base import DocumentError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# host, port -> the addresses a connection to it could use (getaddrinfo's answer).
Resolver = Callable[[str, int], Awaitable[list[str]]]

ALLOWED_SCHEMES = ("http", "https")
# RFC 1123 host names (letters, digits, hyphens, dots); a leading "*." allows every sub-domain.
_LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
_HOST_NAME = re.compile(rf"^(\*\.)?{_LABEL}(\.{_LABEL})*$")


class UrlRefusedError(DocumentError):
    """A URL this server will not fetch (its scheme, or where its host points)."""


def _as_network(text: str) -> IPNetwork:
    try:
        return ipaddress.ip_network(text, strict=False)
    except ValueError:
        raise ValueError(f"{text!r} is not an address or CIDR (e.g. 10.96.0.0/12)") from None


@dataclass(frozen=True)
class UrlPolicy:
    """Exceptions to the public-addresses-only rule (`allowed_*`) and extra refused ranges."""

    allowed_hosts: frozenset[str] = frozenset()
    allowed_networks: tuple[IPNetwork, ...] = ()
    blocked_networks: tuple[IPNetwork, ...] = field(default=())

    @classmethod
    def from_settings(cls, allowed_url_hosts: Iterable[str] = (),
                      blocked_url_cidrs: Iterable[str] = ()) -> UrlPolicy:
        """Parse `--allowed_url_hosts` entries (host names, `*.domain`, addresses, CIDRs) and
        `--blocked_url_cidrs`; raises ValueError naming the entry that is neither."""
        hosts: set[str] = set()
        networks: list[IPNetwork] = []
        for raw in allowed_url_hosts:
            entry = raw.strip().lower().rstrip(".")
            if not entry:
                continue
            if _looks_like_address(entry):
                networks.append(_as_network(entry.strip("[]")))
            elif _HOST_NAME.match(entry):
                hosts.add(entry)
            else:
                raise ValueError(f"{raw!r} is not a host name, address or CIDR")
        blocked = tuple(_as_network(raw.strip()) for raw in blocked_url_cidrs
                        if raw.strip())
        return cls(frozenset(hosts), tuple(networks), blocked)

    def host_allowed(self, host: str) -> bool:
        """True when the operator allowed this host name (or a `*.` parent domain of it)."""
        name = host.lower().rstrip(".")
        if name in self.allowed_hosts:
            return True
        return any(entry.startswith("*.") and name.endswith(entry[1:]) for entry in self.allowed_hosts)

    def address_problem(self, address: IPAddress) -> str | None:
        """Why a connection to `address` is refused, or None when it is allowed."""
        # ::ffff:10.0.0.1 reaches 10.0.0.1: judge the IPv4 address inside.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        checked: IPAddress = mapped or address
        if any(checked in network for network in self.allowed_networks if network.version == checked.version):
            return None
        for network in self.blocked_networks:
            if network.version == checked.version and checked in network:
                return f"in the blocked range {network} (--blocked_url_cidrs)"
        return _non_public_kind(checked)


def _looks_like_address(entry: str) -> bool:
    head = entry.split("/", 1)[0].strip("[]")
    try:
        ipaddress.ip_address(head)
    except ValueError:
        return False
    return True


_UNIQUE_LOCAL = ipaddress.ip_network("fc00::/7")
# The first matching kind names the refusal; `is_global` last catches the rest (shared 100.64.0.0/10,
# reserved and documentation ranges).
_NON_PUBLIC_KINDS: tuple[tuple[str, Callable[[IPAddress], bool]], ...] = (
    ("a loopback address", lambda a: a.is_loopback),
    ("a link-local address (cloud metadata services live there)", lambda a: a.is_link_local),
    ("the unspecified address", lambda a: a.is_unspecified),
    ("a multicast address", lambda a: a.is_multicast),
    ("a unique-local address", lambda a: a.version == 6 and a in _UNIQUE_LOCAL),
    ("a private address", lambda a: a.is_private),
    ("not a public address", lambda a: not a.is_global),
)


def _non_public_kind(address: IPAddress) -> str | None:
    """A name for the kind of non-public address this is, or None for a public one."""
    return next((kind for kind, matches in _NON_PUBLIC_KINDS if matches(address)), None)


def check_scheme(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of an http(s) URL; refuses other schemes and URLs without a host."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ALLOWED_SCHEMES or not parts.hostname:
        raise UrlRefusedError(f"{url!r} is not an http(s) URL; give a full http:// or https:// address")
    try:
        port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    except ValueError:
        raise UrlRefusedError(f"{url!r} has an invalid port") from None
    return parts.scheme.lower(), parts.hostname, port


def choose_address(url: str, host: str, addresses: Sequence[str], policy: UrlPolicy) -> str:
    """The address to connect to for `host`: the first one resolved, when EVERY resolved address
    is allowed. One refused address refuses the URL: whoever controls the DNS name chooses the
    order of its answers."""
    if not addresses:
        raise UrlRefusedError(f"{url}: {host!r} resolves to no address; check the address")
    if policy.host_allowed(host):
        return addresses[0]
    for text in addresses:
        address = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
        problem = policy.address_problem(address)
        if problem is not None:
            shown = host if host == text else f"{host} ({text})"
            raise UrlRefusedError(
                f"{url}: refused to fetch from {shown}: {problem}. URL ingestion fetches only public "
                "addresses; an administrator can allow this host with --allowed_url_hosts "
                "(H2OGPT_ALLOWED_URL_HOSTS)")
    return addresses[0]


async def resolve_host(host: str, port: int) -> list[str]:
    """The system resolver's addresses for `host`, in its order, without duplicates."""
    loop = asyncio.get_running_loop()
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise DocumentError(f"cannot resolve {host!r} ({exc.strerror}); check the address") from None
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def pinned_url(url: str, address: str) -> str:
    """`url` with its host replaced by `address` (the checked one), keeping port, path and query."""
    parts = urlsplit(url)
    host = f"[{address}]" if ":" in address else address
    netloc = f"{host}:{parts.port}" if parts.port else host
    return parts._replace(netloc=netloc).geturl()


def host_header(url: str) -> str:
    """The Host header the original URL would send (its host, and its port when one is given)."""
    parts = urlsplit(url)
    hostname = parts.hostname or ""
    host = f"[{hostname}]" if ":" in hostname else hostname
    return f"{host}:{parts.port}" if parts.port else host
