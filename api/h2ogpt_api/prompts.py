"""Pure prompt builders: chat messages, `--prompt_type` templates, and the document prompts.

Everything here is a function of its arguments, so the exact text sent to a model is
unit-tested and shown back to clients as `prompt_raw`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str


# The wording below is ours; the structure (context first, then the ask) follows h2oGPT.
DEFAULT_PRE_PROMPT_QUERY = (
    "Read the document excerpts below carefully; they are what you may use to answer.\n"
)
DEFAULT_PROMPT_QUERY = (
    "Answer using only the document excerpts above. If they do not contain the answer, say so. Question: "
)
DEFAULT_PRE_PROMPT_SUMMARY = "Here is a text to summarize.\n"
DEFAULT_PROMPT_SUMMARY = (
    "Write a concise summary of the key points of the text above, as a short paragraph or bullet points."
)
DEFAULT_PRE_PROMPT_EXTRACTION = "Here is a text to work on.\n"
DEFAULT_PROMPT_EXTRACTION = "Using only the text above, do the following: "


@dataclass(frozen=True)
class Template:
    """How one model family lays out a conversation as plain text."""

    system: str  # format with {content}
    user: str
    assistant: str  # a finished assistant turn
    generation_prefix: str  # what opens the assistant turn we ask for
    stop: tuple[str, ...]
    begin: str = ""
    # Llama-2 and Mistral have no system turn: the system text opens the first user message.
    system_in_first_user: bool = False


TEMPLATES: dict[str, Template] = {
    "plain": Template(
        system="{content}\n\n", user="{content}\n", assistant="{content}\n", generation_prefix="", stop=()
    ),
    "chatml": Template(
        system="<|im_start|>system\n{content}<|im_end|>\n",
        user="<|im_start|>user\n{content}<|im_end|>\n",
        assistant="<|im_start|>assistant\n{content}<|im_end|>\n",
        generation_prefix="<|im_start|>assistant\n",
        stop=("<|im_end|>", "<|im_start|>"),
    ),
    "llama2": Template(
        begin="<s>",
        system="<<SYS>>\n{content}\n<</SYS>>\n\n",
        user="[INST] {content} [/INST]",
        assistant=" {content} </s><s>",
        generation_prefix="",
        stop=("</s>", "[INST]"),
        system_in_first_user=True,
    ),
    "mistral": Template(
        begin="<s>",
        system="{content}\n\n",
        user="[INST] {content} [/INST]",
        assistant="{content}</s>",
        generation_prefix="",
        stop=("</s>", "[INST]"),
        system_in_first_user=True,
    ),
    "zephyr": Template(
        system="<|system|>\n{content}</s>\n",
        user="<|user|>\n{content}</s>\n",
        assistant="<|assistant|>\n{content}</s>\n",
        generation_prefix="<|assistant|>\n",
        stop=("</s>", "<|user|>"),
    ),
    "human_bot": Template(
        system="{content}\n",
        user="<human>: {content}\n",
        assistant="<bot>: {content}\n",
        generation_prefix="<bot>:",
        stop=("<human>:", "<bot>:"),
    ),
}


class UnknownPromptTypeError(ValueError):
    pass


def template_for(prompt_type: str) -> Template:
    try:
        return TEMPLATES[prompt_type]
    except KeyError:
        raise UnknownPromptTypeError(
            f"unknown prompt_type {prompt_type!r}; known: {', '.join(sorted(TEMPLATES))}"
        ) from None


def render(messages: Sequence[ChatMessage], prompt_type: str) -> str:
    """The conversation as one text prompt in `prompt_type`'s layout, ending where the model writes."""
    template = template_for(prompt_type)
    parts = [template.begin]
    pending_system = ""
    for message in messages:
        if message.role == "system" and template.system_in_first_user:
            pending_system += template.system.format(content=message.content)
            continue
        content = message.content
        if message.role == "user" and pending_system:
            content, pending_system = pending_system + content, ""
        layout = {"system": template.system, "user": template.user, "assistant": template.assistant}[
            message.role
        ]
        parts.append(layout.format(content=content))
    parts.append(template.generation_prefix)
    return "".join(parts)


def stop_sequences(prompt_type: str) -> tuple[str, ...]:
    return template_for(prompt_type).stop


def conversation(system_prompt: str, history: Sequence[tuple[str, str]], user_text: str) -> list[ChatMessage]:
    """System prompt (if any), earlier (user, assistant) turns, then the new user message."""
    messages: list[ChatMessage] = []
    if system_prompt:
        messages.append(ChatMessage("system", system_prompt))
    for user_turn, assistant_turn in history:
        messages.append(ChatMessage("user", user_turn))
        messages.append(ChatMessage("assistant", assistant_turn))
    messages.append(ChatMessage("user", user_text))
    return messages


def join_context(texts: Sequence[str], max_chars: int) -> str:
    """Context passages separated by blank lines, cut to fit `max_chars` (whole passages first)."""
    kept: list[str] = []
    used = 0
    for text in texts:
        room = max_chars - used
        if room <= 0:
            break
        piece = text if len(text) <= room else text[:room]
        kept.append(piece)
        used += len(piece) + 2
    return "\n\n".join(kept)


def query_prompt(
    question: str, context: str, pre_prompt: str | None = None, prompt: str | None = None
) -> str:
    """A grounded question: the context between markers, then the question."""
    pre = DEFAULT_PRE_PROMPT_QUERY if pre_prompt is None else pre_prompt
    ask = DEFAULT_PROMPT_QUERY if prompt is None else prompt
    return f'{pre}"""\n{context}\n"""\n{ask}{question}'


def summary_prompt(
    text: str, focus: str = "", pre_prompt: str | None = None, prompt: str | None = None
) -> str:
    """Ask for a summary of `text`; `focus` (the user's instruction) narrows it when given."""
    pre = DEFAULT_PRE_PROMPT_SUMMARY if pre_prompt is None else pre_prompt
    ask = DEFAULT_PROMPT_SUMMARY if prompt is None else prompt
    focus_line = f"\nFocus on: {focus}" if focus else ""
    return f'{pre}"""\n{text}\n"""\n{ask}{focus_line}'


def extraction_prompt(
    text: str, instruction: str, pre_prompt: str | None = None, prompt: str | None = None
) -> str:
    """Ask to apply `instruction` to one part of a document."""
    pre = DEFAULT_PRE_PROMPT_EXTRACTION if pre_prompt is None else pre_prompt
    ask = DEFAULT_PROMPT_EXTRACTION if prompt is None else prompt
    if instruction:
        # The default prompt ends in "extract "; a caller's own prompt may not end in a space.
        request = ask + instruction if not ask or ask[-1].isspace() else f"{ask} {instruction}"
    elif prompt is None:
        request = ask + "list the key facts."
    else:
        request = ask  # a caller's whole extraction prompt, with no focus appended
    return f'{pre}"""\n{text}\n"""\n{request}'
