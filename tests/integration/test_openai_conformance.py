"""The official `openai` package's calls against every backend kind `h2ogpt-api` serves.

Each test runs once per backend: `tgi` (the TGI fake, TGI's protocol), `openai` (an
h2ogpt-api reached as `openai:<url>/v1`, itself in front of the TGI fake: a real OpenAI-compatible
server that passes tools, JSON formats and logprobs through) and `embedded` (SmolLM2-135M on
llama-cpp-python). A parameter a backend serves must work; one it cannot must be a 400 that names
it (never a 200 that ignored it). `SUPPORTED` is the matrix docs/openai-api.md documents.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from openai import OpenAI

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake

BACKENDS = ["tgi", "openai", "embedded"]
SUPPORTED = {
    "tgi": {"tools", "response_format", "logprobs"},
    "openai": {"tools", "response_format", "logprobs"},
    "embedded": {"response_format"},
}
FAKE_MODEL = "conformance/echo"
EMBEDDED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "maxLength": 12}, "age": {"type": "integer", "maximum": 150}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@dataclass
class Target:
    backend: str
    server: ApiServer
    model: str

    def client(self) -> OpenAI:
        assert self.server.openai_url is not None
        return OpenAI(base_url=self.server.openai_url, api_key="EMPTY", max_retries=0)

    def supports(self, feature: str) -> bool:
        return feature in SUPPORTED[self.backend]


@pytest.fixture(scope="module", params=BACKENDS)
def target(
    request: pytest.FixtureRequest, api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> Target:
    backend = request.param
    if backend == "tgi":
        return Target(backend, api_server_factory(llm_only_args(tgi_fake.url, FAKE_MODEL)), FAKE_MODEL)
    if backend == "openai":
        inner = api_server_factory(llm_only_args(tgi_fake.url, FAKE_MODEL))
        outer = api_server_factory(llm_only_args(f"openai:{inner.openai_url}", FAKE_MODEL))
        return Target(backend, outer, FAKE_MODEL)
    return Target(backend, api_server_factory(["--langchain_modes", "['LLM']"]), EMBEDDED_MODEL)


@pytest.fixture
def client(target: Target) -> Iterator[OpenAI]:
    with target.client() as client:
        yield client


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


# -- plain generation --------------------------------------------------------------------------


def test_chat_whole_and_streamed_agree(target: Target, client: OpenAI) -> None:
    whole = client.chat.completions.create(
        model=target.model,
        messages=ask("Name three colours."),
        max_tokens=12,
        temperature=0,
        seed=7,  # type: ignore[arg-type]
    )
    text = whole.choices[0].message.content or ""
    assert text.strip()
    assert whole.usage is not None
    assert whole.usage.prompt_tokens > 0
    assert 0 < whole.usage.completion_tokens <= 12
    stream = client.chat.completions.create(
        model=target.model,
        messages=ask("Name three colours."),  # type: ignore[arg-type]
        max_tokens=12,
        temperature=0,
        seed=7,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == text
    assert chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_completions_and_stop(target: Target, client: OpenAI) -> None:
    result = client.completions.create(
        model=target.model, prompt="one two three four", max_tokens=8, temperature=0
    )
    assert result.choices[0].text.strip()
    assert result.usage is not None
    assert result.usage.completion_tokens > 0
    streamed = client.completions.create(
        model=target.model, prompt="one two three four", max_tokens=8, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == result.choices[0].text
    # `stop` is honoured: the answer ends before the stop text.
    first_word = result.choices[0].text.split()[0]
    stopped = client.completions.create(
        model=target.model, prompt="one two three four", max_tokens=8, temperature=0, stop=[first_word]
    )
    assert first_word not in stopped.choices[0].text


def test_embeddings(client: OpenAI) -> None:
    result = client.embeddings.create(model="all-MiniLM-L6-v2", input=["a cat", "a kitten"])
    assert [len(item.embedding) for item in result.data] == [384, 384]


def test_n_above_one_is_refused_by_name(target: Target, client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=target.model, messages=ask("hi"), max_tokens=4, n=2)  # type: ignore[arg-type]
    assert caught.value.body["param"] == "n"  # type: ignore[index]


def test_penalties_reach_the_backend(target: Target, client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=target.model,
        messages=ask("Name three colours."),  # type: ignore[arg-type]
        max_tokens=8,
        frequency_penalty=0.5,
        presence_penalty=0.5,
    )
    assert answer.choices[0].message.content


# -- JSON mode ---------------------------------------------------------------------------------


def test_json_object_mode_returns_json(target: Target, client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=target.model,
        messages=ask('Reply with a JSON object with one key, "colour", naming a colour.'),  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_object"},
    )
    assert isinstance(json.loads(answer.choices[0].message.content or ""), dict)


def test_json_schema_mode_matches_the_schema(target: Target, client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=target.model,
        messages=ask("Give a person with a name and an age, as JSON."),  # type: ignore[arg-type]
        max_tokens=60,
        temperature=0,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
    )
    person = json.loads(answer.choices[0].message.content or "")
    assert isinstance(person["name"], str)
    assert isinstance(person["age"], int)


# -- tools -------------------------------------------------------------------------------------


def test_tool_calls_or_400(target: Target, client: OpenAI) -> None:
    def call(stream: bool):  # type: ignore[no-untyped-def]
        return client.chat.completions.create(
            model=target.model,
            messages=ask("What is the weather in Paris? Use get_weather."),  # type: ignore[arg-type]
            max_tokens=64,
            tools=[WEATHER_TOOL],  # type: ignore[list-item]
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            stream=stream,
        )

    if not target.supports("tools"):
        with pytest.raises(openai.BadRequestError) as caught:
            call(False)
        assert caught.value.body["param"] == "tools"  # type: ignore[index]
        return
    whole = call(False)
    choice = whole.choices[0]
    assert choice.finish_reason == "tool_calls"
    (tool_call,) = choice.message.tool_calls or []
    assert tool_call.function.name == "get_weather"  # type: ignore[union-attr]
    arguments = json.loads(tool_call.function.arguments)  # type: ignore[union-attr]
    assert set(arguments) == {"city", "days"}
    # Streamed: the first delta names the call, the rest carry its arguments.
    name, pieces, finish = None, [], None
    for chunk in call(True):
        for delta_call in (chunk.choices[0].delta.tool_calls or []) if chunk.choices else []:
            name = name or (delta_call.function.name if delta_call.function else None)
            pieces.append((delta_call.function.arguments or "") if delta_call.function else "")
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert name == "get_weather"
    assert json.loads("".join(pieces)) == arguments
    assert finish == "tool_calls"


def test_tool_choice_none_answers_text(target: Target, client: OpenAI) -> None:
    answer = client.chat.completions.create(
        model=target.model,
        messages=ask("Say hello."),  # type: ignore[arg-type]
        max_tokens=8,
        tools=[WEATHER_TOOL],  # type: ignore[list-item]
        tool_choice="none",
    )
    assert answer.choices[0].message.content
    assert not answer.choices[0].message.tool_calls


# -- logprobs ----------------------------------------------------------------------------------


def test_logprobs_or_400(target: Target, client: OpenAI) -> None:
    def call(stream: bool):  # type: ignore[no-untyped-def]
        return client.chat.completions.create(
            model=target.model,
            messages=ask("one two three"),  # type: ignore[arg-type]
            max_tokens=6,
            logprobs=True,
            top_logprobs=2,
            stream=stream,
        )

    if not target.supports("logprobs"):
        with pytest.raises(openai.BadRequestError) as caught:
            call(False)
        assert caught.value.body["param"] == "logprobs"  # type: ignore[index]
        return
    whole = call(False)
    content = whole.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None
    assert "".join(entry.token for entry in content) == whole.choices[0].message.content
    assert all(entry.logprob <= 0 and len(entry.top_logprobs) == 2 for entry in content)
    streamed = [
        entry
        for chunk in call(True)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content or []
    ]
    assert [entry.token for entry in streamed] == [entry.token for entry in content]


# -- /v1/responses -----------------------------------------------------------------------------


def test_responses_text_instructions_usage_and_state(target: Target, client: OpenAI) -> None:
    first = client.responses.create(
        model=target.model,
        input="My name is Ada.",
        instructions="Answer briefly.",
        max_output_tokens=16,
        temperature=0,
    )
    assert first.status in ("completed", "incomplete")
    assert first.output_text.strip()
    assert first.usage is not None
    assert first.usage.input_tokens > 0
    assert 0 < first.usage.output_tokens <= 16
    assert first.usage.total_tokens == first.usage.input_tokens + first.usage.output_tokens
    second = client.responses.create(
        model=target.model, input="What is my name?", previous_response_id=first.id, max_output_tokens=16
    )
    assert second.previous_response_id == first.id
    assert second.usage is not None
    # The earlier turn (question and answer) is part of the prompt now.
    assert second.usage.input_tokens > first.usage.input_tokens
    if target.backend != "embedded":  # the echo model shows what it was sent
        assert "Ada" in second.output_text
    with pytest.raises(openai.BadRequestError) as caught:
        client.responses.create(model=target.model, input="hi", previous_response_id="resp-unknown")
    assert caught.value.body["param"] == "previous_response_id"  # type: ignore[index]


def test_responses_stream_events(target: Target, client: OpenAI) -> None:
    events = list(
        client.responses.create(
            model=target.model, input="one two three", max_output_tokens=8, temperature=0, stream=True
        )
    )
    kinds = [event.type for event in events]
    assert kinds[0] == "response.created"
    assert kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds
    assert [event.sequence_number for event in events] == list(range(len(events)))
    deltas = "".join(event.delta for event in events if event.type == "response.output_text.delta")
    (done,) = [event for event in events if event.type == "response.output_text.done"]
    assert done.text == deltas
    final = events[-1].response  # type: ignore[union-attr]
    assert final.output_text == deltas
    assert final.usage is not None
    assert final.usage.output_tokens > 0


def test_responses_json_format(target: Target, client: OpenAI) -> None:
    answer = client.responses.create(
        model=target.model,
        input="Give a person with a name and an age, as JSON.",
        max_output_tokens=60,
        temperature=0,
        text={"format": {"type": "json_schema", "name": "person", "schema": PERSON_SCHEMA}},
    )
    person = json.loads(answer.output_text)
    assert isinstance(person["name"], str)
    assert isinstance(person["age"], int)
