"""h2oGPT's Gradio wire format, at the api_name edge only: requests are the `str()` of a dict of
evaluate parameters (read with `ast.literal_eval`, never `eval`), answers the `str()` of h2oGPT's
output dict. Everything behind this edge is typed.
"""

from __future__ import annotations

import ast
from typing import Any

from pydantic import ValidationError

from h2ogpt_api.core import InvalidRequestError
from h2ogpt_api.errors import as_api_error
from h2ogpt_api.params import GenerationParams

# h2oGPT's evaluate parameter names (`eval_func_param_names`) plus the extraction prompts its
# client sends: a request may carry any of them (this server ignores those it has no use for,
# as h2oGPT ignores what does not apply). Any other key is a mistake and is refused by name.
H2OGPT_PARAM_NAMES = frozenset(
    """
    instruction iinput context stream_output enable_caching prompt_type prompt_dict chat_template
    temperature top_p top_k penalty_alpha num_beams max_new_tokens min_new_tokens early_stopping
    max_time repetition_penalty num_return_sequences do_sample seed chat instruction_nochat
    iinput_nochat langchain_mode add_chat_history_to_context langchain_action langchain_agents
    top_k_docs chunk chunk_size document_subset document_choice document_source_substrings
    document_source_substrings_op document_content_substrings document_content_substrings_op
    pre_prompt_query prompt_query pre_prompt_summary prompt_summary pre_prompt_extraction
    prompt_extraction hyde_llm_prompt all_docs_start_prompt all_docs_finish_prompt
    user_prompt_for_fake_system_prompt json_object_prompt json_object_prompt_simpler
    json_code_prompt json_code_prompt_if_no_schema json_schema_instruction
    json_preserve_system_prompt json_object_post_prompt_reminder json_code_post_prompt_reminder
    json_code2_post_prompt_reminder system_prompt image_audio_loaders pdf_loaders url_loaders
    jq_schema extract_frames llava_prompt visible_models visible_image_models image_size
    image_quality image_guidance_scale image_num_inference_steps h2ogpt_key add_search_to_context
    chat_conversation text_context_list docs_ordering_type min_max_new_tokens max_input_tokens
    max_total_input_tokens docs_token_handling docs_joiner hyde_level hyde_template
    hyde_show_only_final doc_json_mode metadata_in_context chatbot_role speaker tts_language
    tts_speed image_file image_control images_num_max image_resolution image_format
    rotate_align_resize_image video_frame_period image_batch_image_prompt image_batch_final_prompt
    image_batch_stream visible_vision_models video_file response_format guided_json guided_regex
    guided_choice guided_grammar guided_whitespace_pattern model_lock client_metadata stop
    """.split()  # noqa: SIM905 (a word list reads better than 120 quoted names)
)


def parse_request_dict(text: object) -> dict[str, Any]:
    """h2oGPT's input: the `str()` of a dict of parameters, read with `ast.literal_eval` (never eval)."""
    if not isinstance(text, str):
        raise InvalidRequestError(f"expected the str() of a dict of parameters, got a {type(text).__name__}")
    try:
        value = ast.literal_eval(text.strip() or "{}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise InvalidRequestError(
            f"the input is not a Python dict literal ({type(exc).__name__}); "
            "send str(dict(instruction_nochat=...))"
        ) from None
    if not isinstance(value, dict):
        raise InvalidRequestError(
            f"the input must be the str() of a dict, got the str() of a {type(value).__name__}"
        )
    bad_keys = [key for key in value if not isinstance(key, str)]
    if bad_keys:
        raise InvalidRequestError(f"parameter names must be strings, got {bad_keys[0]!r}")
    unknown = sorted(key for key in value if key not in H2OGPT_PARAM_NAMES)
    if unknown:
        raise InvalidRequestError(f"unknown parameter(s) {unknown}; see h2oGPT's evaluate parameters")
    return value


def params_from_h2ogpt(data: dict[str, Any], *, streaming: bool) -> GenerationParams:
    """The parsed dict as `GenerationParams`; the plain (unqueued) API never streams."""
    fields = {**data, "stream_output": bool(data.get("stream_output", False)) and streaming}
    try:
        return GenerationParams.model_validate(fields)
    except ValidationError as exc:
        raise InvalidRequestError(as_api_error(exc).message) from None


def error_dict(message: str, *, response: str = "") -> dict[str, Any]:
    """h2oGPT's output on failure: `error` says what went wrong; the other keys are empty."""
    return {
        "response": response,
        "error": message,
        "error_ex": "",
        "sources": [],
        "sources_str": "",
        "prompt_raw": "",
        "llm_answers": [],
        "save_dict": {},
    }


def partial_dict(response: str) -> dict[str, Any]:
    """A streamed output: the cumulative response; sources and metadata come in the last one."""
    return {
        "response": response,
        "error": None,
        "sources": [],
        "sources_str": "",
        "prompt_raw": "",
        "llm_answers": [],
        "save_dict": {},
    }


def text_list(value: object, name: str) -> list[str]:
    """A document API argument that may be one string or a list of them (h2oGPT takes both)."""
    if isinstance(value, str):
        try:
            parsed = ast.literal_eval(value) if value.strip().startswith("[") else value
        except (ValueError, SyntaxError):
            parsed = value
        value = parsed
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple) or not all(isinstance(item, str) for item in items):
        raise InvalidRequestError(f"{name} must be a string or a list of strings")
    cleaned = [item.strip() for item in items if item.strip()]
    if not cleaned:
        raise InvalidRequestError(f"{name} is empty")
    return cleaned


def chunk_size_of(value: object, default: int) -> int:
    """A document API's chunk_size; absent = the server's --chunk_size."""
    if value is None or value == "":
        return default
    if isinstance(value, bool) or not isinstance(value, int | float) or int(value) != value:
        raise InvalidRequestError(f"chunk_size must be a whole number, got {value!r}")
    return int(value)


def key_of(value: object) -> str | None:
    """The `h2ogpt_key` argument of a document API: absent, or a string."""
    if value is not None and not isinstance(value, str):
        raise InvalidRequestError("h2ogpt_key must be a string", param="h2ogpt_key")
    return value
