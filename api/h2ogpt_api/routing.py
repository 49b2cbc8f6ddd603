"""Which inference replica serves a request: the policy alone, no I/O (backends/routed.py acts on it).

Policies (`--routing`):

- `prefix` (the default with more than one replica): consistent hashing with bounded loads
  (Mirrokni, Thorup, Zadimoghaddam, "Consistent Hashing with Bounded Loads", 2017). Each replica
  owns `VIRTUAL_NODES` points on a 64-bit ring; a request's key hashes to a point and goes to the
  first replica clockwise whose in-flight count, this request included, stays within
  `load_factor` x the mean in-flight over the replicas that are up. Requests with the same key
  land on the same replica while it has room, so its KV cache holds their shared prefix; a busy
  replica spills the overflow to its ring successors, which again are the same for the same key.
  When every replica is at the bound (only at a handful of requests in flight, where the bound
  rounds below one more request) the least loaded takes it.
- `least_loaded`: the replica with the fewest requests in flight (ties in turn).
- `round_robin`: each replica that is up in turn.

The key (`affinity_key`): the `X-Session-ID` header when a client sends one; else a logged-in
user's name; else the prompt's prefix (`prefix_key`): the system prompt and the first
`--routing_prefix_chars` characters of the first user message. That is the start of the
rendered prompt, the part a KV cache shares: every later turn of a conversation repeats it, and
a RAG question carries its document chunks there, before the question. The whole system prompt
is in the key, not cut at N characters: it is usually the same for every request of an
application, and a key that ended inside it would send all of them to one place. Characters,
not tokens: the router runs before any tokenizer, and characters are near enough to tokens.
API-key identities are not used as keys: one key usually serves an application of many users,
and pinning all of them to one ring point would undo the spreading.

Hand-written rather than a library: the maintained hash-ring packages (uhashring, hash_ring)
have no bounded loads, which is the part that keeps a hot prefix from overloading one replica,
and the ring itself is a sorted list and `bisect`.

A replica that fails is down for a backoff (1 s, doubling to 30 s); when it is over the replica
is tried again, and one success makes it up again.
"""

from __future__ import annotations

import bisect
import contextvars
import hashlib
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from h2ogpt_api.prompts import ChatMessage

RoutingPolicy = Literal["prefix", "least_loaded", "round_robin"]
POLICIES: tuple[RoutingPolicy, ...] = ("prefix", "least_loaded", "round_robin")
DEFAULT_LOAD_FACTOR = 1.25
DEFAULT_PREFIX_CHARS = 1024
# Points per replica on the ring: enough that 8 replicas own near-equal arcs, few enough that
# rebuilding the ring when EndpointSlices change stays well under a millisecond.
VIRTUAL_NODES = 100
BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
# Keys remembered to count prefix hits (a key routed again to the replica it last went to).
REMEMBERED_KEYS = 65536
# Enough of a system prompt to tell two apart; it is hashed per request, so not unbounded.
SYSTEM_PROMPT_CHARS = 65536
SESSION_HEADER = "X-Session-ID"
SESSION_ID_MAX_CHARS = 256  # a longer header is cut: it only needs to tell sessions apart
# Set by a front door from the request's SESSION_HEADER; read once per generation by the core.
SESSION_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar("h2ogpt_session_id", default=None)
# An identity that an API key carries: not a user (see the module docstring).
_KEY_IDENTITY_PREFIX = "key:"


def _point(text: str) -> int:
    """A 64-bit ring position. blake2b: in the standard library, fast, and evenly spread."""
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")


def prefix_key(messages: Sequence[ChatMessage], prefix_chars: int) -> str:
    """The system prompt (its first `SYSTEM_PROMPT_CHARS`) and the first `prefix_chars` characters
    of the first user message: the start of every rendered prompt of the conversation."""
    system = "".join(m.content for m in messages if m.role == "system")[:SYSTEM_PROMPT_CHARS]
    first_user = next((m.content for m in messages if m.role == "user"), "")
    return f"system:{system}\nuser:{first_user[:prefix_chars]}"


def affinity_key(session: str | None, username: str, authenticated: bool) -> str:
    """The key that pins a conversation: the session header, else a logged-in user, else '' (then
    the prompt's prefix decides)."""
    if session:
        return f"session:{session}"
    if authenticated and username and not username.startswith(_KEY_IDENTITY_PREFIX):
        return f"user:{username}"
    return ""


@dataclass
class ReplicaState:
    name: str
    in_flight: int = 0
    consecutive_failures: int = 0
    down_until: float = 0.0  # time.monotonic(); up when now >= down_until


@dataclass(frozen=True)
class Decision:
    replica: str
    prefix_hit: bool | None  # None when the policy does not look at keys


class Router:
    """Replica states and the policy. Not thread-safe: one event loop owns it."""

    def __init__(
        self,
        replicas: Iterable[str],
        *,
        policy: RoutingPolicy = "prefix",
        load_factor: float = DEFAULT_LOAD_FACTOR,
        virtual_nodes: int = VIRTUAL_NODES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown routing policy {policy!r}: choose one of {', '.join(POLICIES)}")
        if load_factor < 1.0:
            raise ValueError(f"load factor {load_factor} is below 1: no replica could take a request")
        self.policy: RoutingPolicy = policy
        self.load_factor = load_factor
        self._virtual_nodes = virtual_nodes
        self._clock = clock
        self._states: dict[str, ReplicaState] = {}
        self._ring_points: list[int] = []
        self._ring_owners: list[str] = []
        self._turn = itertools.count()
        self._last_replica_of: OrderedDict[int, str] = OrderedDict()  # key's ring point -> replica
        self.set_replicas(replicas)

    # -- membership -----------------------------------------------------------------------------

    @property
    def replicas(self) -> list[str]:
        return list(self._states)

    def state(self, name: str) -> ReplicaState:
        return self._states[name]

    def set_replicas(self, replicas: Iterable[str]) -> None:
        """The replicas now (EndpointSlices changed): new ones start up, gone ones are forgotten,
        the others keep their in-flight counts and backoff."""
        names = list(dict.fromkeys(replicas))
        self._states = {name: self._states.get(name) or ReplicaState(name) for name in names}
        ring = sorted(
            (_point(f"{name}#{index}"), name) for name in names for index in range(self._virtual_nodes)
        )
        self._ring_points = [point for point, _ in ring]
        self._ring_owners = [owner for _, owner in ring]

    def up(self) -> list[ReplicaState]:
        now = self._clock()
        return [state for state in self._states.values() if now >= state.down_until]

    # -- decisions ------------------------------------------------------------------------------

    def choose(self, key: str, exclude: frozenset[str] = frozenset()) -> Decision | None:
        """The replica for a request with `key`; None when no replica is up (outside `exclude`)."""
        candidates = [state for state in self.up() if state.name not in exclude]
        if not candidates:
            return None
        if self.policy == "round_robin":
            return Decision(candidates[next(self._turn) % len(candidates)].name, None)
        if self.policy == "least_loaded":
            return Decision(self._least_loaded(candidates).name, None)
        point = _point(key)
        chosen = self._bounded_ring_walk(point, candidates)
        last = self._last_replica_of.get(point)
        self._last_replica_of[point] = chosen
        self._last_replica_of.move_to_end(point)
        if len(self._last_replica_of) > REMEMBERED_KEYS:
            self._last_replica_of.popitem(last=False)
        return Decision(chosen, last == chosen)

    def _least_loaded(self, candidates: list[ReplicaState]) -> ReplicaState:
        fewest = min(state.in_flight for state in candidates)
        tied = [state for state in candidates if state.in_flight == fewest]
        return tied[next(self._turn) % len(tied)]

    def _bounded_ring_walk(self, point: int, candidates: list[ReplicaState]) -> str:
        by_name = {state.name: state for state in candidates}
        # Over the replicas that are up: the mean once this request is placed, times the factor.
        total = sum(state.in_flight for state in self._states.values() if state.name in by_name)
        # Never below one: an idle replica can always take a request, so at low load the key decides.
        bound = max(1.0, self.load_factor * (total + 1) / len(by_name))
        start = bisect.bisect(self._ring_points, point)
        seen: set[str] = set()
        owners = self._ring_owners
        for offset in range(len(owners)):
            name = owners[(start + offset) % len(owners)]
            if name in seen:
                continue
            seen.add(name)
            state = by_name.get(name)
            if state is not None and state.in_flight + 1 <= bound:
                return name
            if len(seen) == len(self._states):
                break
        return self._least_loaded(candidates).name

    # -- bookkeeping ----------------------------------------------------------------------------

    def started(self, name: str) -> None:
        if (state := self._states.get(name)) is not None:
            state.in_flight += 1

    def finished(self, name: str) -> None:
        if (state := self._states.get(name)) is not None:
            state.in_flight = max(0, state.in_flight - 1)

    def failed(self, name: str) -> float:
        """Take `name` out for its backoff; the seconds until it is tried again."""
        state = self._states.get(name)
        if state is None:
            return 0.0
        state.consecutive_failures += 1
        backoff = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** (state.consecutive_failures - 1))
        state.down_until = self._clock() + backoff
        return backoff

    def succeeded(self, name: str) -> None:
        if (state := self._states.get(name)) is not None:
            state.consecutive_failures = 0
            state.down_until = 0.0
