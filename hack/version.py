"""The project's one version: `project.version` in pyproject.toml, and every place that repeats it.

    python3 hack/version.py                    print the version
    python3 hack/version.py check [--tag TAG]  exit 1, naming each place that disagrees (make lint);
                                               with --tag (a release's git tag, v1.2.3) also the tag
    python3 hack/version.py set 1.2.3          write 1.2.3 into pyproject.toml and every place below

What follows the version: the chart's `version` and `appVersion`, the Dockerfiles' default `VERSION`
label, and every reference to one of the project's images (`ghcr.io/h2ogpt-platform/h2ogpt-<name>:<tag>`)
in the tracked files: the chart's values and ci files, docs, tests. The operator's default image
references are derived from the installed package's version at run time (h2ogpt_operator/config.py);
hack/images.sh reads pyproject.toml itself.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
CHART = Path("charts/h2ogpt-operator/Chart.yaml")
DOCKERFILES = "images/*/Dockerfile"
# The project's own images; a tag is a version (0.1.0), optionally with a suffix: a development
# build's commit (0.1.0-g1a2b3c4) or a flavour (0.1.0-embedded). Upstream images (TGI, vLLM) are not ours.
IMAGE_REF = re.compile(
    r"(?P<repo>ghcr\.io/h2ogpt-platform/h2ogpt-(?:operator|api|weaviate|llamacpp|<name>|\{[a-z,]+\})):"
    r"(?P<version>\d+\.\d+\.\d+)"
)
DOCKERFILE_VERSION = re.compile(r"^ARG VERSION=(?P<version>\S+)$", re.MULTILINE)
# X.Y.Z only: the one form that pip (PEP 440 would turn 1.2.0-rc.1 into 1.2.0rc1), Helm (SemVer 2)
# and image tags all write the same, so the installed package's version names the images.
SEMVER = re.compile(r"^\d+\.\d+\.\d+$")


@dataclass(frozen=True)
class Disagreement:
    path: str
    found: str
    what: str

    def __str__(self) -> str:
        return f"{self.path}: {self.what} is {self.found!r}"


def project_version(root: Path) -> str:
    with (root / "pyproject.toml").open("rb") as file:
        version: str = tomllib.load(file)["project"]["version"]
    return version


def tracked_text_files(root: Path) -> list[Path]:
    """The files git tracks (or, outside a git checkout, every file under root), text ones only."""
    listed = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z"], capture_output=True, check=False, timeout=30
    )
    if listed.returncode == 0 and listed.stdout:
        names = [n for n in listed.stdout.decode().split("\0") if n]
        paths = [root / name for name in names]
    else:
        paths = [p for p in root.rglob("*") if p.is_file() and ".git" not in p.parts]
    return [p for p in paths if p.is_file() and b"\0" not in p.read_bytes()[:4096]]


def disagreements(root: Path, version: str, tag: str | None = None) -> list[Disagreement]:
    """Every place under root whose version is not `version` (pure but for reading files)."""
    found: list[Disagreement] = []
    if not SEMVER.match(version):
        found.append(
            Disagreement("pyproject.toml", version, "project.version (not X.Y.Z)")
        )
    if tag is not None and tag.removeprefix("v") != version:
        found.append(Disagreement("the release tag", tag, f"not v{version}"))
    chart = yaml.safe_load((root / CHART).read_text())
    for key in ("version", "appVersion"):
        if str(chart.get(key)) != version:
            found.append(Disagreement(str(CHART), str(chart.get(key)), f"the chart's {key}"))
    for dockerfile in sorted(root.glob(DOCKERFILES)):
        for match in DOCKERFILE_VERSION.finditer(dockerfile.read_text()):
            if match["version"] != version:
                found.append(
                    Disagreement(str(dockerfile.relative_to(root)), match["version"], "the default VERSION")
                )
    for path in tracked_text_files(root):
        text = path.read_text(errors="replace")
        for match in IMAGE_REF.finditer(text):
            if match["version"] != version:
                line = text.count("\n", 0, match.start()) + 1
                found.append(
                    Disagreement(f"{path.relative_to(root)}:{line}", match.group(0), "an image reference")
                )
    return found


def set_version(root: Path, old: str, new: str) -> list[Path]:
    """Write `new` wherever `old` stands for the project version; returns the files changed."""
    if not SEMVER.match(new):
        raise ValueError(f"{new!r} is not a release version X.Y.Z (what pip, Helm and image tags share)")
    changed: list[Path] = []

    def rewrite(path: Path, text: str) -> None:
        if text != path.read_text():
            path.write_text(text)
            changed.append(path)

    pyproject = root / "pyproject.toml"
    text = re.sub(r'(?m)^version = "[^"]*"$', f'version = "{new}"', pyproject.read_text(), count=1)
    rewrite(pyproject, text)
    chart = root / CHART
    text = re.sub(r"(?m)^version: .*$", f"version: {new}", chart.read_text(), count=1)
    rewrite(chart, re.sub(r"(?m)^appVersion: .*$", f'appVersion: "{new}"', text, count=1))
    for dockerfile in root.glob(DOCKERFILES):
        rewrite(dockerfile, DOCKERFILE_VERSION.sub(f"ARG VERSION={new}", dockerfile.read_text()))
    for path in tracked_text_files(root):
        text = path.read_text()
        rewrite(path, IMAGE_REF.sub(lambda m: f"{m['repo']}:{new}" if m["version"] == old else m[0], text))
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hack/version.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command")
    check = commands.add_parser("check", help="exit 1 when a place disagrees with pyproject.toml")
    check.add_argument("--tag", help="a release's git tag (v1.2.3): must be v<version>")
    setter = commands.add_parser("set", help="write a new version everywhere")
    setter.add_argument("version")
    args = parser.parse_args(argv)
    version = project_version(REPO)
    if args.command is None:
        print(version)
        return 0
    if args.command == "set":
        for path in set_version(REPO, version, args.version):
            print(f"hack/version.py: wrote {args.version} into {path.relative_to(REPO)}")
        return 0
    found = disagreements(REPO, version, args.tag)
    # An editable install keeps the version it was installed at: the operator's default images
    # come from that metadata, so a bump needs `make install` again.
    try:
        installed = metadata.version("h2ogpt-platform")
    except metadata.PackageNotFoundError:
        installed = None
    if installed is not None and installed != version:
        found.append(Disagreement("the installed package", installed, "its version (run `make install`)"))
    for item in found:
        print(f"hack/version.py: {item}; pyproject.toml says {version}", file=sys.stderr)
    if found:
        print(
            "hack/version.py: run `python3 hack/version.py set <version>` to write one version everywhere",
            file=sys.stderr,
        )
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
