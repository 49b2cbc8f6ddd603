"""Reference docs generated from their sources, and the checks `make lint` runs on them: the CRD field
reference (docs/crd-reference.md, from the pydantic models through the CRD) and the chart README's
values tables (from values.yaml's `## @param` lines, by readme-generator-for-helm)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from h2ogpt_operator.crd import build_crd

from hack.crd_reference import render

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "h2ogpt-operator"


def test_crd_reference_is_what_the_models_generate() -> None:
    assert (REPO / "docs" / "crd-reference.md").read_text() == render(build_crd()), "run make generate"


def test_crd_reference_lists_every_spec_field_with_its_schema() -> None:
    crd = build_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    text = render(crd)
    for name in spec["properties"]:
        assert f"[`{name}`](#spec{name.lower()})" in text or f"| `{name}` |" in text
    # What the apiserver enforces is spelled out: bounds, enums, defaults and CEL rules.
    assert "| `maxSeqLen` | integer |  | `4096` | >= 128; <= 1048576 |" in text
    assert "one of `tgi`, `vllm`, `llamacpp`, `external`" in text
    assert "- Rule: `" in text


def test_crd_reference_check_fails_on_a_changed_model(tmp_path: Path) -> None:
    """--check compares with what the models generate now: a hand edit (or a model change
    without `make generate`) fails it."""
    crd = build_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    spec["properties"]["newField"] = {
        "type": "string",
        "description": "added after the reference was generated",
    }
    older = tmp_path / "crd-reference.md"
    older.write_text(render(crd))
    check = [sys.executable, str(REPO / "hack" / "crd_reference.py"), "--check", "--file", str(older)]
    stale = subprocess.run(check, capture_output=True, text=True, timeout=60, check=False)
    assert stale.returncode == 1
    assert "make generate" in stale.stderr
    regenerate = [sys.executable, str(REPO / "hack" / "crd_reference.py"), "--file", str(older)]
    subprocess.run(regenerate, capture_output=True, timeout=60, check=True)
    assert "`newField`" not in older.read_text()
    assert subprocess.run(check, capture_output=True, timeout=60, check=False).returncode == 0


def chart_copy(tmp_path: Path) -> Path:
    """The generator script and the chart in a scratch tree (with .bin/readme-generator linked)."""
    (tmp_path / "hack").mkdir()
    shutil.copy(REPO / "hack" / "chart-readme.sh", tmp_path / "hack")
    (tmp_path / ".bin").mkdir()
    (tmp_path / ".bin" / "readme-generator").symlink_to((REPO / ".bin" / "readme-generator").resolve())
    shutil.copytree(CHART, tmp_path / "charts" / "h2ogpt-operator")
    return tmp_path


def run_readme(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "hack" / "chart-readme.sh"), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_chart_values_table_is_up_to_date_and_lists_every_value(tmp_path: Path) -> None:
    root = chart_copy(tmp_path)
    assert run_readme(root, "--check").returncode == 0
    readme = (CHART / "README.md").read_text()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert "| `replicaCount` " in readme
    assert f"`{values['image']['repository']}`" in readme
    assert "| `resources.limits.memory` " in readme


def test_chart_values_table_check_catches_a_new_value_and_a_changed_default(tmp_path: Path) -> None:
    root = chart_copy(tmp_path)
    values = root / "charts" / "h2ogpt-operator" / "values.yaml"
    values.write_text(values.read_text().replace("replicaCount: 1\n", "replicaCount: 3\n"))
    stale = run_readme(root, "--check")
    assert stale.returncode == 1
    assert "make generate" in stale.stderr
    assert run_readme(root).returncode == 0
    assert run_readme(root, "--check").returncode == 0
    assert "| `replicaCount` " in (root / "charts" / "h2ogpt-operator" / "README.md").read_text()

    values.write_text(values.read_text() + "undocumented: true\n")
    refused = run_readme(root, "--check")
    assert refused.returncode == 1
    assert "undocumented" in refused.stderr
