"""The autoscaler's decision: how many inference replicas a stack should run, and why.

A pure function of what the operator read (each API pod's generations in flight and requests
held while no replica is ready, optionally the engines' own queue), the stack's
`spec.inference.autoscaling`, the replicas now, what it remembered from its last decision and
the time. No I/O: the operator's timer (`autoscaler.py`) gathers the figures and applies the
result, and bench/autoscale.py drives this same function through a modelled load.

Rules, in order:
- `minReplicas` / `maxReplicas` bound everything; a count outside them (the spec changed) is
  corrected at once.
- Figures that could not be read are never a reason to scale in: with no API pod read the count
  stays, with some missing it may only grow.
- Up at once: ceil(in flight / targetInFlight) replicas, at least one while a request is held (scale
  from zero), and at least ceil(engine queue / targetQueueSize) when the engines' queue says so.
- Down only when the load has fitted fewer replicas for `scaleDownDelaySeconds`, and then only by
  replicas no stream runs on: all of them when nothing is in flight on any API pod, else the idle
  replicas the API pods' per-replica figures show (where they route across replicas themselves),
  which the operator marks for the ReplicaSet to remove first (autoscaler.py). A scale-in never
  waits on a count it cannot prove, so no stream is cut.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from h2ogpt_operator.models import AutoscalingSpec


@dataclass(frozen=True)
class PodLoad:
    """One API pod's figures (its /metrics): generations in flight (running or waiting for a slot,
    held ones included), requests held because no inference replica was ready, and, where it routes
    across replicas itself, requests streaming from each replica it knows (host:port)."""

    in_flight: float
    held: float = 0.0
    replicas: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Load:
    """What one look at a stack's pods found."""

    api_pods: Sequence[PodLoad]
    unreadable: int = 0  # API pods whose metrics could not be read
    engine_queue: float | None = None  # requests waiting inside the engines, summed; None = not read
    # Serving inference replicas that no API pod has a request on (0 where the API pods do not route
    # across replicas themselves and so cannot say).
    idle_replicas: int = 0


@dataclass(frozen=True)
class Memory:
    """What the autoscaler keeps between decisions for one stack (in the operator's memory: after a
    restart the scale-down delay starts again, which only ever delays a scale-in)."""

    low_since: float | None = None  # when the load first fitted fewer replicas than were running
    last_scale: float | None = None  # when it last changed the count


@dataclass(frozen=True)
class Decision:
    desired: int
    reason: str
    memory: Memory


def _fmt(value: float) -> str:
    return f"{value:g}"


def decide(policy: AutoscalingSpec, current: int, load: Load, memory: Memory, now: float) -> Decision:  # noqa: PLR0911
    """The replicas this stack should run and why (see the module's rules)."""
    low, high = policy.min_replicas, policy.max_replicas
    if current < low or current > high:
        bound = low if current < low else high
        return Decision(
            bound,
            f"{current} replicas is outside minReplicas {low} .. maxReplicas {high}",
            Memory(low_since=None, last_scale=now),
        )
    if not load.api_pods:
        why = (
            f"no API pod's metrics could be read ({load.unreadable} tried)"
            if load.unreadable
            else ("no API pod is running")
        )
        return Decision(current, f"{why}: keeping {current}", memory)

    in_flight = sum(pod.in_flight for pod in load.api_pods)
    held = sum(pod.held for pod in load.api_pods)
    need = math.ceil(max(in_flight, held) / policy.target_in_flight)
    why = f"{_fmt(in_flight)} in flight, target {policy.target_in_flight} per replica"
    if held > 0:
        why += f", {_fmt(held)} held"
        need = max(need, 1)
    if policy.target_queue_size is not None and load.engine_queue is not None:
        by_queue = math.ceil(load.engine_queue / policy.target_queue_size)
        if by_queue > current and by_queue > need:
            need = by_queue
            why += f", engine queue {_fmt(load.engine_queue)} over {policy.target_queue_size} per replica"
    desired = min(max(need, low), high)

    if desired > current:
        capped = " (maxReplicas)" if need > high else ""
        return Decision(desired, f"scale up {current} -> {desired}{capped}: {why}", Memory(None, now))
    if desired == current:
        return Decision(current, f"steady at {current}: {why}", Memory(None, memory.last_scale))

    low_since = memory.low_since if memory.low_since is not None else now
    kept = Memory(low_since, memory.last_scale)
    if load.unreadable:
        return Decision(
            current,
            f"keeping {current}: {load.unreadable} API pods unreadable, no scale-in on part of the figures",
            kept,
        )
    waited = now - low_since
    if waited < policy.scale_down_delay_seconds:
        left = policy.scale_down_delay_seconds - waited
        return Decision(
            current, f"load fits {desired}, scaling in after {_fmt(round(left))}s more: {why}", kept
        )
    if in_flight > 0:
        if load.idle_replicas == 0:
            return Decision(
                current,
                f"load fits {desired}, scaling in once a replica is idle or the {_fmt(in_flight)} "
                "requests in flight finish",
                kept,
            )
        desired = max(desired, current - load.idle_replicas)
        return Decision(
            desired,
            f"scale in {current} -> {desired}: low for {_fmt(round(waited))}s, {load.idle_replicas} "
            f"replicas idle ({_fmt(in_flight)} requests in flight on the others)",
            Memory(None, now),
        )
    return Decision(
        desired,
        f"scale in {current} -> {desired}: low for {_fmt(round(waited))}s and nothing in flight",
        Memory(None, now),
    )
