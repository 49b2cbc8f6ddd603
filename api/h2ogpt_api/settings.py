"""`h2ogpt-api` settings: h2oGPT's flag names, each also read from `H2OGPT_<UPPER_NAME>`.

`parse_settings` is pure (argv and environ in, `Settings` out) so every rule here is unit-tested
without starting anything. Values that name files (`--auth`, `--h2ogpt_api_keys`) are kept as
given and read by `auth.py`, which re-reads them when they change.

h2oGPT's own command lines start this server unchanged: its flags that mean something here are
fields or are mapped (`--concurrency_count`, `--auth_filename`, `--model_lock`, `--db_type`), and
the rest (`h2ogpt_flags.IGNORED_H2OGPT_FLAGS`) are accepted and reported back as warnings.
Gradio's `GRADIO_SERVER_PORT` / `GRADIO_SERVER_NAME` are honoured below the flags and `H2OGPT_*`.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from h2ogpt_api.demand import parse_lease
from h2ogpt_api.h2ogpt_flags import IGNORED_H2OGPT_FLAGS
from h2ogpt_api.retrieval.url_guard import UrlPolicy

ENV_PREFIX = "H2OGPT_"
# Gradio's own variables (h2oGPT documents them for the UI port and bind address); they rank
# below the flags and H2OGPT_<NAME>.
GRADIO_ENV = {"gradio_port": "GRADIO_SERVER_PORT", "server_name": "GRADIO_SERVER_NAME"}
# `--db_type` values: documents live in Weaviate whatever h2oGPT's command line asked for.
DB_TYPE_HERE = "weaviate"
NO_DOCUMENT_MODES = frozenset({"LLM", "Disabled"})
# Names of the one embedding model this package runs in-process ("" = the default).
IN_PROCESS_EMBEDDING_MODELS = frozenset({"", "sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"})


class SettingsError(ValueError):
    """A flag or environment value that cannot be used; the message is one line for the user."""


class Settings(BaseModel):
    """Every `h2ogpt-api` flag. Field names are h2oGPT's flag names without the dashes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inference_server: str = Field(
        "",
        description="http://host:port = TGI; vllm:host:port (or vllm_chat:) = vLLM; openai:<base_url> = any "
        "OpenAI-compatible server, /v1 included (key from OPENAI_API_KEY); empty = the embedded CPU model; "
        "several of one kind, comma-separated, are replicas the API routes between (--routing)",
    )
    routing: Literal["", "prefix", "least_loaded", "round_robin"] = Field(
        "",
        description="how requests are spread over several inference replicas: prefix (consistent hashing "
        "on the prompt's prefix with bounded load; the default), least_loaded, round_robin",
    )
    inference_endpointslices: str = Field(
        "",
        description="<namespace>/<service>[:<port name>]: route to each Ready endpoint of that inference "
        "Service, followed through its EndpointSlices (in the cluster; --inference_server is then the "
        "Service's URL, giving the kind and URL form); empty = --inference_server as given",
    )
    routing_load_factor: float = Field(
        1.25,
        ge=1.0,
        le=10.0,
        description="prefix routing: no replica takes more than this times the mean in-flight requests",
    )
    routing_prefix_chars: int = Field(
        1024,
        ge=16,
        le=1_000_000,
        description="prefix routing: characters of the first user message that, after the whole system "
        "prompt, make the key (an X-Session-ID header, or a logged-in user, pins a conversation instead)",
    )
    base_model: str = Field(
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        description="model name reported to clients and sent to OpenAI-compatible servers",
    )
    max_seq_len: int = Field(2048, ge=128, le=1_048_576, description="the model's context length, in tokens")
    prompt_type: str = Field(
        "",
        description="prompt template for plain-generate backends (plain, llama2, zephyr, chatml, mistral, "
        "...); "
        "empty = the backend's chat template when it has one, else chatml",
    )
    # h2oGPT's meaning: 'auto' (or 'None') = the model's default, '' = none, else the text itself.
    system_prompt: str = Field(
        "auto", description="'auto' or 'None' = the model's default, '' = none, anything else = that text"
    )
    openai_server: bool = Field(True, description="serve the OpenAI-compatible API")
    openai_port: int = Field(
        5000, ge=0, le=65535, description="port of the OpenAI-compatible API (0 = any free)"
    )
    gradio: bool = Field(True, description="serve the Gradio UI and h2oGPT's Gradio API")
    gradio_port: int = Field(
        7860, ge=0, le=65535, description="port of the Gradio app (also read from GRADIO_SERVER_PORT)"
    )
    server_name: str = Field(
        "0.0.0.0", description="bind address of both apps (also read from GRADIO_SERVER_NAME)"
    )
    # A list of keys, a dict {name: key} (the name is the caller's identity), or the path of a JSON
    # file holding either (re-read when it changes).
    h2ogpt_api_keys: list[str] | dict[str, str] | str = Field(
        default_factory=list,
        description="API keys: a list literal, a dict {name: key} (the name is the caller's identity), "
        "or the path of a JSON file holding either (re-read when it changes)",
    )
    enforce_h2ogpt_api_key: bool = Field(False, description="refuse requests without a valid API key")
    auth_access: Literal["open", "closed"] = Field(
        "open",
        description="open = no login is the guest and a new name registers; closed = listed users only",
    )
    # A JSON file {"user": {"password": "..."}}, or a literal [("user", "pass")] / JSON dict.
    auth: str = Field(
        "",
        description="users: a JSON file {\"user\": {\"password\": ...}} (h2oGPT's auth.json), "
        "or a literal [('user', 'pass')]; --auth_filename is read as this when --auth is not given",
    )
    guest_name: str = Field("guest", description="identity of requests without a login when access is open")
    async_output: bool = Field(True, description="run Summarize/Extract map calls in parallel")
    num_async: int = Field(3, ge=1, le=256, description="parallel map calls for Summarize/Extract")
    langchain_mode: str = Field("LLM", description="default collection (LLM = no documents)")
    langchain_modes: list[str] = Field(
        default_factory=lambda: ["UserData", "MyData", "LLM"], description="the collections offered"
    )
    save_dir: Path = Field(
        Path("./save"), description="local state; the local Weaviate's data lives under it"
    )
    user_path: Path | None = Field(
        None,
        description="a folder whose files are added to the shared UserData collection at start-up "
        "(documents already there are skipped)",
    )
    weaviate_url: str = Field(
        "", description="external Weaviate (WEAVIATE_URL also read); empty = start a local weaviate-server"
    )
    weaviate_api_key: str = Field("", description="the external Weaviate's key (WEAVIATE_API_KEY also read)")
    weaviate_wait_seconds: float = Field(
        0.0, ge=0, le=3600,
        description="at start, how long to keep trying an external Weaviate that is not reachable or not "
        "ready before exiting with the reason; 0 = try once (the operator's api pods wait 300)",
    )
    embedding_server: str = Field(
        "", description="OpenAI-compatible /v1/embeddings base URL; empty = MiniLM in-process"
    )
    # The embedding model: in-process only all-MiniLM-L6-v2 exists; with --embedding_server, the
    # model name sent to it (empty: the server's first listed model).
    hf_embedding_model: str = Field(
        "",
        description="in-process: sentence-transformers/all-MiniLM-L6-v2 only; with --embedding_server the "
        "model name sent to it (empty = its first listed model)",
    )
    chunk_size: int = Field(
        512,
        ge=64,
        le=16_000,
        description="characters per document chunk when a client gives none (the UI's default)",
    )
    # Server-wide defaults for what a request does not say (h2oGPT's flags of the same names);
    # a request's own value wins.
    max_new_tokens: int = Field(256, ge=1, le=131_072, description="default answer length, in tokens")
    max_max_new_tokens: int = Field(
        131_072, ge=1, description="cap on any request's max_new_tokens (larger asks are lowered to it)"
    )
    min_new_tokens: int = Field(0, ge=0, description="default minimum answer length, in tokens")
    temperature: float = Field(0.3, ge=0.0, le=2.0, description="default sampling temperature (0 = greedy)")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="default nucleus sampling mass")
    top_k: int = Field(40, ge=0, le=100_000, description="default top-k sampling (0 = off)")
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0, description="default repetition penalty")
    max_time: float = Field(360.0, gt=0, description="default seconds a generation may run; it ends there")
    max_max_time: float = Field(
        3600.0, gt=0, description="cap on any request's max_time (larger asks are lowered to it)"
    )
    top_k_docs: int = Field(
        10, ge=-1, le=10_000, description="default document chunks/parts per answer (-1 = all)"
    )
    # An unknown `model` in a generation request: True = answered by the served model (h2oGPT's
    # behaviour, which its documented examples rely on), False = 404 model_not_found.
    # GET /v1/models/<unknown> is a 404 either way.
    model_fallback: bool = Field(
        True,
        description="an unknown model in a generation request is answered by the served model (False = 404)",
    )
    # None: follow the backend (h2ogpt_api.concurrency): what TGI's /info says it admits, no
    # limit of our own for vLLM / OpenAI-compatible servers, one at a time for the embedded model.
    max_concurrency: int | None = Field(
        None,
        ge=1,
        le=100_000,
        description="generations in flight (h2oGPT's --concurrency_count sets it too); "
        "default: what the backend admits (TGI /info max_concurrent_requests; none of our own "
        "for vLLM/OpenAI servers; 1 for the embedded model)",
    )
    # Processes sharing the OpenAI port (SO_REUSEPORT), so a node with more cores is used; the
    # Gradio app runs in the first only (its sessions live in one process). h2ogpt_api.workers.
    workers: int = Field(
        1,
        ge=1,
        le=256,
        description="processes serving the OpenAI port (h2oGPT's --openai_workers sets it too); "
        "Gradio runs in the first",
    )
    # Requests allowed to wait for a generation slot; one more gets 429.
    max_queue: int = Field(
        256, ge=0, le=1_000_000, description="requests that may wait for a slot; more get 429"
    )
    # Largest accepted request body; a larger one gets 413.
    max_request_bytes: int = Field(
        8 * 1024 * 1024, ge=1024, description="largest request body; larger get 413"
    )
    # Seconds to wait for the backend's next byte (first token included) before answering 504.
    backend_timeout: float = Field(
        600.0, gt=0, description="seconds to wait for the backend's next byte before answering 504"
    )
    # h2oGPT's OpenAI server allows every origin; a list narrows it, [] turns CORS off.
    cors_origins: list[str] = Field(
        default_factory=lambda: ["*"],
        description="origins the OpenAI API answers cross-origin (h2oGPT: every origin); [] = no CORS",
    )
    # Scale from zero: requests wait for an inference replica instead of failing (backends/holding.py).
    hold_seconds: float = Field(
        0.0,
        ge=0,
        le=3600,
        description="while no inference replica is ready (connection refused, 503), hold a request up to "
        "this many seconds, then 503 with Retry-After; 0 = answer 503 at once",
    )
    max_held: int = Field(
        256, ge=1, le=100_000, description="requests held at once while no replica is ready; more get 503"
    )
    demand_lease: str = Field(
        "",
        description="<namespace>/<name>: renew this Lease when a request starts being held, so the "
        "operator scales from zero at once instead of at its next poll (demand.py; needs --hold_seconds "
        "or --scale_up_in_flight); empty = no signal",
    )
    scale_up_in_flight: int = Field(
        0,
        ge=0,
        le=10_000,
        description="renew --demand_lease also when this server alone (its --workers together) has more "
        "generations in flight than this many per ready replica (the stack's targetInFlight), so the "
        "operator scales up at once; needs several replicas to route to; 0 = only held requests renew it",
    )
    scale_up_max_replicas: int = Field(
        64, ge=1, le=64, description="the most replicas the stack may have: at that many, load renews nothing"
    )
    keepalive_seconds: float = Field(
        10.0,
        gt=0,
        le=300,
        description="while a Summarize/Extract map step runs, a progress event at least this often "
        "(an SSE comment on OpenAI streams, so idle proxies keep the stream open)",
    )
    requests_per_minute: int = Field(
        0,
        ge=0,
        le=100_000_000,
        description="per-key limit (0 = none), counted per API key name, else per login, else for all "
        "anonymous callers together, in each replica; over it: 429 with Retry-After",
    )
    tokens_per_minute: int = Field(
        0, ge=0, le=10_000_000_000, description="per-key token limit per minute (0 = none), counted as above"
    )
    # Kubernetes stops a pod while its Service may still route to it, and keep-alive clients hold their
    # connections: h2ogpt_api.draining. The operator sets it on its api pods.
    drain_seconds: float = Field(
        0.0,
        ge=0,
        le=600,
        description="after a stop signal keep serving this long, each answer closing its connection, so "
        "keep-alive clients move to a replica that stays; then stop (a second signal stops at once)",
    )
    anonymous_mydata_ttl: float = Field(
        86_400.0,
        gt=0,
        description="seconds after its last addition that an anonymous Gradio session's MyData is deleted",
    )
    log_level: Literal["debug", "info", "warning", "error"] = Field("info", description="log verbosity")
    allowed_url_hosts: list[str] = Field(
        default_factory=list,
        description="host names (*.domain too), addresses or CIDRs URL ingestion may fetch besides public "
        "addresses (e.g. an intranet wiki); comma-separated or a list literal",
    )
    blocked_url_cidrs: list[str] = Field(
        default_factory=list,
        description="ranges URL ingestion also refuses: a cluster's Service and Pod CIDRs when not private",
    )

    @field_validator("h2ogpt_api_keys", mode="before")
    @classmethod
    def _keys_list_or_path(cls, value: object) -> object:
        if isinstance(value, str):
            parsed = _literal_or_none(value)
            if parsed is None:
                return value.strip()  # a file path
            return parsed
        return value

    @field_validator(
        "langchain_modes", "cors_origins", "allowed_url_hosts", "blocked_url_cidrs", mode="before"
    )
    @classmethod
    def _comma_separated_list(cls, value: object) -> object:
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
        # vllm_chat: is h2oGPT's name for the same vLLM chat route.
        servers = [part.strip() for part in value.split(",")]
        if len(servers) > 1 and not all(servers):
            raise ValueError(f"{value!r} has an empty entry: give comma-separated server URLs of one kind")
        servers = [
            "vllm:" + server.removeprefix("vllm_chat:") if server.startswith("vllm_chat:") else server
            for server in servers
        ]
        for server in servers:
            if server and not server.startswith(("http://", "https://", "vllm:", "openai:")):
                raise ValueError(
                    "must be empty (embedded model), http://host:port (TGI), vllm:host:port or "
                    "openai:<base_url> (several of one kind: comma-separated)"
                )
        kinds = {server_kind(server) for server in servers}
        if len(kinds) > 1:
            raise ValueError(
                f"replicas must all be one kind of server, got {', '.join(sorted(kinds))}: "
                "routing sends any request to any of them"
            )
        return ",".join(servers)

    @property
    def inference_servers(self) -> list[str]:
        """`--inference_server` as its replicas (one entry, or none for the embedded model)."""
        return [server for server in self.inference_server.split(",") if server]

    @property
    def routes_across_replicas(self) -> bool:
        """Whether the API picks the inference replica itself (backends/routed.py)."""
        return len(self.inference_servers) > 1 or bool(self.inference_endpointslices)

    @field_validator("allowed_url_hosts")
    @classmethod
    def _allowed_hosts_parse(cls, value: list[str]) -> list[str]:
        UrlPolicy.from_settings(allowed_url_hosts=value)  # a bad entry fails at start-up, by name
        return value

    @field_validator("blocked_url_cidrs")
    @classmethod
    def _blocked_cidrs_parse(cls, value: list[str]) -> list[str]:
        UrlPolicy.from_settings(blocked_url_cidrs=value)
        return value

    def url_policy(self) -> UrlPolicy:
        return UrlPolicy.from_settings(self.allowed_url_hosts, self.blocked_url_cidrs)

    @field_validator("demand_lease")
    @classmethod
    def _demand_lease_named(cls, value: str) -> str:
        if value:
            parse_lease(value)
        return value

    @model_validator(mode="after")
    def _demand_lease_has_a_use(self) -> Settings:
        if self.demand_lease and self.hold_seconds <= 0 and self.scale_up_in_flight == 0:
            raise ValueError(
                "--demand_lease signals held requests or load: it needs --hold_seconds > 0 or "
                "--scale_up_in_flight > 0"
            )
        if self.scale_up_in_flight and not self.demand_lease:
            raise ValueError("--scale_up_in_flight renews the demand Lease: it needs --demand_lease")
        if self.scale_up_in_flight and not self.routes_across_replicas:
            raise ValueError(
                "--scale_up_in_flight counts the replicas it routes to: it needs several --inference_server "
                "entries or --inference_endpointslices"
            )
        return self

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


def server_kind(server: str) -> str:
    """The backend kind an `--inference_server` entry names: tgi, vllm, openai or embedded."""
    if server.startswith(("http://", "https://")):
        return "tgi"
    if server.startswith(("vllm:", "vllm_chat:")):
        return "vllm"
    if server.startswith("openai:"):
        return "openai"
    return "embedded"


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


# h2oGPT flags that set one of ours under another name.
_RENAMED = {"concurrency_count": "max_concurrency", "openai_workers": "workers"}
# h2oGPT flags read here, but not fields: mapped in `_apply_h2ogpt_flags`.
_MAPPED = frozenset({"auth_filename", "model_lock", "db_type"})


def _accepted(name: str) -> bool:
    return any(name in names for names in (Settings.model_fields, _RENAMED, _MAPPED, IGNORED_H2OGPT_FLAGS))


def _from_environ(environ: Mapping[str, str]) -> dict[str, object]:
    """`H2OGPT_<NAME>` (h2oGPT also reads `h2ogpt_<name>`), then Gradio's and Weaviate's own names."""
    raw: dict[str, object] = {}
    for key, env_value in environ.items():
        if key.startswith((ENV_PREFIX, ENV_PREFIX.lower())):
            name = key[len(ENV_PREFIX) :].lower()
            # Only names that are flags: other H2OGPT_* variables (H2OGPT_SAVE_DIR for
            # `make run`, the tests' own) are not this parser's business.
            if _accepted(name):
                raw[name] = env_value
    for name, env_name in (
        ("weaviate_url", "WEAVIATE_URL"),
        ("weaviate_api_key", "WEAVIATE_API_KEY"),
        *GRADIO_ENV.items(),
    ):
        if name not in raw and environ.get(env_name):
            raw[name] = environ[env_name]
    return raw


def _from_argv(argv: Sequence[str]) -> dict[str, object]:
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
        if not _accepted(name):
            raise SettingsError(f"unknown flag --{name} (see h2ogpt-api --help)")
        if not has_equals:
            next_is_value = index + 1 < len(args) and not args[index + 1].startswith("--")
            # A bare flag is True: for our booleans, and for h2oGPT's flags we ignore (Fire's rule).
            if not next_is_value and name not in booleans and name not in IGNORED_H2OGPT_FLAGS:
                raise SettingsError(f"flag --{name} needs a value")
            value = args[index + 1] if next_is_value else "True"
            index += 1 if next_is_value else 0
        raw[name] = value
        index += 1
    return raw


def _model_lock_entry(text: object) -> dict[str, object]:
    """The one entry of h2oGPT's `--model_lock` list: this server serves one model."""
    entries = _literal_or_none(text) if isinstance(text, str) else text
    if isinstance(entries, dict):
        entries = [entries]
    if not isinstance(entries, list) or len(entries) != 1 or not isinstance(entries[0], dict):
        raise SettingsError(
            "--model_lock: this server serves one model; give a list with one dict "
            "(inference_server, base_model, max_seq_len, prompt_type), or use those flags"
        )
    return dict(entries[0])


def _apply_h2ogpt_flags(raw: dict[str, object], warnings: list[str]) -> None:
    """h2oGPT's flags in our terms, in place; ignored ones become a warning each."""
    for old, new in _RENAMED.items():
        if old in raw:
            value = raw.pop(old)
            raw.setdefault(new, value)
    if "auth_filename" in raw:
        filename = raw.pop("auth_filename")
        if not raw.get("auth"):
            raw["auth"] = filename
    if "db_type" in raw:
        db_type = str(raw.pop("db_type")).strip()
        if db_type.lower() != DB_TYPE_HERE:
            warnings.append(
                f"--db_type {db_type} is ignored: documents are kept in Weaviate "
                "(--weaviate_url, or a local weaviate-server under --save_dir)"
            )
    if "model_lock" in raw:
        entry = _model_lock_entry(raw.pop("model_lock"))
        for key in ("inference_server", "base_model", "max_seq_len", "prompt_type"):
            if key in entry and entry[key] is not None:
                raw.setdefault(key, str(entry[key]))
        unused = sorted(set(entry) - {"inference_server", "base_model", "max_seq_len", "prompt_type"})
        if unused:
            warnings.append(f"--model_lock keys {unused} are ignored (no meaning in this server)")
    # Names only: some of these carry secrets (--admin_pass, --use_auth_token, --h2ogpt_key).
    for name in sorted(IGNORED_H2OGPT_FLAGS & raw.keys()):
        del raw[name]
        warnings.append(f"h2oGPT flag --{name} is ignored (no meaning in this server)")


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Flags (`--name value`, `--name=value`, a bare `--bool_flag`) over `H2OGPT_<NAME>` env over defaults.

    Raises SettingsError with a one-line message naming the flag for anything unusable.
    """
    return parse_settings_and_warnings(argv, environ)[0]


def parse_settings_and_warnings(
    argv: Sequence[str], environ: Mapping[str, str]
) -> tuple[Settings, list[str]]:
    """`parse_settings`, plus one warning per h2oGPT flag given that is ignored here."""
    warnings: list[str] = []
    env_raw = _from_environ(environ)
    argv_raw = _from_argv(argv)
    # A flag beats the environment under any of its names (h2oGPT's or ours).
    for old, new in _RENAMED.items():
        if old in argv_raw:
            env_raw.pop(new, None)
    if "auth_filename" in argv_raw:
        env_raw.pop("auth", None)
    raw = {**env_raw, **argv_raw}
    _apply_h2ogpt_flags(raw, warnings)
    for name in _bool_fields() & raw.keys():
        value = raw[name]
        if isinstance(value, str):
            try:
                raw[name] = parse_bool(value)
            except SettingsError as exc:
                raise SettingsError(f"--{name}: {exc}") from None
    for name in ("user_path",):  # h2oGPT spells "no folder" None
        if raw.get(name) in ("", "None"):
            raw[name] = None
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
    return settings, warnings


def _default_text(field: Any) -> str:
    default = field.default_factory() if field.default_factory is not None else field.default
    return repr(str(default) if isinstance(default, Path) else default)


def help_text() -> str:
    """`h2ogpt-api --help`: every flag with its meaning and default, then h2oGPT's ignored flags."""
    lines = [
        "usage: h2ogpt-api [--flag value ...]",
        "",
        "Every flag is also read from the environment as H2OGPT_<FLAG_IN_UPPER_CASE>; a flag wins.",
        "Booleans take True/False/true/false/1/0; lists take a Python/JSON literal, e.g. \"['LLM']\".",
        "",
    ]
    for name, field in Settings.model_fields.items():
        lines.append(f"  --{name:<24} {field.description} (default {_default_text(field)})")
    lines += [
        "",
        "h2oGPT's flags with a meaning here under another name:",
        "  --concurrency_count       sets --max_concurrency",
        "  --openai_workers          sets --workers",
        "  --auth_filename           read as --auth when --auth is not given",
        "  --model_lock              one entry: its inference_server, base_model, max_seq_len, prompt_type",
        "  --db_type                 weaviate (anything else is warned about: documents live in Weaviate)",
        "",
        "Accepted for h2oGPT's command lines, warned about once by name, and ignored:",
        textwrap.fill(" ".join(f"--{name}" for name in sorted(IGNORED_H2OGPT_FLAGS)), width=100,
                      initial_indent="  ", subsequent_indent="  "),
    ]
    return "\n".join(lines)


HELP_TEXT = help_text()
