"""h2oGPT's GradioClient README example, unchanged but for the host and a PDF served on loopback,
against `h2ogpt-api` with the TGI fake and a real Weaviate.

The fake echoes its prompt, so an answer that contains the PDF's sentences proves the
document reached the model: the answers are grounded, not made up.
"""

from __future__ import annotations

import functools
import http.server
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from fpdf import FPDF
from h2ogpt_client import GradioClient, H2oGPTClientError

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

# gradio_client sends usage telemetry to Hugging Face from a thread; there is no network here.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

PAGES = [
    "Whisper is a general-purpose speech recognition model trained on 680,000 hours of audio.",
    "Whisper uses an encoder-decoder Transformer that turns log-Mel spectrograms into text tokens.",
    "Whisper can transcribe speech, translate it into English, and identify the spoken language.",
    "Whisper approaches human robustness and accuracy on English speech recognition benchmarks.",
]


@pytest.fixture(scope="module")
def pdf_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A four-page PDF about Whisper, served over HTTP on loopback (no internet here)."""
    folder = tmp_path_factory.mktemp("www")
    pdf = FPDF()
    for text in PAGES:
        pdf.add_page()
        pdf.set_font("Helvetica", size=12)
        pdf.multi_cell(0, 10, text)
    pdf.output(str(folder / "whisper.pdf"))
    handler = functools.partial(QuietHandler, directory=str(folder))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/whisper.pdf"
    httpd.shutdown()
    httpd.server_close()
    thread.join(timeout=5)


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture(scope="module")
def server(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer
) -> ApiServer:
    return api_server_factory(
        ["--gradio", "True", "--inference_server", tgi_fake.url, "--weaviate_url", weaviate_server.url,
         # The PDF is served on 127.0.0.1; URL ingestion refuses loopback unless it is allowed.
         "--allowed_url_hosts", "127.0.0.1"]
    )


@pytest.fixture(scope="module")
def host(server: ApiServer) -> str:
    assert server.gradio_url is not None
    return server.gradio_url.rstrip("/")


def test_readme_example(host: str, pdf_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    # h2oGPT's README_CLIENT.md example; only the host and the PDF's address differ.
    def test_readme_example(local_server: bool) -> None:
        # The grclient.py file can be copied from h2ogpt repo and used with local gradio_client
        from gradio_utils.grclient import GradioClient  # noqa: PLC0415

        if local_server:
            client = GradioClient(host)
        else:
            h2ogpt_key = os.getenv("H2OGPT_KEY") or os.getenv("H2OGPT_H2OGPT_KEY")
            if h2ogpt_key is None:
                return
            # if you have API key for public instance:
            client = GradioClient("https://gpt.h2o.ai", h2ogpt_key=h2ogpt_key)

        # LLM
        print(client.question("Who are you?"))

        url = pdf_url

        # Q/A
        print(client.query("What is whisper?", url=url))
        # summarization (map_reduce over all pages if top_k_docs=-1)
        print(client.summarize("What is whisper?", url=url, top_k_docs=3))
        # extraction (map per page)
        print(client.extract("Give bullet for all key points", url=url, top_k_docs=3))

    test_readme_example(local_server=True)

    printed = capsys.readouterr().out
    assert printed.startswith("user: Who are you?\n")
    assert "680,000 hours" in printed  # the PDF's text reached the model


@pytest.fixture(scope="module")
def client(host: str) -> Iterator[GradioClient]:
    with GradioClient(host) as client:
        yield client


def sources_of(client: GradioClient) -> list[str]:
    assert client.last_answer is not None
    return [str(source["source"]) for source in client.last_answer["sources"]]


def test_question_uses_no_documents(client: GradioClient) -> None:
    assert client.question("Who are you?") == "user: Who are you?"
    assert sources_of(client) == []


def test_query_answers_from_the_pdf_with_sources(client: GradioClient, pdf_url: str) -> None:
    answer = client.query("What is whisper trained on?", url=pdf_url, top_k_docs=2)
    assert "680,000 hours" in answer
    assert "What is whisper trained on?" in answer
    assert sources_of(client) == [pdf_url, pdf_url]
    assert client.last_answer is not None
    assert client.last_answer["save_dict"]["extra_dict"]["num_prompt_tokens"] > 0


def test_summarize_maps_the_first_parts_and_reduces(client: GradioClient, pdf_url: str) -> None:
    summary = client.summarize("What is whisper?", url=pdf_url, top_k_docs=3)
    # The reduce step saw the map outputs of pages 1-3 and not page 4.
    assert "680,000 hours" in summary
    assert "log-Mel spectrograms" in summary
    assert "identify the spoken language" in summary
    assert "human robustness" not in summary
    assert "What is whisper?" in summary
    assert sources_of(client) == [pdf_url] * 3


def test_extract_gives_one_answer_per_part(client: GradioClient, pdf_url: str) -> None:
    answers = client.extract("Give bullet for all key points", url=pdf_url, top_k_docs=3)
    assert isinstance(answers, list)
    assert len(answers) == 3
    for answer, page in zip(answers, PAGES[:3], strict=True):
        assert page.split()[-1] in answer  # each map call saw its own page
        assert "Give bullet for all key points" in answer
    assert sources_of(client) == [pdf_url] * 3


def test_streaming_variants_join_to_the_answer(client: GradioClient) -> None:
    pieces = list(client.question_stream("FAKE:DELAY=0.05 stream these words to me one at a time"))
    assert len(pieces) >= 2
    assert "".join(pieces) == "user: FAKE:DELAY=0.05 stream these words to me one at a time"
    text = "The sandbox release train leaves at nine sharp every Tuesday."
    streamed = "".join(client.query_stream("When does the train leave?", text=text))
    assert "nine sharp every Tuesday" in streamed
    assert sources_of(client)


def test_file_content_goes_through_upload(client: GradioClient, tmp_path: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text("The file upload path stores notes about the aurora borealis project.")
    answer = client.query("Which project?", file=str(notes))
    assert "aurora borealis" in answer
    assert sources_of(client) == ["notes.txt"]
    assert "notes.txt" in client.get_sources("MyData")
    assert "notes.txt" not in client.delete_sources(["notes.txt"], "MyData")


def test_list_models_and_errors(client: GradioClient) -> None:
    assert client.list_models() == ["HuggingFaceTB/SmolLM2-135M-Instruct"]
    with pytest.raises(H2oGPTClientError, match="'Nope' is not offered"):
        client.query("anything", langchain_mode="Nope")
    with pytest.raises(H2oGPTClientError, match="unreachable"):
        client.query("anything", url="http://127.0.0.1:9/missing.pdf")
    # Allowing 127.0.0.1 opens nothing else on loopback (docs/security.md).
    with pytest.raises(H2oGPTClientError, match=r"refused to fetch from 127\.0\.0\.2: a loopback address"):
        client.query("anything", url="http://127.0.0.2:9/missing.pdf")


def test_persist_keeps_the_conversation_as_h2ogpts_client_does(host: str) -> None:
    with GradioClient(host, persist=True) as client:
        assert client.question("Who are you?") == "user: Who are you?"
        # The fake echoes the whole chat it was sent: the first turn came with the second.
        second = client.question("And then?")
        assert second == "user: Who are you? assistant: user: Who are you? user: And then?"
        client.clear_conversation()
        assert client.question("Fresh start") == "user: Fresh start"
    with GradioClient(host) as client:  # persist=False, h2oGPT's default: every call stands alone
        client.question("Who are you?")
        assert client.question("And then?") == "user: And then?"
