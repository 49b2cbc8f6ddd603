"""Helpers for the operator's unit tests: the committed samples as parsed specs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[3]
SAMPLES = REPO / "crds" / "samples"
GOLDEN = Path(__file__).parent / "golden"


def load_sample(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    return loaded
