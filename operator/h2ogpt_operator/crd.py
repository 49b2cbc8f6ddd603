"""Generate the H2oGPTDeployment CRD from the pydantic models.

`python -m h2ogpt_operator.crd > crds/h2ogptdeployments.h2ogpt.dev.yaml` regenerates the file;
a unit test fails when the committed YAML drifts from the models.

`apply_own_crd` is what the operator does at start: Helm creates crds/ on install but never
upgrades it, so the operator server-side applies the CRD its own models define (docs/helm.md,
"Upgrading"). It never replaces a CRD that a newer operator applied: an older schema would prune
the newer fields from every stack the next time one is written.

Pydantic writes JSON Schema 2020-12; a CRD needs a *structural* OpenAPI v3 schema: every node
typed, no `$ref`, no `anyOf` for optionals, no `additionalProperties` beside `properties`. The
conversion below is a small pure walk over the generated schema.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import yaml

from h2ogpt_operator.kube import Kube, KubeError
from h2ogpt_operator.models import (
    GROUP,
    KIND,
    PLURAL,
    SHORT_NAME,
    SINGULAR,
    VERSION,
    H2oGPTDeploymentSpec,
    H2oGPTDeploymentStatus,
)
from h2ogpt_operator.naming import CR_NAME_RULES

_DROPPED_KEYS = {"title", "additionalProperties", "$defs"}
CRD_NAME = f"{PLURAL}.{GROUP}"
# The operator release whose models made the CRD in the cluster (set by `apply_own_crd`).
VERSION_ANNOTATION = f"{GROUP}/operator-version"
log = logging.getLogger(__name__)


def _resolve(node: Any, defs: dict[str, Any]) -> Any:
    """Inline `$ref`s, merging sibling keywords (description, default) over the referenced schema."""
    if isinstance(node, list):
        return [_resolve(item, defs) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target = defs[node["$ref"].rsplit("/", 1)[-1]]
        merged = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        return _resolve(merged, defs)
    if "allOf" in node and len(node["allOf"]) == 1:
        merged = {**node["allOf"][0], **{k: v for k, v in node.items() if k != "allOf"}}
        return _resolve(merged, defs)
    return {key: _resolve(value, defs) for key, value in node.items()}


def _without_any_of(node: dict[str, Any]) -> dict[str, Any]:
    """`X | None` becomes X (an optional field is absent, never null); `int | str` int-or-string."""
    node = dict(node)
    variants = node.pop("anyOf", None)
    if variants is None:
        return node
    non_null = [v for v in variants if v.get("type") != "null"]
    types = sorted(v.get("type", "") for v in non_null)
    if types == ["integer", "string"]:
        node["x-kubernetes-int-or-string"] = True
        # A pattern on the string form (a quantity) applies to strings only, as in Kubernetes' own
        # schemas; a minimum on the integer form applies to integers only.
        node.update({k: v for variant in non_null if variant.get("type") == "string"
                     for k, v in variant.items() if k == "pattern"})
        node.update({k: v for variant in non_null if variant.get("type") == "integer"
                     for k, v in variant.items() if k == "minimum"})
    elif len(non_null) == 1:
        node = {**non_null[0], **node}
    else:
        raise ValueError(f"cannot express anyOf {variants} in a structural schema")
    if node.get("default", 0) is None:
        del node["default"]
    return node


def _structural(node: dict[str, Any]) -> dict[str, Any]:
    """Turn one (ref-free) JSON Schema node into its structural OpenAPI v3 form."""
    node = _without_any_of(node)
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _DROPPED_KEYS:
            continue
        if key == "properties":
            out["properties"] = {name: _structural(sub) for name, sub in value.items()}
        elif key == "items":
            out["items"] = _structural(value)
        else:
            out[key] = value

    additional = node.get("additionalProperties")
    if out.get("type") == "object" and "properties" not in out:
        if isinstance(additional, dict) and additional:
            out["additionalProperties"] = _structural(additional)
        else:
            out["x-kubernetes-preserve-unknown-fields"] = True
    # Readers look for the type and the description first.
    first = [key for key in ("type", "description") if key in out]
    return {**{key: out[key] for key in first}, **{k: v for k, v in out.items() if k not in first}}


def openapi_schema(model: type[Any]) -> dict[str, Any]:
    """The structural schema of one pydantic model (by alias, i.e. camelCase)."""
    raw = model.model_json_schema(by_alias=True, mode="validation")
    resolved = _resolve(raw, raw.get("$defs", {}))
    return _structural(resolved)


def build_crd() -> dict[str, Any]:
    """The complete CustomResourceDefinition manifest."""
    spec_schema = openapi_schema(H2oGPTDeploymentSpec)
    status_schema = openapi_schema(H2oGPTDeploymentStatus)
    spec_schema["description"] = "The desired h2oGPT stack."
    status_schema["description"] = "Observed state, written by the operator."
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{PLURAL}.{GROUP}"},
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": KIND,
                "listKind": f"{KIND}List",
                "plural": PLURAL,
                "singular": SINGULAR,
                "shortNames": [SHORT_NAME],
                "categories": ["all"],
            },
            "versions": [
                {
                    "name": VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {
                            "name": "Ready",
                            "type": "string",
                            "jsonPath": '.status.conditions[?(@.type=="Ready")].status',
                        },
                        {"name": "Engine", "type": "string", "jsonPath": ".spec.inference.engine"},
                        {"name": "Model", "type": "string", "jsonPath": ".spec.model.name"},
                        {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoints.openai"},
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": "A private h2oGPT stack: inference, Weaviate, Gradio, OpenAI API.",
                            "required": ["spec"],
                            # CEL on the root may read metadata.name: a name whose children the
                            # apiserver would refuse is refused at `kubectl apply` instead.
                            "x-kubernetes-validations": CR_NAME_RULES,
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": spec_schema,
                                "status": status_schema,
                            },
                        }
                    },
                }
            ],
        },
    }


def _release(version: str) -> tuple[int, ...] | None:
    """X.Y.Z as numbers; None for anything else (then it is not trusted to be newer)."""
    parts = version.split(".")
    return tuple(int(p) for p in parts) if len(parts) == 3 and all(p.isdigit() for p in parts) else None


def apply_own_crd(kube: Kube, operator_version: str) -> str:
    """Server-side apply this release's CRD; returns what happened: "applied", "kept-newer" (the
    cluster's came from a newer operator) or "not-allowed" (RBAC, e.g. rbac.create=false; the
    installed schema stays and the operator runs on). Other API errors propagate."""
    installed = kube.get("apiextensions.k8s.io/v1", "CustomResourceDefinition", None, CRD_NAME)
    if installed is not None:
        theirs = _release(installed["metadata"].get("annotations", {}).get(VERSION_ANNOTATION, ""))
        ours = _release(operator_version)
        if theirs is not None and (ours is None or theirs > ours):
            log.warning(
                "CRD %s was applied by operator %s, newer than this one (%s): left as it is",
                CRD_NAME,
                ".".join(map(str, theirs)),
                operator_version,
            )
            return "kept-newer"
    crd = build_crd()
    crd["metadata"]["annotations"] = {VERSION_ANNOTATION: operator_version}
    try:
        kube.apply(crd)
    except KubeError as exc:
        if exc.status != 403:
            raise
        log.warning(
            "not allowed to update CRD %s (the chart's ClusterRole grants patch on it): "
            "the installed schema stays; apply crds/ yourself after an upgrade",
            CRD_NAME,
        )
        return "not-allowed"
    log.info("applied CRD %s of operator %s", CRD_NAME, operator_version)
    return "applied"


def render_crd_yaml() -> str:
    """The CRD as the YAML committed in crds/ (stable key order, so diffs stay small)."""
    header = "# Generated by `python -m h2ogpt_operator.crd`; do not edit by hand.\n"
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=110)


def main() -> None:
    sys.stdout.write(render_crd_yaml())


if __name__ == "__main__":
    main()
