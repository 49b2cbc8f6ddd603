"""The contract between the operator and `h2ogpt-api`: the OpenAI pods' environment, exactly as the
operator builds it (ConfigMap + generated Secret), starts a working API.

Service names are mapped to loopback (the TGI fake, a real Weaviate); everything else is passed
unchanged. No control plane is needed: the builders are the code the operator applies.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from h2ogpt_operator import builders, naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.models import H2oGPTDeploymentSpec

from tests.support.api_server import ApiServerFactory
from tests.support.tgi_fake import RunningFake
from tests.support.weaviate import WeaviateServer

pytestmark = [pytest.mark.slow]

STACK = Stack(name="demo", namespace="team-a")


def openai_pod_environment(spec: H2oGPTDeploymentSpec) -> tuple[dict[str, str], list[str], str]:
    """(env, args, generated key) of the `<cr>-openai` container, Secret references resolved."""
    children = builders.build_children(STACK, spec, OperatorConfig(), secret_digests={})
    config_map = next(c for c in children if c["kind"] == "ConfigMap")
    deployment = next(
        c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == "demo-openai"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    secret = builders.build_auth_secret(STACK, spec, new_token=lambda: "k-" + "x" * 40)
    assert secret is not None
    secrets = {secret["metadata"]["name"]: secret["stringData"]}

    env = dict(config_map["data"])  # envFrom the ConfigMap
    for entry in container["env"]:
        ref = entry["valueFrom"]["secretKeyRef"]
        env[entry["name"]] = secrets[ref["name"]][ref["key"]]
    api_key = json.loads(env["H2OGPT_H2OGPT_API_KEYS"])[0]
    return env, list(container["args"]), api_key


def to_loopback(env: dict[str, str], tgi_url: str, weaviate_url: str) -> dict[str, Any]:
    """What cluster DNS would do: the Service URLs the operator wrote, pointed at local servers."""
    inference = f"http://{naming.service_host(STACK.name, naming.INFERENCE, STACK.namespace)}:80"
    weaviate = builders.weaviate_url(STACK, H2oGPTDeploymentSpec.model_validate({"model": {"name": "m"}}))
    assert env["H2OGPT_INFERENCE_SERVER"] == inference
    assert env["H2OGPT_WEAVIATE_URL"] == weaviate
    mapped = {**env, "H2OGPT_INFERENCE_SERVER": tgi_url, "H2OGPT_WEAVIATE_URL": weaviate_url}
    # The test Weaviate is anonymous; the stack's Weaviate takes the key (checked in the unit tests).
    mapped.pop("WEAVIATE_API_KEY")
    # Ports and paths of a pod, made local: the harness chooses free ports and a temporary save dir.
    for key in ("H2OGPT_OPENAI_PORT", "H2OGPT_GRADIO_PORT", "H2OGPT_SERVER_NAME", "H2OGPT_SAVE_DIR"):
        mapped.pop(key)
    return mapped


def test_openai_pod_environment_serves_chat_with_the_generated_key(
    tgi_fake: RunningFake, weaviate_server: WeaviateServer, api_server_factory: ApiServerFactory
) -> None:
    spec = H2oGPTDeploymentSpec.model_validate({"model": {"name": "org/model", "maxSeqLen": 2048}})
    env, args, api_key = openai_pod_environment(spec)
    assert args == ["--gradio", "False", "--drain_seconds", str(builders.API_DRAIN_S)]
    server = api_server_factory(args, to_loopback(env, tgi_fake.url, weaviate_server.url))
    assert server.openai_url is not None

    client = openai.OpenAI(base_url=server.openai_url, api_key=api_key)
    answer = client.chat.completions.create(
        model="org/model", messages=[{"role": "user", "content": "Say hello"}], max_tokens=16
    )
    assert answer.choices[0].message.content

    refused = httpx.post(
        server.openai_url + "/chat/completions",
        json={"model": "org/model", "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )
    assert refused.status_code == 401
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.openai_url, api_key="wrong").chat.completions.create(
            model="org/model", messages=[{"role": "user", "content": "hi"}]
        )
