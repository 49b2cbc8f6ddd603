"""The `Backend` protocol: what the core needs from an inference server.

A backend streams `TokenDelta`s then exactly one `StreamEnd` with real token counts. It
takes either chat messages (when it applies the model's chat template itself) or a text
prompt the core rendered with `--prompt_type`. Failures are `BackendError`s whose `kind`
the API maps to a status: unavailable -> 503, timeout -> 504, bad_response -> 502,
rejected (the server refused the input, e.g. too long) -> 400.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from h2ogpt_api.prompts import ChatMessage

BackendErrorKind = Literal["unavailable", "timeout", "bad_response", "rejected"]

# A connection to an inference server (a pod, a Service's address) is made in milliseconds or not at
# all: one still pending after this long has met a black hole (a SYN dropped by a stale rule or a
# full accept queue), which the kernel would otherwise wait out for ~2 minutes. Failing it as
# `unavailable` lets the hold (scale from zero) and the router try again at once. 5 s is also the
# `openai` package's own default connect timeout.
CONNECT_TIMEOUT_S = 5.0
# How long an idle pooled connection to an inference server is kept, by every backend. Below the 5 s
# after which a server run by uvicorn (vLLM's API server, our TGI fake, any Python server on uvicorn's
# defaults) closes idle connections: a connection the server closes as a request goes out on it fails
# that request, already sent, and no retry of ours could know the server had not started it.
POOL_IDLE_S = 4.0
FinishReason = Literal["stop", "length", "tool_calls"]


class BackendError(Exception):
    """The inference server failed. `message` is safe to show (no URLs with credentials, no keys)."""

    def __init__(self, kind: BackendErrorKind, message: str) -> None:
        super().__init__(message)
        self.kind: BackendErrorKind = kind
        self.message = message


@dataclass(frozen=True)
class Sampling:
    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    seed: int = 0
    greedy: bool = True
    stop: tuple[str, ...] = ()
    # Tokens to generate before an end-of-sequence may end the answer (0 = no minimum); only
    # sent to backends whose `supports_min_new_tokens` is True.
    min_new_tokens: int = 0


@dataclass(frozen=True)
class OutputOptions:
    """What an OpenAI client asks of the output beyond sampling: tools, a JSON format, logprobs,
    penalties. A backend serves them or names the one it cannot (`unsupported_option`): the API
    answers 400 naming it rather than accept the field and drop it."""

    tools: tuple[dict[str, Any], ...] = ()  # OpenAI function tools, as the client sent them
    tool_choice: str | dict[str, Any] | None = None  # "none" | "auto" | "required" | {"function": ...}
    response_format: dict[str, Any] | None = None  # {"type": "json_object" | "json_schema", ...}
    logprobs: bool = False
    top_logprobs: int = 0
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0

    @property
    def wants_tools(self) -> bool:
        return bool(self.tools) and self.tool_choice != "none"

    @property
    def json_schema(self) -> dict[str, Any] | None:
        """The JSON schema the answer must match (`{"type": "object"}` for json_object); None = text."""
        kind = (self.response_format or {}).get("type", "text")
        if kind == "json_object":
            return {"type": "object"}
        if kind == "json_schema":
            spec = (self.response_format or {}).get("json_schema") or {}
            return dict(spec.get("schema") or {"type": "object"})
        return None

    def requested(self) -> list[str]:
        """The OpenAI parameter names set to something other than their no-op default."""
        names = []
        if self.tools and self.tool_choice != "none":
            names.append("tools")
        if self.json_schema is not None:
            names.append("response_format")
        if self.logprobs:
            names.append("logprobs")
        if self.frequency_penalty:
            names.append("frequency_penalty")
        if self.presence_penalty:
            names.append("presence_penalty")
        return names


NO_OUTPUT_OPTIONS = OutputOptions()


@dataclass(frozen=True)
class BackendRequest:
    """`prompt` is the rendered text for plain-generate calls; None means send `messages` as chat."""

    messages: tuple[ChatMessage, ...]
    sampling: Sampling
    prompt: str | None = None
    options: OutputOptions = NO_OUTPUT_OPTIONS
    # Pins the request to one inference replica when several serve (routing.affinity_key): a
    # session or a logged-in user; '' = the prompt's prefix decides. Single servers ignore it.
    affinity_key: str = ""


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability, and the most likely alternatives when asked."""

    token: str
    logprob: float
    top: tuple[TopLogprob, ...] = ()


@dataclass(frozen=True)
class TokenDelta:
    """Generated text: one token, or several that arrived together (`tokens` of them; a backend
    that falls behind passes on what has piled up as one delta, see backends/tgi.py)."""

    text: str
    logprobs: tuple[TokenLogprob, ...] = ()
    tokens: int = 1


@dataclass(frozen=True)
class ToolCallDelta:
    """A piece of the `index`th tool call: its id and name once (first piece), then arguments text."""

    index: int
    arguments: str
    id: str | None = None
    name: str | None = None


@dataclass(frozen=True)
class StreamEnd:
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason


@dataclass(frozen=True)
class Held:
    """No inference replica is ready: the request has been held `seconds` so far (backends/holding.py
    sends one every --keepalive_seconds; the OpenAI door writes it as an SSE comment)."""

    seconds: float


BackendEvent = TokenDelta | ToolCallDelta | StreamEnd | Held


class Backend(Protocol):
    """One inference server. `kind` is reported to clients; URLs and keys never are."""

    @property
    def kind(self) -> str: ...

    @property
    def model_name(self) -> str: ...

    @property
    def supports_chat(self) -> bool:
        """True when the backend applies the model's own chat template to `messages`."""
        ...

    @property
    def supports_min_new_tokens(self) -> bool:
        """True when the backend can hold back the end of the answer until `min_new_tokens`."""
        ...

    @property
    def default_system_prompt(self) -> str:
        """The system prompt that `--system_prompt auto` means: the model's own default where we
        render its prompt ourselves, '' where the server's chat template supplies its own."""
        ...

    def unsupported_option(self, options: OutputOptions, *, chat: bool) -> str | None:
        """The first OpenAI parameter in `options` this backend cannot honour (on its chat route when
        `chat`, else on its plain-generate route), or None when it serves them all."""
        ...

    def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        """Generate; closing the iterator early cancels the upstream generation."""
        ...

    async def concurrency_limit(self) -> int | None:
        """How many generations the server says it admits at once; None when it sets no limit
        we can read. Raises BackendError when the server cannot tell yet (not up)."""
        ...

    async def aclose(self) -> None: ...


def finish_reason_from(upstream: str | None) -> FinishReason:
    """TGI says length/eos_token/stop_sequence, OpenAI servers length/stop/tool_calls."""
    if upstream in ("length", "tool_calls"):
        return upstream  # type: ignore[return-value]
    return "stop"


def first_unsupported(options: OutputOptions, supported: frozenset[str]) -> str | None:
    return next((name for name in options.requested() if name not in supported), None)


class StopTrimmer:
    """Cuts a stream at the first stop sequence, which OpenAI clients expect not to see.

    TGI returns the stop text as part of the answer; tokens may split it, so text that could
    be the start of a stop sequence is held back until the next token decides.
    """

    def __init__(self, stops: tuple[str, ...]) -> None:
        self._stops = tuple(stop for stop in stops if stop)
        self._pending = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """The text that is safe to emit now ('' after a stop sequence)."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._pending + text
        cut = min((index for index in (buffer.find(stop) for stop in self._stops) if index >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._pending = ""
            return buffer[:cut]
        hold = 0
        for stop in self._stops:
            for size in range(min(len(stop) - 1, len(buffer)), hold, -1):
                if buffer.endswith(stop[:size]):
                    hold = size
                    break
        self._pending = buffer[len(buffer) - hold :]
        return buffer[: len(buffer) - hold]

    def flush(self) -> str:
        """What was held back, once the stream ended without completing a stop sequence."""
        pending, self._pending = ("" if self.stopped else self._pending), ""
        return pending
