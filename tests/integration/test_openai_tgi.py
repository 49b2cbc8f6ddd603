"""h2oGPT's OpenAI client examples, run unchanged against `h2ogpt-api` in front of the TGI fake.

The fake echoes the words of what it is sent, so answers show exactly what the proxy sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake

# The model name h2oGPT's examples use, served here so they run verbatim.
MODEL = "h2oai/h2ogpt-4096-llama2-70b-chat"


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> ApiServer:
    return api_server_factory(
        [
            *llm_only_args(tgi_fake.url, MODEL),
            "--backend_timeout",
            "2",
            "--max_request_bytes",
            "65536",
        ]
    )


@pytest.fixture
def client(server: ApiServer) -> Iterator[OpenAI]:
    # Closed explicitly: a client caught in an exception's reference cycle is otherwise freed by
    # the garbage collector in any order, and its pooled socket warns (an error under pytest).
    with OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0) as client:
        yield client


def sse_events(response: httpx.Response) -> Iterator[str]:
    for line in response.iter_lines():
        if line.startswith("data: "):
            yield line[len("data: ") :]


# -- h2oGPT's documented examples ----------------------------------------------------------------


def test_readme_chat_example(server: ApiServer) -> None:
    base_url = server.openai_url
    api_key = "EMPTY"
    client_args = dict(base_url=base_url, api_key=api_key)  # noqa: C408
    openai_client = OpenAI(**client_args)  # type: ignore[arg-type]

    messages = [{"role": "user", "content": "Who are you?"}]
    stream = False
    client_kwargs = dict(  # noqa: C408
        model="h2oai/h2ogpt-4096-llama2-70b-chat", max_tokens=200, stream=stream, messages=messages
    )
    client = openai_client.chat.completions

    responses = client.create(**client_kwargs)  # type: ignore[call-overload]
    text = responses.choices[0].message.content
    # TGI's chat route got the message: the fake echoes "user: Who are you?".
    assert text == "user: Who are you?"
    assert responses.model == MODEL
    assert responses.choices[0].finish_reason == "stop"
    assert (responses.usage.prompt_tokens, responses.usage.completion_tokens) == (4, 4)
    assert responses.usage.total_tokens == 8


def test_readme_streaming_chat_example(server: ApiServer) -> None:
    openai_client = OpenAI(base_url=server.openai_url, api_key="EMPTY")
    messages = [{"role": "user", "content": "Who are you?"}]
    client_kwargs = dict(  # noqa: C408
        model="h2oai/h2ogpt-4096-llama2-70b-chat", max_tokens=200, stream=True, messages=messages
    )
    responses = openai_client.chat.completions.create(**client_kwargs)  # type: ignore[call-overload]
    text = ""
    chunks = 0
    for chunk in responses:
        delta = chunk.choices[0].delta.content
        if delta:
            text += delta
            chunks += 1
    assert text == "user: Who are you?"
    # The fake sends its 4 tokens at once here (no delay): they may come as one chunk or several.
    assert 1 <= chunks <= 4


def test_tokens_are_streamed_as_they_come(client: OpenAI) -> None:
    # 100 ms between the fake's tokens: each token is passed on when it arrives, not the answer at
    # the end (tokens that arrive together go out together: see tests/unit/api/test_tgi_batches.py;
    # on a starved machine two may, so one merge is allowed).
    started = time.monotonic()
    arrivals = []
    stream = client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": "FAKE:DELAY=0.1 one two three"}]
    )
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            arrivals.append((time.monotonic() - started, chunk.choices[0].delta.content))
    assert "".join(text for _, text in arrivals) == "user: FAKE:DELAY=0.1 one two three"
    assert len(arrivals) >= 4, arrivals  # 5 tokens (words), as they came
    assert arrivals[-1][0] - arrivals[0][0] >= 0.3  # 4 gaps of 100 ms: spread over the answer


def test_streaming_wire_format(server: ApiServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "one two three"}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with httpx.stream("POST", f"{server.openai_url}/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = list(sse_events(response))
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all(chunk["object"] == "chat.completion.chunk" for chunk in chunks)
    assert len({chunk["id"] for chunk in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finals] == ["stop"]
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"] == {"prompt_tokens": 4, "completion_tokens": 4, "total_tokens": 8}
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "user: one two three"


def test_any_text_streams_through_unchanged(server: ApiServer, client: OpenAI) -> None:
    # Accents, CJK, an emoji (outside the BMP), quotes, a backslash and a tab: the chunks' JSON
    # carries them as UTF-8 (not \u escapes, as OpenAI's own streams), and both readers get them back.
    words = 'café 日本語 🚀 "quoted" back\\slash tab\there'
    stream = client.chat.completions.create(
        model=MODEL, stream=True, messages=[{"role": "user", "content": words}]
    )
    streamed = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert streamed == "user: " + " ".join(words.split())
    body = {"model": MODEL, "messages": [{"role": "user", "content": "日本語"}], "stream": True}
    with httpx.stream("POST", f"{server.openai_url}/chat/completions", json=body, timeout=10) as response:
        raw = response.read()
    assert "日本語".encode() in raw
    assert b"\\u" not in raw


def test_curl_completions_example_with_bearer_and_h2ogpt_key(server: ApiServer) -> None:
    # The body is exactly h2oGPT's curl example (the shell does not expand "$OPENAI_API_KEY" there).
    response = httpx.post(
        f"{server.openai_url}/completions",
        headers={"Authorization": "Bearer xxxx"},
        json={
            "prompt": "Who are you?",
            "max_tokens": 200,
            "temperature": 0,
            "seed": 1234,
            "h2ogpt_key": "$OPENAI_API_KEY",
        },
        timeout=10,
    )
    assert response.status_code == 200, response.text
    data = response.json()
    assert data["object"] == "text_completion"
    assert data["choices"][0]["text"] == "user: Who are you?"
    assert data["usage"]["completion_tokens"] == 4


def test_curl_chat_examples_with_system_message(server: ApiServer) -> None:
    body = {
        "messages": [
            {"role": "system", "content": "You are a beautiful dragon who likes to breath fire."},
            {"role": "user", "content": "Who are you?"},
        ],
        "max_tokens": 200,
        "temperature": 0,
        "seed": 1234,
        "h2ogpt_key": "$OPENAI_API_KEY",
    }
    headers = {"Authorization": "Bearer xxxx"}
    plain = httpx.post(f"{server.openai_url}/chat/completions", headers=headers, json=body, timeout=10)
    assert plain.status_code == 200, plain.text
    expected = "system: You are a beautiful dragon who likes to breath fire.\nuser: Who are you?"
    assert plain.json()["choices"][0]["message"]["content"] == " ".join(expected.split())
    with httpx.stream(
        "POST",
        f"{server.openai_url}/chat/completions",
        headers=headers,
        json={**body, "stream": True},
        timeout=10,
    ) as streamed:
        events = list(sse_events(streamed))
    assert events[-1] == "[DONE]"
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
    assert text == plain.json()["choices"][0]["message"]["content"]


def test_completions_with_a_list_prompt(client: OpenAI) -> None:
    result = client.completions.create(model=MODEL, prompt=["alpha beta", "gamma"], max_tokens=10)
    assert [choice.text for choice in result.choices] == ["user: alpha beta", "user: gamma"]
    assert [choice.index for choice in result.choices] == [0, 1]
    assert result.usage is not None
    assert result.usage.completion_tokens == 5


def test_streaming_completions(client: OpenAI) -> None:
    stream = client.completions.create(model=MODEL, prompt="red green blue", max_tokens=10, stream=True)
    pieces = [chunk.choices[0].text for chunk in stream if chunk.choices]
    assert "".join(pieces) == "user: red green blue"


def test_max_tokens_cuts_and_reports_length(client: OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "a b c d e f"}], max_tokens=3
    )
    assert result.choices[0].message.content == "user: a b"
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 3


def test_prompt_type_uses_tgi_generate_stream_with_real_token_counts(
    client: OpenAI, tgi_fake: RunningFake
) -> None:
    before = dict(tgi_fake.fake.stats.requests)
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Who are you?"}],
        max_tokens=50,
        extra_body={"prompt_type": "llama2"},
    )
    # The fake echoes the llama2 prompt we rendered, "<s>[INST] ...", and TGI stops at the template's
    # stop sequence "[INST]", which is cut from the answer as OpenAI clients expect.
    assert result.choices[0].message.content == "<s>"
    assert result.usage is not None
    assert (result.usage.model_extra or {})["prompt_raw"] == "<s>[INST] Who are you? [/INST]"
    assert result.usage.prompt_tokens == 5  # from TGI's /tokenize
    assert result.usage.completion_tokens == 1  # from TGI's details
    after = tgi_fake.fake.stats.requests
    assert after.get("/generate_stream", 0) == before.get("/generate_stream", 0) + 1
    assert after.get("/tokenize", 0) == before.get("/tokenize", 0) + 1


def test_stop_sequences_reach_the_backend(client: OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "one two STOP three"}],
        max_tokens=50,
        stop=["STOP"],
    )
    assert result.choices[0].message.content == "user: one two "  # the stop text itself is not returned


# -- models ----------------------------------------------------------------------------------


def test_models_list_and_retrieve_with_slash_in_the_id(client: OpenAI) -> None:
    ids = [model.id for model in client.models.list().data]
    assert ids == [MODEL]
    model = client.models.retrieve(MODEL)
    assert model.id == MODEL
    extra = model.model_extra or {}
    assert extra["base_model"] == MODEL
    assert extra["inference_server"] == "tgi"
    assert "127.0.0.1" not in json.dumps(extra)  # never the backend's URL


def test_unknown_model_is_404_to_retrieve_and_answered_by_the_served_model(client: OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.models.retrieve("no/such-model")
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    # --model_fallback (default): h2oGPT answers with its model whatever name the client sends.
    answer = client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert answer.model == MODEL
    assert answer.choices[0].message.content


def test_unknown_model_is_404_without_fallback(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> None:
    server = api_server_factory([*llm_only_args(tgi_fake.url, MODEL), "--model_fallback", "False"])
    strict = OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="not served here") as caught:
        strict.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    assert caught.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.NotFoundError, match="not served here"):
        strict.completions.create(model="gpt-4o", prompt="hi")
    strict.close()


# -- h2oGPT parameters through extra_body -------------------------------------------------------


def test_extra_body_langchain_mode_not_offered_is_a_clear_400(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            max_tokens=200,
            messages=[{"role": "user", "content": "Hi"}],
            extra_body=dict(langchain_mode="UserData"),  # noqa: C408
        )
    error = caught.value.body
    assert error["param"] == "langchain_mode"  # type: ignore[index]
    assert "UserData" in error["message"]  # type: ignore[index]


def test_text_context_list_grounds_the_answer_and_returns_sources(client: OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        max_tokens=200,
        messages=[{"role": "user", "content": "What colour is the sky?"}],
        extra_body=dict(langchain_mode="LLM", text_context_list=["The sky on Zorbon is magenta."]),  # noqa: C408
    )
    text = result.choices[0].message.content or ""
    assert "magenta." in text  # the context reached the model
    assert text.index("magenta.") < text.index("colour")  # context first, then the question
    usage = result.usage.model_extra or {}  # type: ignore[union-attr]
    assert usage["sources"] == [
        {
            "score": 0.0,
            "content": "The sky on Zorbon is magenta.",
            "source": "text_context_list",
            "orig_index": 0,
        }
    ]
    assert "magenta" in usage["prompt_raw"]


def test_summarize_and_extract_over_text_context_list(client: OpenAI) -> None:
    parts = ["Alpha part talks about apples.", "Beta part talks about bananas."]
    summary = client.chat.completions.create(
        model=MODEL,
        max_tokens=300,
        messages=[{"role": "user", "content": "fruit"}],
        extra_body=dict(langchain_action="Summarize", text_context_list=parts),  # noqa: C408
    )
    text = summary.choices[0].message.content or ""
    assert "apples." in text
    assert "bananas." in text
    extract = client.chat.completions.create(
        model=MODEL,
        max_tokens=300,
        messages=[{"role": "user", "content": "name the fruit"}],
        extra_body=dict(langchain_action="Extract", text_context_list=parts),  # noqa: C408
    )
    answers = __import__("ast").literal_eval(extract.choices[0].message.content or "")
    assert len(answers) == 2
    assert "apples." in answers[0]
    assert "bananas." in answers[1]
    assert extract.usage is not None
    assert extract.usage.completion_tokens > 0


def test_chat_history_becomes_chat_conversation(client: OpenAI) -> None:
    result = client.chat.completions.create(
        model=MODEL,
        max_tokens=100,
        messages=[
            {"role": "user", "content": "first"},
            {"role": "assistant", "content": "reply"},
            {"role": "user", "content": "second"},
        ],
    )
    assert result.choices[0].message.content == "user: first assistant: reply user: second"


# -- errors, each provoked for real ----------------------------------------------------------------


def test_invalid_parameter_is_400_naming_it(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], temperature=5
        )
    assert caught.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], extra_body={"top_k_docs": -5}
        )
    assert caught.value.body["param"] == "top_k_docs"  # type: ignore[index]


def test_error_shape_for_bad_json_missing_fields_and_unknown_routes(server: ApiServer) -> None:
    url = server.openai_url
    bad_json = httpx.post(
        f"{url}/chat/completions",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    missing = httpx.post(f"{url}/chat/completions", json={"model": MODEL}, timeout=10)
    unknown = httpx.get(f"{url}/nothing-here", timeout=10)
    for response, status in ((bad_json, 400), (missing, 400), (unknown, 404)):
        assert response.status_code == status
        assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert missing.json()["error"]["param"] == "messages"


def test_body_over_the_limit_is_413(server: ApiServer) -> None:
    huge = {"model": MODEL, "messages": [{"role": "user", "content": "x" * 70_000}]}
    response = httpx.post(f"{server.openai_url}/chat/completions", json=huge, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "body_too_large"

    def chunked() -> Iterator[bytes]:  # no Content-Length: the limit holds while reading
        yield b'{"messages": [{"role": "user", "content": "'
        for _ in range(20):
            yield b"y" * 4096
        yield b'"}]}'

    streamed = httpx.post(f"{server.openai_url}/chat/completions", content=chunked(), timeout=10)
    assert streamed.status_code == 413


def test_backend_500_is_502(client: OpenAI) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAKE:500 please"}])
    assert caught.value.status_code == 502
    assert caught.value.body["code"] == "backend_bad_response"  # type: ignore[index]


def test_backend_hang_is_504_after_the_timeout(client: OpenAI) -> None:
    started = time.monotonic()
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "FAKE:HANG please"}]
        )
    assert caught.value.status_code == 504
    assert 1.5 < time.monotonic() - started < 10


def test_drop_mid_stream_is_one_error_chunk_then_done(server: ApiServer) -> None:
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 50,
        "messages": [{"role": "user", "content": "FAKE:DROP one two three four five six"}],
    }
    with httpx.stream("POST", f"{server.openai_url}/chat/completions", json=body, timeout=10) as response:
        assert response.status_code == 200
        events = list(sse_events(response))
    assert events[-1] == "[DONE]"
    error = json.loads(events[-2])["error"]
    assert error["code"] == "backend_bad_response"
    assert "mid-response" in error["message"]
    text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-2])
    assert text == "user: FAKE:DROP one"  # the three tokens sent before the drop


def test_drop_mid_stream_raises_in_the_openai_client(client: OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        stream=True,
        max_tokens=50,
        messages=[{"role": "user", "content": "FAKE:DROP one two three four five"}],
    )
    with pytest.raises(openai.APIError, match="mid-response"):
        for _ in stream:
            pass


def test_client_disconnect_cancels_the_upstream_generation(server: ApiServer, tgi_fake: RunningFake) -> None:
    before = tgi_fake.fake.stats.disconnected
    words = " ".join(f"w{i}" for i in range(200))
    body = {
        "model": MODEL,
        "stream": True,
        "max_tokens": 200,
        "messages": [{"role": "user", "content": f"FAKE:DELAY=0.05 {words}"}],
    }
    with httpx.stream("POST", f"{server.openai_url}/chat/completions", json=body, timeout=10) as response:
        seen = ""
        for line in response.iter_lines():
            seen += line
            if " w2" in line:
                break  # three of the two hundred words are in: hang up
    assert " w2" in seen
    deadline = time.monotonic() + 5
    while tgi_fake.fake.stats.disconnected == before and time.monotonic() < deadline:
        time.sleep(0.05)
    # The fake saw its connection closed long before its 10 s of tokens were done.
    assert tgi_fake.fake.stats.disconnected == before + 1


# -- health, version, metrics ------------------------------------------------------------------


def test_health_version_and_metrics(server: ApiServer, client: OpenAI) -> None:
    client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "count me"}])
    streamed = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "time me"}], stream=True
    )
    assert len(list(streamed)) > 2
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "FAKE:500"}])
    assert httpx.get(f"{server.base_url}/health", timeout=5).json() == {"status": "ok"}
    assert httpx.get(f"{server.base_url}/version", timeout=5).json()["version"]
    httpx.get(f"{server.base_url}/metrics", timeout=5)
    text = httpx.get(f"{server.base_url}/metrics", timeout=5).text
    assert 'h2ogpt_api_requests_total{route="/v1/chat/completions",status="200"}' in text
    # Probes and scrapes by their own route ("unmatched" is for paths no route serves).
    for route in ("/health", "/version", "/metrics"):
        assert f'h2ogpt_api_requests_total{{route="{route}",status="200"}}' in text
    assert 'h2ogpt_api_requests_total{route="/v1/chat/completions",status="502"}' in text
    assert 'h2ogpt_api_backend_errors_total{backend="tgi",kind="bad_response"}' in text
    for name in (
        "h2ogpt_api_request_duration_seconds_bucket",
        "h2ogpt_api_generated_tokens_total",
        "h2ogpt_api_in_flight_requests",
        "h2ogpt_api_time_to_first_token_seconds_bucket",
    ):
        assert name in text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    route = (("route", "/v1/chat/completions"),)
    assert samples[("h2ogpt_api_prompt_tokens_total", route)] > 0
    assert samples[("h2ogpt_api_time_per_output_token_seconds_count", ())] >= 1  # "count me" streamed tokens
    assert samples[("h2ogpt_api_requests_waiting", ())] == 0  # nothing is waiting or running now
    assert samples[("h2ogpt_api_generations_running", ())] == 0


# -- OpenAI output options on TGI's /generate_stream route (a prompt_type set) ---------------------


def test_generate_route_takes_a_json_grammar_and_logprobs(client: OpenAI) -> None:
    plain = {"prompt_type": "plain"}
    answer = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "a person"}],
        max_tokens=40,
        response_format={"type": "json_object"},
        extra_body=plain,
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)
    scored = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "one two"}],
        max_tokens=5,
        logprobs=True,
        top_logprobs=2,
        extra_body=plain,
    )
    content = scored.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert "".join(entry.token for entry in content) == scored.choices[0].message.content
    assert [len(entry.top_logprobs) for entry in content] == [2] * len(content)


@pytest.mark.parametrize(
    ("extra", "options", "param"),
    [
        ({"prompt_type": "plain"}, {"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        (
            {"langchain_action": "Summarize", "text_context_list": ["some text"]},
            {"response_format": {"type": "json_object"}},
            "response_format",
        ),
    ],
)
def test_options_a_route_cannot_serve_are_refused_by_name(
    client: OpenAI, extra: dict[str, object], options: dict[str, object], param: str
) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "hi"}],
            max_tokens=5,
            extra_body=extra,
            **options,  # type: ignore[arg-type]
        )
    assert caught.value.body["param"] == param  # type: ignore[index]
