"""Documents survive restarts: of `h2ogpt-api` (stopped and started on the same --save_dir) and of
the weaviate-server it supervises (killed as a crash would; the API starts it again).

Real processes throughout: `h2ogpt-api` with its own weaviate-server, the TGI fake as the model,
the official `openai` client. Slow: each test starts its own server and Weaviate.
"""

from __future__ import annotations

import time
from pathlib import Path

import openai
import pytest
from h2ogpt_api.retrieval.base import Identity
from openai import OpenAI
from openai.types.chat import ChatCompletion

from tests.support.api_server import ApiServer, run_api_server
from tests.support.documents import (
    DocumentLoader,
    answer_words,
    embedded_weaviate_url,
    kill_and_wait_gone,
    sources_of,
    weaviate_child_pid,
)
from tests.support.tgi_fake import RunningFake

pytestmark = pytest.mark.slow

MODEL = "test/restart-model"
MODES = ["UserData", "MyData", "LLM"]
HARBOUR = "The lighthouse at Port Quillon flashes green twice every ten seconds to guide fishing boats home."
DIARY = "Carol hid the birthday present for Dan inside the piano bench in the music room."
CAROL = Identity("carol", authenticated=True)
RECOVERY_TIMEOUT_S = 90.0


def server_args(tgi_url: str, save_dir: Path) -> list[str]:
    return [
        "--inference_server", tgi_url,
        "--base_model", MODEL,
        "--langchain_modes", str(MODES),
        "--auth", "[('carol', 'pw-c'), ('dan', 'pw-d')]",
        "--save_dir", str(save_dir),
    ]


def ask(server: ApiServer, question: str, **extra: object) -> ChatCompletion:
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0, timeout=60) as client:
        return client.chat.completions.create(
            model=MODEL, max_tokens=400, messages=[{"role": "user", "content": question}],
            extra_body={"langchain_action": "Query", "top_k_docs": 3, **extra},
        )


def assert_shared_document_answers(server: ApiServer) -> None:
    result = ask(server, "How does the Port Quillon lighthouse flash?", langchain_mode="UserData")
    assert [s["source"] for s in sources_of(result)] == ["harbour.txt"]
    assert answer_words(HARBOUR) in (result.choices[0].message.content or "")


def assert_personal_document_is_still_private(server: ApiServer) -> None:
    question = "Where is the birthday present hidden?"
    carol = ask(server, question, langchain_mode="MyData", user="carol:pw-c")
    assert [s["source"] for s in sources_of(carol)] == ["diary.txt"]
    assert "piano bench" in (carol.choices[0].message.content or "")
    dan = ask(server, question, langchain_mode="MyData", user="dan:pw-d")
    assert sources_of(dan) == []
    assert "piano" not in (dan.choices[0].message.content or "")


def add_documents(save_dir: Path) -> DocumentLoader:
    loader = DocumentLoader(embedded_weaviate_url(save_dir), MODES)
    loader.add_text(HARBOUR, "UserData", Identity("guest"), source="harbour.txt")
    loader.add_text(DIARY, "MyData", CAROL, source="diary.txt")
    return loader


def process_exists(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def test_documents_survive_a_restart_of_h2ogpt_api(tgi_fake: RunningFake, tmp_path: Path) -> None:
    args = server_args(tgi_fake.url, tmp_path)
    with run_api_server(args) as first:
        loader = add_documents(tmp_path)
        assert_shared_document_answers(first)
        first_weaviate = weaviate_child_pid(first.process.pid)
        ports_before = (tmp_path / "weaviate" / "ports.json").read_text()
    # Stopping h2ogpt-api stops its Weaviate too (SIGTERM: Weaviate flushes its data first).
    assert first.process.returncode == 0
    assert not process_exists(first_weaviate)

    with run_api_server(args) as second:
        assert_shared_document_answers(second)
        assert_personal_document_is_still_private(second)
        assert loader.list_sources("UserData", Identity("guest")) == ["harbour.txt"]
        assert loader.list_sources("MyData", CAROL) == ["diary.txt"]
        # Same addresses as before, so the Raft state Weaviate keeps on disk still matches.
        assert (tmp_path / "weaviate" / "ports.json").read_text() == ports_before


def test_documents_survive_a_crash_of_the_supervised_weaviate(tgi_fake: RunningFake, tmp_path: Path) -> None:
    with run_api_server(server_args(tgi_fake.url, tmp_path)) as server:
        add_documents(tmp_path)
        assert_shared_document_answers(server)
        crashed = weaviate_child_pid(server.process.pid)
        kill_and_wait_gone(crashed)

        # Until the supervisor has Weaviate back and ready, a document query fails with a clear
        # server error; the store does not even ask it.
        with pytest.raises(openai.APIStatusError) as outage:
            ask(server, "How does the Port Quillon lighthouse flash?", langchain_mode="UserData")
        assert outage.value.status_code == 503, outage.value.body
        assert "document store (Weaviate) is restarting" in str(outage.value.body)

        # Asked every 0.1 s from then on, so the seconds when the new weaviate-server listens but
        # still loads its schema are asked too: an answer then must have its sources (once, one
        # came without them: the store took Weaviate's "no such collection" for "no documents").
        deadline = time.monotonic() + RECOVERY_TIMEOUT_S
        while True:
            try:
                assert_shared_document_answers(server)
                break
            except openai.APIStatusError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        restarted = weaviate_child_pid(server.process.pid)
        assert restarted != crashed
        assert_personal_document_is_still_private(server)
        assert "restarting it" in server.log()
