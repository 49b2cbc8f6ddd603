"""Operator-wide settings: default images, read once from `H2OGPT_OPERATOR_*` environment variables.

A CR that names an image wins; these fill in when it does not, so the Helm chart can pin every
image a stack runs without each CR repeating them.
"""

from __future__ import annotations

from collections.abc import Mapping

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "H2OGPT_OPERATOR_"


class Images(BaseModel):
    """Default image per component. The h2ogpt-platform images (`make images`, tagged with the
    project's version) run as uid/gid 10001, which the pods' security contexts rely on."""

    model_config = ConfigDict(frozen=True)

    tgi: str = "ghcr.io/huggingface/text-generation-inference:3.3.6"
    vllm: str = "vllm/vllm-openai:v0.11.0"
    llamacpp: str = "ghcr.io/h2ogpt-platform/h2ogpt-llamacpp:0.1.0"
    weaviate: str = "ghcr.io/h2ogpt-platform/h2ogpt-weaviate:0.1.0"
    api: str = "ghcr.io/h2ogpt-platform/h2ogpt-api:0.1.0"


class OperatorConfig(BaseModel):
    model_config = ConfigDict(frozen=True)

    images: Images = Field(default_factory=Images)

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> OperatorConfig:
        """`H2OGPT_OPERATOR_TGI_IMAGE`, `..._VLLM_IMAGE`, `..._LLAMACPP_IMAGE`, `..._WEAVIATE_IMAGE`,
        `..._API_IMAGE`."""
        overrides = {
            name: environ[f"{ENV_PREFIX}{name.upper()}_IMAGE"]
            for name in Images.model_fields
            if environ.get(f"{ENV_PREFIX}{name.upper()}_IMAGE")
        }
        return cls(images=Images(**overrides))
