"""Property-based fuzzing (hypothesis) of both front doors of a live `h2ogpt-api` in front of the
TGI fake: generated bodies for `/v1/*`, generated str(dict) (and not-quite-dict) inputs for the
Gradio api_names. The properties: no 5xx unless the backend failed (and then a backend_* code),
every error OpenAI-shaped, never a traceback, never code evaluated.

The example counts keep the whole module well under 60 s on 2 cores; hypothesis' database makes
a failure found once replay first next time.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake

MODEL = "test/fuzz-model"
FUZZ = settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
ERROR_KEYS = {"message", "type", "param", "code"}

# JSON values of every type, small.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)  # what JSON can carry
    | st.text(max_size=40),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=12,
)
messages = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["user", "system", "assistant", "tool", "nobody"]) | json_values},
        optional={"content": st.text(max_size=60) | json_values, "name": json_values},
    ),
    max_size=4,
)
# Bodies near the real shapes (so validation is passed often) with any field replaced by junk.
common_fields = {
    "model": st.just(MODEL) | json_values,
    "max_tokens": st.integers(-5, 5000) | json_values,
    "temperature": st.floats(-1, 3) | json_values,
    "top_p": st.floats(-1, 2) | json_values,
    "stream": st.booleans() | json_values,
    "stop": st.text(max_size=8) | st.lists(st.text(max_size=8), max_size=5) | json_values,
    "user": st.text(max_size=20) | json_values,
    "seed": st.integers() | json_values,
    "n": st.integers(-2, 3) | json_values,
    "langchain_mode": st.sampled_from(["LLM", "UserData", "MyData", "Nope"]) | json_values,
    "stream_options": st.fixed_dictionaries({"include_usage": st.booleans() | json_values}) | json_values,
}
chat_bodies = st.fixed_dictionaries({"messages": messages | json_values}, optional=common_fields)
completion_bodies = st.fixed_dictionaries(
    {"prompt": st.text(max_size=60) | st.lists(st.text(max_size=20), max_size=3) | json_values},
    optional=common_fields,
)
embedding_bodies = st.fixed_dictionaries(
    {"input": st.text(max_size=40) | st.lists(st.text(max_size=20), max_size=3) | json_values},
    optional={
        "model": json_values,
        "encoding_format": st.sampled_from(["float", "base64", "x"]) | json_values,
    },
)
raw_bodies = st.binary(max_size=200) | st.text(max_size=200).map(str.encode)


@pytest.fixture(scope="module")
def server(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> ApiServer:
    return api_server_factory([*llm_only_args(tgi_fake.url, MODEL), "--gradio", "True"])


@pytest.fixture(scope="module")
def http() -> Iterator[httpx.Client]:
    with httpx.Client(timeout=30) as client:
        yield client


def check_openai_answer(response: httpx.Response) -> None:
    text = response.text
    assert "Traceback" not in text
    if response.status_code >= 500:
        # Only the backend's failures may be 5xx, and they say so.
        assert response.json()["error"]["code"].startswith(("backend_", "embeddings_")), text
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == ERROR_KEYS, text
        assert isinstance(error["message"], str)
        assert error["message"]
        return
    if response.headers.get("content-type", "").startswith("text/event-stream"):
        events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]", text
        for event in events[:-1]:
            payload = json.loads(event)
            if "error" in payload:
                assert set(payload["error"]) == ERROR_KEYS
    else:
        assert isinstance(response.json(), dict)


@FUZZ
@given(body=chat_bodies)
def test_chat_completions_fuzzed(server: ApiServer, http: httpx.Client, body: dict[str, Any]) -> None:
    check_openai_answer(http.post(f"{server.openai_url}/chat/completions", json=body))


@FUZZ
@given(body=completion_bodies)
def test_completions_fuzzed(server: ApiServer, http: httpx.Client, body: dict[str, Any]) -> None:
    check_openai_answer(http.post(f"{server.openai_url}/completions", json=body))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=embedding_bodies)
def test_embeddings_fuzzed(server: ApiServer, http: httpx.Client, body: dict[str, Any]) -> None:
    check_openai_answer(http.post(f"{server.openai_url}/embeddings", json=body))


@FUZZ
@given(
    path=st.sampled_from(["/chat/completions", "/completions", "/embeddings"]),
    body=raw_bodies,
    content_type=st.sampled_from(["application/json", "text/plain", "application/x-www-form-urlencoded"]),
)
def test_v1_raw_bodies_fuzzed(
    server: ApiServer, http: httpx.Client, path: str, body: bytes, content_type: str
) -> None:
    response = http.post(f"{server.openai_url}{path}", content=body, headers={"content-type": content_type})
    assert response.status_code == 400 or response.status_code < 300
    check_openai_answer(response)


# -- Gradio: h2oGPT's str(dict) input --------------------------------------------------------------

python_literals = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=30) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3)
    | st.tuples(inner, inner)
    | st.frozensets(st.integers(), max_size=3)
    | st.dictionaries(st.text(max_size=10), inner, max_size=3),
    max_leaves=10,
)
h2ogpt_dicts = st.fixed_dictionaries(
    {},
    optional={
        "instruction_nochat": st.text(max_size=40) | python_literals,
        "max_new_tokens": st.integers(-10, 10_000) | python_literals,
        "temperature": st.floats() | python_literals,
        "langchain_mode": st.sampled_from(["LLM", "UserData", "MyData"]) | python_literals,
        "stream_output": python_literals,
        "top_k_docs": st.integers(-3, 50) | python_literals,
        "h2ogpt_key": python_literals,
        "chat_conversation": python_literals,
        "text_context_list": st.lists(st.text(max_size=20), max_size=3) | python_literals,
    },
) | st.dictionaries(st.text(max_size=15) | st.integers(), python_literals, max_size=3)


def code_that_would_leave_a_mark(mark: Path) -> st.SearchStrategy[str]:
    """Inputs that would create `mark` if anything evaluated them."""
    payloads = [
        f"__import__('pathlib').Path({str(mark)!r}).touch()",
        f"{{'instruction_nochat': __import__('pathlib').Path({str(mark)!r}).touch()}}",
        f"dict(instruction_nochat=open({str(mark)!r}, 'w').write('x'))",
        f"{{'instruction_nochat': (lambda: __import__('os').system('touch {mark}'))()}}",
    ]
    return st.sampled_from(payloads)


def check_gradio_answer(response: httpx.Response) -> None:
    assert "Traceback" not in response.text
    assert response.status_code < 500, response.text
    if response.status_code == 200:
        answer = ast.literal_eval(response.json()["data"][0])
        assert isinstance(answer, dict)
        assert "response" in answer


@FUZZ
@given(request=h2ogpt_dicts.map(str) | st.text(max_size=80))
def test_gradio_str_dict_input_fuzzed(server: ApiServer, http: httpx.Client, request: str) -> None:
    assert server.gradio_url is not None
    response = http.post(
        f"{server.gradio_url.rstrip('/')}/api/submit_nochat_plain_api", json={"data": [request]}
    )
    check_gradio_answer(response)


def test_gradio_input_is_never_evaluated(server: ApiServer, http: httpx.Client, tmp_path: Path) -> None:
    mark = tmp_path / "evaluated"

    @settings(max_examples=12, deadline=None)
    @given(request=code_that_would_leave_a_mark(mark))
    def attempt(request: str) -> None:
        assert server.gradio_url is not None
        response = http.post(
            f"{server.gradio_url.rstrip('/')}/api/submit_nochat_plain_api", json={"data": [request]}
        )
        check_gradio_answer(response)
        assert "not a Python dict literal" in response.text

    attempt()
    assert not mark.exists()
