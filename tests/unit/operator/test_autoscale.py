"""The autoscaler's pure decision: scale up at once, from zero on a held request, down only after
the delay and with nothing in flight, never on missing figures, always within min and max."""

from __future__ import annotations

import pytest
from h2ogpt_operator.autoscale import Decision, Load, Memory, PodLoad, decide
from h2ogpt_operator.models import AutoscalingSpec

POLICY = AutoscalingSpec(min_replicas=0, max_replicas=8, target_in_flight=4, scale_down_delay_seconds=60)


def pods(*in_flight: float, held: float = 0.0) -> Load:
    return Load(api_pods=[PodLoad(in_flight=n, held=held) for n in in_flight])


def run(
    current: int,
    load: Load,
    memory: Memory | None = None,
    now: float = 1000.0,
    policy: AutoscalingSpec = POLICY,
) -> Decision:
    return decide(policy, current, load, memory or Memory(), now)


def test_a_held_request_at_zero_replicas_asks_for_one() -> None:
    decision = run(0, pods(1, held=1))
    assert decision.desired == 1
    assert decision.reason.startswith("scale up 0 -> 1")
    assert "1 held" in decision.reason
    assert decision.memory == Memory(low_since=None, last_scale=1000.0)


def test_idle_at_zero_stays_at_zero() -> None:
    decision = run(0, pods(0, 0))
    assert decision.desired == 0
    assert decision.reason.startswith("steady at 0")


@pytest.mark.parametrize(
    ("in_flight", "desired"), [((4,), 1), ((5,), 2), ((8, 8), 4), ((3, 3, 3), 3), ((100,), 8)]
)
def test_scale_up_is_in_flight_over_target_rounded_up_and_capped(
    in_flight: tuple[int, ...], desired: int
) -> None:
    decision = run(1, pods(*in_flight))
    assert decision.desired == desired
    if desired > 1:
        assert decision.memory.last_scale == 1000.0
    assert ("(maxReplicas)" in decision.reason) is (sum(in_flight) > 32)


def test_engine_queue_adds_replicas_when_it_says_more_than_in_flight() -> None:
    policy = AutoscalingSpec(max_replicas=8, target_in_flight=64, target_queue_size=2)
    decision = decide(policy, 2, Load(api_pods=[PodLoad(10)], engine_queue=9), Memory(), 0.0)
    assert decision.desired == 5
    assert "engine queue 9 over 2 per replica" in decision.reason


def test_engine_queue_is_ignored_without_its_target() -> None:
    decision = run(2, Load(api_pods=[PodLoad(8)], engine_queue=100))
    assert decision.desired == 2


def test_engine_queue_never_scales_in() -> None:
    policy = AutoscalingSpec(max_replicas=8, target_in_flight=4, target_queue_size=2)
    decision = decide(policy, 3, Load(api_pods=[PodLoad(12)], engine_queue=0), Memory(), 0.0)
    assert decision.desired == 3


def test_scale_in_waits_for_the_delay_then_for_nothing_in_flight() -> None:
    first = run(4, pods(2), now=0.0)
    assert first.desired == 4
    assert first.memory.low_since == 0.0
    assert "scaling in after 60s more" in first.reason

    still = run(4, pods(2), first.memory, now=59.0)
    assert still.desired == 4
    assert still.memory.low_since == 0.0

    streams = run(4, pods(2), still.memory, now=61.0)
    assert streams.desired == 4
    assert "once a replica is idle or the 2 requests in flight finish" in streams.reason

    done = run(4, pods(0, 0), streams.memory, now=62.0)
    assert done.desired == 0
    assert done.reason == "scale in 4 -> 0: low for 62s and nothing in flight"
    assert done.memory == Memory(low_since=None, last_scale=62.0)


def test_scale_in_under_load_removes_only_idle_replicas() -> None:
    # 2 in flight fit 1 replica of 4; two replicas have no request: only those two go.
    decision = run(4, Load(api_pods=[PodLoad(2)], idle_replicas=2), Memory(low_since=0.0), now=61.0)
    assert decision.desired == 2
    assert decision.reason == (
        "scale in 4 -> 2: low for 61s, 2 replicas idle (2 requests in flight on the others)"
    )
    assert decision.memory == Memory(low_since=None, last_scale=61.0)


def test_idle_replicas_beyond_the_need_are_not_all_removed() -> None:
    # 6 in flight need 2 replicas; three of five idle: down to the need, not to 2 - 3.
    decision = run(5, Load(api_pods=[PodLoad(6)], idle_replicas=3), Memory(low_since=0.0), now=61.0)
    assert decision.desired == 2


def test_idle_replicas_wait_for_the_delay_too() -> None:
    decision = run(4, Load(api_pods=[PodLoad(2)], idle_replicas=3), Memory(low_since=30.0), now=61.0)
    assert decision.desired == 4
    assert "scaling in after 29s more" in decision.reason


def test_scale_in_goes_to_the_floor_not_below() -> None:
    policy = AutoscalingSpec(min_replicas=2, max_replicas=8, target_in_flight=4, scale_down_delay_seconds=0)
    decision = decide(policy, 6, pods(0), Memory(low_since=0.0), 10.0)
    assert decision.desired == 2


def test_a_busy_moment_restarts_the_delay() -> None:
    low = run(4, pods(1), now=0.0)
    busy = run(4, pods(16), low.memory, now=30.0)
    assert busy.desired == 4
    assert busy.memory.low_since is None
    again = run(4, pods(0), busy.memory, now=70.0)
    assert again.desired == 4  # the 60 s count from 70, not from 0
    assert again.memory.low_since == 70.0


def test_zero_delay_scales_in_at_once_when_idle() -> None:
    policy = AutoscalingSpec(min_replicas=0, max_replicas=4, scale_down_delay_seconds=0)
    assert decide(policy, 3, pods(0), Memory(), 5.0).desired == 0


def test_unreadable_pods_never_cause_a_scale_in() -> None:
    decision = run(4, Load(api_pods=[PodLoad(0)], unreadable=1), Memory(low_since=0.0), now=1000.0)
    assert decision.desired == 4
    assert "1 API pods unreadable" in decision.reason


def test_unreadable_pods_do_not_stop_a_scale_up() -> None:
    decision = run(1, Load(api_pods=[PodLoad(12)], unreadable=1))
    assert decision.desired == 3


def test_no_figures_at_all_keep_the_count() -> None:
    decision = run(3, Load(api_pods=[], unreadable=2), Memory(low_since=0.0))
    assert decision.desired == 3
    assert decision.reason == "no API pod's metrics could be read (2 tried): keeping 3"
    assert decision.memory == Memory(low_since=0.0)


def test_no_api_pod_keeps_the_count() -> None:
    assert run(2, Load(api_pods=[])).reason == "no API pod is running: keeping 2"


@pytest.mark.parametrize(("current", "desired"), [(0, 1), (12, 8)])
def test_a_count_outside_the_bounds_is_corrected_at_once(current: int, desired: int) -> None:
    policy = AutoscalingSpec(min_replicas=1, max_replicas=8)
    decision = decide(policy, current, pods(0), Memory(), 0.0)
    assert decision.desired == desired
    assert "outside minReplicas 1 .. maxReplicas 8" in decision.reason


def test_steady_keeps_the_last_scale_time() -> None:
    decision = run(2, pods(5), Memory(low_since=3.0, last_scale=7.0), now=100.0)
    assert decision.desired == 2
    assert decision.memory == Memory(low_since=None, last_scale=7.0)
