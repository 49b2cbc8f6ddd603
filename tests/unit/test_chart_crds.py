"""The chart ships a copy of the generated CRD (Helm needs real files in the chart), kept
identical to crds/ by hack/sync-chart-crds.sh."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SYNC = REPO / "hack" / "sync-chart-crds.sh"


def test_chart_crds_are_identical_to_the_generated_ones() -> None:
    generated = {p.name: p.read_bytes() for p in (REPO / "crds").glob("*.yaml")}
    shipped = {p.name: p.read_bytes() for p in (REPO / "charts" / "h2ogpt-operator" / "crds").glob("*.yaml")}
    assert "h2ogptdeployments.h2ogpt.dev.yaml" in generated
    assert shipped == generated, "run hack/sync-chart-crds.sh"


def run_sync(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(root / "hack" / SYNC.name), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_sync_script_detects_drift_and_repairs_it(tmp_path: Path) -> None:
    (tmp_path / "hack").mkdir()
    shutil.copy(SYNC, tmp_path / "hack" / SYNC.name)
    (tmp_path / "crds" / "samples").mkdir(parents=True)
    (tmp_path / "crds" / "a.yaml").write_text("kind: CustomResourceDefinition  # new\n")
    (tmp_path / "crds" / "samples" / "s.yaml").write_text("kind: H2oGPTDeployment\n")
    chart_crds = tmp_path / "charts" / "h2ogpt-operator" / "crds"
    chart_crds.mkdir(parents=True)
    (chart_crds / "a.yaml").write_text("kind: CustomResourceDefinition  # old\n")
    (chart_crds / "stale.yaml").write_text("kind: CustomResourceDefinition\n")

    drift = run_sync(tmp_path, "--check")
    assert drift.returncode == 1
    assert "a.yaml differs" in drift.stderr
    assert "stale.yaml has no source" in drift.stderr

    assert run_sync(tmp_path).returncode == 0
    assert sorted(p.name for p in chart_crds.iterdir()) == ["a.yaml"]  # samples are not CRDs
    assert (chart_crds / "a.yaml").read_text() == "kind: CustomResourceDefinition  # new\n"
    assert run_sync(tmp_path, "--check").returncode == 0
