"""Turning text, files and URLs into chunks: loaders, size and type checks, chunking, hashing.

Everything here except `fetch_url` is pure (bytes in, chunks out) so it is unit-tested without
a store. Every refusal is a `DocumentError` whose message says what was wrong and what to do;
the store calls these before it writes anything, so a refused document stores nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx

from h2ogpt_api.retrieval.base import DocumentError
from h2ogpt_api.retrieval.url_guard import (
    Resolver,
    UrlPolicy,
    check_scheme,
    choose_address,
    host_header,
    pinned_url,
    resolve_host,
)

MIN_CHUNK_SIZE = 64
MAX_CHUNK_SIZE = 16_000

# File suffix -> document kind.
FILE_KINDS: dict[str, str] = {
    ".txt": "text", ".text": "text",
    ".md": "markdown", ".markdown": "markdown",
    ".html": "html", ".htm": "html",
    ".pdf": "pdf",
}
# Content-Type (without parameters) -> document kind, for URLs.
CONTENT_TYPE_KINDS: dict[str, str] = {
    "text/plain": "text",
    "text/markdown": "markdown", "text/x-markdown": "markdown",
    "text/html": "html", "application/xhtml+xml": "html",
    "application/pdf": "pdf",
}
# Servers that label everything octet-stream still get a chance through the URL's suffix.
GENERIC_CONTENT_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


@dataclass(frozen=True)
class IngestLimits:
    """Bounds on what one ingestion may read. Defaults suit an API pod with a few GiB of memory."""

    max_file_bytes: int = 50 * 1024 * 1024
    max_url_bytes: int = 20 * 1024 * 1024
    max_text_chars: int = 10_000_000
    url_timeout_s: float = 30.0
    max_redirects: int = 5


DEFAULT_LIMITS = IngestLimits()
# Public addresses only, no exceptions: what a server without --allowed_url_hosts fetches.
DEFAULT_URL_POLICY = UrlPolicy()


@dataclass(frozen=True)
class Page:
    text: str
    number: int | None = None  # 1-based page number for PDFs; None for unpaged formats


@dataclass(frozen=True)
class LoadedDocument:
    source: str
    kind: str
    pages: list[Page]


@dataclass(frozen=True)
class Chunk:
    source: str
    content: str
    chunk_id: int
    page: int | None

    @property
    def content_hash(self) -> str:
        return hashlib.sha256(self.content.encode("utf-8")).hexdigest()


def supported_types_text() -> str:
    return ", ".join(sorted(FILE_KINDS))


def validate_chunk_size(chunk_size: int) -> None:
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise DocumentError(f"chunk_size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} "
                            f"characters, got {chunk_size}")


def text_source_name(text: str) -> str:
    """Name of pasted text without a given source: stable, so pasting it twice is a duplicate."""
    return f"paste-{hashlib.sha256(text.encode('utf-8')).hexdigest()[:12]}"


# ---------------------------------------------------------------------------------------------
# Text extraction
# ---------------------------------------------------------------------------------------------

def normalize_text(text: str) -> str:
    """Unify line endings, drop control characters and trailing spaces, squeeze blank-line runs."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    text = re.sub(r"[ \t\f\v]+", " ", text)
    text = re.sub(r" *\n *", "\n", text)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip()


class _HTMLTextExtractor(HTMLParser):
    """Visible text of an HTML page; block elements become line breaks so chunking sees paragraphs."""

    SKIPPED = frozenset({"script", "style", "noscript", "template", "svg", "head"})
    BLOCKS = frozenset({"p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article",
                        "header", "footer", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote",
                        "title", "dd", "dt", "hr", "main", "nav", "aside", "figcaption"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self.SKIPPED:
            self._skip_depth += 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self.SKIPPED and self._skip_depth:
            self._skip_depth -= 1
        if tag in self.BLOCKS:
            self.parts.append("\n\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> str:
    parser = _HTMLTextExtractor()
    parser.feed(html)
    parser.close()
    body = re.sub(r"[ \t]*\n[ \t]*", "\n", "".join(parser.parts))
    title = " ".join("".join(parser.title).split())
    # Paragraph breaks come from the markup; single newlines inside text are just wrapping.
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    text = "\n\n".join(p for p in paragraphs if p)
    return f"{title}\n\n{text}" if title and not text.startswith(title) else text


def pdf_pages(data: bytes, source: str) -> list[Page]:
    from pypdf import PdfReader  # noqa: PLC0415
    from pypdf.errors import PdfReadError  # noqa: PLC0415

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            raise DocumentError(f"{source}: the PDF is encrypted; upload an unencrypted copy")
        return [Page(normalize_text(page.extract_text() or ""), number)
                for number, page in enumerate(reader.pages, start=1)]
    except (PdfReadError, ValueError, KeyError, TypeError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(f"{source}: not a readable PDF ({exc}); check that the file is a complete, "
                            "valid PDF") from exc


def decode_text(data: bytes) -> str:
    # UTF-8 (with or without BOM) is what almost every text file is; Latin-1 cannot fail and keeps
    # legacy files readable rather than refusing them.
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def parse_document(data: bytes, kind: str, source: str) -> LoadedDocument:
    """Extract text pages from raw bytes of a known kind. Refuses a document with no text."""
    if kind == "pdf":
        pages = [p for p in pdf_pages(data, source) if p.text]
    elif kind == "html":
        pages = [Page(normalize_text(html_to_text(decode_text(data))))]
    else:
        pages = [Page(normalize_text(decode_text(data)))]
    pages = [p for p in pages if p.text]
    if not pages:
        hint = " (a scanned PDF needs OCR first: this server reads only PDFs with a text layer)" \
            if kind == "pdf" else ""
        raise DocumentError(f"{source}: the document is empty: no text could be extracted{hint}")
    return LoadedDocument(source=source, kind=kind, pages=pages)


def load_text(text: str, *, source: str | None = None,
              limits: IngestLimits = DEFAULT_LIMITS) -> LoadedDocument:
    if len(text) > limits.max_text_chars:
        raise DocumentError(f"the text is {len(text)} characters, over the limit of {limits.max_text_chars}; "
                            "split it or upload it as a file")
    name = source or text_source_name(text)
    cleaned = normalize_text(text)
    if not cleaned:
        raise DocumentError(f"{name}: the text is empty; nothing to add")
    return LoadedDocument(source=name, kind="text", pages=[Page(cleaned)])


def load_file(path: str | Path, *, source: str | None = None,
              limits: IngestLimits = DEFAULT_LIMITS) -> LoadedDocument:
    """Read a local (uploaded) file. Its type comes from the suffix of `source` or of the path."""
    file_path = Path(path)
    name = source or file_path.name
    kind = FILE_KINDS.get(Path(name).suffix.lower()) or FILE_KINDS.get(file_path.suffix.lower())
    if kind is None:
        raise DocumentError(f"{name}: unsupported file type {Path(name).suffix or '(no suffix)'!r}; "
                            f"supported: {supported_types_text()}")
    if not file_path.is_file():
        raise DocumentError(f"{name}: no such file {str(file_path)!r}; upload it first")
    size = file_path.stat().st_size
    if size > limits.max_file_bytes:
        raise DocumentError(f"{name}: the file is {size} bytes, over the limit of {limits.max_file_bytes} "
                            "bytes; split it into smaller files")
    return parse_document(file_path.read_bytes(), kind, name)


# ---------------------------------------------------------------------------------------------
# URLs
# ---------------------------------------------------------------------------------------------

def validate_url(url: str) -> str:
    check_scheme(url)
    return url.strip()


def url_document_kind(content_type: str, url: str) -> str:
    media_type = content_type.split(";", 1)[0].strip().lower()
    kind = CONTENT_TYPE_KINDS.get(media_type)
    if kind is None and media_type in GENERIC_CONTENT_TYPES:
        kind = FILE_KINDS.get(PurePosixPath(urlsplit(url).path).suffix.lower())
    if kind is None:
        supported = ", ".join(sorted(CONTENT_TYPE_KINDS))
        raise DocumentError(f"{url}: unsupported content type {media_type or '(none)'!r}; "
                            f"supported: {supported}")
    return kind


REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})


async def fetch_url(
    url: str, *, limits: IngestLimits = DEFAULT_LIMITS, policy: UrlPolicy = DEFAULT_URL_POLICY,
    resolve: Resolver = resolve_host,
) -> LoadedDocument:
    """Download and parse one http(s) URL, refusing it early when it is too big or of the wrong type.

    Every hop (the URL and each redirect) is checked by `policy` on the addresses its host resolves
    to, and the connection goes to the checked address (the Host header and TLS name stay the
    URL's), so a DNS answer that changes between check and connect is never used. `resolve` is
    the resolver (tests inject one); the size and time limits apply as before.
    """
    url = validate_url(url)
    timeout = httpx.Timeout(limits.url_timeout_s)
    try:
        # trust_env=False: a proxy from the environment would connect on our behalf to an
        # address we never checked.
        async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False) as client:
            current = url
            for _hop in range(limits.max_redirects + 1):
                async with _open_checked(client, current, limits, policy, resolve) as response:
                    location = response.headers.get("location")
                    if response.status_code in REDIRECT_STATUSES and location:
                        current = urljoin(current, location)
                        continue
                    return await _read_document(response, url, current, limits)
            raise DocumentError(f"{url}: more than {limits.max_redirects} redirects; give the final address")
    except httpx.TimeoutException as exc:
        raise DocumentError(f"{url}: no answer within {limits.url_timeout_s:g} s; check the address "
                            "or try again later") from exc
    except httpx.HTTPError as exc:
        raise DocumentError(f"{url}: the URL is unreachable ({type(exc).__name__}: {exc}); "
                            "check the address and that this server can reach it") from exc


@asynccontextmanager
async def _open_checked(client: httpx.AsyncClient, url: str, limits: IngestLimits, policy: UrlPolicy,
                        resolve: Resolver) -> AsyncIterator[httpx.Response]:
    """A streamed GET of `url` over a connection to an address `policy` allows."""
    scheme, host, port = check_scheme(url)
    try:
        addresses = await asyncio.wait_for(resolve(host, port), limits.url_timeout_s)
    except TimeoutError:
        raise DocumentError(f"{url}: resolving {host!r} took over {limits.url_timeout_s:g} s") from None
    address = choose_address(url, host, addresses, policy)
    headers = {"Accept": ", ".join(CONTENT_TYPE_KINDS), "Host": host_header(url)}
    # httpx's documented `sni_hostname` extension: TLS (SNI and certificate check) uses the
    # URL's host name while the socket goes to the checked address.
    extensions = {"sni_hostname": host} if scheme == "https" else {}
    async with client.stream("GET", pinned_url(url, address), headers=headers,
                             extensions=extensions) as response:
        yield response


async def _read_document(response: httpx.Response, url: str, final_url: str,
                         limits: IngestLimits) -> LoadedDocument:
    if response.status_code >= 400:
        raise DocumentError(f"{url}: the server answered HTTP {response.status_code}; check the address")
    kind = url_document_kind(response.headers.get("content-type", ""), final_url)
    declared = response.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limits.max_url_bytes:
        raise DocumentError(f"{url}: the document is {declared} bytes, over the limit of "
                            f"{limits.max_url_bytes} bytes")
    body = bytearray()
    async for piece in response.aiter_bytes():
        body.extend(piece)
        if len(body) > limits.max_url_bytes:
            raise DocumentError(f"{url}: the document is over the limit of {limits.max_url_bytes} bytes")
    return parse_document(bytes(body), kind, url)


# ---------------------------------------------------------------------------------------------
# Chunking
# ---------------------------------------------------------------------------------------------

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def _split_long(text: str, limit: int) -> list[str]:
    """Pieces of at most `limit` characters, cut at spaces where possible."""
    pieces: list[str] = []
    current = ""
    for whole_word in text.split():
        word = whole_word
        while len(word) > limit:  # one enormous "word" (a URL, base64): hard cut
            if current:
                pieces.append(current)
                current = ""
            pieces.append(word[:limit])
            word = word[limit:]
        if current and len(current) + 1 + len(word) > limit:
            pieces.append(current)
            current = word
        else:
            current = f"{current} {word}" if current else word
    if current:
        pieces.append(current)
    return pieces


def _units(text: str, limit: int) -> list[tuple[str, str]]:
    """Pieces of at most `limit` characters with the separator that joins each to the previous one:
    whole paragraphs when they fit, else sentences, else words."""
    units: list[tuple[str, str]] = []
    for raw_paragraph in re.split(r"\n\s*\n", text):
        paragraph = raw_paragraph.strip()
        if not paragraph:
            continue
        if len(paragraph) <= limit:
            units.append((paragraph, "\n\n"))
            continue
        separator = "\n\n"
        for sentence in _SENTENCE_END.split(paragraph):
            for piece in [sentence] if len(sentence) <= limit else _split_long(sentence, limit):
                units.append((piece, separator))
                separator = " "
    return units


def _overlap_tail(chunk: str, overlap: int) -> str:
    """The last `overlap` characters of a chunk, starting at a word boundary."""
    if overlap <= 0 or len(chunk) <= overlap:
        return ""
    tail = chunk[-overlap:]
    space = tail.find(" ")
    return tail[space + 1:] if space >= 0 else ""


def chunk_text(text: str, chunk_size: int, overlap: int | None = None) -> list[str]:
    """Chunks of at most `chunk_size` characters that end at paragraph or sentence boundaries where
    possible; each chunk after the first starts with a little of the previous one (`overlap`,
    default a tenth of `chunk_size`) so a fact split across a boundary is still found."""
    validate_chunk_size(chunk_size)
    overlap = chunk_size // 10 if overlap is None else overlap
    chunks: list[str] = []
    current = ""
    for unit, separator in _units(text, chunk_size):
        if current and len(current) + len(separator) + len(unit) <= chunk_size:
            current = f"{current}{separator}{unit}"
            continue
        if current:
            chunks.append(current)
            tail = _overlap_tail(current, overlap)
            current = f"{tail} {unit}" if tail and len(tail) + 1 + len(unit) <= chunk_size else unit
        else:
            current = unit
    if current:
        chunks.append(current)
    return chunks


def chunk_document(document: LoadedDocument, chunk_size: int) -> list[Chunk]:
    """Chunks of every page in order; a chunk never spans two pages, so its page number is exact."""
    chunks: list[Chunk] = []
    for page in document.pages:
        for content in chunk_text(page.text, chunk_size):
            chunks.append(Chunk(source=document.source, content=content, chunk_id=len(chunks),
                                page=page.number))
    return chunks
