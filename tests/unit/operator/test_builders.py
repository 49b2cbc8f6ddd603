"""Builders are pure: the samples' children are compared with golden YAML, and the wiring is checked."""

from __future__ import annotations

import itertools
import os
from typing import Any

import pytest
from h2ogpt_api import workers as api_workers
from h2ogpt_api.settings import parse_settings
from h2ogpt_operator import builders, naming
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.models import H2oGPTDeploymentSpec
from pydantic import ValidationError

from tests.unit.operator.samples import GOLDEN, SAMPLES, load_sample

STACK = Stack(name="demo", namespace="team-a")
CONFIG = OperatorConfig()
SAMPLE_NAMES = sorted(p.stem for p in SAMPLES.glob("*.yaml"))


def _tokens() -> Any:
    counter = itertools.count(1)
    return lambda: f"generated-token-{next(counter)}"


def spec_of(overrides: dict[str, Any] | None = None, **sections: Any) -> H2oGPTDeploymentSpec:
    raw: dict[str, Any] = {"model": {"name": "org/model"}, **sections, **(overrides or {})}
    return H2oGPTDeploymentSpec.model_validate(raw)


def _present(stack: Stack, spec: H2oGPTDeploymentSpec) -> builders.SecretDigests:
    """Every Secret key the stack's pods read, present, as the watch cache would digest it."""
    digests: dict[str, dict[str, str]] = {}
    for pairs in builders.workload_secrets(builders.build_children(stack, spec, CONFIG, {})).values():
        for secret_name, key in pairs:
            digests.setdefault(secret_name, {})[key] = f"digest-of-{secret_name}/{key}"
    return digests


def _render(name: str) -> str:
    spec = H2oGPTDeploymentSpec.model_validate(load_sample(name)["spec"])
    stack = Stack(name=load_sample(name)["metadata"]["name"], namespace="team-a")
    children = builders.build_children(stack, spec, CONFIG, secret_digests=_present(stack, spec))
    secret = builders.build_auth_secret(stack, spec, _tokens())
    documents = [*([secret] if secret else []), *children]
    return builders.to_yaml(documents)


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_children_match_golden(name: str) -> None:
    golden = GOLDEN / f"{name}.yaml"
    rendered = _render(name)
    if os.environ.get("UPDATE_GOLDEN") == "1":
        golden.write_text(rendered)
    assert golden.exists(), f"missing {golden}: run with UPDATE_GOLDEN=1 once and review the file"
    assert rendered == golden.read_text(), f"{name} children changed: review, then UPDATE_GOLDEN=1"


def _by_name(children: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(c["kind"], c["metadata"]["name"]): c for c in children}


def test_children_are_named_and_labelled() -> None:
    children = builders.build_children(STACK, spec_of(), CONFIG, {})
    names = {(c["kind"], c["metadata"]["name"]) for c in children}
    assert names == {
        ("ConfigMap", "demo-config"),
        ("PersistentVolumeClaim", "demo-model-cache"),
        ("Service", "demo-inference"),
        ("Deployment", "demo-inference"),
        ("Service", "demo-weaviate"),
        ("Service", "demo-weaviate-headless"),
        ("StatefulSet", "demo-weaviate"),
        ("Service", "demo-openai"),
        ("Deployment", "demo-openai"),
        ("Service", "demo-gradio"),
        ("Deployment", "demo-gradio"),
        ("NetworkPolicy", "demo-inference"),
        ("NetworkPolicy", "demo-weaviate"),
        ("NetworkPolicy", "demo-api"),
    }
    for child in children:
        labels = child["metadata"]["labels"]
        assert labels["app.kubernetes.io/name"] == "h2ogpt"
        assert labels["app.kubernetes.io/instance"] == "demo"
        assert labels["app.kubernetes.io/managed-by"] == "h2ogpt-operator"
        assert child["metadata"]["namespace"] == "team-a"


@pytest.mark.parametrize(
    ("inference", "expected"),
    [
        ({}, "http://demo-inference.team-a.svc:80"),
        ({"engine": "vllm"}, "vllm:demo-inference.team-a.svc:8000"),
        ({"engine": "llamacpp", "gpus": 0}, "openai:http://demo-inference.team-a.svc:8000/v1"),
        (
            {"engine": "external", "gpus": 0, "external": {"url": "https://llm.example/v1"}},
            "openai:https://llm.example/v1",
        ),
        (
            {
                "engine": "external",
                "gpus": 0,
                "external": {"url": "http://vllm.example:8000", "type": "vllm"},
            },
            "vllm:vllm.example:8000",
        ),
        (
            {"engine": "external", "gpus": 0, "external": {"url": "http://tgi.example", "type": "tgi"}},
            "http://tgi.example",
        ),
    ],
)
def test_inference_server_setting(inference: dict[str, Any], expected: str) -> None:
    assert builders.build_settings(STACK, spec_of(inference=inference))["H2OGPT_INFERENCE_SERVER"] == expected


def test_config_map_holds_settings_and_no_secret() -> None:
    spec = spec_of(auth={"apiKeysSecretRef": {"name": "keys"}, "usersSecretRef": {"name": "users"}})
    data = builders.build_config_map(STACK, spec)["data"]
    assert data["H2OGPT_BASE_MODEL"] == "org/model"
    assert data["H2OGPT_WEAVIATE_URL"] == "http://demo-weaviate.team-a.svc:8080"
    assert data["H2OGPT_ENFORCE_H2OGPT_API_KEY"] == "True"
    assert all(key.startswith("H2OGPT_") for key in data)
    assert not {"H2OGPT_H2OGPT_API_KEYS", "H2OGPT_AUTH", "H2OGPT_WEAVIATE_API_KEY"} & set(data)


def test_url_ingestion_lists_reach_the_api_settings_the_api_parses() -> None:
    spec = spec_of(
        retrieval={
            "allowedUrlHosts": ["wiki.corp", "*.intranet", "10.20.0.0/16"],
            "blockedUrlCidrs": ["34.118.224.0/20", "2600:1900::/28"],
        }
    )
    data = builders.build_settings(STACK, spec)
    assert data["H2OGPT_ALLOWED_URL_HOSTS"] == "wiki.corp,*.intranet,10.20.0.0/16"
    assert data["H2OGPT_BLOCKED_URL_CIDRS"] == "34.118.224.0/20,2600:1900::/28"
    settings = parse_settings([], data)  # what the api pod reads from the ConfigMap
    assert settings.url_policy().host_allowed("docs.intranet")
    assert settings.blocked_url_cidrs == ["34.118.224.0/20", "2600:1900::/28"]
    assert builders.build_settings(STACK, spec_of())["H2OGPT_ALLOWED_URL_HOSTS"] == ""


@pytest.mark.parametrize(
    ("field", "entry"),
    [
        ("allowedUrlHosts", "a.example,b.example"),
        ("allowedUrlHosts", "http://x/"),
        ("blockedUrlCidrs", "corp.example"),
    ],
)
def test_url_ingestion_entries_the_api_cannot_read_are_refused(field: str, entry: str) -> None:
    with pytest.raises(ValueError, match="should match pattern"):
        spec_of(retrieval={field: [entry]})


def test_per_key_limits_reach_the_api_pods_as_their_flags() -> None:
    spec = spec_of(auth={"limits": {"requestsPerMinute": 120, "tokensPerMinute": 50_000}})
    data = builders.build_settings(STACK, spec)
    settings = parse_settings([], data)  # what the api pod reads from the ConfigMap
    assert (settings.requests_per_minute, settings.tokens_per_minute) == (120, 50_000)
    unlimited = parse_settings([], builders.build_settings(STACK, spec_of()))
    assert (unlimited.requests_per_minute, unlimited.tokens_per_minute) == (0, 0)
    # A new limit is read at start: it rolls the api pods, and only them.
    base, limited = _checksums(spec_of()), _checksums(spec)
    assert {name for name in base if base[name] != limited[name]} == {"demo-openai", "demo-gradio"}


def _openai_args(spec: H2oGPTDeploymentSpec) -> list[str]:
    deployment = builders.build_api_deployment(STACK, spec, naming.OPENAI, CONFIG)
    assert deployment is not None
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


@pytest.mark.parametrize(
    ("openai", "others", "workers"),
    [
        ({}, {}, 1),
        ({"resources": {"limits": {"cpu": "4"}}}, {}, 4),
        ({"resources": {"limits": {"cpu": "2500m"}, "requests": {"cpu": "6"}}}, {}, 2),  # the limit, down
        ({"resources": {"requests": {"cpu": 3}}}, {}, 3),
        ({"resources": {"limits": {"cpu": "500m"}}}, {}, 1),
        ({"resources": {"limits": {"cpu": "8"}}, "workers": 3}, {}, 3),
        ({"resources": {"limits": {"cpu": "4", "memory": "1Gi"}}}, {}, 2),  # 400Mi each: the memory holds 2
        ({"resources": {"limits": {"cpu": "4", "memory": "256Mi"}}}, {}, 1),
        ({"resources": {"limits": {"cpu": "2", "memory": "8Gi"}}}, {}, 2),
        ({"resources": {"limits": {"memory": "1Gi"}, "requests": {"cpu": "4"}}}, {}, 2),
        ({"resources": {"limits": {"cpu": "4", "memory": "1Gi"}}, "workers": 4}, {}, 4),  # as asked
        ({"resources": {"limits": {"cpu": "2"}}}, {"retrieval": {"enabled": False}}, 2),
        ({"workers": 2}, {"inference": {"engine": "external", "external": {"url": "https://x/v1"}}}, 2),
        ({"resources": {"limits": {"cpu": "8"}}}, {"auth": {"limits": {"requestsPerMinute": 60}}}, 1),
        ({"workers": 1}, {"auth": {"limits": {"tokensPerMinute": 1000}}}, 1),
    ],
)
def test_the_openai_pod_runs_a_process_per_core_it_is_given(
    openai: dict[str, Any], others: dict[str, Any], workers: int
) -> None:
    spec = spec_of(openai=openai, **others)
    args = _openai_args(spec)
    assert builders.openai_workers(spec) == workers
    assert ("--workers" in args) == (workers > 1)
    # What the api pod reads (its ConfigMap, then its args) is what h2ogpt-api serves with several
    # processes: the operator never asks for a combination the server refuses at start.
    settings = parse_settings(args, builders.build_settings(STACK, spec))
    assert settings.workers == workers
    if workers > 1:
        assert api_workers.refusals(settings) == []


def test_the_gradio_pod_is_one_process_whatever_openai_workers_says() -> None:
    spec = spec_of(openai={"workers": 4})
    gradio = builders.build_api_deployment(STACK, spec, naming.GRADIO, CONFIG)
    assert gradio is not None
    assert "--workers" not in gradio["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"requestsPerMinute": -1}, "greater than or equal to 0"),
        ({"tokensPerMinute": 10_000_000_001}, "less than or equal to 10000000000"),
    ],
)
def test_limits_out_of_range_are_refused(limits: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        spec_of(auth={"limits": limits})


def test_auth_secret_generates_only_what_is_not_referenced() -> None:
    generated = builders.build_auth_secret(STACK, spec_of(), _tokens())
    assert generated is not None
    assert generated["stringData"] == {
        "H2OGPT_H2OGPT_API_KEYS": '["generated-token-1"]',
        "WEAVIATE_API_KEY": "generated-token-2",
    }
    referenced = spec_of(
        auth={"apiKeysSecretRef": {"name": "k"}}, retrieval={"apiKeySecretRef": {"name": "w"}}
    )
    assert builders.build_auth_secret(STACK, referenced, _tokens()) is None


def test_api_pods_take_credentials_from_secrets() -> None:
    spec = spec_of(
        inference={
            "engine": "external",
            "gpus": 0,
            "external": {"url": "https://x/v1", "apiKeySecretRef": {"name": "up"}},
        },
        auth={"usersSecretRef": {"name": "users", "key": "logins"}},
    )
    openai = builders.build_api_deployment(STACK, spec, naming.OPENAI, CONFIG)
    assert openai is not None
    container = openai["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["--gradio", "False", "--drain_seconds", str(builders.API_DRAIN_S)]
    assert "lifecycle" not in container  # the drain is the server's own, not a preStop sleep
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]}
    assert env == {
        "H2OGPT_H2OGPT_API_KEYS": {"name": "demo-auth", "key": "H2OGPT_H2OGPT_API_KEYS"},
        "H2OGPT_AUTH": {"name": "users", "key": "logins"},
        "WEAVIATE_API_KEY": {"name": "demo-auth", "key": "WEAVIATE_API_KEY"},
        "OPENAI_API_KEY": {"name": "up", "key": "OPENAI_API_KEY"},
    }
    assert container["envFrom"] == [{"configMapRef": {"name": "demo-config"}}]
    gradio = builders.build_api_deployment(STACK, spec, naming.GRADIO, CONFIG)
    assert gradio is not None
    assert gradio["spec"]["template"]["spec"]["containers"][0]["args"] == [
        "--openai_server", "False", "--drain_seconds", str(builders.API_DRAIN_S)
    ]


def test_api_pods_have_the_grace_period_the_cr_gives_each() -> None:
    # The drain, then the answers in flight: 125 s by default, each component its own.
    spec = spec_of(openai={"terminationGracePeriodSeconds": 900})
    grace = {
        component: deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        for component in (naming.OPENAI, naming.GRADIO)
        if (deployment := builders.build_api_deployment(STACK, spec, component, CONFIG)) is not None
    }
    assert grace == {naming.OPENAI: 900, naming.GRADIO: builders.API_DRAIN_S + 120}
    with pytest.raises(ValidationError):  # no shorter than the drain itself
        spec_of(frontend={"terminationGracePeriodSeconds": builders.API_DRAIN_S})


@pytest.mark.parametrize(
    ("inference", "expected"),
    [
        # The llama.cpp image finishes its answers when stopped: they get what an api pod gives them.
        ({"engine": "llamacpp"}, 120),
        ({"engine": "llamacpp", "terminationGracePeriodSeconds": 600}, 600),
        # TGI and vLLM keep Kubernetes' default unless asked: an upgrade must not restart GPU pods.
        ({"engine": "tgi"}, None),
        ({"engine": "vllm"}, None),
        ({"engine": "vllm", "terminationGracePeriodSeconds": 300}, 300),
    ],
)
def test_inference_pods_grace_period(inference: dict[str, Any], expected: int | None) -> None:
    deployment = builders.build_inference_deployment(STACK, spec_of(inference=inference), CONFIG)
    assert deployment is not None
    assert deployment["spec"]["template"]["spec"].get("terminationGracePeriodSeconds") == expected


def test_inference_grace_period_is_a_positive_number_of_seconds() -> None:
    for bad in (0, -5, 86_401):
        with pytest.raises(ValidationError):
            spec_of(inference={"engine": "llamacpp", "terminationGracePeriodSeconds": bad})


def test_tgi_deployment_requests_gpus_and_mounts_cache() -> None:
    spec = spec_of(
        model={"name": "org/model", "maxSeqLen": 8192, "hfTokenSecretRef": {"name": "hf"}},
        inference={"gpus": 4, "quantize": "awq"},
    )
    deployment = builders.build_inference_deployment(STACK, spec, CONFIG)
    assert deployment is not None
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    args = container["args"]
    assert args[args.index("--num-shard") + 1] == "4"
    assert args[args.index("--max-total-tokens") + 1] == "8192"
    assert args[args.index("--quantize") + 1] == "awq"
    assert container["resources"]["limits"] == {"nvidia.com/gpu": 4}
    assert {
        "name": "HF_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "hf", "key": "HF_TOKEN"}},
    } in container["env"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "1Gi"}} in pod["volumes"]
    assert pod["volumes"][0]["persistentVolumeClaim"]["claimName"] == "demo-model-cache"
    assert container["startupProbe"]["failureThreshold"] * container["startupProbe"]["periodSeconds"] >= 1800


def test_suspend_scales_inference_to_zero_only() -> None:
    children = _by_name(builders.build_children(STACK, spec_of(suspend=True), CONFIG, {}))
    assert children[("Deployment", "demo-inference")]["spec"]["replicas"] == 0
    assert children[("Deployment", "demo-openai")]["spec"]["replicas"] == 1
    assert ("PersistentVolumeClaim", "demo-model-cache") in children


def _checksums(spec: H2oGPTDeploymentSpec, digests: builders.SecretDigests | None = None) -> dict[str, str]:
    out = {}
    for child in builders.build_children(STACK, spec, CONFIG, {} if digests is None else digests):
        if child["kind"] in {"Deployment", "StatefulSet"}:
            out[child["metadata"]["name"]] = child["spec"]["template"]["metadata"]["annotations"][
                naming.CHECKSUM_ANNOTATION
            ]
    return out


def test_a_change_rolls_only_the_pods_that_consume_it() -> None:
    base = _checksums(spec_of())
    quantized = _checksums(spec_of(inference={"quantize": "awq"}))
    assert {name for name in base if base[name] != quantized[name]} == {"demo-inference"}
    num_async = _checksums(spec_of(generation={"numAsync": 8}))
    assert {name for name in base if base[name] != num_async[name]} == {"demo-openai", "demo-gradio"}
    # The model name is consumed by TGI and by the api pods (H2OGPT_BASE_MODEL); Weaviate stays.
    other_model = _checksums(spec_of(overrides={"model": {"name": "org/other"}}))
    assert {name for name in base if base[name] != other_model[name]} == {
        "demo-inference",
        "demo-openai",
        "demo-gradio",
    }
    # From one inference replica to several, the api pods start routing across them (a new setting);
    # between several counts nothing rolls.
    replicas = _checksums(spec_of(inference={"replicas": 3}))
    assert {name for name in base if base[name] != replicas[name]} == {"demo-openai", "demo-gradio"}
    assert _checksums(spec_of(inference={"replicas": 2})) == replicas


# A stack that references every kind of Secret the CR can name: its own keys, users, Weaviate key,
# HF token (TGI downloads the model) and, for the external engine, the upstream key.
REFERENCING = {
    "auth": {"apiKeysSecretRef": {"name": "keys"}, "usersSecretRef": {"name": "users"}},
    "retrieval": {"apiKeySecretRef": {"name": "weaviate"}},
    "overrides": {"model": {"name": "org/model", "hfTokenSecretRef": {"name": "hf"}}},
}
PRESENT: builders.SecretDigests = {
    "keys": {"H2OGPT_H2OGPT_API_KEYS": "k1"},
    "users": {"auth.json": "u1"},
    "weaviate": {"WEAVIATE_API_KEY": "w1"},
    "hf": {"HF_TOKEN": "h1"},
    "upstream": {"OPENAI_API_KEY": "o1"},
    "demo-auth": {"H2OGPT_H2OGPT_API_KEYS": "a1", "WEAVIATE_API_KEY": "a2"},
    "unrelated": {"X": "x1"},
}


def _rotated(secret_name: str, key: str) -> builders.SecretDigests:
    return {**PRESENT, secret_name: {**PRESENT[secret_name], key: "rotated"}}


@pytest.mark.parametrize(
    ("secret_name", "key", "rolled"),
    [
        ("keys", "H2OGPT_H2OGPT_API_KEYS", {"demo-openai", "demo-gradio"}),
        ("users", "auth.json", {"demo-openai", "demo-gradio"}),
        ("weaviate", "WEAVIATE_API_KEY", {"demo-weaviate", "demo-openai", "demo-gradio"}),
        ("hf", "HF_TOKEN", {"demo-inference"}),
        ("unrelated", "X", set()),
    ],
)
def test_rotating_a_referenced_secret_rolls_only_the_pods_that_read_it(
    secret_name: str, key: str, rolled: set[str]
) -> None:
    spec = spec_of(**REFERENCING)
    base = _checksums(spec, PRESENT)
    after = _checksums(spec, _rotated(secret_name, key))
    assert {name for name in base if base[name] != after[name]} == rolled


def test_generated_and_external_keys_roll_only_their_readers() -> None:
    generated = spec_of()
    base = _checksums(generated, PRESENT)
    api_keys = _checksums(generated, _rotated("demo-auth", "H2OGPT_H2OGPT_API_KEYS"))
    assert {n for n in base if base[n] != api_keys[n]} == {"demo-openai", "demo-gradio"}
    weaviate_key = _checksums(generated, _rotated("demo-auth", "WEAVIATE_API_KEY"))
    assert {n for n in base if base[n] != weaviate_key[n]} == {"demo-weaviate", "demo-openai", "demo-gradio"}
    external = spec_of(
        inference={
            "engine": "external",
            "external": {"url": "http://up:8000/v1", "apiKeySecretRef": {"name": "upstream"}},
        }
    )
    before = _checksums(external, PRESENT)
    upstream = _checksums(external, _rotated("upstream", "OPENAI_API_KEY"))
    assert {n for n in before if before[n] != upstream[n]} == {"demo-openai", "demo-gradio"}


def test_a_missing_secret_counts_as_empty_and_its_arrival_rolls_the_readers() -> None:
    spec = spec_of(**REFERENCING)
    missing = {name: keys for name, keys in PRESENT.items() if name != "hf"}
    assert _checksums(spec, missing)["demo-inference"] != _checksums(spec, PRESENT)["demo-inference"]
    children = builders.build_children(STACK, spec, CONFIG, PRESENT)
    assert builders.workload_secrets(children)[("Deployment", "demo-inference")] == [("hf", "HF_TOKEN")]


def test_weaviate_keeps_its_data_unless_told() -> None:
    kept = builders.build_weaviate_statefulset(STACK, spec_of(), CONFIG)
    assert kept is not None
    assert kept["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Retain"
    dropped = builders.build_weaviate_statefulset(
        STACK, spec_of(retrieval={"storage": {"deleteWithCR": True}}), CONFIG
    )
    assert dropped is not None
    assert dropped["spec"]["persistentVolumeClaimRetentionPolicy"]["whenDeleted"] == "Delete"
    env = {e["name"]: e.get("value") for e in kept["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["AUTHENTICATION_ANONYMOUS_ACCESS_ENABLED"] == "false"


@pytest.mark.parametrize(("replicas", "factor"), [(1, 1), (2, 2), (3, 3), (5, 3), (9, 3)])
def test_weaviate_replicas_replicate_every_collection(replicas: int, factor: int) -> None:
    spec = spec_of(retrieval={"replicas": replicas})
    statefulset = builders.build_weaviate_statefulset(STACK, spec, CONFIG)
    assert statefulset is not None
    env = {e["name"]: e.get("value") for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert (env["REPLICATION_MINIMUM_FACTOR"], env["RAFT_BOOTSTRAP_EXPECT"]) == (str(factor), str(replicas))
    assert env["RAFT_JOIN"].split(",") == [f"demo-weaviate-{i}" for i in range(replicas)]


def test_model_cache_is_kept_unless_told() -> None:
    pvc = builders.build_model_cache_pvc(STACK, spec_of())
    assert pvc is not None
    assert builders.kept_with_cr(pvc, spec_of())
    assert not builders.kept_with_cr(pvc, spec_of(inference={"modelCache": {"deleteWithCR": True}}))


def test_gradio_service_pins_sessions_with_several_replicas() -> None:
    one = builders.build_api_service(STACK, spec_of(), naming.GRADIO)
    several = builders.build_api_service(STACK, spec_of(frontend={"replicas": 3}), naming.GRADIO)
    assert one is not None
    assert several is not None
    assert "sessionAffinity" not in one["spec"]
    assert several["spec"]["sessionAffinity"] == "ClientIP"


def test_disabled_components_have_no_children() -> None:
    spec = spec_of(
        retrieval={"enabled": False},
        frontend={"enabled": False},
        inference={"engine": "external", "gpus": 0, "external": {"url": "http://x"}},
    )
    names = {(c["kind"], c["metadata"]["name"]) for c in builders.build_children(STACK, spec, CONFIG, {})}
    assert names == {
        ("ConfigMap", "demo-config"),
        ("Service", "demo-openai"),
        ("Deployment", "demo-openai"),
        ("NetworkPolicy", "demo-api"),
    }
    assert builders.build_settings(STACK, spec)["H2OGPT_LANGCHAIN_MODES"] == '["LLM"]'


def test_service_monitor_selects_metrics_services() -> None:
    monitor = builders.build_service_monitor(STACK, spec_of(monitoring={"serviceMonitor": {"enabled": True}}))
    assert monitor is not None
    http, weaviate = monitor["spec"]["endpoints"]
    # The services' http ports, except Weaviate's (its REST port has no /metrics) ...
    assert (http["port"], http["path"]) == ("http", "/metrics")
    (drop,) = http["relabelings"]
    assert drop["action"] == "drop"
    assert drop["sourceLabels"] == ["__meta_kubernetes_service_label_app_kubernetes_io_component"]
    assert drop["regex"] == naming.WEAVIATE
    # ... and Weaviate's own metrics port, which only its Service has.
    assert (weaviate["port"], weaviate["path"]) == ("metrics", "/metrics")
    services = builders.build_weaviate_services(STACK, spec_of())
    metrics_port = {"name": "metrics", "port": 2112, "targetPort": "metrics", "protocol": "TCP"}
    assert metrics_port in services[0]["spec"]["ports"]
    assert naming.WEAVIATE in monitor["spec"]["selector"]["matchExpressions"][0]["values"]
    assert builders.build_service_monitor(STACK, spec_of()) is None


# -- autoscaling ------------------------------------------------------------------------------------


def _inference_replicas(spec: H2oGPTDeploymentSpec, decided: int | None = None) -> int:
    children = builders.build_children(STACK, spec, CONFIG, {}, decided_replicas=decided)
    deployment = next(
        c for c in children if c["kind"] == "Deployment" and c["metadata"]["name"] == "demo-inference"
    )
    return int(deployment["spec"]["replicas"])


@pytest.mark.parametrize(
    ("inference", "decided", "replicas"),
    [
        ({"replicas": 3}, 7, 3),  # no autoscaling: the spec's count, a stray decision ignored
        ({"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}}, None, 1),  # before a decision
        ({"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}}, 0, 0),  # scaled to zero
        ({"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}}, 3, 3),
        ({"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}}, 9, 4),  # max lowered since
        ({"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}, None, 2),
        ({"replicas": 1, "autoscaling": {"minReplicas": 2, "maxReplicas": 4}}, 1, 2),  # min raised since
    ],
)
def test_inference_replicas_follow_the_autoscaler_within_bounds(
    inference: dict[str, Any], decided: int | None, replicas: int
) -> None:
    assert _inference_replicas(spec_of(inference=inference), decided) == replicas


def test_suspend_wins_over_the_autoscaler() -> None:
    spec = spec_of(inference={"autoscaling": {"minReplicas": 1, "maxReplicas": 4}}, suspend=True)
    assert _inference_replicas(spec, 3) == 0


def test_autoscaled_stacks_hold_requests_in_the_api_pods() -> None:
    spec = spec_of(
        inference={"autoscaling": {"minReplicas": 0, "maxReplicas": 2, "holdSeconds": 120, "maxHeld": 64}}
    )
    data = builders.build_settings(STACK, spec)
    assert data["H2OGPT_HOLD_SECONDS"] == "120"
    assert data["H2OGPT_MAX_HELD"] == "64"
    settings = parse_settings([], data)  # what the api pod reads from the ConfigMap
    assert (settings.hold_seconds, settings.max_held) == (120.0, 64)
    assert "H2OGPT_HOLD_SECONDS" not in builders.build_settings(STACK, spec_of())


# -- routing across inference replicas (issue 14) --------------------------------------------------

API_IDENTITY_KINDS = {"ServiceAccount", "Role", "RoleBinding"}


@pytest.mark.parametrize(
    ("inference", "routed", "demand"),
    [
        ({}, False, False),  # one replica: the Service's address is the replica
        ({"replicas": 3}, True, False),
        ({"replicas": 0}, False, False),
        # By what it CAN have: routed with maxReplicas > 1, a demand Lease where the autoscaler can add
        # a replica (maxReplicas above minReplicas, at zero included).
        ({"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 4}}, True, True),
        ({"replicas": 1, "autoscaling": {"minReplicas": 0, "maxReplicas": 1}}, True, True),  # at zero too
        ({"replicas": 1, "autoscaling": {"minReplicas": 1, "maxReplicas": 4}}, True, True),
        ({"replicas": 4, "autoscaling": {"minReplicas": 4, "maxReplicas": 4}}, True, False),  # fixed
        ({"engine": "llamacpp", "replicas": 2}, True, False),
        ({"engine": "external", "replicas": 3, "external": {"url": "http://up:8000/v1"}}, False, False),
    ],
)
def test_api_pods_get_an_identity_only_to_route_across_replicas_or_signal_demand(
    inference: dict[str, Any], routed: bool, demand: bool
) -> None:
    spec = spec_of(inference=inference)
    children = builders.build_children(STACK, spec, CONFIG, {})
    kinds = {c["kind"] for c in children}
    assert bool(kinds & API_IDENTITY_KINDS) is (routed or demand)
    assert ("Lease" in kinds) is demand
    settings = builders.build_settings(STACK, spec)
    assert ("H2OGPT_INFERENCE_ENDPOINTSLICES" in settings) is routed
    assert ("H2OGPT_DEMAND_LEASE" in settings) is demand
    assert ("H2OGPT_SCALE_UP_IN_FLIGHT" in settings) is demand
    for component in (naming.OPENAI, naming.GRADIO):
        pod = _by_name(children)[("Deployment", f"demo-{component}")]["spec"]["template"]["spec"]
        assert ("serviceAccountName" in pod) is (routed or demand)
        assert ("automountServiceAccountToken" in pod) is (routed or demand)


def test_api_pods_of_a_stack_that_can_grow_wake_the_operator_past_its_target_in_flight() -> None:
    spec = spec_of(inference={"autoscaling": {"minReplicas": 1, "maxReplicas": 6, "targetInFlight": 3}})
    settings = parse_settings([], builders.build_settings(STACK, spec))  # what the api pod reads
    assert settings.demand_lease == f"{STACK.namespace}/demo-demand"
    assert settings.scale_up_in_flight == 3
    assert settings.scale_up_max_replicas == 6
    assert settings.routes_across_replicas


def test_api_pods_of_a_stack_at_zero_may_renew_its_demand_lease_and_no_other() -> None:
    from h2ogpt_api.demand import parse_lease  # noqa: PLC0415

    spec = spec_of(inference={"autoscaling": {"minReplicas": 0, "maxReplicas": 1}})
    children = _by_name(builders.build_children(STACK, spec, CONFIG, {}))
    lease = children[("Lease", "demo-demand")]
    assert lease["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert "spec" not in lease  # the holder and renew time are the api pods' to write
    # The EndpointSlice watch (it knows at once that no replica is there), and the Lease: by name, patch.
    assert children[("Role", "demo-api")]["rules"] == [
        *builders.ENDPOINTSLICE_READER_RULES,
        {
            "apiGroups": ["coordination.k8s.io"],
            "resources": ["leases"],
            "resourceNames": ["demo-demand"],
            "verbs": ["patch"],
        }
    ]
    settings = parse_settings([], builders.build_settings(STACK, spec))  # what the api pod reads
    assert parse_lease(settings.demand_lease) == (STACK.namespace, "demo-demand")
    assert settings.hold_seconds > 0


def test_routed_api_pods_get_a_service_account_that_only_reads_endpointslices() -> None:
    spec = spec_of(inference={"replicas": 3})
    children = _by_name(builders.build_children(STACK, spec, CONFIG, {}))
    account = children[("ServiceAccount", "demo-api")]
    role = children[("Role", "demo-api")]
    binding = children[("RoleBinding", "demo-api")]
    for child in (account, role, binding):
        assert child["metadata"]["namespace"] == "team-a"
        assert child["metadata"]["labels"]["app.kubernetes.io/instance"] == "demo"
    assert role["rules"] == [
        {
            "apiGroups": ["discovery.k8s.io"],
            "resources": ["endpointslices"],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "demo-api"}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "demo-api", "namespace": "team-a"}]
    for component in (naming.OPENAI, naming.GRADIO):
        pod = children[("Deployment", f"demo-{component}")]["spec"]["template"]["spec"]
        assert pod["serviceAccountName"] == pod["serviceAccount"] == "demo-api"
        assert pod["automountServiceAccountToken"] is True
    # Only the api pods carry the identity: the inference and Weaviate pods stay as they were.
    for key in [("Deployment", "demo-inference"), ("StatefulSet", "demo-weaviate")]:
        pod = children[key]["spec"]["template"]["spec"]
        assert "serviceAccountName" not in pod
        assert "automountServiceAccountToken" not in pod
    # Applied before the Deployments whose pods name the ServiceAccount.
    order = [(c["kind"], c["metadata"]["name"]) for c in builders.build_children(STACK, spec, CONFIG, {})]
    assert order.index(("ServiceAccount", "demo-api")) < order.index(("Deployment", "demo-openai"))


def test_routed_api_pods_read_the_inference_services_slices_as_the_api_parses_them() -> None:
    from h2ogpt_api.endpointslices import parse_target  # noqa: PLC0415

    spec = spec_of(inference={"replicas": 3})
    data = builders.build_settings(STACK, spec)
    assert data["H2OGPT_INFERENCE_ENDPOINTSLICES"] == "team-a/demo-inference:http"
    settings = parse_settings([], data)  # what the api pod reads from the ConfigMap
    namespace, service, port_name = parse_target(settings.inference_endpointslices)
    inference_service = builders.build_inference_service(STACK, spec)
    assert inference_service is not None
    assert (namespace, service) == (STACK.namespace, inference_service["metadata"]["name"])
    assert port_name in {port["name"] for port in inference_service["spec"]["ports"]}


def test_autoscaling_decisions_do_not_roll_the_api_pods() -> None:
    spec = spec_of(inference={"autoscaling": {"minReplicas": 0, "maxReplicas": 4}})
    checksums = {decided: builders.build_children(STACK, spec, CONFIG, {}, decided) for decided in (0, 1, 4)}
    api = {
        decided: _by_name(children)[("Deployment", "demo-openai")]["spec"]["template"]
        for decided, children in checksums.items()
    }
    assert api[0] == api[1] == api[4]


def test_every_child_kind_is_watched_and_writable() -> None:
    """A kind built but not watched would never be compared or pruned (watchcache.py), and one without
    a REST path could not be applied (kube.py)."""
    from h2ogpt_operator.kube import PLURALS  # noqa: PLC0415
    from h2ogpt_operator.watchcache import CHILD_RESOURCES  # noqa: PLC0415

    spec = spec_of(inference={"replicas": 3}, monitoring={"serviceMonitor": {"enabled": True}})
    children = builders.build_children(STACK, spec, CONFIG, {})
    watched = {
        (f"{group}/{version}" if group else version, kind) for group, version, _, kind in CHILD_RESOURCES
    }
    built = {(child["apiVersion"], child["kind"]) for child in children}
    assert built <= watched, built - watched
    assert built <= set(PLURALS), built - set(PLURALS)
    assert {"ServiceAccount", "Role", "RoleBinding"} <= {kind for _, kind in built}
