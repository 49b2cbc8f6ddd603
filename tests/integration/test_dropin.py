"""Drop-in for h2oGPT and correct under stress, against the TGI fake with the official `openai`
package: h2oGPT's command lines, its internal model routes, CORS, the OpenAPI docs, Gradio's
environment, iinput / max_time / min_new_tokens, max_new_tokens lowered to the context left,
TGI without a chat route or without stream usage, and a non-streamed request whose client leaves.

The fake echoes the words it is sent, so answers show what reached it.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake, TgiFake
from tests.support.weaviate import WeaviateServer

MODEL = "h2oai/h2ogpt-4096-llama2-70b-chat"
# Flags from h2oGPT's documented command lines that have no meaning here.
H2OGPT_ONLY = ["--score_model=None", "--share=False", "--enable_tts=False", "--visible_login_tab=False"]


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> ApiServer:
    return api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), *H2OGPT_ONLY, "--db_type=chroma", "--concurrency_count=8"]
    )


@pytest.fixture
def client(server: ApiServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0) as client:
        yield client


def fake_stats(fake: RunningFake) -> dict[str, object]:
    return httpx.get(f"{fake.url}/fake/stats", timeout=5).json()  # type: ignore[no-any-return]


# -- h2oGPT's command lines and routes -------------------------------------------------------------


def test_h2ogpt_flags_start_the_server_and_each_ignored_one_is_named_once(server: ApiServer) -> None:
    log = server.log()
    for flag in ("score_model", "share", "enable_tts", "visible_login_tab"):
        assert log.count(f"h2oGPT flag --{flag} is ignored (no meaning in this server)") == 1
    assert log.count("--db_type chroma is ignored: documents are kept in Weaviate") == 1
    assert "'max_concurrency': 8" in log  # --concurrency_count is h2oGPT's name for it


def test_internal_model_routes_have_h2ogpts_shapes(server: ApiServer) -> None:
    info = httpx.get(f"{server.openai_url}/internal/model/info", timeout=10)
    assert info.status_code == 200
    models = info.json()["model_names"]
    assert [model["base_model"] for model in models] == [MODEL]
    assert models[0]["max_seq_len"] == 2048
    listed = httpx.get(f"{server.openai_url}/internal/model/list", timeout=10)
    assert listed.json() == [{"id": MODEL}]


def test_cors_as_h2ogpt_answers_any_origin(server: ApiServer) -> None:
    origin = "http://chat.example"
    preflight = httpx.options(
        f"{server.openai_url}/chat/completions",
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
        timeout=10,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == origin
    assert preflight.headers["access-control-allow-credentials"] == "true"
    models = httpx.get(f"{server.openai_url}/models", headers={"Origin": origin}, timeout=10)
    assert models.headers["access-control-allow-origin"] == origin


def test_cors_origins_narrow_it(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> None:
    narrow = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), "--cors_origins", "['http://ok.example']"]
    )
    allowed = httpx.get(f"{narrow.openai_url}/models", headers={"Origin": "http://ok.example"}, timeout=10)
    assert allowed.headers["access-control-allow-origin"] == "http://ok.example"
    other = httpx.get(f"{narrow.openai_url}/models", headers={"Origin": "http://evil.example"}, timeout=10)
    assert "access-control-allow-origin" not in other.headers


def test_openapi_and_docs_are_served(server: ApiServer) -> None:
    spec = httpx.get(f"{server.base_url}/openapi.json", timeout=10)
    assert spec.status_code == 200
    paths = spec.json()["paths"]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/internal/model/info"):
        assert path in paths
    docs = httpx.get(f"{server.base_url}/docs", timeout=10)
    assert docs.status_code == 200
    assert "/openapi.json" in docs.text


def test_gradio_server_port_and_name_are_honoured(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> None:
    with socket_port() as port:
        pass
    started = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), "--gradio", "True"],
        {"GRADIO_SERVER_PORT": str(port), "GRADIO_SERVER_NAME": "127.0.0.1"},
        from_env=("gradio_port", "server_name"),
    )
    assert started.gradio_url == f"http://127.0.0.1:{port}/"
    assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200


class socket_port:
    """A free loopback port (released on exit, for the server to take)."""

    def __enter__(self) -> int:
        import socket  # noqa: PLC0415

        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        return int(self.sock.getsockname()[1])

    def __exit__(self, *_: object) -> None:
        self.sock.close()


# -- h2oGPT's parameters honoured or refused ---------------------------------------------------------


def test_iinput_reaches_the_model_after_the_instruction(client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Translate:"}],
        extra_body={"iinput": "chat noir"},
        max_tokens=50,
    )
    assert answer.choices[0].message.content == "user: Translate: chat noir"


def test_min_new_tokens_is_refused_by_name_where_the_backend_cannot(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"min_new_tokens": 10}
        )
    assert caught.value.body["param"] == "min_new_tokens"  # type: ignore[index]
    assert "tgi backend cannot force a minimum answer length" in caught.value.body["message"]  # type: ignore[index]
    # h2oGPT's own default (1) is no minimum at all, and accepted.
    ok = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"min_new_tokens": 1}
    )
    assert ok.choices[0].message.content == "user: hi"


def test_max_time_ends_the_answer_with_what_it_has(client: OpenAI) -> None:
    words = " ".join(f"w{index}" for index in range(40))
    started = time.monotonic()
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": f"FAKE:DELAY=0.1 {words}"}],
        max_tokens=100,
        extra_body={"max_time": 1},
    )
    elapsed = time.monotonic() - started
    # 43 words at 0.1 s each would take 4.3 s; max_time stops it after about 1 s.
    assert elapsed < 3.0
    assert answer.choices[0].finish_reason == "length"
    assert answer.usage is not None
    assert 5 <= answer.usage.completion_tokens < 20
    assert (answer.choices[0].message.content or "").startswith("user: FAKE:DELAY=0.1 w0")


# -- TGI's limits, old TGI, streams without usage ----------------------------------------------------


@pytest.fixture(scope="module")
def small_tgi() -> Iterator[RunningFake]:
    """A TGI with a 40-token context that answers until max_new_tokens (the echo repeats)."""
    running = RunningFake(TgiFake(max_total_tokens=40, repeat=True)).start()
    yield running
    running.stop()


def test_max_new_tokens_is_lowered_to_the_context_left(
    api_server_factory: ApiServerFactory, small_tgi: RunningFake
) -> None:
    api = api_server_factory(llm_only_args(small_tgi.url, MODEL))
    with OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "count these words"}], max_tokens=1000
        )
        assert answer.usage is not None
        # TGI refused 4 + 1000 > 40 tokens; sent again with the 36 left.
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 36)
        assert answer.choices[0].finish_reason == "length"
        completion = client.completions.create(
            model=MODEL, prompt="count these words", max_tokens=1000, extra_body={"prompt_type": "plain"}
        )
        assert completion.usage is not None
        assert completion.usage.completion_tokens + completion.usage.prompt_tokens == 40
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": " ".join(["word"] * 60)}], max_tokens=10
            )
        assert "TGI's context is 40" in caught.value.body["message"]  # type: ignore[index]


def test_openai_compatible_servers_get_max_tokens_lowered_too(
    api_server_factory: ApiServerFactory, small_tgi: RunningFake
) -> None:
    # TGI's own OpenAI route, reached as any OpenAI-compatible server (openai:<base_url>).
    api = api_server_factory(llm_only_args(f"openai:{small_tgi.url}/v1", MODEL))
    with OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "count these words"}], max_tokens=1000
        )
        assert answer.usage is not None
        assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (4, 36)
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": " ".join(["word"] * 60)}], max_tokens=10
            )
        assert "leaves no room in the model's context" in caught.value.body["message"]  # type: ignore[index]


@pytest.fixture(scope="module")
def old_tgi() -> Iterator[RunningFake]:
    """A TGI without /v1/chat/completions (TGI before 1.4)."""
    running = RunningFake(TgiFake(chat_route=False)).start()
    yield running
    running.stop()


def test_tgi_without_a_chat_route_is_detected_and_generate_stream_used(
    api_server_factory: ApiServerFactory, old_tgi: RunningFake
) -> None:
    api = api_server_factory(llm_only_args(old_tgi.url, MODEL))
    with OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0) as client:
        for _ in range(2):
            answer = client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=50
            )
            # The messages went as ChatML to /generate_stream: the fake's echo of it starts with
            # "<|im_start|>user", which ChatML's stop sequences cut at once (so the answer is
            # empty, one token long), and its 5 words are the prompt's tokens.
            assert answer.choices[0].message.content == ""
            assert answer.choices[0].finish_reason == "stop"
            assert answer.usage is not None
            assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (5, 1)
        streamed = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=50, stream=True
        )
        finish = [chunk.choices[0].finish_reason for chunk in streamed if chunk.choices]
        assert finish[-1] == "stop"
    requests = fake_stats(old_tgi)["requests"]
    assert requests["/v1/chat/completions"] == 1  # detected once, then remembered  # type: ignore[index]
    assert requests["/generate_stream"] == 3  # type: ignore[index]
    assert api.log().count("TGI has no /v1/chat/completions") == 1


@pytest.fixture(scope="module")
def usage_less_tgi() -> Iterator[RunningFake]:
    """A chat route whose streams never carry `usage` (servers that ignore stream_options)."""
    running = RunningFake(TgiFake(stream_usage=False)).start()
    yield running
    running.stop()


def test_a_stream_without_usage_is_answered_with_usage_counted_here(
    api_server_factory: ApiServerFactory, usage_less_tgi: RunningFake
) -> None:
    api = api_server_factory(llm_only_args(usage_less_tgi.url, MODEL))
    with OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Who are you?"}], max_tokens=50
        )
        assert answer.choices[0].message.content == "user: Who are you?"
        assert answer.usage is not None
        # The answer's 4 chunks; the prompt counted by /tokenize on its ChatML rendering
        # ("<|im_start|>user", "Who", "are", "you?<|im_end|>", "<|im_start|>assistant").
        assert (answer.usage.completion_tokens, answer.usage.prompt_tokens) == (4, 5)
        chunks = list(
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "Who are you?"}],
                max_tokens=50,
                stream=True,
                stream_options={"include_usage": True},
            )
        )
        usage = chunks[-1].usage
        assert usage is not None
        assert usage.completion_tokens == 4


# -- a client that leaves ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def slow_tgi() -> Iterator[RunningFake]:
    running = RunningFake(TgiFake(token_delay=0.2)).start()
    yield running
    running.stop()


def test_a_non_streamed_request_whose_client_leaves_is_cancelled_and_frees_its_slot(
    api_server_factory: ApiServerFactory, slow_tgi: RunningFake
) -> None:
    api = api_server_factory(
        [*llm_only_args(slow_tgi.url, MODEL), "--max_concurrency", "1", "--max_queue", "0"]
    )
    words = " ".join(f"w{index}" for index in range(50))  # 10 s of tokens
    body = {"model": MODEL, "messages": [{"role": "user", "content": words}], "max_tokens": 100}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{api.openai_url}/chat/completions", json=body, timeout=1.0)
    deadline = time.monotonic() + 5
    while fake_stats(slow_tgi)["disconnected"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert fake_stats(slow_tgi)["disconnected"] == 1  # the upstream generation was cancelled
    # The one slot is free again: a short request is served, not refused with 429.
    short = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
    answer = httpx.post(f"{api.openai_url}/chat/completions", json=short, timeout=10)
    assert answer.status_code == 200
    assert answer.json()["choices"][0]["message"]["content"] == "user: hi"
    metrics = httpx.get(f"{api.base_url}/metrics", timeout=10).text
    assert re.search(r'h2ogpt_api_requests_total\{route="/v1/chat/completions",status="499"\} 1\.0', metrics)


# -- --user_path --------------------------------------------------------------------------------------


def test_user_path_files_are_in_userdata_before_the_first_question(
    api_server_factory: ApiServerFactory,
    tgi_fake: RunningFake,
    weaviate_server: WeaviateServer,
    tmp_path: Path,
) -> None:
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "zorbon.txt").write_text("The zorbon engine runs on purple quartz crystals.")
    (tmp_path / "broken.pdf").write_bytes(b"not a pdf")  # skipped by name, not fatal
    args = [
        "--inference_server", tgi_fake.url, "--base_model", MODEL,
        "--weaviate_url", weaviate_server.url, "--langchain_modes", "['UserData', 'LLM']",
        f"--user_path={tmp_path}", "--top_k_docs=1",
    ]  # fmt: skip
    api = api_server_factory(args)
    assert "--user_path: skipped" in api.log()
    assert "broken.pdf" in api.log()
    assert "2 files, 1 new chunks in UserData" in api.log()
    with OpenAI(base_url=api.openai_url, api_key="EMPTY", max_retries=0) as client:
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "What does the zorbon engine run on?"}],
            max_tokens=200,
            extra_body={"langchain_mode": "UserData"},
        )
    assert "purple quartz crystals" in (answer.choices[0].message.content or "")
    sources = (answer.usage.model_extra or {})["sources"]  # type: ignore[union-attr]
    assert [source["source"] for source in sources] == ["notes/zorbon.txt"]
    # A restart adds nothing twice (the store skips stored chunks).
    again = api_server_factory(args)
    assert "2 files, 0 new chunks in UserData" in again.log()
