"""`parse_settings`: flags, H2OGPT_* environment, booleans, lists, and clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from h2ogpt_api.settings import Settings, SettingsError, parse_settings


def test_defaults_match_the_settings_contract() -> None:
    settings = parse_settings([], {})
    assert settings.inference_server == ""
    assert settings.base_model == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert (settings.openai_port, settings.gradio_port) == (5000, 7860)
    assert settings.openai_server
    assert settings.gradio
    assert settings.async_output
    assert settings.num_async == 3
    assert settings.langchain_mode == "LLM"
    assert settings.langchain_modes == ["UserData", "MyData", "LLM"]
    assert settings.auth_access == "open"
    assert settings.guest_name == "guest"
    assert settings.max_concurrency is None  # follow the backend (h2ogpt_api.concurrency)
    assert settings.save_dir == Path("./save")


def test_flag_forms_and_env_with_the_flag_winning() -> None:
    env = {"H2OGPT_BASE_MODEL": "from/env", "H2OGPT_MAX_SEQ_LEN": "4096", "H2OGPT_NUM_ASYNC": "7"}
    settings = parse_settings(["--base_model", "from/flag", "--openai_port=5001", "--num_async", "10"], env)
    assert settings.base_model == "from/flag"
    assert settings.openai_port == 5001
    assert settings.max_seq_len == 4096
    assert settings.num_async == 10


@pytest.mark.parametrize(
    ("text", "expected"),
    [("True", True), ("true", True), ("1", True), ("False", False), ("false", False), ("0", False)],
)
def test_boolean_spellings(text: str, expected: bool) -> None:
    assert parse_settings(["--gradio", text], {}).gradio is expected
    assert parse_settings([], {"H2OGPT_ENFORCE_H2OGPT_API_KEY": text}).enforce_h2ogpt_api_key is expected


def test_bare_boolean_flag_means_true() -> None:
    settings = parse_settings(["--enforce_h2ogpt_api_key", "--gradio", "False"], {})
    assert settings.enforce_h2ogpt_api_key is True
    assert settings.gradio is False


def test_list_literals_and_key_file_paths() -> None:
    settings = parse_settings(["--langchain_modes", "['LLM']", "--h2ogpt_api_keys", "['k1', 'k2']"], {})
    assert settings.langchain_modes == ["LLM"]
    assert settings.h2ogpt_api_keys == ["k1", "k2"]
    assert settings.document_modes == []
    from_file = parse_settings(["--h2ogpt_api_keys", "/etc/keys.json"], {})
    assert from_file.h2ogpt_api_keys == "/etc/keys.json"
    json_env = parse_settings([], {"H2OGPT_LANGCHAIN_MODES": '["UserData", "LLM"]'})
    assert json_env.document_modes == ["UserData"]


def test_weaviate_env_names_are_read() -> None:
    settings = parse_settings([], {"WEAVIATE_URL": "http://w:8080", "WEAVIATE_API_KEY": "s3cret"})
    assert settings.weaviate_url == "http://w:8080"
    assert settings.weaviate_api_key == "s3cret"
    assert "s3cret" not in str(settings.redacted())


def test_redacted_hides_keys_and_inline_passwords() -> None:
    settings = parse_settings(["--h2ogpt_api_keys", "['sekrit']", "--auth", "[('alice', 'pw123')]"], {})
    shown = str(settings.redacted())
    assert "sekrit" not in shown
    assert "pw123" not in shown


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--no_such_flag", "1"], "unknown flag --no_such_flag"),
        (["--openai_port", "http"], "--openai_port"),
        (["--gradio", "maybe"], "--gradio: expected True/False"),
        (["--auth_access", "half-open"], "--auth_access"),
        (["--base_model"], "--base_model needs a value"),
        (["positional"], "unexpected argument 'positional'"),
        (["--inference_server", "ftp://x"], "--inference_server"),
        (["--langchain_modes", "['LLM'"], "--langchain_modes"),
        (["--langchain_mode", "UserData", "--langchain_modes", "['LLM']"], "is not one of --langchain_modes"),
        (["--hold_seconds", "60", "--demand_lease", "no-namespace"], "expected <namespace>/<name>"),
        (["--demand_lease", "team-a/demo-demand"], "it needs --hold_seconds > 0"),
        (["--scale_up_in_flight", "8"], "it needs --demand_lease"),
        (["--inference_server", "http://a:80", "--demand_lease", "a/b", "--scale_up_in_flight", "8"],
         "it needs several --inference_server entries or --inference_endpointslices"),
    ],
)
def test_bad_input_fails_with_one_clear_line(argv: list[str], message: str) -> None:
    with pytest.raises(SettingsError) as caught:
        parse_settings(argv, {})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_env_errors_name_the_flag() -> None:
    with pytest.raises(SettingsError, match="--num_async"):
        parse_settings([], {"H2OGPT_NUM_ASYNC": "zero"})


def test_settings_are_immutable() -> None:
    settings = Settings()
    with pytest.raises(ValueError, match="frozen"):
        settings.base_model = "x"  # type: ignore[misc]


def test_an_embedding_model_other_than_minilm_needs_an_embedding_server() -> None:
    with pytest.raises(SettingsError, match="needs --embedding_server"):
        parse_settings(["--hf_embedding_model", "BAAI/bge-large-en-v1.5"], {})
    assert parse_settings(["--hf_embedding_model", "sentence-transformers/all-MiniLM-L6-v2"], {})
    served = parse_settings([], {"H2OGPT_HF_EMBEDDING_MODEL": "BAAI/bge-large-en-v1.5",
                                 "H2OGPT_EMBEDDING_SERVER": "http://tei:8080"})
    assert served.hf_embedding_model == "BAAI/bge-large-en-v1.5"
