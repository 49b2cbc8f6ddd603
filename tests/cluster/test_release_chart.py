"""The chart as a release publishes it: `make chart-package` (hack/release.sh chart) and
`make release-push-chart` into a real OCI registry (distribution's `registry`, on loopback: GHCR
is not reachable here), then `helm install oci://...`, as README's install section says."""

from __future__ import annotations

import os
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from hack.localcluster import find_binary
from hack.version import project_version
from tests.cluster.operator_harness import free_port
from tests.cluster.test_chart_install import helm
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
RELEASE = REPO / "hack" / "release.sh"


@pytest.fixture
def oci_registry(tmp_path: Path) -> Iterator[str]:
    """A registry on 127.0.0.1 with its storage in tmp_path; yields host:port."""
    port = free_port()
    env = {
        **os.environ,
        "REGISTRY_HTTP_ADDR": f"127.0.0.1:{port}",
        "REGISTRY_STORAGE_FILESYSTEM_ROOTDIRECTORY": str(tmp_path / "registry"),
        "REGISTRY_LOG_LEVEL": "warn",
        "OTEL_TRACES_EXPORTER": "none",
    }
    config = tmp_path / "registry.yml"
    config.write_text(yaml.safe_dump({"version": 0.1, "storage": {"filesystem": {}}, "http": {}}))
    log = (tmp_path / "registry.log").open("wb")
    process = subprocess.Popen(
        [find_binary("registry"), "serve", str(config)], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:

        def answers() -> bool:
            result = subprocess.run(
                ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"http://127.0.0.1:{port}/v2/"],
                capture_output=True,
                text=True,
                check=False,
                timeout=5,
            )
            assert process.poll() is None, (tmp_path / "registry.log").read_text()
            return result.stdout == "200"

        wait_for(answers, 30, "the registry on loopback")
        yield f"127.0.0.1:{port}"
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


def release_step(cluster: Cluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["bash", str(RELEASE), *args],
        env={**cluster.env, **env},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert result.returncode == 0, f"hack/release.sh {' '.join(args)}: {result.stdout}{result.stderr}"
    return result


def test_published_chart_installs_from_the_oci_registry(
    cluster: Cluster, namespace: str, oci_registry: str, tmp_path: Path
) -> None:
    version = project_version(REPO)
    dist = tmp_path / "dist"
    release_step(cluster, "chart", RELEASE_DIST=str(dist))
    package = dist / f"h2ogpt-operator-{version}.tgz"
    with tarfile.open(package) as archive:
        chart = yaml.safe_load(archive.extractfile("h2ogpt-operator/Chart.yaml").read())  # type: ignore[union-attr]
        assert "h2ogpt-operator/crds/h2ogptdeployments.h2ogpt.dev.yaml" in archive.getnames()
    assert (chart["version"], chart["appVersion"]) == (version, version)
    # The CRDs a release attaches, beside the package.
    assert (dist / "h2ogptdeployments.h2ogpt.dev.yaml").read_text() == (
        REPO / "crds" / "h2ogptdeployments.h2ogpt.dev.yaml"
    ).read_text()

    pushed = release_step(
        cluster,
        "push-chart",
        RELEASE_DIST=str(dist),
        CHART_REGISTRY=f"oci://{oci_registry}/charts",
        CHART_PUSH_ARGS="--plain-http",
    )
    assert "Digest: sha256:" in pushed.stdout + pushed.stderr

    reference = f"oci://{oci_registry}/charts/h2ogpt-operator"
    shown = helm(cluster, "show", "chart", reference, "--version", version, "--plain-http")
    assert yaml.safe_load(shown.stdout)["appVersion"] == version
    release = f"oci-{uuid.uuid4().hex[:6]}"
    helm(
        cluster,
        "install",
        release,
        reference,
        "--version",
        version,
        "--plain-http",
        "--namespace",
        namespace,
        "--wait",
        "--timeout",
        "120s",
    )
    try:
        image = cluster.kubectl(
            "get",
            "deployment",
            f"{release}-h2ogpt-operator",
            "-n",
            namespace,
            "-o",
            "jsonpath={.spec.template.spec.containers[0].image}",
        ).stdout
        # The chart names the operator image of its own release.
        assert image == f"ghcr.io/h2ogpt-platform/h2ogpt-operator:{version}"
        ready = wait_for(
            lambda: cluster.kubectl(
                "get", "deployment", f"{release}-h2ogpt-operator", "-n", namespace,
                "-o", "jsonpath={.status.readyReplicas}",
            ).stdout == "1",
            60,
            "the operator Deployment from the OCI chart",
        )  # fmt: skip
        assert ready
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")
