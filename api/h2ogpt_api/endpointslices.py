"""The inference replicas, from the inference Service's EndpointSlices (in the cluster).

`--inference_endpointslices <namespace>/<service>[:<port name>]` makes the API route to each
Ready endpoint of that Service itself (routing.py) instead of through the Service's one
address. `--inference_server` stays the Service's URL: it names the kind of server and the URL's
form, and each replica's URL is that one with the endpoint's address and port in place of the
Service's (`replica_servers`, pure).

`EndpointSliceWatcher` lists, then watches, the Service's slices (label
`kubernetes.io/service-name`) with lightkube's async client (the pod's ServiceAccount, which needs
`list` and `watch` on endpointslices in its namespace), and hands each new set of replicas to
the routed backend. A failed watch is listed again after a pause; the last known replicas keep
serving meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

log = logging.getLogger("h2ogpt_api.endpointslices")

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
IN_CLUSTER_NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
RETRY_PAUSE_S = 2.0
WATCH_TIMEOUT_S = 300  # the apiserver ends a watch after this; we list and watch again


def parse_target(target: str) -> tuple[str, str, str]:
    """`<namespace>/<service>[:<port name>]` -> (namespace, service, port name ('' = the first))."""
    rest, _, port_name = target.partition(":")
    namespace, _, service = rest.rpartition("/")
    if not service:
        raise ValueError(
            f"--inference_endpointslices {target!r}: expected <namespace>/<service>[:<port name>]"
        )
    return namespace, service, port_name


def _with_host_port(server: str, host: str, port: int) -> str:
    """`server` (an --inference_server entry) with its host and port replaced."""
    netloc_host = f"[{host}]" if ":" in host else host
    if server.startswith("vllm:") and not server.startswith(("vllm:http://", "vllm:https://")):
        return f"vllm:{netloc_host}:{port}"
    prefix = next((p for p in ("openai:", "vllm:") if server.startswith(p)), "")
    parts = urlsplit(server.removeprefix(prefix))
    userinfo = parts.netloc.rpartition("@")[0]
    netloc = f"{userinfo}@{netloc_host}:{port}" if userinfo else f"{netloc_host}:{port}"
    return prefix + urlunsplit(parts._replace(netloc=netloc))


def replica_servers(slices: Iterable[Mapping[str, Any]], template: str, port_name: str = "") -> list[str]:
    """One --inference_server entry per Ready endpoint address of `slices`, in a stable order."""
    servers: set[str] = set()
    for endpoint_slice in slices:
        ports = [p for p in endpoint_slice.get("ports") or [] if p.get("port")]
        chosen = next((p for p in ports if p.get("name") == port_name), None) if port_name else None
        port = chosen or (ports[0] if ports and not port_name else None)
        if port is None:
            continue
        for endpoint in endpoint_slice.get("endpoints") or []:
            # Kubernetes: a nil `ready` is to be read as ready.
            if (endpoint.get("conditions") or {}).get("ready") is False:
                continue
            for address in endpoint.get("addresses") or []:
                servers.add(_with_host_port(template, address, int(port["port"])))
    return sorted(servers)


def kube_config(flag: str, kubeconfig: str | None = None) -> Any:
    """lightkube's credentials: the pod's ServiceAccount in a pod, else $KUBECONFIG or ~/.kube/config
    (or `kubeconfig`). Read at start, so that a process with none stops with one clear line instead of
    serving without what `flag` asked for; ValueError says which."""
    # lightkube, not the `kubernetes` package: async, and a few MB in the api image where the
    # `kubernetes` package is over 100 MB. Imported only where a flag asks for the apiserver.
    from lightkube import KubeConfig  # noqa: PLC0415
    from lightkube.core.exceptions import ConfigError  # noqa: PLC0415

    try:
        return KubeConfig.from_file(kubeconfig) if kubeconfig else KubeConfig.from_env()
    except ConfigError as exc:
        raise ValueError(
            f"{flag} needs Kubernetes credentials (a pod's ServiceAccount token, or KUBECONFIG): {exc}"
        ) from None


class EndpointSliceWatcher:
    """Calls `on_change(servers)` whenever the Service's Ready endpoints change (on the event loop)."""

    def __init__(
        self,
        target: str,
        template: str,
        on_change: Callable[[list[str]], None],
        *,
        kubeconfig: str | None = None,
    ) -> None:
        namespace, self.service, self.port_name = parse_target(target)
        self.namespace = namespace or _in_cluster_namespace()
        self.template = template
        self._on_change = on_change
        self._config = kube_config("--inference_endpointslices", kubeconfig)
        self._task: asyncio.Task[None] | None = None
        self._last: list[str] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="endpointslice-watch")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _publish(self, slices: Mapping[str, Mapping[str, Any]]) -> None:
        servers = replica_servers(slices.values(), self.template, self.port_name)
        if servers != self._last:
            self._last = servers
            self._on_change(servers)

    async def _run(self) -> None:
        from lightkube import AsyncClient  # noqa: PLC0415 (only in the cluster)
        from lightkube.core.exceptions import NotReadyError  # noqa: PLC0415
        from lightkube.resources.discovery_v1 import EndpointSlice  # noqa: PLC0415

        client = AsyncClient(config=self._config, namespace=self.namespace)
        labels: dict[str, Any] = {SERVICE_NAME_LABEL: self.service}
        try:
            while True:
                try:
                    listed = client.list(EndpointSlice, namespace=self.namespace, labels=labels)
                    slices = {str(item.metadata.name): item.to_dict() async for item in listed}  # type: ignore[union-attr]
                    self._publish(slices)
                    try:
                        version: str | None = listed.resourceVersion
                    except NotReadyError:
                        version = None
                    async for operation, item in client.watch(
                        EndpointSlice,
                        namespace=self.namespace,
                        labels=labels,
                        resource_version=version,
                        server_timeout=WATCH_TIMEOUT_S,
                    ):
                        name = str(item.metadata.name)  # type: ignore[union-attr]
                        if operation == "DELETED":
                            slices.pop(name, None)
                        else:
                            slices[name] = item.to_dict()
                        self._publish(slices)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.warning(
                        "watching EndpointSlices of %s/%s failed (%s); again in %.0f s",
                        self.namespace, self.service, type(exc).__name__, RETRY_PAUSE_S,
                    )  # fmt: skip
                    await asyncio.sleep(RETRY_PAUSE_S)
        finally:
            await client.close()


def _in_cluster_namespace() -> str:
    with contextlib.suppress(OSError), open(IN_CLUSTER_NAMESPACE_FILE) as handle:
        return handle.read().strip()
    raise ValueError(
        "--inference_endpointslices names no namespace and this is not a pod: use <namespace>/<service>"
    )

