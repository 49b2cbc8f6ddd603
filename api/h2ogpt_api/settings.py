"""`h2ogpt-api` settings: h2oGPT's flag names, each also read from `H2OGPT_<UPPER_NAME>`.

`parse_settings` is pure (argv and environ in, `Settings` out) so every rule here is unit-tested
without starting anything. Values that name files (`--auth`, `--h2ogpt_api_keys`) are kept as
given and read by `auth.py`, which re-reads them when they change.
"""

from __future__ import annotations

import ast
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_PREFIX = "H2OGPT_"
NO_DOCUMENT_MODES = frozenset({"LLM", "Disabled"})
# Names of the one embedding model this package runs in-process ("" = the default).
IN_PROCESS_EMBEDDING_MODELS = frozenset({"", "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})


class SettingsError(ValueError):
    """A flag or environment value that cannot be used; the message is one line for the user."""


class Settings(BaseModel):
    """Every `h2ogpt-api` flag. Field names are h2oGPT's flag names without the dashes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inference_server: str = ""
    base_model: str = "HuggingFaceTB/SmolLM2-135M-Instruct"
    max_seq_len: int = Field(2048, ge=128, le=1_048_576)
    prompt_type: str = ""
    # h2oGPT's meaning: 'auto' (or 'None') = the model's default, '' = none, else the text itself.
    system_prompt: str = "auto"
    openai_server: bool = True
    openai_port: int = Field(5000, ge=0, le=65535)
    gradio: bool = True
    gradio_port: int = Field(7860, ge=0, le=65535)
    server_name: str = "0.0.0.0"
    # A list of keys, a dict {name: key} (the name is the caller's identity), or the path of a JSON
    # file holding either (re-read when it changes).
    h2ogpt_api_keys: list[str] | dict[str, str] | str = Field(default_factory=list)
    enforce_h2ogpt_api_key: bool = False
    auth_access: Literal["open", "closed"] = "open"
    # A JSON file {"user": {"password": "..."}}, or a literal [("user", "pass")] / JSON dict.
    auth: str = ""
    guest_name: str = "guest"
    async_output: bool = True
    num_async: int = Field(3, ge=1, le=256)
    langchain_mode: str = "LLM"
    langchain_modes: list[str] = Field(default_factory=lambda: ["UserData", "MyData", "LLM"])
    save_dir: Path = Path("./save")
    weaviate_url: str = ""
    weaviate_api_key: str = ""
    embedding_server: str = ""
    # The embedding model: in-process only all-MiniLM-L6-v2 exists; with --embedding_server, the
    # model name sent to it (empty: the server's first listed model).
    hf_embedding_model: str = ""
    # An unknown `model` in a generation request: True = answered by the served model (h2oGPT's
    # behaviour, which its documented examples rely on), False = 404 model_not_found.
    # GET /v1/models/<unknown> is a 404 either way.
    model_fallback: bool = True
    max_concurrency: int = Field(64, ge=1, le=100_000)
    # Requests allowed to wait for a generation slot; one more gets 429.
    max_queue: int = Field(256, ge=0, le=1_000_000)
    # Largest accepted request body; a larger one gets 413.
    max_request_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    # Seconds to wait for the backend's next byte (first token included) before answering 504.
    backend_timeout: float = Field(600.0, gt=0)
    # Per-key limits (0 = none): counted per API key name, else per login, else for all anonymous
    # callers together; in each replica. Over a limit: 429 with Retry-After.
    requests_per_minute: int = Field(0, ge=0, le=100_000_000)
    tokens_per_minute: int = Field(0, ge=0, le=10_000_000_000)
    # Seconds after its last document was added that an anonymous Gradio session's MyData is deleted.
    anonymous_mydata_ttl: float = Field(86_400.0, gt=0)
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("h2ogpt_api_keys", mode="before")
    @classmethod
    def _keys_list_or_path(cls, value: object) -> object:
        if isinstance(value, str):
            parsed = _literal_or_none(value)
            if parsed is None:
                return value.strip()  # a file path
            return parsed
        return value

    @field_validator("langchain_modes", mode="before")
    @classmethod
    def _modes_list(cls, value: object) -> object:
        if isinstance(value, str):
            parsed = _literal_or_none(value)
            if parsed is None:
                return [part.strip() for part in value.split(",") if part.strip()]
            return parsed
        return value

    @field_validator("inference_server")
    @classmethod
    def _known_server_form(cls, value: str) -> str:
        value = value.strip()
        if value and not value.startswith(("http://", "https://", "vllm:", "openai:")):
            raise ValueError(
                "must be empty (embedded model), http://host:port (TGI), vllm:host:port or openai:<base_url>"
            )
        return value

    @model_validator(mode="after")
    def _embedding_model_available(self) -> Settings:
        if not self.embedding_server and self.hf_embedding_model not in IN_PROCESS_EMBEDDING_MODELS:
            raise ValueError(
                f"hf_embedding_model {self.hf_embedding_model!r} needs --embedding_server: in-process "
                "embeddings are sentence-transformers/all-MiniLM-L6-v2 only"
            )
        return self

    @property
    def document_modes(self) -> list[str]:
        """The offered collections that hold documents (everything but LLM / Disabled)."""
        return [mode for mode in self.langchain_modes if mode not in NO_DOCUMENT_MODES]

    def redacted(self) -> dict[str, Any]:
        """The settings for logs: keys and passwords replaced by their count or a mask."""
        shown = self.model_dump(mode="json")
        if isinstance(self.h2ogpt_api_keys, list | dict):
            shown["h2ogpt_api_keys"] = f"<{len(self.h2ogpt_api_keys)} keys>"
        if shown["weaviate_api_key"]:
            shown["weaviate_api_key"] = "<set>"
        if self.auth.lstrip().startswith(("[", "{", "(")):  # inline users carry passwords
            shown["auth"] = "<inline users>"
        return shown


def _literal_or_none(text: str) -> object | None:
    """A Python/JSON literal (list, dict), or None when the text is not one (e.g. a path)."""
    stripped = text.strip()
    if not stripped.startswith(("[", "{", "(")):
        return None
    try:
        parsed: object = ast.literal_eval(stripped)
    except (ValueError, SyntaxError) as exc:
        raise SettingsError(f"cannot parse {text!r} as a list literal: {exc}") from None
    return parsed


_BOOL_WORDS = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def parse_bool(text: str) -> bool:
    """h2oGPT's boolean spellings: True/False/true/false/1/0 (and yes/no)."""
    try:
        return _BOOL_WORDS[text.strip().lower()]
    except KeyError:
        raise SettingsError(f"expected True/False/1/0, got {text!r}") from None


def _bool_fields() -> frozenset[str]:
    return frozenset(name for name, field in Settings.model_fields.items() if field.annotation is bool)


def _from_environ(environ: Mapping[str, str]) -> dict[str, object]:
    raw: dict[str, object] = {}
    for name in Settings.model_fields:
        env_value = environ.get(ENV_PREFIX + name.upper())
        if env_value is not None:
            raw[name] = env_value
    # Weaviate's own variable names, which its tooling and h2oGPT read.
    for name, env_name in (("weaviate_url", "WEAVIATE_URL"), ("weaviate_api_key", "WEAVIATE_API_KEY")):
        if name not in raw and environ.get(env_name):
            raw[name] = environ[env_name]
    return raw


def _from_argv(argv: Sequence[str]) -> dict[str, object]:
    known = set(Settings.model_fields)
    booleans = _bool_fields()
    raw: dict[str, object] = {}
    args = list(argv)
    index = 0
    while index < len(args):
        arg = args[index]
        if not arg.startswith("--") or arg == "--":
            raise SettingsError(f"unexpected argument {arg!r}: flags look like --name value")
        name, has_equals, value = arg[2:].partition("=")
        name = name.replace("-", "_")
        if name not in known:
            raise SettingsError(f"unknown flag --{name} (see h2ogpt-api --help)")
        if not has_equals:
            next_is_value = index + 1 < len(args) and not args[index + 1].startswith("--")
            if not next_is_value and name not in booleans:
                raise SettingsError(f"flag --{name} needs a value")
            value = args[index + 1] if next_is_value else "True"
            index += 1 if next_is_value else 0
        raw[name] = value
        index += 1
    return raw


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Flags (`--name value`, `--name=value`, a bare `--bool_flag`) over `H2OGPT_<NAME>` env over defaults.

    Raises SettingsError with a one-line message naming the flag for anything unusable.
    """
    raw = {**_from_environ(environ), **_from_argv(argv)}
    for name in _bool_fields() & raw.keys():
        value = raw[name]
        if isinstance(value, str):
            try:
                raw[name] = parse_bool(value)
            except SettingsError as exc:
                raise SettingsError(f"--{name}: {exc}") from None
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        flag = ".".join(str(part) for part in first["loc"][:1]) or "settings"
        raise SettingsError(f"--{flag}: {first['msg']} (got {first.get('input')!r})") from None

    if (
        settings.langchain_mode not in settings.langchain_modes
        and settings.langchain_mode not in NO_DOCUMENT_MODES
    ):
        raise SettingsError(
            f"--langchain_mode: {settings.langchain_mode!r} is not one of "
            f"--langchain_modes {settings.langchain_modes}"
        )
    return settings


HELP_TEXT = """usage: h2ogpt-api [--flag value ...]

Every flag is also read from the environment as H2OGPT_<FLAG_IN_UPPER_CASE>; a flag wins.
Booleans take True/False/true/false/1/0; lists take a Python/JSON literal, e.g. "['LLM']".

""" + "\n".join(
    f"  --{name:<24} default {field.default if field.default_factory is None else field.default_factory()!r}"  # type: ignore[call-arg]
    for name, field in Settings.model_fields.items()
)
