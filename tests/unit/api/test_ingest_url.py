"""`fetch_url` against a real HTTP server on loopback: types, limits, redirects, errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

import pytest
from fpdf import FPDF
from h2ogpt_api.retrieval.base import DocumentError
from h2ogpt_api.retrieval.ingest import IngestLimits, LoadedDocument, fetch_url
from h2ogpt_api.retrieval.url_guard import UrlPolicy

from tests.support.loopback_http import serve_on_loopback
from tests.unit.api.test_ingest import make_docx

LIMITS = IngestLimits(max_url_bytes=10_000, url_timeout_s=1.0)
# These tests are about fetching; the server is on loopback, which only an allow-list opens.
LOOPBACK_ALLOWED = UrlPolicy.from_settings(["127.0.0.1"])


def pdf_bytes(tmp: Path) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in ("Page one is about rivers.", "Page two is about mountains."):
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    pdf.output(str(tmp / "served.pdf"))
    return (tmp / "served.pdf").read_bytes()


class Handler(BaseHTTPRequestHandler):
    routes: ClassVar[dict[str, tuple[int, str, bytes]]] = {}

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        if self.path == "/slow":
            time.sleep(3)
        if self.path == "/redirect":
            self.send_response(302)
            self.send_header("Location", "/page.html")
            self.end_headers()
            return
        if self.path == "/endless":  # no Content-Length: only counting the bytes catches it
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.end_headers()
            for _ in range(100):
                self.wfile.write(b"y" * 1000)
            return
        status, content_type, body = self.routes.get(self.path, (404, "text/plain", b"not found"))
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    Handler.routes = {
        "/page.html": (200, "text/html; charset=utf-8",
                       b"<html><title>Rivers</title><body><p>The Nile is long.</p></body></html>"),
        "/doc.pdf": (200, "application/pdf", pdf_bytes(tmp_path_factory.mktemp("pdf"))),
        "/notes.md": (200, "text/markdown", b"# Notes\n\nMarkdown body."),
        "/report": (200, "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                    make_docx(tmp_path_factory.mktemp("docx") / "r.docx").read_bytes()),
        "/image.png": (200, "image/png", b"\x89PNG...."),
        "/big.txt": (200, "text/plain", b"x " * 6000),
        "/empty.html": (200, "text/html", b"<html><body>  </body></html>"),
    }
    with serve_on_loopback(Handler) as url:
        yield url


def fetch(url: str) -> LoadedDocument:
    return asyncio.run(fetch_url(url, limits=LIMITS, policy=LOOPBACK_ALLOWED))


def test_html_page(server: str) -> None:
    doc = fetch(f"{server}/page.html")
    assert (doc.source, doc.kind) == (f"{server}/page.html", "html")
    assert doc.pages[0].text == "Rivers\n\nThe Nile is long."


def test_pdf_keeps_pages(server: str) -> None:
    doc = fetch(f"{server}/doc.pdf")
    assert [(p.number, p.text) for p in doc.pages] == [
        (1, "Page one is about rivers."), (2, "Page two is about mountains.")]


def test_docx_by_its_content_type(server: str) -> None:
    # python-docx's empty template alone is about 36 KB.
    doc = asyncio.run(fetch_url(f"{server}/report", limits=IngestLimits(max_url_bytes=100_000),
                                policy=LOOPBACK_ALLOWED))
    assert doc.kind == "docx"
    assert doc.pages[0].text.startswith("Quarterly report\n\nRevenue grew")


def test_markdown_and_redirect(server: str) -> None:
    assert fetch(f"{server}/notes.md").kind == "markdown"
    assert fetch(f"{server}/redirect").pages[0].text.endswith("The Nile is long.")


@pytest.mark.parametrize(("path", "message"), [
    ("/image.png", "unsupported content type 'image/png'"),
    ("/big.txt", "the document is 12000 bytes, over the limit of 10000 bytes"),
    ("/endless", "over the limit of 10000 bytes"),
    ("/missing", "the server answered HTTP 404"),
    ("/slow", "no answer within 1 s"),
    ("/empty.html", "the document is empty"),
])
def test_bad_urls_get_clear_errors(server: str, path: str, message: str) -> None:
    with pytest.raises(DocumentError, match=message):
        fetch(f"{server}{path}")


def test_unreachable_url() -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(DocumentError, match=r"the URL is unreachable \(ConnectError"):
        fetch(f"http://127.0.0.1:{port}/doc.pdf")


def test_non_http_scheme_is_refused_before_any_request() -> None:
    with pytest.raises(DocumentError, match="not an http"):
        fetch("file:///etc/passwd")
