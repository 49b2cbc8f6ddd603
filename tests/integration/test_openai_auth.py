"""Auth over real sockets: Bearer keys, `h2ogpt_key` in the body, `user='name:password'`, guests."""

from __future__ import annotations

import httpx
import openai
import pytest
from openai import OpenAI

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args
from tests.support.tgi_fake import RunningFake

MODEL = "test/echo-model"
KEY = "k-123"


@pytest.fixture(scope="module")
def closed_server(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> ApiServer:
    return api_server_factory(
        [
            *llm_only_args(tgi_fake.url, MODEL),
            "--auth_access",
            "closed",
            "--auth",
            "[('username', 'password')]",
            "--enforce_h2ogpt_api_key",
            "True",
        ],
        env={"H2OGPT_H2OGPT_API_KEYS": f"['{KEY}']"},
    )


@pytest.fixture(scope="module")
def open_server(api_server_factory: ApiServerFactory, tgi_fake: RunningFake) -> ApiServer:
    return api_server_factory(
        [
            *llm_only_args(tgi_fake.url, MODEL),
            "--auth",
            "[('alice', 'pw')]",
        ]
    )


def ask(server: ApiServer, api_key: str, **kwargs: object) -> str:
    client = OpenAI(base_url=server.openai_url, api_key=api_key, max_retries=0)
    result = client.chat.completions.create(
        model=MODEL,
        max_tokens=200,  # type: ignore[call-overload]
        messages=[{"role": "user", "content": "Who are you?"}],
        **kwargs,
    )
    return str(result.choices[0].message.content)


def test_readme_auth_example_with_closed_access(closed_server: ApiServer) -> None:
    assert ask(closed_server, KEY, user="username:password") == "user: Who are you?"


def test_readme_extra_body_example_reaches_the_core(closed_server: ApiServer) -> None:
    # langchain_mode='UserData' is passed through; this LLM-only server says clearly it does not offer it.
    with pytest.raises(openai.BadRequestError, match="UserData"):
        ask(closed_server, KEY, user="username:password", extra_body=dict(langchain_mode="UserData"))  # noqa: C408


@pytest.mark.parametrize("user", [None, "username:wrong", "nobody:password", "username"])
def test_closed_access_refuses_without_a_valid_login(closed_server: ApiServer, user: str | None) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        ask(closed_server, KEY, **({"user": user} if user else {}))
    assert caught.value.body["type"] == "authentication_error"  # type: ignore[index]


def test_bad_or_missing_key_is_401(closed_server: ApiServer) -> None:
    with pytest.raises(openai.AuthenticationError, match="invalid API key"):
        ask(closed_server, "wrong-key", user="username:password")
    with pytest.raises(openai.AuthenticationError, match="needs an API key"):
        ask(closed_server, "EMPTY", user="username:password")


def test_h2ogpt_key_in_the_body_is_accepted_like_a_bearer_key(closed_server: ApiServer) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "user": "username:password",
        "h2ogpt_key": KEY,
    }
    response = httpx.post(
        f"{closed_server.openai_url}/chat/completions",
        json=body,
        headers={"Authorization": "Bearer EMPTY"},
        timeout=10,
    )
    assert response.status_code == 200, response.text
    wrong = httpx.post(
        f"{closed_server.openai_url}/chat/completions", json={**body, "h2ogpt_key": "nope"}, timeout=10
    )
    assert wrong.status_code == 401
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}


def test_closed_access_lists_models_only_with_a_valid_key(closed_server: ApiServer) -> None:
    assert [m.id for m in OpenAI(base_url=closed_server.openai_url, api_key=KEY).models.list().data] == [
        MODEL
    ]
    response = httpx.get(f"{closed_server.openai_url}/models", timeout=10)
    assert response.status_code == 401


def test_open_access_serves_guests_and_checks_known_users(open_server: ApiServer) -> None:
    assert ask(open_server, "EMPTY") == "user: Who are you?"
    assert ask(open_server, "anything-goes") == "user: Who are you?"
    assert ask(open_server, "EMPTY", user="alice:pw") == "user: Who are you?"
    with pytest.raises(openai.AuthenticationError, match="wrong username or password"):
        ask(open_server, "EMPTY", user="alice:not-her-password")
    assert [m.id for m in OpenAI(base_url=open_server.openai_url, api_key="EMPTY").models.list().data] == [
        MODEL
    ]
