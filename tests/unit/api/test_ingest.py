"""Loaders, limits and chunking of documents (pure functions: no store, no network)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

import pytest
from fpdf import FPDF
from h2ogpt_api.retrieval.base import DocumentError, TokenWindow, token_window_of
from h2ogpt_api.retrieval.embeddings import EndpointEmbedder, MiniLMEmbedder, load_embedder
from h2ogpt_api.retrieval.ingest import (
    IngestLimits,
    LoadedDocument,
    Page,
    chunk_document,
    chunk_text,
    docx_text,
    html_to_text,
    load_file,
    load_text,
    parse_document,
    text_source_name,
    url_document_kind,
    validate_chunk_size,
    validate_url,
)

PROSE = "\n\n".join(
    " ".join(f"Paragraph {p} sentence {s} talks about topic{p}x{s} in some detail." for s in range(6))
    for p in range(8)
)


def make_pdf(path: Path, pages: list[str]) -> Path:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        if text:
            pdf.multi_cell(0, 8, text)
    pdf.output(str(path))
    return path


def words(text: str) -> set[str]:
    return set(re.findall(r"\w+", text))


class TestChunking:
    def test_chunks_respect_size_and_cover_every_word(self) -> None:
        chunks = chunk_text(PROSE, 300)
        assert len(chunks) > 5
        assert all(len(chunk) <= 300 for chunk in chunks)
        assert words(PROSE) == set().union(*(words(c) for c in chunks))

    def test_chunks_end_at_sentence_or_paragraph_boundaries(self) -> None:
        for chunk in chunk_text(PROSE, 300):
            assert chunk.endswith("."), chunk

    def test_consecutive_chunks_overlap_a_little(self) -> None:
        chunks = chunk_text(PROSE, 300)
        # The splitter overlaps whole sentences: the next chunk starts with the previous one's last.
        overlapping = [a for a, b in itertools.pairwise(chunks) if b.split(". ")[0] + "." in a]
        assert len(overlapping) >= len(chunks) // 2
        # the overlap is small: most of each chunk is new text
        assert sum(len(c) for c in chunks) < 1.3 * len(PROSE)

    def test_short_paragraphs_are_packed_together(self) -> None:
        assert chunk_text("One.\n\nTwo.\n\nThree.", 100) == ["One.\n\nTwo.\n\nThree."]

    def test_huge_word_is_cut_hard(self) -> None:
        chunks = chunk_text("x" * 1000, 128)
        assert all(len(c) <= 128 for c in chunks)
        assert "".join(c.replace(" ", "") for c in chunks).count("x") >= 1000

    @pytest.mark.parametrize("size", [0, 10, 63, 16_001])
    def test_chunk_size_out_of_range_is_refused(self, size: int) -> None:
        with pytest.raises(DocumentError, match="chunk_size must be between 64 and 16000"):
            validate_chunk_size(size)

    def test_chunk_document_numbers_chunks_across_pages_and_keeps_pages(self) -> None:
        doc = LoadedDocument("a.pdf", "pdf", [Page(PROSE[:700], 1), Page(PROSE[700:1500], 2)])
        chunks = chunk_document(doc, 200)
        assert [c.chunk_id for c in chunks] == list(range(len(chunks)))
        assert {c.page for c in chunks} == {1, 2}
        assert [c.page for c in chunks] == sorted(c.page or 0 for c in chunks)
        assert all(c.source == "a.pdf" for c in chunks)

    def test_content_hash_depends_only_on_content(self) -> None:
        a, b = chunk_document(LoadedDocument("s", "text", [Page("Same words. " * 40)]), 200)[:2]
        assert len(a.content_hash) == 64
        assert (a.content_hash == b.content_hash) == (a.content == b.content)


class TestLoaders:
    def test_html_keeps_visible_text_paragraphs_and_title(self) -> None:
        html = ("<html><head><title>The Title</title><style>p{color:red}</style></head><body>"
                "<script>var secret = 1;</script><h1>Heading</h1><p>First &amp; best\nparagraph.</p>"
                "<div>Second<br>line</div></body></html>")
        text = html_to_text(html)
        assert text.startswith("The Title")
        assert "First & best paragraph." in text
        assert "Heading" in text
        assert "secret" not in text
        assert "color" not in text
        assert "\n\n" in text

    def test_text_file_markdown_and_html(self, tmp_path: Path) -> None:
        (tmp_path / "a.txt").write_text("Plain text\r\nwith  lines.\n\n\n\nNext.")
        (tmp_path / "b.md").write_text("# Title\n\nSome *markdown*.")
        (tmp_path / "c.htm").write_text("<p>Hello <b>web</b></p>")
        txt = load_file(tmp_path / "a.txt")
        assert txt.source == "a.txt"
        assert txt.pages == [Page("Plain text\nwith lines.\n\nNext.")]
        assert load_file(tmp_path / "b.md").kind == "markdown"
        html = load_file(tmp_path / "c.htm", source="web.html")
        assert (html.source, html.kind, html.pages[0].text) == ("web.html", "html", "Hello web")

    def test_non_utf8_text_is_read_as_latin1(self, tmp_path: Path) -> None:
        (tmp_path / "l.txt").write_bytes("café crème".encode("latin-1"))
        assert load_file(tmp_path / "l.txt").pages[0].text == "café crème"

    def test_pdf_pages_keep_their_numbers(self, tmp_path: Path) -> None:
        pdf = make_pdf(tmp_path / "doc.pdf",
                       ["Alpha page talks about apples.", "", "Gamma page about grapes."])
        doc = load_file(pdf)
        assert doc.kind == "pdf"
        assert [(p.number, p.text) for p in doc.pages] == [
            (1, "Alpha page talks about apples."), (3, "Gamma page about grapes.")]

    def test_unsupported_type_lists_supported_ones(self, tmp_path: Path) -> None:
        (tmp_path / "x.xlsx").write_bytes(b"PK\x03\x04")
        message = r"x\.xlsx: unsupported file type '\.xlsx'; supported: \.docx, .*\.pdf"
        with pytest.raises(DocumentError, match=message):
            load_file(tmp_path / "x.xlsx")

    def test_file_over_the_limit_is_refused(self, tmp_path: Path) -> None:
        (tmp_path / "big.txt").write_text("word " * 1000)
        with pytest.raises(DocumentError, match=r"big\.txt: the file is 5000 bytes, over the limit of 4096"):
            load_file(tmp_path / "big.txt", limits=IngestLimits(max_file_bytes=4096))

    def test_missing_file_is_refused(self, tmp_path: Path) -> None:
        with pytest.raises(DocumentError, match="no such file"):
            load_file(tmp_path / "gone.txt")

    @pytest.mark.parametrize("content", ["", "   \n\n\t ", "<html><script>x()</script></html>"])
    def test_empty_documents_are_refused(self, tmp_path: Path, content: str) -> None:
        (tmp_path / "e.html").write_text(content)
        with pytest.raises(DocumentError, match=r"e\.html: the document is empty"):
            load_file(tmp_path / "e.html")

    def test_pdf_without_text_says_it_needs_ocr(self, tmp_path: Path) -> None:
        with pytest.raises(DocumentError, match="scanned PDF needs OCR"):
            load_file(make_pdf(tmp_path / "blank.pdf", ["", ""]))

    def test_broken_pdf_is_refused_clearly(self) -> None:
        with pytest.raises(DocumentError, match="not a readable PDF"):
            parse_document(b"%PDF-1.4 this is not really a pdf", "pdf", "bad.pdf")

    def test_text_gets_a_stable_name_and_limits(self) -> None:
        name = text_source_name("Some text.")
        assert load_text("Some text.").source == name == load_text("Some text.").source
        assert load_text("Some text.", source="notes").source == "notes"
        with pytest.raises(DocumentError, match="the text is empty"):
            load_text("  \n ")
        with pytest.raises(DocumentError, match="over the limit of 5"):
            load_text("123456", limits=IngestLimits(max_text_chars=5))


@pytest.fixture(scope="module")
def minilm_window() -> TokenWindow:
    embedder = load_embedder("")
    assert isinstance(embedder, MiniLMEmbedder)
    window = token_window_of(embedder)
    assert window is not None
    return window


# Prose with long numbers and rare words: many word pieces per character.
DENSE = "\n\n".join(
    " ".join(f"Sample {p}-{s} of batch XQ{p * 7919 + s} measured 0.{p * s:04d}7 units." for s in range(40))
    for p in range(6)
)


class TestTokenChunks:
    """Chunks are measured in the embedder's own word pieces as well as in characters."""

    def test_no_chunk_is_longer_than_the_model_reads(self, minilm_window: TokenWindow) -> None:
        assert minilm_window.max_tokens == 256
        by_characters = chunk_text(DENSE, 16_000)
        assert max(minilm_window.count(c) for c in by_characters) > 256  # the old failure: cut off unseen
        chunks = chunk_text(DENSE, 16_000, window=minilm_window)
        assert len(chunks) > len(by_characters)
        assert all(minilm_window.count(c) <= 256 for c in chunks)
        assert words(DENSE) == set().union(*(words(c) for c in chunks))
        # Full: the splitter packs up to the window, not far below it.
        assert sum(minilm_window.count(c) for c in chunks) / len(chunks) > 150

    def test_the_character_limit_still_applies_below_the_window(self, minilm_window: TokenWindow) -> None:
        chunks = chunk_text(PROSE, 300, window=minilm_window)
        assert all(len(c) <= 300 for c in chunks)
        assert chunks == chunk_text(PROSE, 300)  # 300 characters are far fewer than 256 word pieces

    def test_counting_never_truncates(self, minilm_window: TokenWindow) -> None:
        assert minilm_window.count(DENSE) > 1000
        assert minilm_window.count("") == 2  # [CLS] and [SEP] are counted too

    def test_a_remote_embedder_has_no_window(self) -> None:
        assert token_window_of(EndpointEmbedder("http://127.0.0.1:9", "m", 8)) is None

    def test_chunk_document_passes_the_window(self, minilm_window: TokenWindow) -> None:
        doc = LoadedDocument("d.txt", "text", [Page(DENSE)])
        assert all(minilm_window.count(c.content) <= 256
                   for c in chunk_document(doc, 16_000, window=minilm_window))


PAGE_WITH_BOILERPLATE = """<html><head><title>Rivers of Europe</title></head><body>
<div class="cookie-banner" id="cookie-consent"><p>We use cookies to improve your experience.
Accept all cookies or manage your preferences.</p><button>Accept</button></div>
<header><nav><ul><li><a href="/">Home</a></li><li><a href="/news">News</a></li>
<li><a href="/about">About us</a></li><li><a href="/contact">Contact</a></li></ul></nav></header>
<main><article><h1>The Danube</h1>
<p>The Danube is the second-longest river in Europe, flowing through ten countries from the
Black Forest to the Black Sea.</p>
<p>Its delta is a UNESCO World Heritage Site and home to more than 300 species of birds,
including pelicans and cormorants.</p>
<table><tr><td>Length</td><td>2850 km</td></tr></table></article></main>
<footer><p>Copyright 2026 River Facts Ltd. All rights reserved. Privacy policy.</p></footer>
</body></html>"""


def make_docx(path: Path) -> Path:
    import docx  # noqa: PLC0415

    document = docx.Document()
    document.add_heading("Quarterly report", level=1)
    document.add_paragraph("Revenue grew by twelve percent in the northern region.")
    table = document.add_table(rows=2, cols=2)
    for row, (name, value) in enumerate([("Region", "Growth"), ("North", "12%")]):
        table.cell(row, 0).text = name
        table.cell(row, 1).text = value
    document.add_paragraph("")
    document.add_paragraph("Costs fell in the south.")
    document.save(str(path))
    return path


class TestMainContentAndDocx:
    def test_html_keeps_the_article_and_leaves_out_menus_footers_and_cookie_banners(self) -> None:
        text = html_to_text(PAGE_WITH_BOILERPLATE)
        assert text.startswith("Rivers of Europe\n\n")
        assert "second-longest river in Europe" in text
        assert "300 species of birds" in text
        assert "2850 km" in text  # tables are content
        for boilerplate in ("cookies", "Home", "About us", "Contact", "Copyright", "Privacy"):
            assert boilerplate not in text, boilerplate
        # Paragraphs stay paragraphs, so chunks can end at them.
        assert "\n\nIts delta" in text

    def test_html_without_main_content_keeps_its_visible_text(self) -> None:
        assert html_to_text("<ul><li>Only</li><li>a list</li></ul>") == "Only\n\na list"

    def test_docx_paragraphs_and_tables_in_order(self, tmp_path: Path) -> None:
        doc = load_file(make_docx(tmp_path / "report.docx"))
        assert (doc.source, doc.kind) == ("report.docx", "docx")
        assert doc.pages[0].text == ("Quarterly report\n\nRevenue grew by twelve percent in the northern "
                                     "region.\n\nRegion | Growth\n\nNorth | 12%\n\nCosts fell in the south.")

    def test_broken_docx_is_refused_clearly(self, tmp_path: Path) -> None:
        (tmp_path / "bad.docx").write_bytes(b"PK\x03\x04 not really a zip")
        with pytest.raises(DocumentError, match=r"bad\.docx: not a readable \.docx"):
            load_file(tmp_path / "bad.docx")
        (tmp_path / "other.docx").write_bytes(make_pdf(tmp_path / "x.pdf", ["text"]).read_bytes())
        with pytest.raises(DocumentError, match=r"other\.docx: not a readable \.docx"):
            load_file(tmp_path / "other.docx")

    def test_docx_that_unpacks_too_large_is_refused_before_parsing(self, tmp_path: Path) -> None:
        data = make_docx(tmp_path / "r.docx").read_bytes()
        with pytest.raises(DocumentError, match=r"r\.docx: the \.docx unpacks to \d+ bytes, over the limit"):
            docx_text(data, "r.docx", max_unpacked_bytes=1000)


class TestUrlChecks:
    @pytest.mark.parametrize("url", ["ftp://example.com/a.pdf", "file:///etc/passwd", "example.com", "http://"])
    def test_only_http_urls(self, url: str) -> None:
        with pytest.raises(DocumentError, match="not an http"):
            validate_url(url)

    @pytest.mark.parametrize(("content_type", "url", "kind"), [
        ("text/html; charset=utf-8", "http://h/x", "html"),
        ("application/pdf", "http://h/x", "pdf"),
        ("text/markdown", "http://h/x", "markdown"),
        ("text/plain", "http://h/x", "text"),
        ("application/vnd.openxmlformats-officedocument.wordprocessingml.document", "http://h/x", "docx"),
        ("application/octet-stream", "http://h/r.docx", "docx"),
        ("application/octet-stream", "http://h/report.PDF", "pdf"),
        ("", "http://h/readme.md", "markdown"),
    ])
    def test_content_type_decides_the_kind(self, content_type: str, url: str, kind: str) -> None:
        assert url_document_kind(content_type, url) == kind

    @pytest.mark.parametrize(("content_type", "url"), [
        ("image/png", "http://h/a.png"), ("application/octet-stream", "http://h/a.zip"),
        ("application/json", "http://h/a.pdf"),
    ])
    def test_other_content_types_are_refused(self, content_type: str, url: str) -> None:
        with pytest.raises(DocumentError, match="unsupported content type"):
            url_document_kind(content_type, url)
