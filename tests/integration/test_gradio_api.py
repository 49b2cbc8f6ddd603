"""h2oGPT's Gradio API on `h2ogpt-api --gradio`: its documented examples run unchanged, bad input
answers an error, and the document api_names work, against the TGI fake and a real Weaviate.

The fake echoes what it is sent, so answers show exactly which prompt (and which document
text) reached the model.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gradio_client import Client, handle_file

from tests.support.api_server import ApiServer, ApiServerFactory
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

# gradio_client sends usage telemetry to Hugging Face from a thread; there is no network here.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")


@pytest.fixture(scope="module")
def server(
    api_server_factory: ApiServerFactory, tgi_fake: RunningFake, weaviate_server: WeaviateServer
) -> ApiServer:
    return api_server_factory(
        ["--gradio", "True", "--inference_server", tgi_fake.url, "--weaviate_url", weaviate_server.url]
    )


@pytest.fixture(scope="module")
def host(server: ApiServer) -> str:
    assert server.gradio_url is not None
    return server.gradio_url.rstrip("/")


@pytest.fixture(scope="module")
def client(host: str) -> Client:
    return Client(host, verbose=False)


def ask(client: Client, **kwargs: object) -> dict[str, Any]:
    answer = ast.literal_eval(client.predict(str(dict(kwargs)), api_name="/submit_nochat_api"))
    assert isinstance(answer, dict)
    return answer


# -- h2oGPT's documented examples, as written ------------------------------------------------------


def test_documented_predict_example(host: str) -> None:
    from gradio_client import Client  # noqa: PLC0415  (the example's own import)

    HOST_URL = host
    client = Client(HOST_URL)

    # string of dict for input
    kwargs = dict(instruction_nochat="Who are you?")  # noqa: C408
    res = client.predict(str(dict(kwargs)), api_name="/submit_nochat_api")

    # string of dict for output
    response = ast.literal_eval(res)["response"]
    print(response)
    # The fake echoes the chat message it got: the question reached the model.
    assert response == "user: Who are you?"
    answer = ast.literal_eval(res)
    assert answer["error"] is None
    assert answer["sources"] == []
    extra = answer["save_dict"]["extra_dict"]
    assert (extra["num_prompt_tokens"], extra["ntokens"]) == (4, 4)
    assert extra["tokens_persecond"] > 0
    assert extra["t_generate"] > 0
    assert answer["save_dict"]["output"] == response
    assert "Who are you?" in answer["save_dict"]["prompt"]


def test_documented_streaming_example(host: str, capsys: pytest.CaptureFixture[str]) -> None:
    HOST = host
    client = Client(HOST)
    api_name = "/submit_nochat_api"
    # The marker slows the fake to 100 ms a token (1.5 s in all), so the answer arrives in several
    # outputs even when the client is starved of CPU (30 ms a token once gave it only 2 to see).
    prompt = "FAKE:DELAY=0.1 Who are you and how do you stream your answers to me?"
    kwargs = dict(instruction_nochat=prompt, stream_output=True)  # noqa: C408

    job = client.submit(str(dict(kwargs)), api_name=api_name)

    text_old = ""
    partials = 0
    while not job.done():
        outputs_list = job.communicator.job.outputs
        if outputs_list:
            res = job.communicator.job.outputs[-1]
            res_dict = ast.literal_eval(res)
            text = res_dict["response"]
            new_text = text[len(text_old) :]
            if new_text:
                print(new_text, end="", flush=True)
                text_old = text
                partials += 1
            time.sleep(0.01)
    # handle case if never got streaming response and already done
    res_final = job.outputs()
    if len(res_final) > 0:
        res = res_final[-1]
        res_dict = ast.literal_eval(res)
        text = res_dict["response"]
        new_text = text[len(text_old) :]
        print(new_text)

    expected = f"user: {prompt}"
    assert capsys.readouterr().out.splitlines()[-1] == expected
    assert partials >= 3, "the answer should arrive in several cumulative outputs"
    assert len(res_final) >= 3
    final = ast.literal_eval(res_final[-1])
    assert final["response"] == expected
    assert final["save_dict"]["extra_dict"]["ntokens"] == len(expected.split())
    earlier = ast.literal_eval(res_final[0])
    assert expected.startswith(earlier["response"])
    assert earlier["response"] != expected
    assert earlier["save_dict"] == {}  # metadata comes in the last output only


def test_documented_model_names_example(host: str) -> None:
    client = Client(host)
    res = client.predict(api_name="/model_names")
    models = {x["base_model"]: x["max_seq_len"] for x in ast.literal_eval(res)}
    assert models == {"HuggingFaceTB/SmolLM2-135M-Instruct": 2048}
    (model,) = ast.literal_eval(res)
    assert model["display_name"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert model["inference_server"] == "tgi"
    assert "prompt_type" in model


def test_documented_curl_example(host: str) -> None:
    address = host.removeprefix("http://")
    result = subprocess.run(
        [
            "curl",
            "-sS",
            f"{address}/api/submit_nochat_plain_api",
            "-X",
            "POST",
            "-d",
            '{"data": ["{\\"instruction_nochat\\": \\"Who are you?\\"}"]}',
            "-H",
            "Content-Type: application/json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    body = json.loads(result.stdout)
    assert set(body) == {"data", "is_generating", "duration", "average_duration"}
    assert body["is_generating"] is False
    assert body["duration"] > 0
    answer = ast.literal_eval(body["data"][0])
    assert answer["response"] == "user: Who are you?"
    assert answer["save_dict"]["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"


def test_plain_api_never_streams_through_gradio_client(client: Client) -> None:
    res = client.predict(
        str({"instruction_nochat": "plain please", "stream_output": True}),
        api_name="/submit_nochat_plain_api",
    )
    assert ast.literal_eval(res)["response"] == "user: plain please"


def test_rest_route_answers_errors_for_bad_calls(host: str) -> None:
    missing = httpx.post(f"{host}/api/no_such_api", json={"data": []})
    assert missing.status_code == 404
    assert "submit_nochat_plain_api" in missing.json()["error"]
    not_json = httpx.post(f"{host}/api/submit_nochat_plain_api", content=b"{nope")
    assert not_json.status_code == 400
    no_data = httpx.post(f"{host}/api/submit_nochat_plain_api", json={"inputs": ["x"]})
    assert no_data.status_code == 400
    assert "data" in no_data.json()["error"]
    # Gradio's own routes still live under /gradio_api; ours does not shadow them.
    assert httpx.get(f"{host}/gradio_api/info").status_code == 200


def test_health_and_metrics_share_the_gradio_port(host: str, client: Client) -> None:
    client.predict(str({"instruction_nochat": "count me"}), api_name="/submit_nochat_api")
    assert httpx.get(f"{host}/health").json() == {"status": "ok"}
    metrics = httpx.get(f"{host}/metrics").text
    assert 'h2ogpt_api_requests_total{route="/submit_nochat_api",status="200"}' in metrics
    assert 'h2ogpt_api_generated_tokens_total{route="/submit_nochat_api"}' in metrics


# -- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("request_text", "expected_error"),
    [
        ("Who are you?", "not a Python dict literal"),
        ("['instruction_nochat', 'hi']", "str() of a dict"),
        (str({"instruction_nochat": "hi", "max_new_tokens": "many"}), "max_new_tokens"),
        (str({"instruction_nochat": "hi", "langchain_mode": "NoSuchMode"}), "'NoSuchMode' is not offered"),
        (str({"instruction_nochat": "hi", "not_a_parameter": 1}), "unknown parameter(s) ['not_a_parameter']"),
        ("__import__('os').system('true')", "not a Python dict literal"),
    ],
)
def test_bad_input_answers_an_error_and_the_server_keeps_serving(
    client: Client, host: str, request_text: str, expected_error: str
) -> None:
    for api_name in ("/submit_nochat_api", "/submit_nochat_plain_api"):
        answer = ast.literal_eval(client.predict(request_text, api_name=api_name))
        assert expected_error in answer["error"]
        assert answer["response"] == ""
    rest = httpx.post(f"{host}/api/submit_nochat_plain_api", json={"data": [request_text]}).json()
    assert expected_error in ast.literal_eval(rest["data"][0])["error"]
    assert ask(client, instruction_nochat="still there?")["response"] == "user: still there?"


def gradio_call(host: str, api_name: str, data: list[object]) -> dict[str, Any]:
    """One call over Gradio's queued REST API (`/gradio_api/call/...`): its `complete` output."""
    url = f"{host}/gradio_api/call/{api_name}"
    event_id = httpx.post(url, json={"data": data}).json()["event_id"]
    kind = ""
    with httpx.stream("GET", f"{url}/{event_id}", timeout=30) as events:
        for line in events.iter_lines():
            if line.startswith("event:"):
                kind = line.removeprefix("event:").strip()
            elif line.startswith("data:") and kind == "complete":
                answer = ast.literal_eval(json.loads(line.removeprefix("data:"))[0])
                assert isinstance(answer, dict)
                return answer
    raise AssertionError(f"no complete event (last event: {kind!r})")


@pytest.mark.parametrize("api_name", ["submit_nochat_api", "submit_nochat_plain_api"])
def test_the_input_is_read_as_gradios_textbox_gives_it(host: str, api_name: str) -> None:
    # Gradio's Textbox passed str() of any JSON value; these api_names skip its preprocessing
    # (a worker thread per call) and do the same themselves.
    as_object = gradio_call(host, api_name, [{"instruction_nochat": "an object"}])
    assert as_object["response"] == "user: an object"
    assert "expected the str() of a dict" in gradio_call(host, api_name, [None])["error"]


def test_backend_failure_mid_stream_keeps_the_text_so_far(client: Client) -> None:
    answer = ask(client, instruction_nochat="please FAKE:DROP now", stream_output=True)
    assert answer["error"]
    assert ask(client, instruction_nochat="after the drop")["response"] == "user: after the drop"


# -- document api_names ----------------------------------------------------------------------------

NO_LOADERS = [None] * 6


def doc_options(mode: str) -> list[object]:
    return [mode, True, 512, True, *NO_LOADERS, None]


def test_add_text_list_get_and_delete_sources(client: Client) -> None:
    text = "The Gradio side of h2ogpt-api keeps document collections in Weaviate, chunked and embedded."
    result = client.predict(text, *doc_options("MyData"), api_name="/add_text")
    assert result[0] in (None, "")
    assert result[1] == "MyData"
    assert result[3] == ""
    source = result[4]
    assert source in result[2]
    assert ast.literal_eval(result[5])[0]["chunks_added"] == 1

    assert source in ast.literal_eval(client.predict("MyData", None, api_name="/get_sources_api"))
    document = ast.literal_eval(
        client.predict("MyData", source, True, None, 1000, None, api_name="/get_document_api")
    )
    assert document["contents"] == [text]
    assert document["metadatas"][0]["source"] == source

    answer = ask(client, instruction="Where are collections kept?", langchain_mode="MyData", top_k_docs=3)
    assert "chunked and embedded" in answer["response"]  # the chunk reached the model
    assert [s["source"] for s in answer["sources"]] == [source]

    left = ast.literal_eval(client.predict([source], "MyData", None, api_name="/delete_sources"))
    assert source not in left
    assert source not in ast.literal_eval(client.predict("MyData", None, api_name="/get_sources_api"))


def test_upload_then_add_file(client: Client, tmp_path: Path) -> None:
    note = tmp_path / "release-notes.md"
    note.write_text("# Release notes\n\nVersion 7 adds the upload API and streaming answers.\n")
    local_name, server_path = client.predict(handle_file(str(note)), api_name="/upload_api")
    assert local_name == "release-notes.md"
    result = client.predict(server_path, *doc_options("UserData"), api_name="/add_file_api")
    assert result[3] == ""
    assert result[4] == "release-notes.md"
    listed = ast.literal_eval(client.predict("UserData", None, api_name="/get_sources_api"))
    assert "release-notes.md" in listed
    client.predict(["release-notes.md"], "UserData", None, api_name="/delete_sources")


def test_document_apis_refuse_bad_input_with_a_message(client: Client) -> None:
    outside = client.predict("/etc/hostname", *doc_options("MyData"), api_name="/add_file_api")
    assert "not an uploaded file" in outside[3]
    unknown_mode = client.predict("some text here", *doc_options("Nope"), api_name="/add_text")
    assert "'Nope' is not offered" in unknown_mode[3]
    empty = client.predict("   ", *doc_options("MyData"), api_name="/add_text")
    assert "empty" in empty[3]
    llm = ast.literal_eval(client.predict("LLM", None, api_name="/get_sources_api"))
    assert "holds no documents" in llm["error"]
    missing = ast.literal_eval(
        client.predict("MyData", "nope.txt", True, None, 1000, None, api_name="/get_document_api")
    )
    assert "no document named" in missing["error"]
