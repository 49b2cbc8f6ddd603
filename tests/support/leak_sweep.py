"""No generated credential anywhere but its Secret (issue 13, item 11), over the whole test session.

Every credential the operator generated (the values in Secrets labelled
`app.kubernetes.io/managed-by=h2ogpt-operator`, read from the Secrets themselves; a JSON list's
entries one by one) is looked for, as text and base64, in what more people can read: ConfigMaps,
Events, the CRs (status included), Deployments and StatefulSets, the logs of the pods that really
ran (the real node: the operator and API pods of the e2e tier), every operator process's log and
its /metrics page.

Namespaces are short-lived (each test's is deleted at its end), so each is swept just before it is
deleted (`tests.support.cluster.delete_namespace`); what is left is swept across all namespaces
when the session's cluster goes down, and the cluster fixture's teardown fails the run when
anything leaked. Texts are kept until then, so a value generated in one namespace is also looked
for in every other.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # tests.support.cluster imports this module
    from tests.support.cluster import Cluster

GENERATED = "app.kubernetes.io/managed-by=h2ogpt-operator"
# Shorter values could match by chance; the operator generates 43-character tokens.
MIN_LENGTH = 16
# Kinds whose objects anyone with read access to a namespace (or the cluster) sees.
READABLE_KINDS = "configmaps,events,deployments,statefulsets"
REAL_NODE_PREFIX = "real-node"


def generated_values(secret: Mapping[str, Any]) -> dict[str, str]:
    """value -> where it came from, for every value in a generated Secret (a JSON list: each entry)."""
    meta = secret.get("metadata") or {}
    origin = f"{meta.get('namespace')}/{meta.get('name')}"
    found: dict[str, str] = {}
    for key, encoded in (secret.get("data") or {}).items():
        try:
            value = base64.b64decode(encoded).decode()
        except (binascii.Error, UnicodeDecodeError):
            continue
        candidates = [value]
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if isinstance(parsed, list):
            candidates += [entry for entry in parsed if isinstance(entry, str)]
        for candidate in candidates:
            if len(candidate) >= MIN_LENGTH:
                found[candidate] = f"{origin} {key}"
    return found


def find_leaks(generated: Mapping[str, str], places: Iterable[tuple[str, str]]) -> list[str]:
    """'<Secret key> in <place>' for every generated value (or its base64) found in a place's text."""
    forms = {
        form: origin
        for value, origin in generated.items()
        for form in (value, base64.b64encode(value.encode()).decode())
    }
    found = [
        f"{origin} in {where}" for where, text in places for form, origin in forms.items() if form in text
    ]
    return list(dict.fromkeys(found))  # a namespace read before its deletion may be read again at the end


@dataclass
class LeakSweep:
    generated: dict[str, str] = field(default_factory=dict)
    places: list[tuple[str, str]] = field(default_factory=list)
    logs: list[tuple[str, Path]] = field(default_factory=list)
    namespaces_swept: int = 0

    def keep_log(self, what: str, path: Path) -> None:
        """A log file to read at the end (an operator process's, while it may still be written)."""
        self.logs.append((what, path))

    def add_place(self, where: str, text: str) -> None:
        self.places.append((where, text))

    def sweep(self, cluster: Cluster, namespace: str | None) -> None:
        """Harvest generated values and readable texts of one namespace (None: all of them)."""
        scope = ["-n", namespace] if namespace else ["-A"]
        for secret in _items(cluster, "secrets", *scope, "-l", GENERATED):
            self.generated.update(generated_values(secret))
        for item in _items(cluster, READABLE_KINDS, *scope):
            meta = item.get("metadata") or {}
            self.add_place(f"{item.get('kind')} {meta.get('namespace')}/{meta.get('name')}", json.dumps(item))
        for cr in _items(cluster, "h2ogptdeployments.h2ogpt.dev", *scope):
            meta = cr.get("metadata") or {}
            self.add_place(f"H2oGPTDeployment {meta.get('namespace')}/{meta.get('name')}", json.dumps(cr))
        for pod in _items(cluster, "pods", *scope):
            if not str((pod.get("spec") or {}).get("nodeName", "")).startswith(REAL_NODE_PREFIX):
                continue  # kwok's pods run nothing and have no logs
            meta = pod["metadata"]
            logs = cluster.kubectl(
                "logs", "-n", meta["namespace"], meta["name"], "--all-containers", check=False, timeout=30
            )
            self.add_place(f"log of pod {meta['namespace']}/{meta['name']}", logs.stdout)
        self.namespaces_swept += 1 if namespace else 0

    def leaks(self) -> list[str]:
        places = list(self.places)
        for what, path in self.logs:
            if path.exists():
                places.append((what, path.read_text(errors="replace")))
        return find_leaks(self.generated, places)

    def summary(self) -> str:
        return (
            f"leak sweep: {len(self.generated)} generated values, {self.namespaces_swept} namespaces swept "
            f"before deletion, {len(self.places)} objects/pages and {len(self.logs)} operator logs read"
        )


def _items(cluster: Cluster, kinds: str, *args: str) -> list[dict[str, Any]]:
    """Objects of `kinds`; none when the kind is not served (e.g. the CRD is not installed)."""
    result = cluster.kubectl("get", kinds, *args, "-o", "json", check=False)
    if result.returncode != 0:
        return []
    return list(json.loads(result.stdout).get("items") or [])


# The session's one sweep: the cluster fixture (tests/support/cluster.py) checks it at the end.
SWEEP = LeakSweep()
