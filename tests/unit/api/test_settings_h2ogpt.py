"""h2oGPT's own command lines start `h2ogpt-api` unchanged: mapped flags, ignored flags warned
about by name, Gradio's environment, `--help` with each flag's meaning, and server defaults."""

from __future__ import annotations

from pathlib import Path

import pytest
from h2ogpt_api.core import with_server_settings
from h2ogpt_api.h2ogpt_flags import IGNORED_H2OGPT_FLAGS
from h2ogpt_api.params import GenerationParams
from h2ogpt_api.settings import (
    Settings,
    SettingsError,
    help_text,
    parse_settings,
    parse_settings_and_warnings,
)

# h2oGPT's documented command lines (its README_CLIENT, README_DOCKER, FAQ and Helm chart).
DOCUMENTED = [
    "--base_model=TheBloke/Llama-2-7b-Chat-GPTQ --load_gptq=model --use_safetensors=True "
    "--prompt_type=llama2 --save_dir=fooasdf --system_prompt=auto",
    "--inference_server=http://localhost:6112 --base_model=h2oai/h2ogpt-4096-llama2-13b-chat "
    "--prompt_type=llama2 --max_seq_len=4096 --num_async=10 --top_k_docs=-1 --score_model=None "
    "--db_type=chroma --user_path=/tmp --auth_filename=auth.json --chunk_size=512 --share=False "
    "--concurrency_count=100 --enable_tts=False --visible_login_tab=False",
    "--inference_server=vllm_chat:http://localhost:11434/v1 --base_model=llama3 --hf_embedding_model=fake "
    "--embedding_gpu_id=cpu --openai_server=True --enforce_h2ogpt_api_key=True",
]


@pytest.mark.parametrize("command", DOCUMENTED)
def test_documented_h2ogpt_command_lines_start(command: str, tmp_path: Path) -> None:
    argv = command.replace("--user_path=/tmp", f"--user_path={tmp_path}").split()
    if "--hf_embedding_model=fake" in argv:  # h2oGPT's "no embeddings"; here a served name
        argv += ["--embedding_server", "http://127.0.0.1:1/v1"]
    settings, warnings = parse_settings_and_warnings(argv, {})
    assert isinstance(settings, Settings)
    given = {arg[2:].partition("=")[0] for arg in argv}
    for name in given & IGNORED_H2OGPT_FLAGS:
        assert f"h2oGPT flag --{name} is ignored (no meaning in this server)" in warnings


def test_h2ogpt_flags_with_a_meaning_are_mapped(tmp_path: Path) -> None:
    users = tmp_path / "auth.json"
    settings, warnings = parse_settings_and_warnings(
        [
            "--concurrency_count=100",
            f"--auth_filename={users}",
            "--top_k_docs=-1",
            "--chunk_size=1024",
            f"--user_path={tmp_path}",
            "--db_type=weaviate",
            "--inference_server=vllm_chat:http://vllm:5000/v1",
            "--max_max_new_tokens=512",
        ],
        {},
    )
    assert warnings == []
    assert settings.max_concurrency == 100
    assert settings.auth == str(users)
    assert settings.top_k_docs == -1
    assert settings.chunk_size == 1024
    assert settings.user_path == tmp_path
    assert settings.inference_server == "vllm:http://vllm:5000/v1"
    assert settings.max_max_new_tokens == 512


def test_ignored_flags_warn_once_by_name_and_never_show_their_value() -> None:
    argv = ["--score_model=None", "--admin_pass", "s3cret-admin", "--use_auth_token=hf_s3cret", "--share"]
    settings, warnings = parse_settings_and_warnings(argv, {"H2OGPT_SCORE_MODEL": "None"})
    assert sorted(warnings) == [
        "h2oGPT flag --admin_pass is ignored (no meaning in this server)",
        "h2oGPT flag --score_model is ignored (no meaning in this server)",
        "h2oGPT flag --share is ignored (no meaning in this server)",
        "h2oGPT flag --use_auth_token is ignored (no meaning in this server)",
    ]
    assert not any("s3cret" in warning for warning in warnings)
    assert settings == parse_settings([], {})


def test_db_type_other_than_weaviate_is_warned_about() -> None:
    _, warnings = parse_settings_and_warnings(["--db_type", "chroma"], {})
    assert warnings == [
        "--db_type chroma is ignored: documents are kept in Weaviate "
        "(--weaviate_url, or a local weaviate-server under --save_dir)"
    ]


def test_lower_case_env_and_gradio_variables_are_read_below_flags_and_h2ogpt_env() -> None:
    settings = parse_settings(
        [],
        {
            "h2ogpt_inference_server": "http://tgi:80",
            "GRADIO_SERVER_PORT": "7861",
            "GRADIO_SERVER_NAME": "127.0.0.1",
        },
    )
    assert settings.inference_server == "http://tgi:80"
    assert (settings.gradio_port, settings.server_name) == (7861, "127.0.0.1")
    assert parse_settings(["--gradio_port", "7000"], {"GRADIO_SERVER_PORT": "7861"}).gradio_port == 7000
    assert (
        parse_settings([], {"H2OGPT_GRADIO_PORT": "7001", "GRADIO_SERVER_PORT": "7861"}).gradio_port == 7001
    )
    # A flag beats the environment under h2oGPT's name too.
    assert parse_settings(["--concurrency_count", "5"], {"H2OGPT_MAX_CONCURRENCY": "9"}).max_concurrency == 5


def test_model_lock_with_one_entry_sets_the_model_and_more_are_refused() -> None:
    lock = (
        "[{'inference_server': 'http://tgi:80', 'base_model': 'm/x', 'max_seq_len': 4096, 'h2ogpt_key': 'k'}]"
    )
    settings, warnings = parse_settings_and_warnings(["--model_lock", lock], {})
    assert (settings.inference_server, settings.base_model, settings.max_seq_len) == (
        "http://tgi:80",
        "m/x",
        4096,
    )
    assert warnings == ["--model_lock keys ['h2ogpt_key'] are ignored (no meaning in this server)"]
    with pytest.raises(SettingsError, match="serves one model"):
        parse_settings(["--model_lock", "[{'base_model': 'a'}, {'base_model': 'b'}]"], {})


def test_unknown_flags_are_still_refused() -> None:
    with pytest.raises(SettingsError, match="unknown flag --inference_sever"):
        parse_settings(["--inference_sever", "http://x"], {})


def test_help_gives_every_flag_its_meaning() -> None:
    text = help_text()
    for name, field in Settings.model_fields.items():
        assert field.description, name
        assert f"--{name}" in text
    assert "--concurrency_count" in text
    assert "--score_model" in text  # listed among the accepted-and-ignored flags


def test_server_defaults_fill_what_a_request_leaves_out_and_caps_apply() -> None:
    settings = parse_settings(
        [
            "--max_new_tokens=100",
            "--temperature=0",
            "--top_k_docs=4",
            "--max_max_new_tokens=300",
            "--max_max_time=5",
        ],
        {},
    )
    unset = with_server_settings(GenerationParams.model_validate({"instruction": "hi"}), settings)
    assert (unset.max_new_tokens, unset.temperature, unset.top_k_docs, unset.max_time) == (100, 0.0, 4, 5.0)
    given = with_server_settings(
        GenerationParams.model_validate({"instruction": "hi", "max_new_tokens": 2000, "temperature": 0.7}),
        settings,
    )
    assert (given.max_new_tokens, given.temperature) == (300, 0.7)


def test_iinput_follows_the_instruction() -> None:
    params = GenerationParams.model_validate(
        {"instruction_nochat": "Translate to French:", "iinput_nochat": "cat"}
    )
    assert params.question == "Translate to French:\n\ncat"
    assert GenerationParams.model_validate({"instruction": "hi"}).question == "hi"
