"""The routing policy (h2ogpt_api/routing.py): keys, the bounded-load ring, the other policies, backoff."""

from __future__ import annotations

import collections
import math

import pytest
from h2ogpt_api.backends.routed import replica_name
from h2ogpt_api.prompts import ChatMessage
from h2ogpt_api.routing import (
    BACKOFF_FIRST_S,
    BACKOFF_MAX_S,
    Router,
    affinity_key,
    prefix_key,
)
from h2ogpt_api.settings import SettingsError, parse_settings

REPLICAS = [f"10.0.0.{index}:8080" for index in range(8)]


class Clock:
    """A settable time source for the backoff (the Router takes any callable)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_prefix_key_is_the_system_prompt_and_the_first_user_message_cut_to_n_characters() -> None:
    system = ChatMessage("system", "You answer from the documents. " * 100)
    first = ChatMessage("user", "DOC1 text " * 50 + "question one?")
    turn_one = [system, first]
    turn_two = [system, first, ChatMessage("assistant", "an answer"), ChatMessage("user", "and then?")]
    key = prefix_key(turn_one, 200)
    assert key == prefix_key(turn_two, 200)  # later turns keep the conversation's key
    assert key == f"system:{system.content}\nuser:{first.content[:200]}"
    # The same long system prompt before different documents: different keys.
    other = [system, ChatMessage("user", "DOC2 text " * 50)]
    assert prefix_key(other, 200) != key
    # Different questions after the same documents (past N characters): one key.
    again = [system, ChatMessage("user", "DOC1 text " * 50 + "question two?")]
    assert prefix_key(again, 200) == key
    assert prefix_key([ChatMessage("user", "hi")], 200) == "system:\nuser:hi"


def test_affinity_key_prefers_the_session_then_a_logged_in_user_never_an_api_key() -> None:
    assert affinity_key("abc", "alice", authenticated=True) == "session:abc"
    assert affinity_key(None, "alice", authenticated=True) == "user:alice"
    assert affinity_key(None, "key:app", authenticated=True) == ""
    assert affinity_key(None, "guest-session-1", authenticated=False) == ""
    assert affinity_key("", "", authenticated=False) == ""


def test_the_same_key_goes_to_the_same_replica_and_keys_spread_over_all() -> None:
    router = Router(REPLICAS)
    first = router.choose("conversation-1")
    assert first is not None
    assert first.prefix_hit is False
    again = router.choose("conversation-1")
    assert again is not None
    assert again.replica == first.replica
    assert again.prefix_hit is True
    owners = collections.Counter(router.choose(f"key-{index}").replica for index in range(4000))  # type: ignore[union-attr]
    assert set(owners) == set(REPLICAS)
    # 100 points per replica: every replica owns between half and twice its fair share.
    assert min(owners.values()) > 4000 / 8 / 2
    assert max(owners.values()) < 4000 / 8 * 2


def test_bounded_load_keeps_every_replica_within_the_factor_of_the_mean() -> None:
    router = Router(REPLICAS, load_factor=1.25)
    placed = []
    # One hot key (every request shares the prefix) and a few others, all held in flight.
    for index in range(200):
        decision = router.choose("hot" if index % 4 else f"cold-{index}")
        assert decision is not None
        router.started(decision.replica)
        placed.append(decision.replica)
        loads = [router.state(name).in_flight for name in REPLICAS]
        mean = sum(loads) / len(loads)
        # The bound of the paper with its ceiling: at most ceil(1.25 x mean), at any moment.
        assert max(loads) <= max(math.ceil(1.25 * mean), 1 + min(loads))
    loads = [router.state(name).in_flight for name in REPLICAS]
    assert max(loads) / (sum(loads) / len(loads)) <= 1.25
    # The hot key's overflow went to its ring successors in order, not everywhere at random:
    # its first choice is the most loaded.
    hot_first = collections.Counter(placed[1::4]).most_common(1)[0][0]
    assert router.state(hot_first).in_flight == max(loads)


def test_a_finished_request_frees_its_slot_so_the_key_comes_home() -> None:
    router = Router(REPLICAS[:2], load_factor=1.25)
    home = router.choose("k")
    assert home is not None
    router.started(home.replica)
    router.started(home.replica)  # two in flight at home, none elsewhere: the bound is 1.25 x 3/2
    away = router.choose("k")
    assert away is not None
    assert away.replica != home.replica
    router.finished(home.replica)
    router.finished(home.replica)
    back = router.choose("k")
    assert back is not None
    assert back.replica == home.replica


def test_least_loaded_and_round_robin() -> None:
    router = Router(REPLICAS[:3], policy="least_loaded")
    router.started(REPLICAS[0])
    router.started(REPLICAS[1])
    decision = router.choose("anything")
    assert decision is not None
    assert decision.replica == REPLICAS[2]
    assert decision.prefix_hit is None
    turns = Router(REPLICAS[:3], policy="round_robin")
    chosen = [turns.choose("same").replica for _ in range(6)]  # type: ignore[union-attr]
    assert chosen == REPLICAS[:3] * 2


def test_a_failed_replica_is_out_for_a_doubling_backoff_then_tried_again() -> None:
    clock = Clock()
    router = Router(REPLICAS[:2], clock=clock)
    victim = router.choose("k")
    assert victim is not None
    assert router.failed(victim.replica) == BACKOFF_FIRST_S
    for _ in range(20):
        decision = router.choose("k")
        assert decision is not None
        assert decision.replica != victim.replica
    clock.now += BACKOFF_FIRST_S
    assert router.choose("k").replica == victim.replica  # type: ignore[union-attr]
    assert router.failed(victim.replica) == 2 * BACKOFF_FIRST_S
    backoffs = [router.failed(victim.replica) for _ in range(10)]
    assert backoffs[-1] == BACKOFF_MAX_S
    router.succeeded(victim.replica)
    assert router.choose("k").replica == victim.replica  # type: ignore[union-attr]


def test_no_replica_up_or_all_excluded_is_none() -> None:
    router = Router(REPLICAS[:2], clock=Clock())
    assert router.choose("k", exclude=frozenset(REPLICAS[:2])) is None
    for name in REPLICAS[:2]:
        router.failed(name)
    assert router.choose("k") is None
    assert Router([]).choose("k") is None


def test_membership_changes_move_only_the_keys_of_the_replica_that_left() -> None:
    router = Router(REPLICAS)
    before = {f"k{index}": router.choose(f"k{index}").replica for index in range(2000)}  # type: ignore[union-attr]
    router.started(REPLICAS[1])
    router.set_replicas(REPLICAS[:-1])
    assert router.state(REPLICAS[1]).in_flight == 1  # kept across the change
    router.finished(REPLICAS[1])  # an idle pool again: only the membership change moves keys
    after = {key: router.choose(key).replica for key in before}  # type: ignore[union-attr]
    moved = {key for key in before if before[key] != after[key]}
    assert moved
    assert all(before[key] == REPLICAS[-1] for key in moved)


def test_bad_settings_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown routing policy"):
        Router(REPLICAS, policy="random")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="below 1"):
        Router(REPLICAS, load_factor=0.5)


@pytest.mark.parametrize(
    ("server", "name"),
    [
        ("http://tgi-0:8080", "tgi-0:8080"),
        ("https://user:secret@tgi.example/", "tgi.example:443"),
        ("vllm:10.1.2.3:8000", "10.1.2.3:8000"),
        ("vllm:http://v:9000/v1", "v:9000"),
        ("openai:http://llama:8000/v1", "llama:8000"),
    ],
)
def test_replica_names_are_host_and_port_never_credentials(server: str, name: str) -> None:
    assert replica_name(server) == name


def test_inference_server_takes_comma_separated_replicas_of_one_kind() -> None:
    settings = parse_settings(
        ["--inference_server", "http://a:80, http://b:80", "--routing", "round_robin"], {}
    )
    assert settings.inference_servers == ["http://a:80", "http://b:80"]
    assert settings.routing == "round_robin"
    assert parse_settings([], {"H2OGPT_INFERENCE_SERVER": "vllm_chat:a:1,vllm:b:2"}).inference_servers == [
        "vllm:a:1",
        "vllm:b:2",
    ]
    assert parse_settings([], {}).inference_servers == []
    with pytest.raises(SettingsError, match="one kind"):
        parse_settings(["--inference_server", "http://a:80,vllm:b:1"], {})
    with pytest.raises(SettingsError, match="empty entry"):
        parse_settings(["--inference_server", "http://a:80,,http://b:80"], {})
    with pytest.raises(SettingsError, match="routing"):
        parse_settings(["--routing", "random"], {})
    with pytest.raises(SettingsError, match="routing_load_factor"):
        parse_settings(["--routing_load_factor", "0.9"], {})
