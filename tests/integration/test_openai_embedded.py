"""The embedded SmolLM2-135M model (llama-cpp-python) behind the OpenAI API: the `make run` defaults."""

from __future__ import annotations

import re
import time

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.support.api_server import ApiServer, ApiServerFactory

MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory) -> ApiServer:
    return api_server_factory(["--langchain_modes", "['LLM']", "--max_seq_len", "2048"])


@pytest.fixture
def client(server: ApiServer) -> OpenAI:
    return OpenAI(base_url=server.openai_url, api_key="EMPTY", max_retries=0)


def test_readme_examples_stream_and_not_agree(client: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Who are you?"}]
    whole = client.chat.completions.create(
        model=MODEL,
        max_tokens=24,
        messages=messages,
        temperature=0,
        seed=1234,
    )
    text = whole.choices[0].message.content or ""
    assert text.strip()
    assert whole.usage is not None
    # Real counts from the model's tokenizer: the ChatML prompt is a dozen tokens, the answer at most 24.
    # "Who are you?" in the chat template, with SmolLM2's default system prompt (--system_prompt auto).
    assert 25 <= whole.usage.prompt_tokens <= 45
    assert 1 <= whole.usage.completion_tokens <= 24
    prompt_raw = (whole.usage.model_extra or {})["prompt_raw"]
    assert prompt_raw == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n<|im_start|>assistant\n"
    )

    streamed = client.chat.completions.create(
        model=MODEL,
        max_tokens=24,
        messages=messages,
        temperature=0,
        seed=1234,
        stream=True,
    )
    pieces = [
        chunk.choices[0].delta.content
        for chunk in streamed
        if chunk.choices and chunk.choices[0].delta.content
    ]
    assert len(pieces) > 3  # token by token
    assert "".join(pieces) == text  # greedy: the same answer either way


def test_completions_and_length_finish(client: OpenAI) -> None:
    result = client.completions.create(
        model=MODEL, prompt="Count from one to twenty:", max_tokens=5, temperature=0
    )
    assert result.choices[0].finish_reason == "length"
    assert result.usage is not None
    assert result.usage.completion_tokens == 5


def test_abandoned_stream_frees_the_model(server: ApiServer, client: OpenAI) -> None:
    # Counting never reaches an end of text: unstopped, this runs all 1500 tokens (~30 s here).
    counting = ", ".join(str(n) for n in range(1, 30)) + ","
    body = {"model": MODEL, "max_tokens": 1500, "temperature": 0, "stream": True, "prompt": counting,
            "prompt_type": "plain"}
    with httpx.stream("POST", f"{server.openai_url}/completions", json=body, timeout=30) as response:
        for count, _ in enumerate(response.iter_lines()):
            if count > 6:
                break  # hang up after a few tokens
    started = time.monotonic()
    after = client.chat.completions.create(
        model=MODEL, max_tokens=4, temperature=0, messages=[{"role": "user", "content": "Hi"}]
    )
    # The next request gets the model at once, not after the abandoned tokens (which take
    # 20 s or more here; the margin allows for a machine busy with other work).
    assert time.monotonic() - started < 10
    assert after.usage is not None
    assert after.usage.completion_tokens >= 1


def test_counting_runs_to_max_tokens_when_not_abandoned(client: OpenAI) -> None:
    # The control for the test above: the same prompt really does run to its limit.
    counting = ", ".join(str(n) for n in range(1, 30)) + ","
    result = client.completions.create(model=MODEL, prompt=counting, max_tokens=40, temperature=0,
                                       extra_body={"prompt_type": "plain"})
    assert result.choices[0].finish_reason == "length"
    assert re.search(r"\d+, \d+, \d+", result.choices[0].text)  # still counting when cut


def test_auto_system_prompt_is_the_models_own(client: OpenAI) -> None:
    # --system_prompt defaults to h2oGPT's 'auto': SmolLM2's own default system prompt, without
    # which the 135M model loops on one phrase.
    answer = client.chat.completions.create(
        model=MODEL, max_tokens=20, temperature=0,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert answer.usage is not None
    prompt_raw = (answer.usage.model_extra or {})["prompt_raw"]
    assert "You are a helpful AI assistant named SmolLM" in prompt_raw
    assert (answer.choices[0].message.content or "").strip()
    # An explicit empty system prompt means none at all.
    bare = client.chat.completions.create(
        model=MODEL, max_tokens=4, temperature=0, extra_body={"system_prompt": ""},
        messages=[{"role": "user", "content": "Hi"}],
    )
    assert bare.usage is not None
    assert "<|im_start|>system" not in (bare.usage.model_extra or {})["prompt_raw"]


def test_a_prompt_too_long_for_the_model_is_a_400_naming_the_limit(client: OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hello " * 3000}], max_tokens=8
        )
    message = caught.value.body["message"]  # type: ignore[index]
    assert re.search(r"the prompt has \d+ tokens and the model's context is 2048", message)


def test_min_new_tokens_holds_back_the_end_of_the_answer(client: OpenAI) -> None:
    messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Say only: yes"}]
    free = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=60, temperature=0)
    assert free.usage is not None
    natural = free.usage.completion_tokens
    assert natural < 40  # a short answer, so the minimum below is a real constraint
    held = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=60,
        temperature=0,
        extra_body={"min_new_tokens": natural + 20},
    )
    assert held.usage is not None
    assert held.usage.completion_tokens >= natural + 20
