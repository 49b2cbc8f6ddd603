"""A kubeconfig for code that needs Kubernetes credentials at start but whose requests a test does not
need to reach an apiserver (they fail, and the test reads how that failure is handled)."""

from __future__ import annotations

import json
from pathlib import Path

UNREACHABLE_APISERVER = "https://127.0.0.1:1"


def unreachable_kubeconfig(directory: Path) -> Path:
    """`directory/kubeconfig`: one context, a token, and an apiserver address where nothing listens."""
    path = directory / "kubeconfig"
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "c",
        "clusters": [{"name": "k", "cluster": {"server": UNREACHABLE_APISERVER}}],
        "users": [{"name": "u", "user": {"token": "t"}}],
        "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
    }))  # fmt: skip
    return path
