"""The container images, built once per session by hack/images.sh and run without a container runtime.

Sandboxes such as this one refuse OCI runtimes (`podman run` fails on setrlimit), yet an image is only
a root filesystem plus a little configuration. So a smoke run here is what a runtime would do, by hand:
the image's root filesystem (`podman image mount`, read-only, as a pod with readOnlyRootFilesystem
sees it), /proc, /dev and writable scratch folders mounted in, then the image's ENTRYPOINT started
under `chroot --userspec` as the image's USER with the image's Env and WorkingDir. The process shares
the host's network namespace, so it serves on the host's loopback.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IMAGES_SCRIPT = REPO / "hack" / "images.sh"
# A cold build (base image, three pip installs) takes minutes on two cores; a warm one seconds.
BUILD_TIMEOUT_S = 2400
# Every image hack/images.sh builds by default, in its order.
IMAGE_NAMES = ("operator", "api", "weaviate", "llamacpp")


def container_engine() -> str:
    """The engine hack/images.sh builds with: IMAGE_BUILDER, else Docker when it answers, else podman."""
    chosen = os.environ.get("IMAGE_BUILDER")
    if chosen:
        return chosen
    if shutil.which("docker"):
        answered = subprocess.run(["docker", "info"], capture_output=True, timeout=10, check=False)
        if answered.returncode == 0:
            return "docker"
    if shutil.which("podman"):
        return "podman"
    raise AssertionError("neither a Docker engine nor podman is available: apt-get install podman")


@dataclass(frozen=True)
class BuiltImage:
    """One line of hack/images.sh's report."""

    name: str
    ref: str
    size_bytes: int
    budget_bytes: int
    build_seconds: int


@dataclass(frozen=True)
class ImagesBuild:
    engine: str
    images: dict[str, BuiltImage]
    output: str
    seconds: float


def run_images_script(
    *names: str, env: Mapping[str, str] | None = None, timeout: float = BUILD_TIMEOUT_S
) -> tuple[subprocess.CompletedProcess[str], dict[str, BuiltImage]]:
    """Run hack/images.sh for `names`; return its result (output merged) and the images it reported.
    The images are not loaded into a local node (IMAGES_LOAD=false): a test build must not change
    what a running node holds."""
    with tempfile.TemporaryDirectory(prefix="images-report-") as folder:
        report = Path(folder) / "report"
        result = subprocess.run(
            ["bash", str(IMAGES_SCRIPT), *names],
            env={**os.environ, "IMAGES_LOAD": "false", **(env or {}), "IMAGES_REPORT": str(report)},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
            check=False,
        )
        built: dict[str, BuiltImage] = {}
        for line in report.read_text().splitlines() if report.exists() else []:
            name, ref, size, budget, seconds = line.split()
            built[name] = BuiltImage(name, ref, int(size), int(budget), int(seconds))
    return result, built


@dataclass(frozen=True)
class ImageConfig:
    """What a runtime takes from the image's configuration to start it."""

    user: str
    env: dict[str, str]
    entrypoint: list[str]
    workdir: str
    labels: dict[str, str]


def image_config(engine: str, ref: str) -> ImageConfig:
    inspected = subprocess.run(
        [engine, "image", "inspect", ref], capture_output=True, text=True, timeout=60, check=True
    )
    config = json.loads(inspected.stdout)[0]["Config"]
    env = dict(item.split("=", 1) for item in config.get("Env") or [])
    return ImageConfig(
        user=config.get("User") or "",
        env=env,
        entrypoint=list(config.get("Entrypoint") or []),
        workdir=config.get("WorkingDir") or "/",
        labels=dict(config.get("Labels") or {}),
    )


def image_history(engine: str, ref: str) -> str:
    """Every layer's creating instruction, as the engine records it."""
    result = subprocess.run(
        [engine, "history", "--no-trunc", "--format", "{{.CreatedBy}}", ref],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


@contextlib.contextmanager
def image_root(engine: str, ref: str) -> Iterator[Path]:
    """The image's root filesystem as a folder: podman mounts it read-only; Docker has no such
    command, so its filesystem is exported into a temporary folder."""
    if engine == "podman":
        mounted = subprocess.run(
            ["podman", "image", "mount", ref], capture_output=True, text=True, timeout=60, check=True
        )
        try:
            yield Path(mounted.stdout.strip())
        finally:
            subprocess.run(["podman", "image", "unmount", ref], capture_output=True, timeout=60, check=False)
        return
    created = subprocess.run(
        ["docker", "create", ref], capture_output=True, text=True, timeout=60, check=True
    ).stdout.strip()
    try:
        with tempfile.TemporaryDirectory(prefix="image-root-") as folder:
            exported = subprocess.Popen(["docker", "export", created], stdout=subprocess.PIPE)
            subprocess.run(["tar", "-x", "-C", folder], stdin=exported.stdout, check=True, timeout=600)
            assert exported.wait(timeout=60) == 0
            yield Path(folder)
    finally:
        subprocess.run(["docker", "rm", created], capture_output=True, timeout=60, check=False)


def _mount(*args: str) -> None:
    subprocess.run(["mount", *args], capture_output=True, text=True, timeout=30, check=True)


@contextlib.contextmanager
def runtime_mounts(root: Path, writable: Sequence[str], owner: tuple[int, int]) -> Iterator[dict[str, Path]]:
    """What a runtime mounts into a container: /proc, /dev, and an empty folder owned by the
    image's user at each `writable` path (the pod's emptyDir volumes). Yields those folders, so
    that a test can put files (a kubeconfig) where the image's user can read them."""
    scratch = Path(tempfile.mkdtemp(prefix="image-volumes-"))
    mounted: list[Path] = []
    volumes: dict[str, Path] = {}
    try:
        for folder, args in (("proc", ["-t", "proc", "proc"]), ("dev", ["--bind", "/dev"])):
            _mount(*args, str(root / folder))
            mounted.append(root / folder)
        for path in writable:
            volume = scratch / path.strip("/").replace("/", "_")
            volume.mkdir(mode=0o750)
            os.chown(volume, *owner)
            _mount("--bind", str(volume), str(root / path.lstrip("/")))
            mounted.append(root / path.lstrip("/"))
            volumes[path] = volume
        yield volumes
    finally:
        for target in reversed(mounted):
            subprocess.run(["umount", "--lazy", str(target)], capture_output=True, timeout=30, check=False)
        shutil.rmtree(scratch, ignore_errors=True)


def numeric_user(user: str) -> tuple[int, int]:
    """The image's USER as uid and gid; a runtime refuses a non-numeric one under runAsNonRoot."""
    uid, _, gid = user.partition(":")
    return int(uid), int(gid or uid)


@dataclass
class ImageProcess:
    """The image's ENTRYPOINT running from its root filesystem, output in a log file."""

    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_output(self, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            log = self.log()
            if text in log:
                return log
            if self.process.poll() is not None:
                raise AssertionError(f"the image's process exited with {self.process.returncode}:\n{log}")
            time.sleep(0.1)
        raise AssertionError(f"no {text!r} in the image's output after {timeout}s:\n{self.log()}")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        return self.process.returncode


@contextlib.contextmanager
def run_image(
    root: Path, config: ImageConfig, args: Sequence[str], env: Mapping[str, str] | None = None
) -> Iterator[ImageProcess]:
    """Start the ENTRYPOINT with `args` as the image's user, in the image's WorkingDir, with the
    image's Env (plus `env`, as a pod spec's env adds to it); stop it with SIGTERM at the end."""
    uid, gid = numeric_user(config.user)
    log_file = tempfile.NamedTemporaryFile(prefix="image-run-", suffix=".log", delete=False)  # noqa: SIM115
    log_path = Path(log_file.name)
    chroot = shutil.which("chroot")
    assert chroot, "chroot (coreutils) is missing"
    argv = [
        chroot,
        f"--userspec={uid}:{gid}",
        "--groups=",
        str(root),
        "/bin/sh",
        "-c",
        'cd "$0" && exec "$@"',
        config.workdir,
        *config.entrypoint,
        *args,
    ]
    process = subprocess.Popen(
        argv, env={**config.env, **(env or {})}, stdout=log_file, stderr=subprocess.STDOUT
    )
    log_file.close()
    running = ImageProcess(process, log_path)
    try:
        yield running
    finally:
        running.stop()
        log_path.unlink(missing_ok=True)


@pytest.fixture(scope="session")
def built_images() -> ImagesBuild:
    """Every image, built once per session (podman's layer cache makes a warm build take seconds).
    weaviate and llamacpp need `make tools` (weaviate-server) and `make install` (the
    llama-cpp-python wheel in pip's cache) to have run."""
    engine = container_engine()
    started = time.monotonic()
    result, images = run_images_script(*IMAGE_NAMES)
    seconds = time.monotonic() - started
    assert result.returncode == 0, f"hack/images.sh failed:\n{result.stdout[-6000:]}"
    assert set(images) == set(IMAGE_NAMES), result.stdout[-3000:]
    return ImagesBuild(engine, images, result.stdout, seconds)
