"""Inference backends behind one protocol; `create_backend` picks one from `--inference_server`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from h2ogpt_api.backends.base import Backend, BackendError

if TYPE_CHECKING:
    from h2ogpt_api.settings import Settings

__all__ = ["Backend", "BackendError", "create_backend"]


def create_backend(settings: Settings) -> Backend:
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
