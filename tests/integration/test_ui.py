"""The Gradio UI in headless Chromium, used as a person would: ask, watch the answer stream in,
upload a document, ask about it and see the sources. A screenshot goes to docs/screenshots/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.support.api_server import REPO_ROOT, ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The committed screenshot is refreshed only on request, so a test run leaves the tree clean:
#   H2OGPT_UPDATE_SCREENSHOTS=1 make test-integration
# How long the page may take to show what it must show. Generous: `make test` runs these beside
# the image builds (pytest-xdist), and a starved Chromium renders Gradio's page in tens of seconds.
UI_WAIT_MS = 120_000
DOCS_SCREENSHOT = REPO_ROOT / "docs" / "screenshots" / "ui.png"


@pytest.fixture(scope="module")
def server(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer
) -> ApiServer:
    return api_server_factory(
        [
            "--gradio",
            "True",
            "--inference_server",
            tgi_fake.url,
            "--weaviate_url",
            weaviate_server.url,
            "--base_model",
            "h2oai/h2ogpt-4096-llama2-7b-chat",
            "--keepalive_seconds",
            "0.3",
        ]
    )


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"the UI tests need Chromium at {CHROMIUM} (apt-get install chromium)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Browser, server: ApiServer) -> Iterator[Page]:
    assert server.gradio_url is not None
    for attempt in (1, 2):
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        # Every click and fill may wait as long as the page may take to render: once, in `make test`
        # beside the image builds, the prompt had rendered but the Send button beside it was not
        # there after playwright's default 30 s.
        page.set_default_timeout(UI_WAIT_MS)
        trouble = watch_trouble(page)
        started = time.monotonic()
        page.goto(server.gradio_url)
        try:
            page.wait_for_selector("#h2ogpt-prompt textarea", timeout=UI_WAIT_MS)
            page.wait_for_selector("#h2ogpt-send", timeout=UI_WAIT_MS)
            break
        except PlaywrightTimeoutError:
            # Seen twice in `make test`, with the cores taken by image builds or the e2e tier: the
            # page never rendered, a reload did not help, while the same server answered every
            # other test. What the page and the server were doing is printed; a new page (a new
            # browser context) gets one more try. A server that cannot serve the page fails it too.
            print(f"attempt {attempt}: {describe_unrendered(page, server, trouble, started)}")
            page.close()
            if attempt == 2:
                raise
    yield page
    page.close()


def watch_trouble(page: Page) -> list[str]:
    """The page's console errors, uncaught errors, failed requests and a renderer crash, as they happen."""
    trouble: list[str] = []
    page.on("console", lambda message: trouble.append(f"console {message.type}: {message.text}")
            if message.type in ("error", "warning") else None)  # fmt: skip
    page.on("pageerror", lambda error: trouble.append(f"page error: {error}"))
    page.on("crash", lambda _: trouble.append("the page's renderer crashed"))
    page.on(
        "requestfailed", lambda request: trouble.append(f"request failed: {request.url} {request.failure}")
    )
    return trouble


def describe_unrendered(page: Page, server: ApiServer, trouble: list[str], started: float) -> str:
    assert server.gradio_url is not None
    try:
        probe_started = time.monotonic()
        status = httpx.get(server.gradio_url + "config", timeout=30).status_code
        probe = f"GET /config answered {status} in {time.monotonic() - probe_started:.1f} s"
    except httpx.HTTPError as exc:
        probe = f"GET /config failed: {exc!r}"
    prompt = page.locator("#h2ogpt-prompt")
    lines = [
        f"the page did not render within {time.monotonic() - started:.0f} s",
        f"url {page.url}, title {page.title()!r}, {len(page.content())} characters of HTML, "
        f"#h2ogpt-prompt present: {prompt.count()}",
        probe,
        *trouble[-15:],
        "server log, last lines:",
        *server.log().splitlines()[-30:],
    ]
    return "\n".join(lines)


def last_bot_message(page: Page) -> str:
    messages = page.locator(".message.bot")
    return messages.last.inner_text().strip() if messages.count() else ""


def record_texts(page: Page, selector: str) -> None:
    """Remember every text the element shows, however briefly (read back with `seen_texts`)."""
    page.evaluate(
        """selector => {
            window.h2oSeen = [];
            new MutationObserver(() => {
                const nodes = document.querySelectorAll(selector);
                const text = nodes.length ? nodes[nodes.length - 1].innerText.trim() : "";
                if (text && window.h2oSeen[window.h2oSeen.length - 1] !== text) window.h2oSeen.push(text);
            }).observe(document.body, {subtree: true, childList: true, characterData: true});
        }""",
        selector,
    )


def seen_texts(page: Page) -> list[str]:
    return list(page.evaluate("window.h2oSeen"))


def choose(page: Page, label: str, option: str) -> None:
    field = page.get_by_label(label)
    field.click()
    page.locator("[role='option']").filter(has_text=option).first.click()


def ask(page: Page, question: str) -> None:
    page.fill("#h2ogpt-prompt textarea", question)
    page.click("#h2ogpt-send")


def test_a_question_streams_into_the_chat(page: Page) -> None:
    assert "h2oai/h2ogpt-4096-llama2-7b-chat" in page.inner_text("#h2ogpt-model")
    question = "FAKE:DELAY=0.1 How do answers appear in this chat window when they stream?"
    expected = f"user: {question}"
    record_texts(page, ".message.bot")  # every rendering, not only those a poll happens to see
    ask(page, question)
    deadline = time.monotonic() + UI_WAIT_MS / 1000
    while time.monotonic() < deadline and last_bot_message(page) != expected:
        time.sleep(0.1)
    seen = seen_texts(page)
    assert seen, "no answer appeared"
    assert seen[-1] == expected
    growing = [text for text in seen if expected.startswith(text) and text != expected]
    assert len(growing) >= 3, f"the answer should grow word by word, saw {seen}"
    assert page.input_value("#h2ogpt-prompt textarea") == ""


def test_upload_a_document_and_ask_about_it(page: Page, tmp_path: Path) -> None:
    collection = page.get_by_label("Collection (langchain_mode)")
    collection.click()
    page.locator("[role='option']").filter(has_text="MyData").click()
    assert collection.input_value() == "MyData"
    notes = tmp_path / "lighthouse.md"
    notes.write_text(
        "# The lighthouse\n\nThe Kettle Point lighthouse was built in 1887 and its lamp is "
        "visible for 22 nautical miles on a clear night.\n"
    )
    page.locator("input[type='file']").set_input_files(str(notes))
    page.wait_for_selector("text=Added 1 file(s) to MyData", timeout=UI_WAIT_MS)
    ask(page, "How far is the lamp visible?")
    sources = page.locator("#h2ogpt-sources")
    sources.locator("text=lighthouse.md").wait_for(timeout=UI_WAIT_MS)
    answer = last_bot_message(page)
    assert "22 nautical miles" in answer  # the document reached the model
    assert "How far is the lamp visible?" in answer
    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
    assert len(shot) > 10_000  # a real rendering, not a blank page
    if os.environ.get("H2OGPT_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        DOCS_SCREENSHOT.write_bytes(shot)


def test_documents_panel_uploads_with_progress_then_views_and_deletes(page: Page, tmp_path: Path) -> None:
    choose(page, "Collection (langchain_mode)", "MyData")
    names = ["alpha.md", "beta.md", "gamma.md"]
    paths = []
    for name in names:
        path = tmp_path / name
        path.write_text(f"# {name}\n\nThe {name} notes say the tide turns at {len(paths) + 4} o'clock.\n")
        paths.append(str(path))
    record_texts(page, "#h2ogpt-ingest-status")
    page.locator("input[type='file']").set_input_files(paths)
    page.wait_for_selector("text=Added 3 file(s) to MyData", timeout=UI_WAIT_MS)
    progress = [text for text in seen_texts(page) if text.startswith("Adding file")]
    assert [text.split(":")[0] for text in progress] == [f"Adding file {i} of 3" for i in (1, 2, 3)], progress

    # The panel lists the three; View shows one as stored; Delete removes it and the list follows.
    for name in names:
        choose(page, "Documents in this collection", name)
    page.click("#h2ogpt-view")
    view = page.locator("#h2ogpt-document-view")
    view.locator("text=The alpha.md notes say the tide turns at 4 o'clock.").wait_for(timeout=UI_WAIT_MS)
    page.click("#h2ogpt-delete")
    page.wait_for_selector("text=Deleted 3 document(s) from MyData", timeout=UI_WAIT_MS)
    documents = page.get_by_label("Documents in this collection")
    documents.click()
    assert page.locator("[role='option']").filter(has_text="alpha.md").count() == 0


def test_extract_shows_part_i_of_n_while_it_maps(page: Page, tmp_path: Path) -> None:
    choose(page, "Collection (langchain_mode)", "MyData")
    paths = []
    for index in range(3):
        path = tmp_path / f"log{index}.md"
        path.write_text(f"# Log {index}\n\nEntry {index}: the keeper lit the lamp at dusk.\n")
        paths.append(str(path))
    page.locator("input[type='file']").set_input_files(paths)
    page.wait_for_selector("text=Added 3 file(s) to MyData", timeout=UI_WAIT_MS)
    page.get_by_label("Extract").check()
    record_texts(page, ".message.bot")
    ask(page, "FAKE:DELAY=0.02 when is the lamp lit?")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and "when is the lamp lit?" not in last_bot_message(page):
        time.sleep(0.2)
    seen = seen_texts(page)
    assert any(text.startswith("Extract: part") and text.endswith("of 3 done…") for text in seen), seen
    bullets = page.locator(".message.bot").last.locator("li")
    assert bullets.count() == 3  # one answer per part (the fake echoes each part's prompt), as bullets
    answered = " ".join(bullets.nth(index).inner_text() for index in range(3))
    for index in range(3):
        assert f"Entry {index}: the keeper lit the lamp at dusk." in answered
