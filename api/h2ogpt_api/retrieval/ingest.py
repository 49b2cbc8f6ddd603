"""Turning text, files and URLs into chunks: loaders, size and type checks, chunking, hashing.

Everything here except `fetch_url` is pure (bytes in, chunks out) so it is unit-tested without
a store. Every refusal is a `DocumentError` whose message says what was wrong and what to do;
the store calls these before it writes anything, so a refused document stores nothing.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import re
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path, PurePosixPath
from urllib.parse import urljoin, urlsplit

import httpx
from semantic_text_splitter import TextSplitter

from h2ogpt_api.retrieval.base import DocumentError, TokenWindow
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
    ".docx": "docx",
}
# Content-Type (without parameters) -> document kind, for URLs.
CONTENT_TYPE_KINDS: dict[str, str] = {
    "text/plain": "text",
    "text/markdown": "markdown", "text/x-markdown": "markdown",
    "text/html": "html", "application/xhtml+xml": "html",
    "application/pdf": "pdf",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
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


def _parsed(html: str) -> _HTMLTextExtractor:
    parser = _HTMLTextExtractor()
    parser.feed(html)
    parser.close()
    return parser


def _visible_body(parser: _HTMLTextExtractor) -> str:
    """Every visible text of a page (no scripts, styles, `<head>`), block elements as paragraph
    breaks: the fallback when a page has no main content to find."""
    body = re.sub(r"[ \t]*\n[ \t]*", "\n", "".join(parser.parts))
    # Paragraph breaks come from the markup; single newlines inside text are just wrapping.
    paragraphs = [" ".join(p.split()) for p in re.split(r"\n\s*\n", body)]
    return "\n\n".join(p for p in paragraphs if p)


def _with_title(title: str, text: str) -> str:
    return f"{title}\n\n{text}" if title and not text.startswith(title) else text


def main_content(html: str) -> str | None:
    """The main content of a page (the article, not its menus, footers or cookie banners) as
    paragraphs, found by trafilatura; None when it finds none (a fragment, a very short page)."""
    import trafilatura  # noqa: PLC0415  (lxml and friends load only when HTML is ingested)

    text = trafilatura.extract(html, include_comments=False, include_tables=True, output_format="txt")
    if not text or not text.strip():
        return None
    # trafilatura puts one block (paragraph, heading, list item, table row) per line.
    return "\n\n".join(line.strip() for line in text.splitlines() if line.strip())


def visible_text(html: str) -> str:
    """The page's title and all its visible text, menus and footers included."""
    parser = _parsed(html)
    return _with_title(" ".join("".join(parser.title).split()), _visible_body(parser))


def html_to_text(html: str) -> str:
    """The page's title and main content; all visible text when no main content is found."""
    parser = _parsed(html)
    title = " ".join("".join(parser.title).split())
    return _with_title(title, main_content(html) or _visible_body(parser))


# A .docx is a zip: refuse one that would unpack into more XML than any real document holds
# (a zip bomb) before python-docx reads it into memory.
MAX_DOCX_UNPACKED_BYTES = 256 * 1024 * 1024


def docx_text(data: bytes, source: str, max_unpacked_bytes: int = MAX_DOCX_UNPACKED_BYTES) -> str:
    """Paragraphs and tables of a Word .docx in body order (tables as `cell | cell` rows)."""
    import docx  # noqa: PLC0415
    from docx.opc.exceptions import PackageNotFoundError  # noqa: PLC0415
    from docx.table import Table  # noqa: PLC0415

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
        if unpacked > max_unpacked_bytes:
            raise DocumentError(f"{source}: the .docx unpacks to {unpacked} bytes, over the limit of "
                                f"{max_unpacked_bytes}; save it again or split it")
        document = docx.Document(io.BytesIO(data))
    except (zipfile.BadZipFile, PackageNotFoundError, KeyError, ValueError) as exc:
        if isinstance(exc, DocumentError):
            raise
        raise DocumentError(f"{source}: not a readable .docx ({type(exc).__name__}); save it as .docx "
                            "(Word 2007 or later) and try again") from exc
    blocks: list[str] = []
    for block in document.iter_inner_content():
        if isinstance(block, Table):
            blocks.extend(" | ".join(cell.text.strip() for cell in row.cells) for row in block.rows)
        else:
            blocks.append(block.text)
    return "\n\n".join(text.strip() for text in blocks if text.strip())


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
    elif kind == "docx":
        pages = [Page(normalize_text(docx_text(data, source)))]
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

@functools.lru_cache(maxsize=32)
def _character_splitter(chunk_size: int, overlap: int) -> TextSplitter:
    return TextSplitter(chunk_size, overlap=min(overlap, chunk_size - 1))


@functools.lru_cache(maxsize=8)
def _token_splitter(window: TokenWindow) -> TextSplitter:
    # The splitter counts tokens without the special ones the model adds ([CLS], [SEP]).
    capacity = window.max_tokens - window.count("")
    return TextSplitter.from_huggingface_tokenizer(window.tokenizer, capacity, overlap=capacity // 4)


def _fits(chunk: str, window: TokenWindow) -> bool:
    # A word piece covers at least one character, so a chunk this short cannot overflow.
    return len(chunk) + window.count("") <= window.max_tokens or window.count(chunk) <= window.max_tokens


def chunk_text(text: str, chunk_size: int, overlap: int | None = None,
               window: TokenWindow | None = None) -> list[str]:
    """Chunks of at most `chunk_size` characters and, given the embedder's `window`, at most the
    tokens it reads, cut by semantic-text-splitter at the largest boundary that fits (paragraph,
    then line, sentence, word). Each chunk after the first starts with the previous one's last
    sentences when they fit in `overlap` (default a quarter of `chunk_size`: the splitter overlaps
    whole units only, and a tenth is shorter than most sentences), so a fact split across a
    boundary is still found. A chunk over the window is cut again in the embedder's tokens."""
    validate_chunk_size(chunk_size)
    overlap = chunk_size // 4 if overlap is None else overlap
    chunks = list(_character_splitter(chunk_size, overlap).chunks(text))
    if window is None:
        return chunks
    fitted: list[str] = []
    for chunk in chunks:
        fitted.extend([chunk] if _fits(chunk, window) else _token_splitter(window).chunks(chunk))
    return fitted


def chunk_document(document: LoadedDocument, chunk_size: int,
                   window: TokenWindow | None = None) -> list[Chunk]:
    """Chunks of every page in order; a chunk never spans two pages, so its page number is exact."""
    chunks: list[Chunk] = []
    for page in document.pages:
        for content in chunk_text(page.text, chunk_size, window=window):
            chunks.append(Chunk(source=document.source, content=content, chunk_id=len(chunks),
                                page=page.number))
    return chunks
