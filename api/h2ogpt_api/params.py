"""h2oGPT's generation parameters (its `evaluate()` names), with bounds.

Both front doors build a `GenerationParams`: the OpenAI app from the request body (OpenAI
names mapped, any other h2oGPT parameter passed through `extra_body`), the Gradio app from
h2oGPT's string-of-dict. Keys h2oGPT knows but this server does not use are accepted and
ignored, as h2oGPT itself ignores keys it does not know.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

LangchainAction = Literal["Query", "Summarize", "Extract"]

# h2oGPT's names for the same actions, accepted for compatibility.
_ACTION_ALIASES = {
    "Summarize_map_reduce": "Summarize",
    "Summarize_all": "Summarize",
    "Summarize_refine": "Summarize",
}


class GenerationParams(BaseModel):
    """One generation request, in h2oGPT's vocabulary."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    instruction: str = ""
    # h2oGPT's no-chat API sends the question here; it is copied to `instruction`.
    instruction_nochat: str = ""
    # h2oGPT's "input": text the instruction works on, sent after it (see `question`).
    iinput: str = ""
    iinput_nochat: str = ""
    system_prompt: str | None = Field(None, description="None = the server's --system_prompt")
    # Earlier turns as (user, assistant) pairs.
    chat_conversation: list[tuple[str, str]] = Field(default_factory=list)
    add_chat_history_to_context: bool = True
    prompt_type: str | None = None
    max_new_tokens: int = Field(256, ge=1, le=131_072)
    min_new_tokens: int = Field(0, ge=0)
    temperature: float = Field(0.3, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(40, ge=0, le=100_000)
    repetition_penalty: float = Field(1.0, gt=0.0, le=10.0)
    do_sample: bool | None = None
    seed: int = Field(0, ge=0, le=2**63 - 1)
    stop: list[str] = Field(default_factory=list, max_length=16)
    stream_output: bool = False
    max_time: float = Field(360.0, gt=0)
    langchain_mode: str | None = Field(None, description="None = the server's --langchain_mode")
    langchain_action: LangchainAction = "Query"
    top_k_docs: int = Field(10, ge=-1, le=10_000)
    document_choice: list[str] = Field(default_factory=lambda: ["All"])
    text_context_list: list[str] = Field(default_factory=list)
    pre_prompt_query: str | None = None
    prompt_query: str | None = None
    pre_prompt_summary: str | None = None
    prompt_summary: str | None = None
    pre_prompt_extraction: str | None = None
    prompt_extraction: str | None = None
    h2ogpt_key: str | None = None
    visible_models: str | int | list[str | int] | None = None

    @model_validator(mode="before")
    @classmethod
    def _h2ogpt_spellings(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = {key: value for key, value in data.items() if value is not None or key == "system_prompt"}
        if not data.get("instruction") and data.get("instruction_nochat"):
            data["instruction"] = data["instruction_nochat"]
        if not data.get("iinput") and data.get("iinput_nochat"):
            data["iinput"] = data["iinput_nochat"]
        action = data.get("langchain_action")
        if isinstance(action, str):
            data["langchain_action"] = _ACTION_ALIASES.get(action, action)
        stop = data.get("stop")
        if isinstance(stop, str):
            data["stop"] = [stop] if stop else []
        choice = data.get("document_choice")
        if isinstance(choice, str):
            data["document_choice"] = [choice]
        if data.get("system_prompt") in ("auto", "None"):
            data["system_prompt"] = None  # h2oGPT: the model's default
        return data

    @field_validator("chat_conversation", mode="before")
    @classmethod
    def _pairs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [tuple(pair) if isinstance(pair, list) else pair for pair in value]
        return value

    @property
    def question(self) -> str:
        """What the model is asked: the instruction, then h2oGPT's `iinput` on its own paragraph."""
        if not self.iinput:
            return self.instruction
        return f"{self.instruction}\n\n{self.iinput}" if self.instruction else self.iinput

    @property
    def sampling_is_greedy(self) -> bool:
        """h2oGPT's rule: sample when asked, or when temperature > 0 or top_p < 1."""
        if self.do_sample is not None:
            return not self.do_sample
        return self.temperature == 0 and self.top_p >= 1.0

    @property
    def documents_chosen(self) -> list[str] | None:
        """`document_choice` as a filter: None means every document."""
        chosen = [name for name in self.document_choice if name and name != "All"]
        return chosen or None
