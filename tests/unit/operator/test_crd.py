"""The CRD YAML in crds/ is generated from the models, structural, and accepts the samples."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from h2ogpt_operator.crd import build_crd, render_crd_yaml
from h2ogpt_operator.models import AutoscalingSpec, EmbeddingSpec, H2oGPTDeploymentSpec, InferenceSpec
from pydantic import ValidationError

from tests.unit.operator.samples import REPO, SAMPLES, load_sample

CRD_FILE = REPO / "crds" / "h2ogptdeployments.h2ogpt.dev.yaml"


def test_committed_crd_matches_the_models() -> None:
    assert CRD_FILE.read_text() == render_crd_yaml(), (
        "crds/ drifted from the models: run "
        "`python -m h2ogpt_operator.crd > crds/h2ogptdeployments.h2ogpt.dev.yaml`"
    )


def _walk(node: Any, path: str = "") -> list[tuple[str, dict[str, Any]]]:
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        found.append((path, node))
        for key, value in node.get("properties", {}).items():
            found += _walk(value, f"{path}.{key}")
        if "items" in node:
            found += _walk(node["items"], f"{path}[]")
        if isinstance(node.get("additionalProperties"), dict):
            found += _walk(node["additionalProperties"], f"{path}{{}}")
    return found


def test_schema_is_structural() -> None:
    schema = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _walk(schema):
        assert not {"$ref", "anyOf", "oneOf", "allOf", "title", "$defs"} & set(node), path
        typed = "type" in node or node.get("x-kubernetes-int-or-string")
        assert typed, f"{path} has no type"
        assert not ("properties" in node and "additionalProperties" in node), path
        assert node.get("default", 0) is not None, f"{path} defaults to null"


def test_crd_names_columns_and_status() -> None:
    crd = build_crd()
    assert crd["metadata"]["name"] == "h2ogptdeployments.h2ogpt.dev"
    assert crd["spec"]["names"]["shortNames"] == ["h2ogpt"]
    version = crd["spec"]["versions"][0]
    assert version["subresources"] == {"status": {}}
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Ready",
        "Engine",
        "Model",
        "Endpoint",
        "Age",
    ]
    status = version["schema"]["openAPIV3Schema"]["properties"]["status"]
    assert status["x-kubernetes-preserve-unknown-fields"] is True
    assert set(status["properties"]) == {"observedGeneration", "conditions", "endpoints", "autoscaling"}


def test_cel_rules_cover_dependent_fields() -> None:
    inference = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["inference"]
    rules = {rule["rule"] for rule in inference["x-kubernetes-validations"]}
    assert "!has(self.engine) || self.engine != 'external' || has(self.external)" in rules
    # Only the GPU engines need a GPU.
    assert (
        "(has(self.engine) && self.engine in ['external', 'llamacpp']) || !has(self.gpus) || self.gpus > 0"
        in rules
    )
    embedding = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["retrieval"]["properties"]["embedding"]
    assert [rule["rule"] for rule in embedding["x-kubernetes-validations"]] == [
        "has(self.server) || !has(self.model) || self.model in "
        "['sentence-transformers/all-MiniLM-L6-v2', 'all-MiniLM-L6-v2']"
    ]


def cel_holds(rule: str, obj: dict[str, Any]) -> bool:
    """One of our CEL rules on an object, for rules that use only has(), field access, `in` a list
    literal, comparisons, !, && and ||: those read the same as Python once spelled as Python."""
    expr = re.sub(r"has\(self\.(\w+)\.(\w+)\)", r"('\2' in obj['\1'])", rule)
    expr = re.sub(r"has\(self\.(\w+)\)", r"('\1' in obj)", expr)
    expr = re.sub(r"self\.(\w+)", r"obj['\1']", expr)
    expr = re.sub(r"!(?!=)", " not ", expr.replace("&&", " and ").replace("||", " or "))
    return bool(eval(expr, {}, {"obj": obj}))  # noqa: S307 - our own rule strings


def _rules(section: type[Any]) -> list[str]:
    extra = section.model_config.get("json_schema_extra") or {}
    return [rule["rule"] for rule in extra["x-kubernetes-validations"]]  # type: ignore[index]


@pytest.mark.parametrize(
    "inference",
    [
        {}, {"gpus": 0}, {"engine": "tgi", "gpus": 0}, {"engine": "vllm", "gpus": 0}, {"engine": "vllm"},
        {"engine": "llamacpp", "gpus": 0}, {"engine": "llamacpp"}, {"engine": "llamacpp", "gpus": 2},
        {"engine": "external", "gpus": 0}, {"engine": "external", "external": {"url": "http://x"}},
        {"autoscaling": {"maxReplicas": 2}}, {"engine": "llamacpp", "autoscaling": {"maxReplicas": 2}},
        {"engine": "external", "external": {"url": "http://x"}, "autoscaling": {"maxReplicas": 2}},
        {"autoscaling": {"maxReplicas": 2, "targetQueueSize": 4}},
        {"engine": "vllm", "autoscaling": {"maxReplicas": 2, "targetQueueSize": 4}},
        {"engine": "llamacpp", "autoscaling": {"maxReplicas": 2, "targetQueueSize": 4}},
    ],
)  # fmt: skip
def test_cel_rules_decide_like_the_models(inference: dict[str, Any]) -> None:
    """The apiserver (CEL) and the operator (pydantic) accept and refuse the same inference sections."""
    by_cel = all(cel_holds(rule, inference) for rule in _rules(InferenceSpec))
    try:
        InferenceSpec.model_validate(inference)
        by_model = True
    except ValidationError:
        by_model = False
    assert by_cel == by_model


@pytest.mark.parametrize(
    ("autoscaling", "accepted"),
    [
        ({"maxReplicas": 1}, True),
        ({"minReplicas": 0, "maxReplicas": 4}, True),
        ({"minReplicas": 4, "maxReplicas": 4}, True),
        ({"minReplicas": 5, "maxReplicas": 4}, False),
        ({"minReplicas": 2, "maxReplicas": 1}, False),
    ],
)
def test_autoscaling_range_rule_decides_like_the_model(autoscaling: dict[str, Any], accepted: bool) -> None:
    assert all(cel_holds(rule, autoscaling) for rule in _rules(AutoscalingSpec)) is accepted
    try:
        AutoscalingSpec.model_validate(autoscaling)
        by_model = True
    except ValidationError:
        by_model = False
    assert by_model is accepted


def test_autoscaling_schema_bounds() -> None:
    """The apiserver refuses what the fields' bounds refuse: no negative floor, a ceiling required."""
    autoscaling = build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"][
        "properties"
    ]["inference"]["properties"]["autoscaling"]
    assert autoscaling["required"] == ["maxReplicas"]
    fields = autoscaling["properties"]
    assert fields["minReplicas"]["minimum"] == 0
    assert fields["maxReplicas"]["minimum"] == 1
    assert fields["targetInFlight"]["minimum"] == 1
    assert fields["scaleDownDelaySeconds"]["minimum"] == 0
    assert "default" not in fields["targetQueueSize"]


@pytest.mark.parametrize(
    ("embedding", "accepted"),
    [
        ({}, True),
        ({"model": "sentence-transformers/all-MiniLM-L6-v2"}, True),
        ({"model": "all-MiniLM-L6-v2"}, True),
        ({"model": "BAAI/bge-small-en-v1.5"}, False),
        ({"model": "BAAI/bge-small-en-v1.5", "server": "http://tei:8080"}, True),
    ],
)
def test_embedding_rule_decides_like_the_model(embedding: dict[str, Any], accepted: bool) -> None:
    assert all(cel_holds(rule, embedding) for rule in _rules(EmbeddingSpec)) is accepted
    try:
        EmbeddingSpec.model_validate(embedding)
        by_model = True
    except ValidationError:
        by_model = False
    assert by_model is accepted


@pytest.mark.parametrize("sample", sorted(p.stem for p in SAMPLES.glob("*.yaml")))
def test_samples_parse(sample: str) -> None:
    manifest = load_sample(sample)
    assert manifest["apiVersion"] == "h2ogpt.dev/v1alpha1"
    H2oGPTDeploymentSpec.model_validate(manifest["spec"])


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (
            {"model": {"name": "m"}, "inference": {"engine": "external", "gpus": 0}},
            "inference.external.url is required",
        ),
        ({"model": {"name": "m"}, "inference": {"gpus": 0}}, "inference.gpus must be at least 1"),
        (
            {"model": {"name": "m"}, "inference": {"engine": "vllm", "gpus": 0}},
            "inference.gpus must be at least 1",
        ),
        (
            {"model": {"name": "m"}, "inference": {"engine": "llama"}},
            "Input should be 'tgi', 'vllm', 'llamacpp' or 'external'",
        ),
        (
            {"model": {"name": "m"}, "retrieval": {"embedding": {"model": "BAAI/bge-small-en-v1.5"}}},
            "retrieval.embedding.server is required",
        ),
        ({"model": {"name": "m"}, "openai": {"replicas": -1}}, "greater than or equal to 0"),
        ({"inference": {}}, "Field required"),
        (
            {"model": {"name": "m"}, "inference": {"autoscaling": {"minReplicas": 3, "maxReplicas": 2}}},
            "minReplicas must not be above maxReplicas",
        ),
        ({"model": {"name": "m"}, "inference": {"autoscaling": {"minReplicas": 0}}}, "Field required"),
        (
            {"model": {"name": "m"}, "openai": {"workers": 2}, "auth": {"limits": {"requestsPerMinute": 60}}},
            "openai.workers above 1 cannot be combined with auth.limits",
        ),
        ({"model": {"name": "m"}, "openai": {"resources": {"limits": {"cpu": "two"}}}},
         "should match pattern"),
        (
            {
                "model": {"name": "m"},
                "inference": {
                    "engine": "external",
                    "external": {"url": "http://x"},
                    "autoscaling": {"maxReplicas": 2},
                },
            },
            "autoscaling needs an engine the operator runs",
        ),
        (
            {
                "model": {"name": "m"},
                "inference": {"engine": "llamacpp", "autoscaling": {"maxReplicas": 2, "targetQueueSize": 2}},
            },
            "targetQueueSize needs an engine that exports its queue",
        ),
        *(
            ({"model": {"name": "m"}, "inference": {"resources": {"limits": {"memory": typo}}}}, "pattern")
            for typo in ("1 Gi", "2Gb", "e3", ".", "1.5.2")
        ),
        *(
            ({"model": {"name": "m"}, "inference": {"resources": {"requests": {"cpu": below}}}}, "greater")
            for below in (-1, "-1")
        ),
    ],
)
def test_invalid_specs_are_refused(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        H2oGPTDeploymentSpec.model_validate(spec)


@pytest.mark.parametrize(
    "spec",
    [
        {"model": {"name": "m"}, "inference": {"engine": "llamacpp", "gpus": 0}},
        {"model": {"name": "m"}, "inference": {"engine": "llamacpp"}},
        {
            "model": {"name": "m"},
            "retrieval": {"embedding": {"model": "BAAI/bge-small-en-v1.5", "server": "http://tei:8080"}},
        },
        # Every form Kubernetes reads a quantity in (apimachinery's grammar, no minus).
        {
            "model": {"name": "m"},
            "inference": {
                "engine": "llamacpp",
                "resources": {
                    "requests": {"cpu": ".5", "memory": "1e9"},
                    "limits": {"cpu": "+2", "memory": "1.5Gi"},
                },
            },
        },
    ],
)
def test_valid_specs_are_accepted(spec: dict[str, Any]) -> None:
    H2oGPTDeploymentSpec.model_validate(spec)


def test_defaults_match_between_schema_and_models() -> None:
    """The apiserver fills defaults from the schema; the operator from the models: they must agree."""
    spec = H2oGPTDeploymentSpec.model_validate({"model": {"name": "m"}})
    schema = yaml.safe_load(CRD_FILE.read_text())["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    inference = schema["properties"]["spec"]["properties"]["inference"]["properties"]
    assert inference["engine"]["default"] == spec.inference.engine
    assert inference["gpus"]["default"] == spec.inference.gpus
    assert (
        inference["modelCache"]["properties"]["deleteWithCR"]["default"]
        is spec.inference.model_cache.delete_with_cr
    )
