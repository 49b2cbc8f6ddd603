"""hack/version.py: pyproject.toml's version is the one the chart, the image tags, the Dockerfiles'
labels, the docs' image references and the operator's default images carry; `make lint` runs its
check, which must name every place that disagrees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from h2ogpt_operator.config import Images

from hack.version import disagreements, project_version, set_version

REPO = Path(__file__).resolve().parents[2]


def small_tree(root: Path, *, pyproject: str, chart: str, app: str, dockerfile: str, doc_tag: str) -> None:
    """A checkout-shaped tree with one file per place the version lives."""
    (root / "pyproject.toml").write_text(f'[project]\nname = "h2ogpt-platform"\nversion = "{pyproject}"\n')
    chart_dir = root / "charts" / "h2ogpt-operator"
    chart_dir.mkdir(parents=True)
    (chart_dir / "Chart.yaml").write_text(
        f'apiVersion: v2\nname: h2ogpt-operator\nversion: {chart}\nappVersion: "{app}"\n'
    )
    (root / "images" / "api").mkdir(parents=True)
    (root / "images" / "api" / "Dockerfile").write_text(f"FROM scratch\nARG VERSION={dockerfile}\n")
    (root / "docs").mkdir()
    (root / "docs" / "install.md").write_text(
        "Images:\n"
        f"- `ghcr.io/h2ogpt-platform/h2ogpt-api:{doc_tag}`\n"
        f"- `ghcr.io/h2ogpt-platform/h2ogpt-{{api,weaviate}}:{doc_tag}-g1a2b3c4`\n"
        "- `ghcr.io/huggingface/text-generation-inference:3.3.6` (upstream, not ours)\n"
    )


def test_the_repository_agrees_with_pyproject() -> None:
    assert disagreements(REPO, project_version(REPO)) == []


def test_check_names_every_place_that_disagrees(tmp_path: Path) -> None:
    small_tree(tmp_path, pyproject="0.2.0", chart="0.1.0", app="0.2.0", dockerfile="0.1.9", doc_tag="0.1.0")
    found = {(d.path, d.found) for d in disagreements(tmp_path, "0.2.0")}
    assert found == {
        ("charts/h2ogpt-operator/Chart.yaml", "0.1.0"),
        ("images/api/Dockerfile", "0.1.9"),
        ("docs/install.md:2", "ghcr.io/h2ogpt-platform/h2ogpt-api:0.1.0"),
        ("docs/install.md:3", "ghcr.io/h2ogpt-platform/h2ogpt-{api,weaviate}:0.1.0"),
    }


def test_check_holds_a_release_tag_to_the_version(tmp_path: Path) -> None:
    small_tree(tmp_path, pyproject="0.2.0", chart="0.2.0", app="0.2.0", dockerfile="0.2.0", doc_tag="0.2.0")
    assert disagreements(tmp_path, "0.2.0", tag="v0.2.0") == []
    [wrong] = disagreements(tmp_path, "0.2.0", tag="v0.2.1")
    assert (wrong.path, wrong.found) == ("the release tag", "v0.2.1")


def test_set_writes_one_version_everywhere_and_leaves_upstream_images(tmp_path: Path) -> None:
    small_tree(tmp_path, pyproject="0.1.0", chart="0.1.0", app="0.1.0", dockerfile="0.1.0", doc_tag="0.1.0")
    changed = set_version(tmp_path, "0.1.0", "0.3.0")
    assert len(changed) == 4
    assert project_version(tmp_path) == "0.3.0"
    assert disagreements(tmp_path, "0.3.0") == []
    doc = (tmp_path / "docs" / "install.md").read_text()
    assert "h2ogpt-{api,weaviate}:0.3.0-g1a2b3c4" in doc
    assert "text-generation-inference:3.3.6" in doc


def test_set_refuses_a_version_helm_cannot_use(tmp_path: Path) -> None:
    small_tree(tmp_path, pyproject="0.1.0", chart="0.1.0", app="0.1.0", dockerfile="0.1.0", doc_tag="0.1.0")
    # A pre-release: pip would install it as 0.3.0rc1, Helm and the tags would say 0.3.0-rc.1.
    for refused in ("v1.2", "0.3.0-rc.1"):
        with pytest.raises(ValueError, match=r"X\.Y\.Z"):
            set_version(tmp_path, "0.1.0", refused)
    assert project_version(tmp_path) == "0.1.0"


def test_the_operator_defaults_to_images_of_the_project_version() -> None:
    version = project_version(REPO)
    images = Images()
    assert [images.api, images.weaviate, images.llamacpp] == [
        f"ghcr.io/h2ogpt-platform/h2ogpt-{name}:{version}" for name in ("api", "weaviate", "llamacpp")
    ]


def test_the_command_line_check_passes_here_and_fails_on_a_wrong_tag() -> None:
    script = [sys.executable, str(REPO / "hack" / "version.py"), "check"]
    assert subprocess.run(script, capture_output=True, text=True, timeout=60, check=False).returncode == 0
    refused = subprocess.run(
        [*script, "--tag", "v99.0.0"], capture_output=True, text=True, timeout=60, check=False
    )
    assert refused.returncode == 1
    assert "the release tag" in refused.stderr
