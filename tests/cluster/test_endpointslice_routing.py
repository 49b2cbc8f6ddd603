"""The API follows the inference Service's EndpointSlices (endpointslices.EndpointSliceWatcher)
on the real control plane: slices created, changed and deleted by hand stand for inference pods
becoming Ready, failing their probe and going away; the routed backend's replicas follow.
(No pod serves those addresses: what routing does with replicas is tests/integration/test_routing.py.)
"""

from __future__ import annotations

import asyncio
import json

from h2ogpt_api.backends.routed import RoutedBackend
from h2ogpt_api.backends.tgi import TgiBackend
from h2ogpt_api.endpointslices import EndpointSliceWatcher
from h2ogpt_api.routing import Router

from tests.support.cluster import Cluster

SERVICE = "stack-inference"
WAIT_S = 30.0


def apply_slice(
    cluster: Cluster, namespace: str, name: str, service: str, endpoints: dict[str, bool]
) -> None:
    manifest = {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {"name": name, "namespace": namespace, "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": [ip], "conditions": {"ready": ready}} for ip, ready in endpoints.items()],
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(manifest))


def test_routed_replicas_follow_the_services_ready_endpoints(cluster: Cluster, namespace: str) -> None:
    apply_slice(cluster, namespace, "inf-a", SERVICE, {"10.20.0.1": True, "10.20.0.2": True})
    apply_slice(cluster, namespace, "other", "some-other-service", {"10.30.0.1": True})

    async def scenario() -> list[list[str]]:
        backend = RoutedBackend(
            [f"http://{SERVICE}.{namespace}.svc:80"],
            lambda server: TgiBackend(server, model_name="m", timeout=5),
            router=Router([]),
            prefix_chars=1024,
        )
        seen: asyncio.Queue[list[str]] = asyncio.Queue()

        def follow(servers: list[str]) -> None:
            backend.set_servers(servers)
            seen.put_nowait(sorted(backend.router.replicas))

        service_url = f"http://{SERVICE}.{namespace}.svc:80"
        target = f"{namespace}/{SERVICE}:http"
        watcher = EndpointSliceWatcher(target, service_url, follow, kubeconfig=str(cluster.kubeconfig))
        watcher.start()
        states = [await asyncio.wait_for(seen.get(), WAIT_S)]
        # A pod fails its readiness probe and another slice brings a new one.
        await asyncio.to_thread(apply_slice, cluster, namespace, "inf-a", SERVICE,
                                {"10.20.0.1": True, "10.20.0.2": False})  # fmt: skip
        await asyncio.to_thread(apply_slice, cluster, namespace, "inf-b", SERVICE, {"10.20.1.7": True})
        while states[-1] != ["10.20.0.1:8080", "10.20.1.7:8080"]:
            states.append(await asyncio.wait_for(seen.get(), WAIT_S))
        # The first slice goes away (its pods were deleted).
        await asyncio.to_thread(cluster.kubectl, "delete", "endpointslice", "inf-a", "-n", namespace)
        while states[-1] != ["10.20.1.7:8080"]:
            states.append(await asyncio.wait_for(seen.get(), WAIT_S))
        await watcher.aclose()
        await backend.aclose()
        return states

    states = asyncio.run(scenario())
    assert states[0] == ["10.20.0.1:8080", "10.20.0.2:8080"]  # the other Service's slice is not ours
    assert states[-1] == ["10.20.1.7:8080"]
    assert all("10.30.0.1:8080" not in state for state in states)
