"""Logins and keys on the Gradio side: Gradio's login with `--auth`, `h2ogpt_key` enforcement,
and one user's MyData out of another's reach, through the real Gradio API and a real Weaviate."""

from __future__ import annotations

import ast
import os
from collections.abc import Iterator

import httpx
import pytest
from gradio_client import Client
from gradio_client.exceptions import AuthenticationError
from h2ogpt_client import GradioClient

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

# gradio_client sends usage telemetry to Hugging Face from a thread; there is no network here.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")

KEY = "sk-gradio-test-key"


@pytest.fixture(scope="module")
def server(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer
) -> ApiServer:
    return api_server_factory(
        [
            "--gradio",
            "True",
            "--inference_server",
            tgi_fake.url,
            "--weaviate_url",
            weaviate_server.url,
            "--auth",
            "[('alice', 'alice-pw'), ('bob', 'bob-pw')]",
            "--auth_access",
            "closed",
            "--h2ogpt_api_keys",
            f"['{KEY}']",
            "--enforce_h2ogpt_api_key",
            "True",
        ]
    )


@pytest.fixture(scope="module")
def host(server: ApiServer) -> str:
    assert server.gradio_url is not None
    return server.gradio_url.rstrip("/")


@pytest.fixture(scope="module")
def alice(host: str) -> Iterator[GradioClient]:
    with GradioClient(host, h2ogpt_key=KEY, auth=("alice", "alice-pw")) as client:
        yield client


@pytest.fixture(scope="module")
def bob(host: str) -> Iterator[GradioClient]:
    with GradioClient(host, h2ogpt_key=KEY, auth=("bob", "bob-pw")) as client:
        yield client


def test_closed_access_needs_a_login(host: str) -> None:
    with pytest.raises(AuthenticationError, match="credentials were not provided"):
        Client(host, verbose=False)
    with pytest.raises(ValueError, match="Could not login"):
        Client(host, verbose=False, auth=("alice", "wrong"))
    # The REST route takes HTTP Basic credentials.
    anonymous = httpx.post(f"{host}/api/model_names", json={"data": []}).json()
    assert "log in" in ast.literal_eval(anonymous["data"][0])["error"]
    wrong = httpx.post(f"{host}/api/model_names", json={"data": []}, auth=("alice", "nope"))
    assert wrong.status_code == 401
    right = httpx.post(f"{host}/api/model_names", json={"data": []}, auth=("alice", "alice-pw")).json()
    assert ast.literal_eval(right["data"][0])[0]["max_seq_len"] == 2048


def test_the_api_key_is_enforced(host: str) -> None:
    client = Client(host, verbose=False, auth=("alice", "alice-pw"))
    no_key = ast.literal_eval(
        client.predict(str({"instruction_nochat": "hi"}), api_name="/submit_nochat_api")
    )
    assert "needs an API key" in no_key["error"]
    bad_key = ast.literal_eval(
        client.predict(str({"instruction_nochat": "hi", "h2ogpt_key": "nope"}), api_name="/submit_nochat_api")
    )
    assert bad_key["error"] == "invalid API key"
    good = ast.literal_eval(
        client.predict(str({"instruction_nochat": "hi", "h2ogpt_key": KEY}), api_name="/submit_nochat_api")
    )
    assert good["response"] == "user: hi"
    assert "API key" in ast.literal_eval(client.predict("MyData", None, api_name="/get_sources_api"))["error"]


def test_my_data_of_one_user_is_invisible_to_another(alice: GradioClient, bob: GradioClient) -> None:
    secret = "Alice's private note: the vault combination is 31-41-59."
    source = alice.add_text(secret, "MyData")
    assert source in alice.get_sources("MyData")
    assert source not in bob.get_sources("MyData")

    assert "31-41-59" in alice.query("What is the vault combination?")
    bob_answer = bob.query("What is the vault combination?", top_k_docs=10)
    assert "31-41-59" not in bob_answer
    assert bob.last_answer is not None
    assert bob.last_answer["sources"] == []

    # Bob cannot read or delete it by name either.
    document = bob.client.predict("MyData", source, True, None, 1000, KEY, api_name="/get_document_api")
    assert "no document named" in ast.literal_eval(document)["error"]
    bob.delete_sources([source], "MyData")
    assert source in alice.get_sources("MyData")


def test_shared_user_data_is_shared(alice: GradioClient, bob: GradioClient) -> None:
    source = alice.add_text("Shared handbook: the cafeteria opens at 07:30 on weekdays.", "UserData")
    assert source in bob.get_sources("UserData")
    assert "07:30" in bob.query("When does the cafeteria open?", langchain_mode="UserData")
    alice.delete_sources([source], "UserData")
