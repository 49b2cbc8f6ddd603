"""Inference backends behind one protocol; `create_backend` picks one from `--inference_server`."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from h2ogpt_api.backends.base import Backend, BackendError

if TYPE_CHECKING:
    from h2ogpt_api.backends.routed import InFlight
    from h2ogpt_api.settings import Settings

__all__ = ["Backend", "BackendError", "create_backend", "create_server_backend", "replica_follower"]


def create_backend(
    settings: Settings,
    on_hold: Callable[[], object] | None = None,
    on_start: Callable[[int, int], None] | None = None,
    in_flight: InFlight | None = None,
) -> Backend:
    """The backend `--inference_server` names (several comma-separated servers are replicas behind
    one `RoutedBackend`), holding requests while it has no ready replica when `--hold_seconds` is
    set (the embedded model is always there: never held); `on_hold` is called as a request starts
    being held, `on_start` as a routed generation starts on a replica (`RoutedBackend`), with the
    count of generations in flight `in_flight` keeps (this process's when None)."""
    backend = _routed_or_single_backend(settings, on_start, in_flight)
    if settings.hold_seconds > 0 and settings.inference_server:
        from h2ogpt_api.backends.holding import HoldingBackend  # noqa: PLC0415

        return HoldingBackend(
            backend,
            hold_seconds=settings.hold_seconds,
            max_held=settings.max_held,
            keepalive_seconds=settings.keepalive_seconds,
            on_hold=on_hold,
        )
    return backend


def replica_follower(backend: Backend) -> Callable[[list[str]], None]:
    """What the EndpointSlice watch calls with each new set of replicas: the routed backend takes them,
    and requests held meanwhile (scale from zero, a `HoldingBackend` around it) try again at once, so
    a replica is used as soon as its endpoint is Ready, not after the held request's next backoff."""
    from h2ogpt_api.backends.holding import HoldingBackend  # noqa: PLC0415
    from h2ogpt_api.backends.routed import RoutedBackend  # noqa: PLC0415

    holding = backend if isinstance(backend, HoldingBackend) else None
    routed = holding.inner if holding is not None else backend
    if not isinstance(routed, RoutedBackend):
        raise TypeError(f"replicas can only be followed by a routed backend, not {type(routed).__name__}")

    def follow(servers: list[str]) -> None:
        routed.set_servers(servers)
        if holding is not None:
            holding.retry_now()

    return follow


def _routed_or_single_backend(
    settings: Settings, on_start: Callable[[int, int], None] | None, in_flight: InFlight | None
) -> Backend:
    """Heavy imports happen only for the kind chosen."""
    servers = settings.inference_servers
    if settings.routes_across_replicas:
        from h2ogpt_api.backends.routed import RoutedBackend  # noqa: PLC0415
        from h2ogpt_api.routing import Router  # noqa: PLC0415

        router = Router([], policy=settings.routing or "prefix", load_factor=settings.routing_load_factor)
        return RoutedBackend(
            # Followed from EndpointSlices: the replicas come from the watch (cli.py), the Service
            # URL stands in until the first list.
            servers,
            lambda server: create_server_backend(server, settings),
            router=router,
            prefix_chars=settings.routing_prefix_chars,
            on_start=on_start,
            in_flight=in_flight,
        )
    return create_server_backend(servers[0] if servers else "", settings)


def create_server_backend(server: str, settings: Settings) -> Backend:
    """The backend for one `--inference_server` entry (one replica)."""
    timeout = settings.backend_timeout
    if server.startswith(("http://", "https://")):
        from h2ogpt_api.backends.tgi import TgiBackend  # noqa: PLC0415

        return TgiBackend(server, model_name=settings.base_model, timeout=timeout)
    if server.startswith("vllm:"):
        from h2ogpt_api.backends.openai_compat import OpenAICompatBackend, vllm_base_url  # noqa: PLC0415

        return OpenAICompatBackend(
            vllm_base_url(server), kind="vllm", model_name=settings.base_model, timeout=timeout
        )
    if server.startswith("openai:"):
        from h2ogpt_api.backends.openai_compat import OpenAICompatBackend  # noqa: PLC0415

        return OpenAICompatBackend(
            server.removeprefix("openai:"), kind="openai", model_name=settings.base_model, timeout=timeout
        )
    from h2ogpt_api.backends.embedded import EmbeddedBackend  # noqa: PLC0415

    return EmbeddedBackend.load(model_name=settings.base_model, n_ctx=settings.max_seq_len)
