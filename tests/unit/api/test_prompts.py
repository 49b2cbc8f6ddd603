"""Prompt builders produce exactly the text sent to models."""

from __future__ import annotations

import pytest
from h2ogpt_api import prompts
from h2ogpt_api.backends.base import StopTrimmer
from h2ogpt_api.prompts import ChatMessage


def test_chatml_layout() -> None:
    messages = prompts.conversation("Be brief.", [("Hi", "Hello!")], "Who are you?")
    assert prompts.render(messages, "chatml") == (
        "<|im_start|>system\nBe brief.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\nWho are you?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_llama2_layout_puts_the_system_prompt_inside_the_first_instruction() -> None:
    text = prompts.render([ChatMessage("system", "S"), ChatMessage("user", "Q")], "llama2")
    assert text == "<s>[INST] <<SYS>>\nS\n<</SYS>>\n\nQ [/INST]"
    assert prompts.render([ChatMessage("user", "Q")], "llama2") == "<s>[INST] Q [/INST]"
    history = prompts.conversation("", [("Hi", "Hello")], "Q")
    assert prompts.render(history, "llama2") == "<s>[INST] Hi [/INST] Hello </s><s>[INST] Q [/INST]"


def test_plain_has_no_markup_and_no_stops() -> None:
    assert prompts.render([ChatMessage("user", "Q")], "plain") == "Q\n"
    assert prompts.stop_sequences("plain") == ()


def test_unknown_prompt_type_names_the_known_ones() -> None:
    with pytest.raises(prompts.UnknownPromptTypeError, match="chatml"):
        prompts.render([ChatMessage("user", "Q")], "nope")


def test_no_system_message_when_the_system_prompt_is_empty() -> None:
    assert [m.role for m in prompts.conversation("", [], "Q")] == ["user"]


def test_join_context_keeps_whole_passages_first_and_cuts_the_last() -> None:
    assert prompts.join_context(["aaaa", "bbbb", "cccc"], 10) == "aaaa\n\nbbbb"
    assert prompts.join_context(["aaaa", "bbbbbbbb"], 8) == "aaaa\n\nbb"


def test_query_prompt_puts_context_before_the_question() -> None:
    text = prompts.query_prompt("What colour?", "The sky is green.")
    assert text.index("The sky is green.") < text.index("What colour?")
    custom = prompts.query_prompt("Q", "C", pre_prompt="PRE ", prompt="ASK ")
    assert custom == 'PRE """\nC\n"""\nASK Q'


def test_summary_and_extraction_prompts_carry_the_text_and_the_ask() -> None:
    summary = prompts.summary_prompt("TEXT", focus="costs")
    assert "TEXT" in summary
    assert "Focus on: costs" in summary
    assert prompts.extraction_prompt("PART", "list names").endswith("list names")


def test_stop_trimmer_cuts_stop_sequences_split_across_tokens() -> None:
    trimmer = StopTrimmer(("</s>", "[INST]"))
    emitted = [trimmer.feed(piece) for piece in ["Hello", " wor", "ld<", "/", "s>", " more"]]
    assert "".join(emitted) == "Hello world"
    assert emitted[2] == "ld"  # "<" is held back: it may start "</s>"
    assert trimmer.stopped
    assert trimmer.flush() == ""


def test_stop_trimmer_releases_held_text_that_was_not_a_stop() -> None:
    trimmer = StopTrimmer(("</s>",))
    assert trimmer.feed("a <") == "a "
    assert trimmer.feed("b") == "<b"
    assert trimmer.feed("</") == ""
    assert trimmer.flush() == "</"
    assert StopTrimmer(()).feed("x</s>") == "x</s>"


def test_extraction_prompt_keeps_a_callers_prompt_apart_from_the_focus() -> None:
    # GradioClient.extract sends its query as prompt_extraction and no instruction.
    whole_prompt = prompts.extraction_prompt("PART", "", prompt="Give bullet points")
    assert whole_prompt.endswith('"""\nGive bullet points')
    assert prompts.extraction_prompt("PART", "names", prompt="Extract:").endswith("Extract: names")
    assert prompts.extraction_prompt("PART", "").endswith("list the key facts.")
