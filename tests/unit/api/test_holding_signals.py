"""What a held request tells, and is told: the demand signal (its target, its patch, how often it renews,
when holding calls it, when load past the target calls it), and a replica announced by the
EndpointSlice watch waking held requests.
The renewal against a real apiserver, with the api pods' RBAC, is tests/cluster/test_autoscaling.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from pathlib import Path

import pytest
from h2ogpt_api.backends import replica_follower
from h2ogpt_api.backends.base import (
    BackendError,
    BackendEvent,
    BackendRequest,
    Sampling,
    StreamEnd,
    TokenDelta,
)
from h2ogpt_api.backends.holding import HoldingBackend
from h2ogpt_api.backends.routed import RoutedBackend
from h2ogpt_api.demand import (
    LOAD_RENEW_EVERY_S,
    RENEW_EVERY_S,
    Cause,
    DemandSignal,
    ScaleUpWake,
    parse_lease,
    renewal,
)
from h2ogpt_api.routing import Router
from h2ogpt_api.workers import SharedInFlightCount, WorkerRole

from tests.support.kubeconfig import unreachable_kubeconfig


def test_the_lease_is_named_namespace_slash_name() -> None:
    assert parse_lease("team-a/demo-demand") == ("team-a", "demo-demand")
    for bad in ("demo-demand", "/demo-demand", "team-a/", "team-a/x/y"):
        with pytest.raises(ValueError, match="expected <namespace>/<name>"):
            parse_lease(bad)


def test_a_renewal_names_the_holder_and_the_time_as_kubernetes_writes_microtime() -> None:
    assert renewal("demo-openai-5c9d-x2", 1_764_642_000.25) == {
        "spec": {"holderIdentity": "demo-openai-5c9d-x2", "renewTime": "2025-12-02T02:20:00.250000Z"}
    }


class _Counted(DemandSignal):
    """Counts renewals instead of sending them (what `signal` decides is tested, not the patch)."""

    def __init__(self, clock: list[float], kubeconfig: Path) -> None:
        super().__init__(
            "team-a/demo-demand", identity="pod", kubeconfig=str(kubeconfig), clock=lambda: clock[0]
        )
        self.sent = 0

    async def _renew(self, cause: Cause) -> None:
        self.sent += 1


def test_without_credentials_the_signal_is_refused_at_once(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="--demand_lease needs Kubernetes credentials"):
        DemandSignal("team-a/demo-demand", kubeconfig=str(tmp_path / "none"))


def test_a_burst_renews_once_and_a_later_hold_again(tmp_path: Path) -> None:
    async def scenario() -> list[int]:
        clock = [100.0]
        signal = _Counted(clock, unreachable_kubeconfig(tmp_path))
        sent = []
        for _ in range(200):  # a burst of held requests
            signal.signal()
        await asyncio.sleep(0)
        sent.append(signal.sent)
        clock[0] += RENEW_EVERY_S - 0.1
        signal.signal()
        await asyncio.sleep(0)
        sent.append(signal.sent)
        clock[0] += 0.2
        signal.signal()
        await asyncio.sleep(0)
        sent.append(signal.sent)
        await signal.aclose()
        return sent

    assert asyncio.run(scenario()) == [1, 1, 2]


def test_load_renews_a_second_after_the_last_load_renewal_and_apart_from_held_ones(tmp_path: Path) -> None:
    async def scenario() -> list[bool]:
        clock = [100.0]
        signal = _Counted(clock, unreachable_kubeconfig(tmp_path))
        sent = [signal.signal("held")]
        await asyncio.sleep(0)
        clock[0] += 0.1
        sent.append(signal.signal("load"))  # a held renewal does not hold the load's back
        await asyncio.sleep(0)
        clock[0] += LOAD_RENEW_EVERY_S - 0.05
        sent.append(signal.signal("load"))  # within a second of the last
        await asyncio.sleep(0)
        clock[0] += 0.1
        sent.append(signal.signal("load"))  # a second on: the next step of a ramp
        await asyncio.sleep(0)
        sent.append(signal.signal("held"))  # still within RENEW_EVERY_S of the held one
        await signal.aclose()
        return sent

    assert RENEW_EVERY_S > 2 * LOAD_RENEW_EVERY_S
    assert asyncio.run(scenario()) == [True, True, False, True, False]


class _StartsLate:
    """A networked backend that refuses (`unavailable`) until `up` is set: a replica starting."""

    kind = "tgi"
    model_name = "m"

    def __init__(self) -> None:
        self.up = asyncio.Event()

    async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
        if not self.up.is_set():
            raise BackendError("unavailable", "connection refused")
        yield TokenDelta("hi")
        yield StreamEnd(prompt_tokens=1, completion_tokens=1, finish_reason="stop")


def test_holding_calls_on_hold_once_per_request_held_and_not_for_one_answered() -> None:
    async def scenario() -> tuple[int, int]:
        inner = _StartsLate()
        calls: list[None] = []
        backend = HoldingBackend(
            inner, hold_seconds=30, max_held=10, keepalive_seconds=10, on_hold=lambda: calls.append(None)
        )
        request = BackendRequest(messages=(), sampling=Sampling(max_new_tokens=1), prompt="q")

        async def answer() -> list[BackendEvent]:
            return [event async for event in backend.stream(request)]

        held = [asyncio.create_task(answer()) for _ in range(3)]
        await asyncio.sleep(0.35)  # several retries each: still one call per request
        inner.up.set()
        await asyncio.gather(*held)
        while_held = len(calls)
        await answer()  # a replica is up: nothing is held
        return while_held, len(calls)

    assert asyncio.run(scenario()) == (3, 3)


def test_a_replica_announced_is_tried_at_once_by_the_held_requests() -> None:
    """Held behind the EndpointSlice watch's routed backend with no replica: their retries have backed
    off to about a second when the watch names one, and they get through at once, not at their next retry."""

    async def scenario() -> tuple[float, int]:
        replica = _StartsLate()
        replica.up.set()  # a Ready endpoint: its server answers
        routed = RoutedBackend([], lambda _server: replica, router=Router([], policy="round_robin"),
                               prefix_chars=64)  # fmt: skip
        backend = HoldingBackend(routed, hold_seconds=30, max_held=10, keepalive_seconds=10)
        request = BackendRequest(messages=(), sampling=Sampling(max_new_tokens=1), prompt="q")

        async def answer() -> float:
            _events = [event async for event in backend.stream(request)]
            return time.monotonic()

        held = [asyncio.create_task(answer()) for _ in range(3)]
        await asyncio.sleep(1.6)  # retries at 0.1, 0.3, 0.7, 1.5 s: the next one is about 1 s away
        announced = time.monotonic()
        replica_follower(backend)(["http://10.0.0.5:8000"])
        answered = await asyncio.gather(*held)
        return max(answered) - announced, backend.held

    after, still_held = asyncio.run(scenario())
    assert still_held == 0
    assert after < 0.5, f"held requests got through {after:.3f} s after the replica was announced"


def test_only_a_routed_backend_follows_replicas() -> None:
    with pytest.raises(TypeError, match="routed backend"):
        replica_follower(_StartsLate())  # type: ignore[arg-type]


class _Signals:
    """A `DemandSignal.signal` stand-in: records each call; `accept`: whether the throttle lets it by."""

    def __init__(self) -> None:
        self.calls = 0
        self.sent = 0
        self.accept = True

    def __call__(self) -> bool:
        self.calls += 1
        self.sent += self.accept
        return self.accept


def test_load_wakes_the_operator_once_per_larger_ask_and_never_at_max_replicas() -> None:
    signals = _Signals()
    wake = ScaleUpWake(target_in_flight=2, max_replicas=4, signal=signals)
    for in_flight in (1, 2):  # one ready replica takes two at the target: nothing to ask
        wake.started(in_flight, ready=1)
    assert signals.calls == 0
    wake.started(3, ready=1)  # this pod alone asks for 2
    wake.started(4, ready=1)  # the same ask: already sent
    assert signals.sent == 1
    wake.started(5, ready=1)  # asks for 3
    assert signals.sent == 2
    for in_flight in range(6, 40):  # past maxReplicas (4) it asks for 4, once
        wake.started(in_flight, ready=2)
    assert signals.sent == 3
    wake.started(8, ready=4)  # met: the next step up wakes it again
    wake.started(9, ready=4)  # asks for 5, but 4 is the most
    assert signals.sent == 3
    wake.started(3, ready=1)
    assert signals.sent == 4


def test_a_wake_the_throttle_drops_is_tried_again_by_the_next_request() -> None:
    signals = _Signals()
    wake = ScaleUpWake(target_in_flight=1, max_replicas=8, signal=signals)
    signals.accept = False  # within RENEW_EVERY_S of a renewal for a held request, say
    wake.started(2, ready=1)
    signals.accept = True
    wake.started(2, ready=1)
    assert (signals.calls, signals.sent) == (2, 1)


def test_the_routed_backend_tells_each_start_its_in_flight_and_ready_replicas() -> None:
    class _Streams:
        kind = "tgi"
        model_name = "m"

        def __init__(self) -> None:
            self.go = asyncio.Event()

        async def stream(self, request: BackendRequest) -> AsyncGenerator[BackendEvent, None]:
            await self.go.wait()
            yield TokenDelta("hi")
            yield StreamEnd(prompt_tokens=1, completion_tokens=1, finish_reason="stop")

    async def scenario() -> list[tuple[int, int]]:
        replica = _Streams()
        seen: list[tuple[int, int]] = []
        routed = RoutedBackend(["http://10.0.0.5:8000", "http://10.0.0.6:8000"], lambda _server: replica,
                               router=Router([], policy="round_robin"), prefix_chars=64,
                               on_start=lambda in_flight, ready: seen.append((in_flight, ready)))  # fmt: skip
        request = BackendRequest(messages=(), sampling=Sampling(max_new_tokens=1), prompt="q")

        async def answer() -> None:
            _events = [event async for event in routed.stream(request)]

        running = [asyncio.create_task(answer()) for _ in range(3)]
        await asyncio.sleep(0.05)
        replica.go.set()
        await asyncio.gather(*running)
        await answer()  # the three ended: one in flight again
        return seen

    assert asyncio.run(scenario()) == [(1, 2), (2, 2), (3, 2), (1, 2)]


def test_workers_share_one_count_of_generations_in_flight(tmp_path: Path) -> None:
    """Each worker maps the same file and writes its own slot: every worker reads the pod's total."""
    first, second = (SharedInFlightCount(WorkerRole(index, 2, tmp_path, None)) for index in (0, 1))
    first.add(1)
    second.add(1)
    second.add(1)
    assert (first.total(), second.total()) == (3, 3)
    second.add(-2)
    assert first.total() == 1
    # A worker started later maps the same slots, the counts so far kept.
    assert SharedInFlightCount(WorkerRole(1, 2, tmp_path, None)).total() == 1
