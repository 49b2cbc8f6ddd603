"""`GenerationParams`: h2oGPT's names, spellings and bounds."""

from __future__ import annotations

import pytest
from h2ogpt_api.params import GenerationParams
from pydantic import ValidationError


def test_h2ogpt_spellings_are_normalised() -> None:
    params = GenerationParams.model_validate(
        {
            "instruction_nochat": "Who are you?",
            "langchain_action": "Summarize_map_reduce",
            "stop": "END",
            "document_choice": "All",
            "system_prompt": "auto",
            "chat_conversation": [["hi", "hello"]],
            "unknown_h2ogpt_key": 1,
        }
    )
    assert params.instruction == "Who are you?"
    assert params.langchain_action == "Summarize"
    assert params.stop == ["END"]
    assert params.documents_chosen is None
    assert params.system_prompt is None
    assert params.chat_conversation == [("hi", "hello")]


def test_none_values_take_the_defaults() -> None:
    params = GenerationParams.model_validate({"max_new_tokens": None, "temperature": None})
    assert params.max_new_tokens == 256
    assert params.temperature == 0.3


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_new_tokens", 0),
        ("temperature", 3.0),
        ("top_p", 0.0),
        ("top_k_docs", -2),
        ("langchain_action", "Dance"),
        ("repetition_penalty", 0),
    ],
)
def test_out_of_bounds_values_are_refused_naming_the_field(field: str, value: object) -> None:
    with pytest.raises(ValidationError) as caught:
        GenerationParams.model_validate({field: value})
    assert caught.value.errors()[0]["loc"][0] == field


def test_greedy_follows_h2ogpts_rule() -> None:
    assert GenerationParams(temperature=0).sampling_is_greedy
    assert not GenerationParams(temperature=0.7).sampling_is_greedy
    assert not GenerationParams(temperature=0, top_p=0.5).sampling_is_greedy
    assert GenerationParams(temperature=0.7, do_sample=False).sampling_is_greedy


def test_document_choice_filter() -> None:
    assert GenerationParams(document_choice=["a.pdf", "All"]).documents_chosen == ["a.pdf"]
    assert GenerationParams().documents_chosen is None
