"""Document Q&A end to end through the OpenAI side: a real `h2ogpt-api` with its own supervised
weaviate-server, the TGI fake as the model, and the official `openai` package as the client.

There is no OpenAI route for ingestion, so documents are added with the store API in this
process, against the same Weaviate the server uses. The fake echoes the words it is sent, so an
answer shows which document text reached the model; its request counters show the map calls.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from h2ogpt_api.retrieval.base import Identity
from openai import OpenAI
from openai.types.chat import ChatCompletion

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.documents import DocumentLoader, answer_words, embedded_weaviate_url, sources_of
from tests.support.tgi_fake import RunningFake, TgiFake

MODEL = "test/doc-model"
MODES = "['UserData', 'MyData', 'LLM']"
USERS = "[('alice', 'pw-a'), ('bob', 'pw-b')]"
GUEST = Identity("guest")
ALICE = Identity("alice", authenticated=True)
BOB = Identity("bob", authenticated=True)

ZORBON = (
    "The sky on planet Zorbon is magenta because its air carries fine crystal dust. "
    "Visitors say the magenta glow is brightest at dawn."
)
OCEAN = (
    "The Mariana Trench is the deepest known part of the ocean, nearly eleven kilometres down. "
    "Its floor is cold, dark and under enormous pressure."
)
BREAD = "Knead bread dough for ten minutes, then let it rise for an hour in a warm place before baking."
VAULT = "Alice keeps the spare key to the greenhouse under the blue flowerpot by the gate."


def chronicle(markers: list[str]) -> str:
    """Paragraphs of about 1,080 characters and at most 256 MiniLM word pieces (one chunk each at
    chunk_size 1200), one per marker word."""
    return "\n\n".join(
        " ".join(f"Throughout calendar year {year} the {marker} guild rebuilt bridge {year}."
                 for year in range(4, 20))
        for marker in markers
    )


CHRONICLE_MARKERS = ["Amberwick", "Brindlecourt", "Cobblemere", "Dunharrow"]


@pytest.fixture(scope="module")
def fake() -> Iterator[RunningFake]:
    """This module's own TGI fake, so its request counters show only this module's calls."""
    running = RunningFake(TgiFake()).start()
    yield running
    running.stop()


@pytest.fixture(scope="module")
def save_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("save")


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, fake: RunningFake, save_dir: Path) -> ApiServer:
    """One server for the module, starting and supervising its own weaviate-server under save_dir."""
    return api_server_factory(
        [
            "--inference_server", fake.url,
            "--base_model", MODEL,
            "--langchain_modes", MODES,
            "--auth", USERS,
            "--save_dir", str(save_dir),
            "--keepalive_seconds", "0.3",
        ]
    )


@pytest.fixture(scope="module")
def documents(server: ApiServer, save_dir: Path) -> DocumentLoader:
    """The documents every test asks about, added through the store API to the server's Weaviate."""
    loader = DocumentLoader(embedded_weaviate_url(save_dir), ["UserData", "MyData", "LLM"])
    loader.add_text(ZORBON, "UserData", GUEST, source="zorbon.txt")
    loader.add_text(OCEAN, "UserData", GUEST, source="ocean.txt")
    loader.add_text(BREAD, "UserData", GUEST, source="bread.txt")
    loader.add_text(chronicle(CHRONICLE_MARKERS), "UserData", GUEST, source="chronicle.txt", chunk_size=1200)
    loader.add_text(VAULT, "MyData", ALICE, source="alice-notes.txt")
    return loader


@pytest.fixture(scope="module")
def client(server: ApiServer, documents: DocumentLoader) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0) as openai_client:
        yield openai_client


def fake_calls(fake: RunningFake) -> int:
    stats = httpx.get(fake.url + "/fake/stats", timeout=5).json()
    return int(stats["requests"].get("/v1/chat/completions", 0))


def ask(client: OpenAI, question: str, max_tokens: int = 600, **extra: object) -> ChatCompletion:
    return client.chat.completions.create(
        model=MODEL, max_tokens=max_tokens, messages=[{"role": "user", "content": question}], extra_body=extra
    )


# -- Query ------------------------------------------------------------------------------------------


def test_query_answer_is_grounded_in_the_top_chunks_and_returns_their_sources(client: OpenAI) -> None:
    result = ask(client, "What colour is the sky on Zorbon?",
                 langchain_mode="UserData", langchain_action="Query", top_k_docs=3)
    answer = result.choices[0].message.content or ""
    sources = sources_of(result)
    assert len(sources) == 3
    assert sources[0]["source"] == "zorbon.txt"
    assert sources[0]["content"] == ZORBON
    assert [s["orig_index"] for s in sources] == [0, 1, 2]
    scores = [s["score"] for s in sources]
    assert scores == sorted(scores, reverse=True)
    assert 0 < scores[0] <= 1
    # The fake echoes its prompt: every retrieved chunk reached the model, before the question.
    for source in sources:
        assert answer_words(source["content"]) in answer
    assert answer.index("magenta") < answer.index("What colour is the sky")
    usage = result.usage.model_extra or {}  # type: ignore[union-attr]
    assert ZORBON in usage["prompt_raw"]
    assert "zorbon.txt" in usage["sources_str"]
    assert usage["error"] is None


def test_streamed_query_gives_the_same_answer_and_its_sources_in_the_usage_chunk(client: OpenAI) -> None:
    question = "How deep is the Mariana Trench?"
    whole = ask(client, question, langchain_mode="UserData", top_k_docs=2)
    stream = client.chat.completions.create(
        model=MODEL, max_tokens=600, messages=[{"role": "user", "content": question}], stream=True,
        stream_options={"include_usage": True}, extra_body=dict(langchain_mode="UserData", top_k_docs=2),  # noqa: C408
    )
    chunks = list(stream)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices)
    assert text == whole.choices[0].message.content
    usage_chunks = [chunk for chunk in chunks if chunk.usage is not None]
    assert len(usage_chunks) == 1  # h2oGPT's client asserts exactly one
    streamed_sources = (usage_chunks[0].usage.model_extra or {})["sources"]  # type: ignore[union-attr]
    assert streamed_sources == sources_of(whole)
    assert streamed_sources[0]["source"] == "ocean.txt"


def test_completions_route_answers_over_documents_streamed_or_not(client: OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt="How long should bread dough be kneaded?", max_tokens=600,
        extra_body=dict(langchain_mode="UserData", top_k_docs=1),  # noqa: C408
    )
    assert answer_words(BREAD) in result.choices[0].text
    assert [s["source"] for s in sources_of(result)] == ["bread.txt"]

    stream = client.completions.create(
        model=MODEL, prompt="How long should bread dough be kneaded?", max_tokens=600, stream=True,
        stream_options={"include_usage": True}, extra_body=dict(langchain_mode="UserData", top_k_docs=1),  # noqa: C408
    )
    chunks = list(stream)
    assert "".join(chunk.choices[0].text for chunk in chunks if chunk.choices) == result.choices[0].text
    usages = [chunk.usage for chunk in chunks if chunk.usage is not None]
    assert len(usages) == 1
    assert (usages[0].model_extra or {})["sources"] == sources_of(result)


def test_document_choice_limits_the_search_to_the_named_sources(client: OpenAI) -> None:
    question = "What colour is the sky on Zorbon?"
    limited = ask(client, question, langchain_mode="UserData", top_k_docs=3, document_choice=["ocean.txt"])
    assert {s["source"] for s in sources_of(limited)} == {"ocean.txt"}
    assert "magenta" not in (limited.choices[0].message.content or "")
    two = ask(client, question, langchain_mode="UserData", top_k_docs=5,
              document_choice=["bread.txt", "zorbon.txt"])
    assert {s["source"] for s in sources_of(two)} == {"bread.txt", "zorbon.txt"}
    everything = ask(client, question, langchain_mode="UserData", top_k_docs=20, document_choice=["All"])
    every_source = {"zorbon.txt", "ocean.txt", "bread.txt", "chronicle.txt"}
    assert {s["source"] for s in sources_of(everything)} == every_source


def test_llm_mode_ignores_the_documents(client: OpenAI) -> None:
    result = ask(client, "What colour is the sky on Zorbon?", langchain_mode="LLM", top_k_docs=3)
    assert sources_of(result) == []
    assert result.choices[0].message.content == "user: What colour is the sky on Zorbon?"


# -- Summarize and Extract ------------------------------------------------------------------------


def test_summarize_maps_over_the_parts_then_reduces(client: OpenAI, fake: RunningFake) -> None:
    before = fake_calls(fake)
    result = ask(client, "", max_tokens=1000, langchain_mode="UserData", langchain_action="Summarize",
                 top_k_docs=3, document_choice=["chronicle.txt"])
    calls = fake_calls(fake) - before
    answer = result.choices[0].message.content or ""
    sources = sources_of(result)
    # No question: the first three parts in document order, each one paragraph of the chronicle.
    assert [(s["source"], s["orig_index"]) for s in sources] == [("chronicle.txt", i) for i in range(3)]
    for marker, source in zip(CHRONICLE_MARKERS, sources, strict=False):
        assert f"the {marker} guild rebuilt bridge 19." in source["content"]
    # Three ~1.1k-character parts exceed one prompt's room (max_seq_len 2048 less 1000 new tokens),
    # so the parts were summarized in map calls before the final, reducing call.
    assert calls >= 3, calls
    assert answer.strip()
    assert "Amberwick" in answer
    assert "Dunharrow" not in answer  # the fourth part was not asked for
    assert result.usage is not None
    assert result.usage.completion_tokens > len(answer.split())  # every call's tokens are counted


def test_summarize_with_a_question_uses_the_most_relevant_parts(client: OpenAI) -> None:
    result = ask(client, "the sky on Zorbon", max_tokens=400, langchain_mode="UserData",
                 langchain_action="Summarize", top_k_docs=1)
    assert [s["source"] for s in sources_of(result)] == ["zorbon.txt"]
    assert "magenta" in (result.choices[0].message.content or "")


def test_extract_makes_one_map_call_per_part_and_answers_a_list(client: OpenAI, fake: RunningFake) -> None:
    before = fake_calls(fake)
    result = ask(client, "name the guild", max_tokens=400, langchain_mode="UserData",
                 langchain_action="Extract", top_k_docs=3, document_choice=["chronicle.txt"])
    calls = fake_calls(fake) - before
    answers = ast.literal_eval(result.choices[0].message.content or "")
    assert isinstance(answers, list)
    assert len(answers) == 3
    assert calls == 3
    sources = sources_of(result)
    assert len(sources) == 3
    for answer, source in zip(answers, sources, strict=True):
        assert isinstance(answer, str)
        assert source["source"] == "chronicle.txt"
        assert answer_words(source["content"]) in answer  # each answer echoes its own part
        assert "name the guild" in answer


def test_a_streamed_extract_says_how_far_it_is_in_sse_comments(server: ApiServer, client: OpenAI) -> None:
    # Each map call takes a second or so (the fake answers slowly), longer than --keepalive_seconds.
    body = {"model": MODEL, "max_tokens": 400, "stream": True,
            "messages": [{"role": "user", "content": "FAKE:DELAY=0.01 name the guild"}],
            "langchain_mode": "UserData", "langchain_action": "Extract", "top_k_docs": 3,
            "document_choice": ["chronicle.txt"]}
    with httpx.stream("POST", f"{server.openai_url}/chat/completions", json=body, timeout=60) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line]
    comments = [line for line in lines if line.startswith(":")]
    # Every ended map call is said; while none ends, a keepalive repeats the last news.
    for done in (1, 2, 3):
        assert f": Extract part {done} of 3" in comments, comments
    assert ": Extract part 0 of 0" in comments, comments  # a keepalive before the first call ended
    data = [line for line in lines if line.startswith("data: ")]
    assert data[-1] == "data: [DONE]"
    assert lines.index(comments[-1]) < lines.index(data[1])  # the answer follows the map step

    # The official client skips the comments and reads the same answer.
    streamed = client.chat.completions.create(
        model=MODEL, max_tokens=400, stream=True,
        messages=[{"role": "user", "content": "FAKE:DELAY=0.01 name the guild"}],
        extra_body={key: body[key] for key in ("langchain_mode", "langchain_action", "top_k_docs",
                                              "document_choice")},
    )
    text = "".join(chunk.choices[0].delta.content or "" for chunk in streamed if chunk.choices)
    answers = ast.literal_eval(text)
    assert len(answers) == 3


def test_summarize_of_an_empty_selection_is_a_clear_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "", langchain_mode="UserData", langchain_action="Summarize", top_k_docs=3,
            document_choice=["no-such-source.pdf"])
    error = caught.value.body
    assert error["param"] == "langchain_mode"  # type: ignore[index]
    assert "no documents" in error["message"]  # type: ignore[index]


# -- MyData ---------------------------------------------------------------------------------------


def test_my_data_of_one_user_is_invisible_to_another(client: OpenAI, documents: DocumentLoader) -> None:
    question = "Where is the spare greenhouse key?"
    alice = ask(client, question, user="alice:pw-a", langchain_mode="MyData", top_k_docs=3)
    assert [s["source"] for s in sources_of(alice)] == ["alice-notes.txt"]
    assert "blue flowerpot" in (alice.choices[0].message.content or "")

    bob = ask(client, question, user="bob:pw-b", langchain_mode="MyData", top_k_docs=3)
    assert sources_of(bob) == []
    assert "flowerpot" not in (bob.choices[0].message.content or "")
    assert "flowerpot" not in json.dumps(bob.usage.model_dump())  # type: ignore[union-attr]
    with pytest.raises(openai.BadRequestError, match="no documents"):
        ask(client, "", user="bob:pw-b", langchain_mode="MyData", langchain_action="Summarize", top_k_docs=3)
    # Naming Alice's source does not help Bob either.
    chosen = ask(client, question, user="bob:pw-b", langchain_mode="MyData", top_k_docs=3,
                 document_choice=["alice-notes.txt"])
    assert sources_of(chosen) == []
    # Anonymous callers (no login, no named key) have no MyData at all: a 400 says how to get one.
    with pytest.raises(openai.BadRequestError, match="log in"):
        ask(client, question, langchain_mode="MyData", top_k_docs=3)

    # Bob's own document is his alone.
    documents.add_text("Bob parks his bicycle behind the old bakery.", "MyData", BOB, source="bob-notes.txt")
    bob_own = ask(client, "Where does Bob park?", user="bob:pw-b", langchain_mode="MyData", top_k_docs=3)
    assert [s["source"] for s in sources_of(bob_own)] == ["bob-notes.txt"]
    alice_again = ask(client, "Where does Bob park?", user="alice:pw-a", langchain_mode="MyData",
                      top_k_docs=3)
    assert [s["source"] for s in sources_of(alice_again)] == ["alice-notes.txt"]


def test_my_data_needs_the_right_password(client: OpenAI) -> None:
    with pytest.raises(openai.AuthenticationError):
        ask(client, "Where is the spare greenhouse key?", user="alice:wrong", langchain_mode="MyData")


# -- bad input ------------------------------------------------------------------------------------


def test_unknown_langchain_mode_is_a_400_naming_the_offered_modes(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        ask(client, "anything", langchain_mode="Nope", top_k_docs=3)
    assert caught.value.status_code == 400
    error = caught.value.body
    assert error["param"] == "langchain_mode"  # type: ignore[index]
    assert error["type"] == "invalid_request_error"  # type: ignore[index]
    for offered in ("Nope", "UserData", "MyData", "LLM"):
        assert offered in error["message"]  # type: ignore[index]


def test_unknown_langchain_mode_in_a_stream_is_a_400_too(server: ApiServer, client: OpenAI) -> None:
    response = httpx.post(
        server.openai_url + "/chat/completions",  # type: ignore[operator]
        json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "hi"}],
              "langchain_mode": "Nope"},
        timeout=30,
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "langchain_mode"
