"""Operator-wide settings: default images, read once from `H2OGPT_OPERATOR_*` environment variables.

A CR that names an image wins; these fill in when it does not, so the Helm chart can pin every
image a stack runs without each CR repeating them.
"""

from __future__ import annotations

from collections.abc import Mapping
from importlib.metadata import version

from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "H2OGPT_OPERATOR_"
# The project's version (pyproject.toml, through the installed package's metadata): the tag of the
# images a release publishes and `make images` builds, so the defaults cannot drift from it.
PROJECT_VERSION = version("h2ogpt-platform")
PROJECT_IMAGES = "ghcr.io/h2ogpt-platform"


class Images(BaseModel):
    """Default image per component. The h2ogpt-platform images (`make images`, tagged with the
    project's version) run as uid/gid 10001, which the pods' security contexts rely on."""

    model_config = ConfigDict(frozen=True)

    tgi: str = "ghcr.io/huggingface/text-generation-inference:3.3.6"
    vllm: str = "vllm/vllm-openai:v0.11.0"
    llamacpp: str = f"{PROJECT_IMAGES}/h2ogpt-llamacpp:{PROJECT_VERSION}"
    weaviate: str = f"{PROJECT_IMAGES}/h2ogpt-weaviate:{PROJECT_VERSION}"
    api: str = f"{PROJECT_IMAGES}/h2ogpt-api:{PROJECT_VERSION}"


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
