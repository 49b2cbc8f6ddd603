"""The Gradio UI in headless Chromium, used as a person would: ask, watch the answer stream in,
upload a document, ask about it and see the sources. A screenshot goes to docs/screenshots/."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

from tests.support.api_server import REPO_ROOT, ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
# The committed screenshot is refreshed only on request, so a test run leaves the tree clean:
#   H2OGPT_UPDATE_SCREENSHOTS=1 make test-integration
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
    page = browser.new_page(viewport={"width": 1280, "height": 900})
    page.goto(server.gradio_url)
    page.wait_for_selector("#h2ogpt-prompt textarea", timeout=30_000)
    yield page
    page.close()


def last_bot_message(page: Page) -> str:
    messages = page.locator(".message.bot")
    return messages.last.inner_text().strip() if messages.count() else ""


def ask(page: Page, question: str) -> None:
    page.fill("#h2ogpt-prompt textarea", question)
    page.click("#h2ogpt-send")


def test_a_question_streams_into_the_chat(page: Page) -> None:
    assert "h2oai/h2ogpt-4096-llama2-7b-chat" in page.inner_text("#h2ogpt-model")
    question = "FAKE:DELAY=0.04 How do answers appear in this chat window when they stream?"
    expected = f"user: {question}"
    ask(page, question)
    seen: list[str] = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        text = last_bot_message(page)
        if text and (not seen or text != seen[-1]):
            seen.append(text)
        if text == expected:
            break
        time.sleep(0.02)
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
    page.wait_for_selector("text=Added 1 file(s) to MyData", timeout=30_000)
    ask(page, "How far is the lamp visible?")
    sources = page.locator("#h2ogpt-sources")
    sources.locator("text=lighthouse.md").wait_for(timeout=30_000)
    answer = last_bot_message(page)
    assert "22 nautical miles" in answer  # the document reached the model
    assert "How far is the lamp visible?" in answer
    shot = page.screenshot(full_page=True)
    assert shot.startswith(b"\x89PNG")
    assert len(shot) > 10_000  # a real rendering, not a blank page
    if os.environ.get("H2OGPT_UPDATE_SCREENSHOTS") == "1":
        DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        DOCS_SCREENSHOT.write_bytes(shot)
