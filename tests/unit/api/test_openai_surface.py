"""Pure parts of the OpenAI surface: which options a request sets, tool-call assembly, logprob
shapes, and the bounds of the /v1/responses conversation store."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from h2ogpt_api.backends.base import OutputOptions, TokenLogprob, ToolCallDelta, TopLogprob
from h2ogpt_api.core import assemble_tool_calls
from h2ogpt_api.errors import ApiError
from h2ogpt_api.openai_api.conversations import (
    Conversations,
    ConversationStore,
    SharedConversations,
    StoredConversation,
)
from h2ogpt_api.openai_api.protocol import ChatCompletionRequest, MessageIn, completion_logprobs

TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}


def test_requested_names_only_what_changes_the_output() -> None:
    assert OutputOptions().requested() == []
    assert OutputOptions(tools=(TOOL,), tool_choice="none").requested() == []
    assert OutputOptions(response_format={"type": "text"}).requested() == []
    options = OutputOptions(
        tools=(TOOL,), response_format={"type": "json_object"}, logprobs=True, frequency_penalty=0.1
    )
    assert options.requested() == ["tools", "response_format", "logprobs", "frequency_penalty"]


def test_json_schema_of_each_response_format() -> None:
    assert OutputOptions(response_format={"type": "json_object"}).json_schema == {"type": "object"}
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    spec = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    assert OutputOptions(response_format=spec).json_schema == schema
    assert OutputOptions(response_format={"type": "text"}).json_schema is None


def test_tool_call_pieces_assemble_in_index_order() -> None:
    pieces = [
        ToolCallDelta(index=1, arguments="", id="b", name="second"),
        ToolCallDelta(index=0, arguments='{"ci', id="a", name="first"),
        ToolCallDelta(index=0, arguments='ty": "Paris"}'),
        ToolCallDelta(index=1, arguments="{}"),
    ]
    assert assemble_tool_calls(pieces) == (
        {"id": "a", "type": "function", "function": {"name": "first", "arguments": '{"city": "Paris"}'}},
        {"id": "b", "type": "function", "function": {"name": "second", "arguments": "{}"}},
    )


def test_completion_logprobs_offsets_follow_the_text() -> None:
    entries = (
        TokenLogprob("Hi", -0.1, (TopLogprob("Hi", -0.1), TopLogprob("Yo", -2.0))),
        TokenLogprob(" you", -0.5),
    )
    assert completion_logprobs(entries, text_offset=3) == {
        "tokens": ["Hi", " you"],
        "token_logprobs": [-0.1, -0.5],
        "top_logprobs": [{"Hi": -0.1, "Yo": -2.0}, {}],
        "text_offset": [3, 5],
    }


@pytest.mark.parametrize(
    "body",
    [
        {"top_logprobs": 2},  # needs logprobs=true
        {"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "other"}}},
        {"tool_choice": "required"},  # no tools
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}},  # no schema
    ],
)
def test_inconsistent_requests_are_refused(body: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"."):
        ChatCompletionRequest.model_validate({"messages": [{"role": "user", "content": "hi"}], **body})


@pytest.mark.parametrize("shared", [False, True], ids=["memory", "shared-file"])
def test_conversation_store_is_bounded_per_owner_and_expires(shared: bool, tmp_path: Path) -> None:
    store: Conversations = (
        SharedConversations(tmp_path / "state.sqlite3", capacity=2, ttl_s=60)
        if shared
        else ConversationStore(capacity=2, ttl_s=60)
    )
    for name in ("r1", "r2", "r3"):
        store.put(name, StoredConversation("ada", (), time.monotonic()))
    with pytest.raises(ApiError) as oldest:
        store.get("r1", "ada")  # the oldest went when the third came
    assert oldest.value.param == "previous_response_id"
    assert store.get("r3", "ada").owner == "ada"
    with pytest.raises(ApiError):
        store.get("r3", "bob")  # another user cannot continue it
    store.put("old", StoredConversation("ada", (), time.monotonic() - 61))
    with pytest.raises(ApiError):
        store.get("old", "ada")


def test_workers_sharing_the_conversation_file_continue_each_others_responses(tmp_path: Path) -> None:
    one, other = (SharedConversations(tmp_path / "state.sqlite3") for _ in range(2))
    turns = (MessageIn(role="user", content="hi"), MessageIn(role="assistant", content="hello"))
    one.put("resp_1", StoredConversation("ada", turns, time.monotonic()))
    assert other.get("resp_1", "ada").messages == turns
