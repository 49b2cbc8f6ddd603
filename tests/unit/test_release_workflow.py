"""The release workflow (.github/workflows/release.yml): actionlint passes it (and `make lint` runs
actionlint), its build and publish steps are `make` targets a developer runs too, and only the job
that signs gets an OIDC token."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[2]
WORKFLOW = REPO / ".github" / "workflows" / "release.yml"
ACTIONLINT = REPO / ".bin" / "actionlint"


def workflow() -> dict[Any, Any]:
    loaded: dict[Any, Any] = yaml.safe_load(WORKFLOW.read_text())
    return loaded


def documented_targets() -> set[str]:
    """The targets `make help` lists (a `## ` comment on the rule line)."""
    return set(re.findall(r"^([a-zA-Z_-]+):.*?## ", (REPO / "Makefile").read_text(), re.M))


def run_actionlint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(ACTIONLINT), "-no-color", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def test_actionlint_passes_the_workflow() -> None:
    result = run_actionlint(WORKFLOW)
    assert result.returncode == 0, result.stdout + result.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    """What `make lint` relies on: a job needing a job that does not exist, an unknown context."""
    broken_dir = tmp_path / ".github" / "workflows"
    broken_dir.mkdir(parents=True)
    broken = broken_dir / "release.yml"
    text = WORKFLOW.read_text().replace("needs: images", "needs: image").replace(
        "${{ matrix.runner }}", "${{ matrix.runnr }}"
    )
    broken.write_text(text)
    result = run_actionlint(broken)
    assert result.returncode == 1
    assert '"image"' in result.stdout
    assert "runnr" in result.stdout


def test_it_runs_on_version_tags_only() -> None:
    on = workflow()[True]  # YAML 1.1 reads the key `on` as true
    assert list(on) == ["push"]
    assert on["push"] == {"tags": ["v[0-9]+.[0-9]+.[0-9]+*"]}


def test_build_and_publish_steps_are_make_targets() -> None:
    targets = documented_targets()
    called: list[str] = []
    for job in workflow()["jobs"].values():
        for step in job["steps"]:
            called += re.findall(r"\bmake ([a-z-]+)", step.get("run", ""))
    assert set(called) == {
        "release-images",
        "release-push-arch",
        "release-manifest",
        "release-sign",
        "chart-package",
        "release-push-chart",
    }
    assert set(called) <= targets, set(called) - targets


def test_only_the_publishing_job_may_sign_and_write_the_release() -> None:
    top = workflow()
    assert top["permissions"] == {"contents": "read"}
    jobs = top["jobs"]
    assert jobs["publish"]["permissions"] == {"contents": "write", "packages": "write", "id-token": "write"}
    assert jobs["images"]["permissions"] == {"contents": "read", "packages": "write"}
    assert "permissions" not in jobs["version"]
    assert [entry["arch"] for entry in jobs["images"]["strategy"]["matrix"]["include"]] == ["amd64", "arm64"]
    # The version gate comes first: nothing is built for a tag that disagrees with pyproject.
    assert jobs["images"]["needs"] == "version"
    assert any("hack/version.py check --tag" in step.get("run", "") for step in jobs["version"]["steps"])
