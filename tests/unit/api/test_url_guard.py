"""URL ingestion is not a proxy into the cluster: the address policy (pure) and `fetch_url` against
real HTTP servers on loopback addresses (127.0.0.1 and 127.0.0.2), reached by names and literals
the system resolver answers, or through a resolver injected at the edge (DNS rebinding)."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from h2ogpt_api.retrieval.base import DocumentError
from h2ogpt_api.retrieval.ingest import IngestLimits, LoadedDocument, fetch_url
from h2ogpt_api.retrieval.url_guard import (
    UrlPolicy,
    UrlRefusedError,
    choose_address,
    host_header,
    pinned_url,
)
from h2ogpt_api.settings import SettingsError, parse_settings

LIMITS = IngestLimits(max_url_bytes=10_000, url_timeout_s=2.0)
DEFAULT = UrlPolicy()


# ---------------------------------------------------------------------------------------------
# The policy (pure)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("address", "kind"), [
    ("127.0.0.1", "loopback"), ("127.0.0.2", "loopback"), ("::1", "loopback"),
    ("169.254.169.254", "link-local"), ("fe80::1", "link-local"),
    ("10.96.0.1", "private"), ("172.16.5.4", "private"), ("192.168.1.1", "private"),
    ("fd00::1", "unique-local"), ("100.64.0.1", "not a public address"),
    ("0.0.0.0", "unspecified"), ("224.0.0.1", "multicast"),
    ("::ffff:127.0.0.1", "loopback"), ("::ffff:169.254.169.254", "link-local"),
])
def test_non_public_addresses_are_refused_by_default(address: str, kind: str) -> None:
    problem = DEFAULT.address_problem(ipaddress.ip_address(address))
    assert problem is not None
    assert kind in problem


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111"])
def test_public_addresses_are_allowed(address: str) -> None:
    assert DEFAULT.address_problem(ipaddress.ip_address(address)) is None


def test_blocked_cidrs_refuse_a_public_cluster_range() -> None:
    policy = UrlPolicy.from_settings(blocked_url_cidrs=["34.118.224.0/20"])
    assert "34.118.224.0/20" in (policy.address_problem(ipaddress.ip_address("34.118.230.7")) or "")
    assert policy.address_problem(ipaddress.ip_address("34.118.240.1")) is None


def test_allowed_entries_open_exactly_what_they_name() -> None:
    policy = UrlPolicy.from_settings(["10.0.0.0/8", "Wiki.Corp.", "*.intranet", "fd00::5"])
    assert policy.address_problem(ipaddress.ip_address("10.1.2.3")) is None
    assert policy.address_problem(ipaddress.ip_address("192.168.1.1")) is not None
    assert policy.address_problem(ipaddress.ip_address("fd00::5")) is None
    assert policy.address_problem(ipaddress.ip_address("fd00::6")) is not None
    assert policy.host_allowed("wiki.corp")
    assert policy.host_allowed("WIKI.CORP.")
    assert policy.host_allowed("docs.team.intranet")
    assert not policy.host_allowed("intranet2")
    assert not policy.host_allowed("evil-intranet")
    assert not policy.host_allowed("wiki.corp.evil.com")


@pytest.mark.parametrize("entry", ["http://x", "a b", "10.0.0.0/33", "-bad-.com"])
def test_bad_allow_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError, match="not a"):
        UrlPolicy.from_settings([entry])


def test_one_private_answer_among_public_ones_refuses_the_url() -> None:
    # Whoever controls a DNS name controls the order of its answers.
    with pytest.raises(UrlRefusedError, match=r"evil.example \(10.0.0.5\): refused|a private address"):
        choose_address("http://evil.example/", "evil.example", ["93.184.216.34", "10.0.0.5"], DEFAULT)
    with pytest.raises(UrlRefusedError, match="resolves to no address"):
        choose_address("http://x.example/", "x.example", [], DEFAULT)
    assert choose_address("http://ok.example/", "ok.example", ["93.184.216.34"], DEFAULT) == "93.184.216.34"


def test_pinned_url_keeps_everything_but_the_host() -> None:
    pinned = pinned_url("http://user@site.example:8080/a/b?q=1#f", "10.1.2.3")
    assert pinned == "http://10.1.2.3:8080/a/b?q=1#f"
    assert pinned_url("https://site.example/x", "2001:db8::1") == "https://[2001:db8::1]/x"
    assert host_header("http://site.example:8080/a") == "site.example:8080"
    assert host_header("https://[2001:db8::1]/") == "[2001:db8::1]"


def test_settings_flag_and_environment() -> None:
    settings = parse_settings(["--allowed_url_hosts", "wiki.corp, 10.0.0.0/8"], {})
    assert settings.allowed_url_hosts == ["wiki.corp", "10.0.0.0/8"]
    assert settings.url_policy().host_allowed("wiki.corp")
    from_env = parse_settings([], {"H2OGPT_ALLOWED_URL_HOSTS": "localhost",
                                   "H2OGPT_BLOCKED_URL_CIDRS": "34.118.224.0/20"})
    assert from_env.allowed_url_hosts == ["localhost"]
    assert from_env.blocked_url_cidrs == ["34.118.224.0/20"]
    assert parse_settings([], {}).url_policy() == UrlPolicy()
    with pytest.raises(SettingsError, match=r"--allowed_url_hosts: .*'ftp://x' is not a host name"):
        parse_settings(["--allowed_url_hosts", "ftp://x"], {})
    with pytest.raises(SettingsError, match=r"--blocked_url_cidrs: .*'10.0.0.0/99' is not an address"):
        parse_settings(["--blocked_url_cidrs", "10.0.0.0/99"], {})


# ---------------------------------------------------------------------------------------------
# fetch_url against real servers
# ---------------------------------------------------------------------------------------------

@dataclass
class Site:
    """A real HTTP server on one loopback address, recording the requests it got."""

    address: str
    routes: dict[str, tuple[int, dict[str, str], bytes]]
    requests: list[tuple[str, str]] = field(default_factory=list)  # (path, Host header)
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}"


@pytest.fixture
def sites() -> Iterator[dict[str, Site]]:
    def serve(site: Site) -> ThreadingHTTPServer:
        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                site.requests.append((self.path, self.headers.get("Host", "")))
                status, headers, body = site.routes.get(self.path, (404, {}, b"not found"))
                self.send_response(status)
                for name, value in {"Content-Type": "text/html", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        httpd = ThreadingHTTPServer((site.address, 0), Handler)
        site.port = httpd.server_address[1]
        threading.Thread(target=httpd.serve_forever, daemon=True).start()
        return httpd

    public = Site("127.0.0.1", {"/page.html": (200, {}, b"<p>The public page.</p>")})
    internal = Site("127.0.0.2", {"/secret": (200, {}, b"<p>Internal secret.</p>")})
    servers = [serve(public), serve(internal)]
    public.routes["/to-internal"] = (302, {"Location": f"{internal.url}/secret"}, b"")
    public.routes["/to-file"] = (302, {"Location": "file:///etc/passwd"}, b"")
    public.routes["/to-metadata"] = (307, {"Location": "http://169.254.169.254/latest/meta-data/"}, b"")
    public.routes["/loop"] = (302, {"Location": "/loop"}, b"")
    yield {"public": public, "internal": internal}
    for httpd in servers:
        httpd.shutdown()
        httpd.server_close()


def fetch(url: str, policy: UrlPolicy = DEFAULT, **kwargs: object) -> LoadedDocument:
    return asyncio.run(fetch_url(url, limits=LIMITS, policy=policy, **kwargs))  # type: ignore[arg-type]


def test_loopback_is_refused_by_every_spelling_before_any_request(sites: dict[str, Site]) -> None:
    public = sites["public"]
    port = public.port
    for url in (f"http://localhost:{port}/page.html", f"http://127.0.0.1:{port}/page.html",
                f"http://2130706433:{port}/page.html",  # 127.0.0.1 as one decimal number
                f"http://0x7f.1:{port}/page.html", f"http://127.1:{port}/page.html",
                f"http://{sites['internal'].address}:{sites['internal'].port}/secret"):
        with pytest.raises(UrlRefusedError, match=r"loopback address.*--allowed_url_hosts"):
            fetch(url)
    assert public.requests == []
    assert sites["internal"].requests == []


@pytest.mark.parametrize("url", ["file:///etc/passwd", "ftp://example.com/x", "gopher://127.0.0.1:70/",
                                 "http:///nohost", "dict://localhost:11211/"])
def test_other_schemes_are_refused(url: str) -> None:
    with pytest.raises(UrlRefusedError, match="not an http"):
        fetch(url)


def test_an_allowed_host_name_is_fetched_by_that_name(sites: dict[str, Site]) -> None:
    public = sites["public"]
    doc = fetch(f"http://localhost:{public.port}/page.html", UrlPolicy.from_settings(["localhost"]))
    assert doc.pages[0].text == "The public page."
    assert public.requests == [("/page.html", f"localhost:{public.port}")]  # the URL's Host header


def test_an_allowed_address_does_not_open_its_neighbours(sites: dict[str, Site]) -> None:
    policy = UrlPolicy.from_settings(["127.0.0.1"])
    assert fetch(f"{sites['public'].url}/page.html", policy).pages[0].text == "The public page."
    with pytest.raises(UrlRefusedError, match=r"127\.0\.0\.2: a loopback address"):
        fetch(f"{sites['internal'].url}/secret", policy)
    assert sites["internal"].requests == []


@pytest.mark.parametrize(("path", "message"), [
    ("/to-internal", "refused to fetch from 127.0.0.2: a loopback address"),
    ("/to-file", "'file:///etc/passwd' is not an http"),
    ("/to-metadata", "169.254.169.254: a link-local address"),
    ("/loop", "more than 5 redirects"),
])
def test_every_redirect_is_checked(sites: dict[str, Site], path: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        fetch(f"{sites['public'].url}{path}", UrlPolicy.from_settings(["127.0.0.1"]))
    assert sites["internal"].requests == []


def test_dns_rebinding_cannot_switch_the_address_after_the_check(sites: dict[str, Site]) -> None:
    """The name's first answer is checked and allowed; every later answer points at the internal
    server. The connection must go to the checked address, so the internal one sees nothing."""
    public, internal = sites["public"], sites["internal"]
    answers: list[str] = []

    async def rebinding_resolver(host: str, port: int) -> list[str]:
        assert host == "docs.rebind.test"
        answer = public.address if not answers else internal.address
        answers.append(answer)
        return [answer]

    doc = fetch(f"http://docs.rebind.test:{public.port}/page.html", UrlPolicy.from_settings(["127.0.0.1"]),
                resolve=rebinding_resolver)
    assert doc.pages[0].text == "The public page."
    assert answers == ["127.0.0.1"]  # resolved once, and that answer was used
    assert public.requests == [("/page.html", f"docs.rebind.test:{public.port}")]
    assert internal.requests == []


def test_a_name_that_resolves_to_a_private_address_is_refused(sites: dict[str, Site]) -> None:
    async def resolver(host: str, port: int) -> list[str]:
        return ["93.184.216.34", sites["internal"].address]

    with pytest.raises(UrlRefusedError, match=r"wiki.example \(127.0.0.2\): a loopback address"):
        fetch(f"http://wiki.example:{sites['internal'].port}/secret", resolve=resolver)
    assert sites["internal"].requests == []


def test_unresolvable_names_get_a_clear_error() -> None:
    with pytest.raises(DocumentError, match=r"cannot resolve 'no-such-host\.invalid'"):
        fetch("http://no-such-host.invalid/")


def test_size_cap_still_applies_to_allowed_hosts(sites: dict[str, Site]) -> None:
    public = sites["public"]
    public.routes["/big.html"] = (200, {}, b"<p>" + b"x " * 6000 + b"</p>")
    with pytest.raises(DocumentError, match="over the limit of 10000 bytes"):
        fetch(f"{public.url}/big.html", UrlPolicy.from_settings(["127.0.0.1"]))


def test_refusal_needs_no_listening_server() -> None:
    # A closed port on loopback is refused by policy, not reported as unreachable: the policy
    # decides before any connection is tried.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UrlRefusedError, match="loopback"):
        fetch(f"http://127.0.0.1:{port}/")
