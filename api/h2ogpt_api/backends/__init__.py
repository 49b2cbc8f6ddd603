"""Inference backends behind one protocol; `create_backend` picks one from `--inference_server`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2ogpt_api.backends.base import Backend, BackendError

if TYPE_CHECKING:
    from h2ogpt_api.settings import Settings

__all__ = ["Backend", "BackendError", "create_backend"]


def create_backend(settings: Settings) -> Backend:
    """The backend `--inference_server` names, holding requests while it has no ready replica when
    `--hold_seconds` is set (the embedded model is always there: never held)."""
    backend = _server_backend(settings)
    if settings.hold_seconds > 0 and settings.inference_server:
        from h2ogpt_api.backends.holding import HoldingBackend  # noqa: PLC0415

        return HoldingBackend(
            backend,
            hold_seconds=settings.hold_seconds,
            max_held=settings.max_held,
            keepalive_seconds=settings.keepalive_seconds,
        )
    return backend


def _server_backend(settings: Settings) -> Backend:
    """The backend `--inference_server` names. Heavy imports happen only for the one chosen."""
    server = settings.inference_server
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
