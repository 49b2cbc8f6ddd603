"""Security and tenancy on the API side, over real sockets with the official `openai` client:
durable open-access logins shared by two `h2ogpt-api` processes on one real Weaviate (and across a
restart), identities carried by named API keys, key and user files rotated under a running server,
per-key limits (429 + Retry-After) and per-key token metrics labelled by key name.

Each attack here has its row in docs/security.md.
"""

from __future__ import annotations

import ast
import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from h2ogpt_api.retrieval.base import Identity
from openai import OpenAI
from openai.types.chat import ChatCompletion

from tests.support.api_server import ApiServer, ApiServerFactory, llm_only_args, run_api_server
from tests.support.documents import DocumentLoader, sources_of
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

MODEL = "test/security-model"
MODES = ["UserData", "MyData", "LLM"]
SECRET_NOTE = "Erin hides the boathouse key inside the hollow oak by the jetty."


def stack_args(fake: RunningFake, weaviate: WeaviateServer, *extra: str) -> list[str]:
    """A server on the shared Weaviate (as every replica of a stack is)."""
    return [
        "--inference_server", fake.url,
        "--base_model", MODEL,
        "--langchain_modes", str(MODES),
        "--weaviate_url", weaviate.url,
        *extra,
    ]


def ask(
    server: ApiServer, question: str = "Who are you?", api_key: str = "EMPTY", **extra: object
) -> ChatCompletion:
    with OpenAI(base_url=server.openai_url, api_key=api_key, max_retries=0) as client:
        return client.chat.completions.create(
            model=MODEL, max_tokens=300, messages=[{"role": "user", "content": question}], extra_body=extra
        )


def ask_as(server: ApiServer, user: str, **extra: object) -> ChatCompletion:
    return ask(server, "Where is the boathouse key?", user=user, **extra)


@pytest.fixture(scope="module")
def loader(weaviate_server: WeaviateServer) -> DocumentLoader:
    return DocumentLoader(weaviate_server.url, MODES)


# -- 1. durable logins ---------------------------------------------------------------------------


def test_a_registration_holds_on_another_replica_and_after_a_restart(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer,
    loader: DocumentLoader,
) -> None:
    replica_a = api_server_factory(stack_args(tgi_fake, weaviate_server))
    replica_b = api_server_factory(stack_args(tgi_fake, weaviate_server))
    user = f"erin{time.time_ns()}"  # a name nobody registered in this Weaviate yet
    assert ask(replica_a, user=f"{user}:right").choices[0].message.content  # first login registers
    loader.add_text(SECRET_NOTE, "MyData", Identity(user, authenticated=True), source="erin.txt")

    # Another replica: the wrong password is refused, the right one reads her MyData.
    with pytest.raises(openai.AuthenticationError, match="wrong username or password"):
        ask_as(replica_b, f"{user}:wrong", langchain_mode="MyData")
    mine = ask_as(replica_b, f"{user}:right", langchain_mode="MyData", top_k_docs=3)
    assert [source["source"] for source in sources_of(mine)] == ["erin.txt"]

    # A fresh process (a restart) sees the same registration.
    with run_api_server(stack_args(tgi_fake, weaviate_server)) as restarted:
        with pytest.raises(openai.AuthenticationError):
            ask_as(restarted, f"{user}:wrong", langchain_mode="MyData")
        assert sources_of(ask_as(restarted, f"{user}:right", langchain_mode="MyData", top_k_docs=3))

    # The store holds an argon2 hash, never the password.
    stored = httpx.get(
        f"{weaviate_server.process.http_url}/v1/objects", params={"class": "H2ogpt_Logins", "limit": 1000},
        timeout=10,
    ).json()["objects"]
    erin = [obj["properties"] for obj in stored if obj["properties"]["username"] == user]
    assert len(erin) == 1
    assert erin[0]["password_hash"].startswith("$argon2id$")
    assert "right" not in json.dumps(stored)


def test_anonymous_callers_have_no_my_data(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer
) -> None:
    server = api_server_factory(stack_args(tgi_fake, weaviate_server))
    for extra in ({}, {"user": "plain-end-user-id"}):
        with pytest.raises(openai.BadRequestError, match="anonymous callers have none"):
            ask(server, langchain_mode="MyData", **extra)


# -- 2. identity per key -------------------------------------------------------------------------


def test_a_named_key_carries_its_user_and_my_data_follows_it(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer,
    loader: DocumentLoader, tmp_path: Path,
) -> None:
    keys = tmp_path / "keys.json"
    keys.write_text(json.dumps({"frank": "k-frank", "grace": "k-grace"}))
    server = api_server_factory(
        stack_args(
            tgi_fake, weaviate_server, "--h2ogpt_api_keys", str(keys), "--enforce_h2ogpt_api_key", "True"
        )
    )
    loader.add_text(SECRET_NOTE, "MyData", Identity("key:frank", authenticated=True), source="frank.txt")
    question = "Where is the boathouse key?"
    frank = ask(server, question, api_key="k-frank", langchain_mode="MyData", top_k_docs=3)
    assert [source["source"] for source in sources_of(frank)] == ["frank.txt"]
    grace = ask(server, question, api_key="k-grace", langchain_mode="MyData", top_k_docs=3)
    assert sources_of(grace) == []
    # A login called "frank" is someone else: a key's identity is its own tenant.
    other = ask(server, question, api_key="k-grace", user="frank:pw", langchain_mode="MyData", top_k_docs=3)
    assert sources_of(other) == []


def test_the_old_list_of_keys_still_works(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> None:
    server = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), "--h2ogpt_api_keys", "['k-one', 'k-two']",
         "--enforce_h2ogpt_api_key", "True"]
    )
    assert ask(server, api_key="k-two").choices[0].message.content
    with pytest.raises(openai.AuthenticationError):
        ask(server, api_key="k-three")


# -- 4. rotation without restarts ----------------------------------------------------------------


def eventually(check: Callable[[], bool], seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return check()


def accepted(server: ApiServer, **kwargs: object) -> bool:
    try:
        ask(server, **kwargs)  # type: ignore[arg-type]
    except openai.AuthenticationError:
        return False
    return True


def test_rewritten_key_and_user_files_count_within_a_second(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.json"
    users = tmp_path / "users.json"
    keys.write_text(json.dumps({"ci": "k-old"}))
    users.write_text(json.dumps({"henry": {"password": "old-pw"}}))
    server = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), "--h2ogpt_api_keys", str(keys),
         "--enforce_h2ogpt_api_key", "True", "--auth", str(users), "--auth_access", "closed"]
    )
    assert accepted(server, api_key="k-old", user="henry:old-pw")

    # A Secret volume swaps in new files: the old key and password stop working within a second
    # (the files are checked at most once a second).
    rotated_keys, rotated_users = tmp_path / "keys.new", tmp_path / "users.new"
    rotated_keys.write_text(json.dumps({"ci": "k-new"}))
    rotated_users.write_text(json.dumps({"henry": {"password": "new-pw"}}))
    rotated_keys.replace(keys)
    rotated_users.replace(users)
    swapped = time.monotonic()
    # The last look at the files was before the swap, so any request from a second after it on
    # looks again: the first request sent then must see the new files. (Timing the round trip
    # instead would measure the machine's load as much as the server.)
    time.sleep(max(0.0, swapped + 1.05 - time.monotonic()))
    assert accepted(server, api_key="k-new", user="henry:new-pw")
    assert not accepted(server, api_key="k-old", user="henry:new-pw")
    assert not accepted(server, api_key="k-new", user="henry:old-pw")

    # A broken rewrite keeps the last good keys (and says so in the log, without them).
    keys.write_text("{not json")
    assert eventually(
        lambda: accepted(server, api_key="k-new", user="henry:new-pw")
        and "keeping the last good value" in server.log(),
        seconds=3.0,
    )
    assert "k-new" not in server.log()


# -- 8. per-key limits ---------------------------------------------------------------------------


def test_request_and_token_limits_answer_429_with_retry_after_and_metrics_name_keys_not_keys(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> None:
    server = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL),
         "--h2ogpt_api_keys", "{'ivy': 'k-ivy-secret', 'jack': 'k-jack-secret'}",
         "--requests_per_minute", "2"]
    )
    ask(server, api_key="k-ivy-secret")
    ask(server, api_key="k-ivy-secret")
    with pytest.raises(openai.RateLimitError) as caught:
        ask(server, api_key="k-ivy-secret")
    response = caught.value.response
    assert response.status_code == 429
    # A sliding-window counter: this minute's rest plus the share of the next minute until this
    # minute's requests, weighted down, leave room (at most two minutes).
    assert 1 <= int(response.headers["retry-after"]) <= 120
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    assert response.json()["error"]["code"] == "rate_limit_exceeded"
    assert ask(server, api_key="k-jack-secret").choices[0].message.content  # jack has his own window

    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert 'h2ogpt_api_key_tokens_total{key_name="ivy",kind="completion"}' in metrics
    assert 'h2ogpt_api_key_tokens_total{key_name="jack",kind="prompt"}' in metrics
    assert 'h2ogpt_api_rate_limited_total{limit="requests"} 1.0' in metrics
    assert "secret" not in metrics


def test_token_limit_refuses_once_the_minute_is_spent(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> None:
    server = api_server_factory([*llm_only_args(tgi_fake.url, MODEL), "--tokens_per_minute", "5"])
    ask(server, "Tell me a long story about the sea please")  # more than 5 tokens: the window is full
    with pytest.raises(openai.RateLimitError, match="5 tokens per minute"):
        ask(server)


def gradio_generate(client: Any, **request: object) -> dict[str, Any]:
    """h2oGPT's `/submit_nochat_api` as its clients call it: the str() of a dict in and out."""
    answer: dict[str, Any] = ast.literal_eval(
        client.predict(str({"instruction_nochat": "Who are you?", **request}), api_name="/submit_nochat_api")
    )
    return answer


def assert_limited(answer: dict[str, Any], limit: str) -> None:
    """h2oGPT's error shape: an `error` saying which limit and how long to wait; no traceback."""
    assert limit in answer.get("error", ""), answer
    assert re.search(r"try again in ([0-9]+) s", answer["error"]), answer["error"]
    assert 1 <= int(re.findall(r"try again in ([0-9]+) s", answer["error"])[0]) <= 120
    assert "Traceback" not in str(answer)


def test_gradio_calls_with_a_key_share_its_limit_with_the_openai_port(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake
) -> None:
    from gradio_client import Client  # noqa: PLC0415 (only the Gradio tests load it)

    server = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), "--gradio", "True",
         "--h2ogpt_api_keys", "{'ivy': 'k-ivy-secret', 'jack': 'k-jack-secret'}",
         "--requests_per_minute", "3"]
    )
    assert server.gradio_url is not None
    client = Client(server.gradio_url, verbose=False)
    assert gradio_generate(client, h2ogpt_key="k-ivy-secret")["response"]
    assert gradio_generate(client, h2ogpt_key="k-ivy-secret")["response"]
    ask(server, api_key="k-ivy-secret")  # the third request of ivy's minute, on the other port
    # One process, one counter: the fourth is refused on either port.
    assert_limited(gradio_generate(client, h2ogpt_key="k-ivy-secret"), "3 requests per minute")
    with pytest.raises(openai.RateLimitError, match="3 requests per minute"):
        ask(server, api_key="k-ivy-secret")
    # The document APIs count too, and answer in their own shape (the error is the 4th output).
    no_loaders = [None] * 6
    added = client.predict("A note.", "LLM", True, 512, True, *no_loaders, "k-ivy-secret",
                           api_name="/add_text")
    assert "3 requests per minute" in added[3]
    assert "try again in" in added[3]
    # Other keys, and anonymous sessions (not limited: nothing tells two apart), are unaffected.
    assert gradio_generate(client, h2ogpt_key="k-jack-secret")["response"]
    for _ in range(4):
        assert gradio_generate(client)["response"]
    metrics = httpx.get(server.base_url + "/metrics", timeout=10).text
    assert 'h2ogpt_api_rate_limited_total{limit="requests"} 3.0' in metrics


def test_gradio_logins_have_request_and_token_limits(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, tmp_path: Path
) -> None:
    from gradio_client import Client  # noqa: PLC0415 (only the Gradio tests load it)

    users = tmp_path / "users.json"
    users.write_text(json.dumps({"liz": {"password": "liz-pw"}, "max": {"password": "max-pw"}}))
    server = api_server_factory(
        [*llm_only_args(tgi_fake.url, MODEL), "--gradio", "True", "--auth", str(users),
         "--auth_access", "closed", "--tokens_per_minute", "5"]
    )
    assert server.gradio_url is not None
    liz = Client(server.gradio_url, auth=("liz", "liz-pw"), verbose=False)
    # More than 5 tokens: liz's minute is spent once this answer is charged.
    assert gradio_generate(liz, instruction_nochat="Tell me a long story about the sea please")["response"]
    assert_limited(gradio_generate(liz), "5 tokens per minute")
    assert_limited(gradio_generate(liz, stream_output=True), "5 tokens per minute")
    other = Client(server.gradio_url, auth=("max", "max-pw"), verbose=False)
    assert gradio_generate(other)["response"]


# -- 10. anonymous Gradio sessions' MyData is cleaned up ------------------------------------------


def my_data_tenants(weaviate: WeaviateServer) -> set[str]:
    response = httpx.get(f"{weaviate.process.http_url}/v1/schema/H2ogpt_MyData/tenants", timeout=10)
    return {tenant["name"] for tenant in response.json()} if response.status_code == 200 else set()


def test_an_idle_anonymous_sessions_my_data_is_deleted_and_logins_keep_theirs(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer,
    loader: DocumentLoader,
) -> None:
    from gradio_client import Client  # noqa: PLC0415 (only this test drives Gradio)

    server = api_server_factory(
        stack_args(tgi_fake, weaviate_server, "--gradio", "True", "--anonymous_mydata_ttl", "3")
    )
    assert server.gradio_url is not None
    keeper = f"kim{time.time_ns()}"
    loader.add_text(SECRET_NOTE, "MyData", Identity(keeper, authenticated=True), source="kim.txt")
    before = my_data_tenants(weaviate_server)
    client = Client(server.gradio_url, verbose=False)
    no_loaders = [None] * 6  # h2oGPT's loader options, as its client sends them
    client.predict("A visitor's scratch note.", "MyData", True, 512, True, *no_loaders, None,
                   api_name="/add_text")
    session_tenants = {t for t in my_data_tenants(weaviate_server) - before if t.startswith("guest-session-")}
    assert len(session_tenants) == 1
    # The sweep runs every 1 s here: gone within ttl + one sweep (3 + 1 s), with margin for 2 busy cores.
    assert eventually(lambda: not (session_tenants & my_data_tenants(weaviate_server)), seconds=15.0)
    assert loader.list_sources("MyData", Identity(keeper, authenticated=True)) == ["kim.txt"]
