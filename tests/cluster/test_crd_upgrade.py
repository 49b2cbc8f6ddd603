"""`helm upgrade` to a chart whose CRD changed, on the real control plane: Helm leaves crds/ alone,
the new operator applies its own CRD at start (with the chart's RBAC: a ServiceAccount token, no
admin), a stack created under the old schema stays intact and the new field is usable. And an
older operator never replaces the CRD a newer one applied."""

from __future__ import annotations

import json
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from h2ogpt_operator.config import PROJECT_VERSION
from h2ogpt_operator.crd import CRD_NAME, VERSION_ANNOTATION, apply_own_crd
from h2ogpt_operator.kube import Kube, load_api_client

from tests.cluster.operator_harness import OperatorProcess, get_json_or_none
from tests.cluster.test_chart_install import CHART, helm
from tests.support.cluster import Cluster, wait_for

pytestmark = pytest.mark.cluster

CURRENT_CRD = CHART / "crds" / f"{CRD_NAME}.yaml"
# The field the "new release" adds: absent from the old chart's CRD.
NEW_FIELD = "suspend"


def older_crd(annotation: str | None = None) -> dict[str, Any]:
    """This release's CRD less `spec.suspend`: what an older chart installed."""
    crd: dict[str, Any] = yaml.safe_load(CURRENT_CRD.read_text())
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    del spec["properties"][NEW_FIELD]
    if annotation:
        crd["metadata"]["annotations"] = {VERSION_ANNOTATION: annotation}
    return crd


def install_crd_as_old_release_left_it(cluster: Cluster, crd: dict[str, Any]) -> None:
    """`kubectl replace`: exactly this object, every field the current one has beyond it gone."""
    current = get_json_or_none(cluster, "crd", CRD_NAME)
    crd = {**crd, "metadata": {**crd["metadata"]}}
    if current is not None:
        crd["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
    cluster.kubectl("replace" if current is not None else "create", "-f", "-", input=json.dumps(crd))
    cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")


def served_spec_fields(cluster: Cluster) -> set[str]:
    crd = get_json_or_none(cluster, "crd", CRD_NAME)
    assert crd is not None
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    return set(spec["properties"])


@pytest.fixture
def restores_the_crd(cluster: Cluster) -> Iterator[None]:
    """Other tests of the session use the CRD: it is this release's again afterwards."""
    yield
    install_crd_as_old_release_left_it(cluster, yaml.safe_load(CURRENT_CRD.read_text()))


class AsServiceAccount:
    """The cluster, seen through a ServiceAccount's token (what the operator pod would use)."""

    def __init__(self, cluster: Cluster, namespace: str, name: str, directory: Path) -> None:
        token = cluster.kubectl("create", "token", name, "-n", namespace, "--duration=1h").stdout.strip()
        kubeconfig = yaml.safe_load(cluster.kubeconfig.read_text())
        context = kubeconfig["contexts"][0]["context"]
        kubeconfig["users"] = [{"name": "sa", "user": {"token": token}}]
        kubeconfig["contexts"] = [{"name": "sa", "context": {"cluster": context["cluster"], "user": "sa"}}]
        kubeconfig["current-context"] = "sa"
        self.kubeconfig = directory / f"{name}.kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump(kubeconfig))
        self.env = {**cluster.env, "KUBECONFIG": str(self.kubeconfig)}


def stack(name: str, **spec: Any) -> str:
    return json.dumps(
        {
            "apiVersion": "h2ogpt.dev/v1alpha1",
            "kind": "H2oGPTDeployment",
            "metadata": {"name": name},
            "spec": {"model": {"name": "org/model", "maxSeqLen": 2048}, "inference": {"replicas": 0}, **spec},
        }
    )


def test_helm_upgrade_brings_the_new_crd_and_keeps_the_stack(
    cluster: Cluster, namespace: str, tmp_path: Path, restores_the_crd: None
) -> None:
    # The older release: its chart's CRD lacks `suspend`, the CRD in the cluster is that one.
    old_chart = tmp_path / "h2ogpt-operator"
    shutil.copytree(CHART, old_chart)
    (old_chart / "crds" / CURRENT_CRD.name).write_text(yaml.safe_dump(older_crd()))
    install_crd_as_old_release_left_it(cluster, older_crd())
    release = f"up-{uuid.uuid4().hex[:6]}"
    helm(cluster, "install", release, str(old_chart), "--namespace", namespace, "--wait", "--timeout", "120s")

    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("kept"))
    before = get_json_or_none(cluster, "h2ogpt", "kept", "-n", namespace)
    assert before is not None
    refused = cluster.kubectl(
        "apply", "-n", namespace, "-f", "-", input=stack("new", suspend=True), check=False
    )
    assert refused.returncode != 0
    assert NEW_FIELD in refused.stderr  # the old schema does not know it

    helm(cluster, "upgrade", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s")
    # Helm never upgrades crds/: the schema is still the old one...
    assert NEW_FIELD not in served_spec_fields(cluster)

    # ...until the new operator starts, with the chart's ServiceAccount and nothing more.
    account = AsServiceAccount(cluster, namespace, f"{release}-h2ogpt-operator", tmp_path)
    operator = OperatorProcess(
        cluster,
        tmp_path,
        f"lease-{release}",
        "--leader-election-namespace",
        namespace,
        kubeconfig=account.kubeconfig,
    )
    operator.start()
    try:
        wait_for(lambda: NEW_FIELD in served_spec_fields(cluster), 30, "the operator to apply its CRD")
        crd = get_json_or_none(cluster, "crd", CRD_NAME)
        assert crd is not None
        assert crd["metadata"]["annotations"][VERSION_ANNOTATION] == PROJECT_VERSION
        cluster.kubectl("wait", "--for=condition=Established", f"crd/{CRD_NAME}", "--timeout=30s")

        # The new field is usable...
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=stack("new", suspend=True))
        created = get_json_or_none(cluster, "h2ogpt", "new", "-n", namespace)
        assert created is not None
        assert created["spec"][NEW_FIELD] is True
        # ...and the stack from before is intact: same object, same spec (defaults of the new
        # field apply on read, nothing the old schema stored was pruned).
        after = get_json_or_none(cluster, "h2ogpt", "kept", "-n", namespace)
        assert after is not None
        assert after["metadata"]["uid"] == before["metadata"]["uid"]
        assert {k: v for k, v in after["spec"].items() if k != NEW_FIELD} == before["spec"]
        assert after["spec"].get(NEW_FIELD, False) is False
        assert "not allowed" not in operator.log_text()
    finally:
        operator.stop()
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")


def test_the_service_account_may_patch_only_its_own_crd(cluster: Cluster, namespace: str) -> None:
    release = f"rb-{uuid.uuid4().hex[:6]}"
    sa = f"system:serviceaccount:{namespace}:{release}-h2ogpt-operator"
    helm(cluster, "install", release, str(CHART), "--namespace", namespace, "--wait", "--timeout", "120s")
    try:

        def can_i(*args: str) -> bool:
            answer = cluster.kubectl("auth", "can-i", *args, f"--as={sa}", check=False).stdout.strip()
            return answer == "yes"

        crds = "customresourcedefinitions.apiextensions.k8s.io"
        assert can_i("patch", f"{crds}/{CRD_NAME}")
        assert not can_i("patch", f"{crds}/servicemonitors.monitoring.coreos.com")
        assert not can_i("update", f"{crds}/{CRD_NAME}")
        assert not can_i("delete", f"{crds}/{CRD_NAME}")
        assert not can_i("create", crds)
    finally:
        helm(cluster, "uninstall", release, "--namespace", namespace, "--wait", "--timeout", "120s")


def test_an_older_operator_leaves_a_newer_crd_alone(
    cluster: Cluster, restores_the_crd: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback must not prune the newer fields of every stack: the CRD a newer release applied
    (annotated with its version) stays; a CRD of an older or unknown release is replaced."""
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    kube = Kube(load_api_client())
    newer = older_crd(annotation="99.0.0")
    install_crd_as_old_release_left_it(cluster, newer)
    assert apply_own_crd(kube, PROJECT_VERSION) == "kept-newer"
    assert NEW_FIELD not in served_spec_fields(cluster)

    install_crd_as_old_release_left_it(cluster, older_crd(annotation="0.0.1"))
    assert apply_own_crd(kube, PROJECT_VERSION) == "applied"
    assert NEW_FIELD in served_spec_fields(cluster)
    # Applying again changes nothing (a restart of the operator is not a schema change).
    generation = (get_json_or_none(cluster, "crd", CRD_NAME) or {})["metadata"]["generation"]
    assert apply_own_crd(kube, PROJECT_VERSION) == "applied"
    assert (get_json_or_none(cluster, "crd", CRD_NAME) or {})["metadata"]["generation"] == generation
