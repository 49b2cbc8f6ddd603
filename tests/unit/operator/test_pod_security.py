"""Pod Security Standards: every pod of every sample's stack (TGI and vLLM included) passes `restricted`.

`restricted_violations` spells out the checks of the Kubernetes Pod Security Standard `restricted`
(which includes `baseline`) that a pod template can fail, as the PodSecurity admission plugin
applies them (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
"""

from __future__ import annotations

from typing import Any

import pytest
from h2ogpt_operator import builders
from h2ogpt_operator.builders import Stack
from h2ogpt_operator.config import OperatorConfig
from h2ogpt_operator.models import H2oGPTDeploymentSpec

from tests.unit.operator.samples import load_sample

STACK = Stack(name="demo", namespace="team-a")
CONFIG = OperatorConfig()

_RESTRICTED_VOLUME_TYPES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}  # fmt: skip
_SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}  # fmt: skip
_SECCOMP_ALLOWED = {"RuntimeDefault", "Localhost"}


def _pod_violations(pod: dict[str, Any]) -> list[str]:
    security = pod.get("securityContext") or {}
    seccomp = (security.get("seccompProfile") or {}).get("type")
    volume_types = {volume["name"]: sorted(set(volume) - {"name"}) for volume in pod.get("volumes", [])}
    checks = [
        *((pod.get(host) is True, f"{host} is true") for host in ("hostNetwork", "hostPID", "hostIPC")),
        *(
            (not set(types) <= _RESTRICTED_VOLUME_TYPES, f"volume {name} has type {types}")
            for name, types in volume_types.items()
        ),
        *((s["name"] not in _SAFE_SYSCTLS, f"sysctl {s['name']}") for s in security.get("sysctls", [])),
        (seccomp not in (None, *_SECCOMP_ALLOWED), f"pod seccompProfile {seccomp}"),
        (security.get("runAsUser") == 0, "pod runAsUser is 0"),
        (security.get("runAsNonRoot") is False, "pod runAsNonRoot is false"),
    ]
    return [message for failed, message in checks if failed]


def _container_violations(container: dict[str, Any], pod_security: dict[str, Any]) -> list[str]:
    security = container.get("securityContext") or {}
    capabilities = security.get("capabilities") or {}
    added = capabilities.get("add", [])
    run_as_non_root = security.get("runAsNonRoot", pod_security.get("runAsNonRoot"))
    seccomp = (security.get("seccompProfile") or pod_security.get("seccompProfile") or {}).get("type")
    checks = [
        (security.get("privileged") is True, "privileged"),
        (security.get("allowPrivilegeEscalation") is not False, "allowPrivilegeEscalation is not false"),
        ("ALL" not in capabilities.get("drop", []), "capabilities do not drop ALL"),
        (bool(set(added) - {"NET_BIND_SERVICE"}), f"adds capabilities {added}"),
        (run_as_non_root is not True, "runAsNonRoot is not true"),
        (security.get("runAsUser") == 0, "runAsUser is 0"),
        (seccomp not in _SECCOMP_ALLOWED, "no RuntimeDefault/Localhost seccompProfile"),
        (any(port.get("hostPort") for port in container.get("ports", [])), "hostPort"),
        (security.get("procMount", "Default") != "Default", "procMount"),
    ]
    return [f"{container['name']}: {message}" for failed, message in checks if failed]


def restricted_violations(pod: dict[str, Any]) -> list[str]:
    """Why a pod spec fails `restricted` (empty: it passes)."""
    containers = [*pod.get("initContainers", []), *pod["containers"], *pod.get("ephemeralContainers", [])]
    pod_security = pod.get("securityContext") or {}
    return _pod_violations(pod) + [
        violation for container in containers for violation in _container_violations(container, pod_security)
    ]


def _pods(sample: str) -> dict[str, dict[str, Any]]:
    """Workload name -> pod template spec, for every pod the sample's stack runs."""
    manifest = load_sample(sample)
    spec = H2oGPTDeploymentSpec.model_validate(manifest["spec"])
    children = builders.build_children(STACK, spec, CONFIG, {})
    return {
        c["metadata"]["name"]: c["spec"]["template"]["spec"]
        for c in children
        if c["kind"] in {"Deployment", "StatefulSet"}
    }


SAMPLES = ["llamacpp-cpu", "tgi-gpu", "vllm", "external-openai"]


@pytest.mark.parametrize("sample", SAMPLES)
def test_every_pod_of_every_sample_passes_restricted(sample: str) -> None:
    pods = _pods(sample)
    assert {"demo-weaviate", "demo-openai"} <= set(pods)
    assert ("demo-inference" in pods) is (sample != "external-openai")
    for name, pod in pods.items():
        assert restricted_violations(pod) == [], name


@pytest.mark.parametrize("workload", ["demo-inference", "demo-weaviate", "demo-openai", "demo-gradio"])
def test_our_images_run_as_10001_on_a_read_only_root(workload: str) -> None:
    pod = _pods("llamacpp-cpu")[workload]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "seccompProfile": {"type": "RuntimeDefault"},
        **({"fsGroupChangePolicy": "OnRootMismatch"} if workload == "demo-weaviate" else {}),
    }
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # What they write goes to volumes: /tmp everywhere, plus the save dir or Weaviate's data.
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts["/tmp"] == "tmp"
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]
    expected_data = {"demo-weaviate": "/var/lib/weaviate", "demo-openai": "/var/lib/h2ogpt",
                     "demo-gradio": "/var/lib/h2ogpt", "demo-inference": None}[workload]  # fmt: skip
    assert set(mounts) == {"/tmp"} | ({expected_data} if expected_data else set())


@pytest.mark.parametrize("sample", ["tgi-gpu", "vllm"])
def test_gpu_engines_run_as_10001_with_home_and_caches_in_volumes(sample: str) -> None:
    """The upstream TGI/vLLM images declare root; the pod sets a uid, and what they write has a volume."""
    pod = _pods(sample)["demo-inference"]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 10001,
        "runAsGroup": 10001,
        "fsGroup": 10001,
        "fsGroupChangePolicy": "OnRootMismatch",
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = pod["containers"][0]
    assert container["securityContext"] == {
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
    }
    env = {item["name"]: item.get("value") for item in container["env"]}
    # HOME holds Triton/TorchInductor/outlines caches; USER answers getpass.getuser() for a uid
    # without a passwd entry; HF_HOME is the model cache volume.
    assert (env["HOME"], env["USER"], env["HF_HOME"]) == ("/tmp", "h2ogpt", "/data")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts == {"/data": "model-cache", "/dev/shm": "shm", "/tmp": "tmp"}
    assert {"name": "tmp", "emptyDir": {}} in pod["volumes"]


def test_spec_env_still_overrides_the_gpu_engine_home() -> None:
    """`inference.env` comes last: an image that needs another HOME can have it."""
    manifest = load_sample("vllm")
    manifest["spec"]["inference"]["env"] = [{"name": "HOME", "value": "/data/home"}]
    spec = H2oGPTDeploymentSpec.model_validate(manifest["spec"])
    deployment = next(
        c
        for c in builders.build_children(STACK, spec, CONFIG, {})
        if c["kind"] == "Deployment" and c["metadata"]["name"] == "demo-inference"
    )
    env = deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    assert [item["value"] for item in env if item["name"] == "HOME"][-1] == "/data/home"


def test_checker_catches_what_restricted_forbids() -> None:
    pod = {
        "hostNetwork": True,
        "volumes": [{"name": "h", "hostPath": {"path": "/"}}],
        "containers": [{"name": "c", "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}],
    }
    found = restricted_violations(pod)
    assert "hostNetwork is true" in found
    assert "volume h has type ['hostPath']" in found
    assert "c: allowPrivilegeEscalation is not false" in found
    assert "c: capabilities do not drop ALL" in found
    assert "c: adds capabilities ['SYS_ADMIN']" in found
    assert "c: runAsNonRoot is not true" in found
    assert "c: no RuntimeDefault/Localhost seccompProfile" in found
