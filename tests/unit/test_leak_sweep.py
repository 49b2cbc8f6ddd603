"""The session's leak sweep (tests/support/leak_sweep.py) finds a planted credential, in either form,
and only generated ones: the check that guards issue 13's item 11 can fail."""

from __future__ import annotations

import base64
import json

from tests.support.leak_sweep import find_leaks, generated_values

TOKEN = "Zq3v9XcW1n8RkLp0aTb7YdEe5sHuJ2mQ4fGi6oNrKxw"  # shaped like secrets.token_urlsafe(32)
WEAVIATE_KEY = "Vd8sK2pLq9XwZ3mN7bRt1cYe5hGu0aJf4iOkTlEx6rQ"


def encoded(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def auth_secret() -> dict[str, object]:
    return {
        "metadata": {"namespace": "t-1", "name": "demo-auth"},
        "data": {
            "H2OGPT_H2OGPT_API_KEYS": encoded(json.dumps([TOKEN])),
            "WEAVIATE_API_KEY": encoded(WEAVIATE_KEY),
            "SHORT": encoded("tiny"),
        },
    }


def test_each_entry_of_a_key_list_and_each_value_is_looked_for() -> None:
    values = generated_values(auth_secret())
    assert values[TOKEN] == "t-1/demo-auth H2OGPT_H2OGPT_API_KEYS"
    assert values[WEAVIATE_KEY] == "t-1/demo-auth WEAVIATE_API_KEY"
    assert "tiny" not in values  # too short to tell from chance


def test_a_planted_value_is_found_as_text_and_as_base64_and_nothing_else_is() -> None:
    values = generated_values(auth_secret())
    places = [
        ("ConfigMap t-1/demo-config", json.dumps({"data": {"H2OGPT_BASE_MODEL": "org/model"}})),
        ("Event t-1/demo.1", json.dumps({"message": f"applied with key {TOKEN}"})),
        ("operator log", f"... WEAVIATE_API_KEY={encoded(WEAVIATE_KEY)} ..."),
    ]
    assert find_leaks(values, places) == [
        "t-1/demo-auth H2OGPT_H2OGPT_API_KEYS in Event t-1/demo.1",
        "t-1/demo-auth WEAVIATE_API_KEY in operator log",
    ]
    assert find_leaks(values, places[:1]) == []
