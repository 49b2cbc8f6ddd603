"""Routing across inference replicas: `prefix` (consistent hashing with bounded load) against
`round_robin`, side by side in one run, and the cost of one routing decision.

Eight TGI fakes (one process, one port each) stand for eight inference replicas, each with the
fake's per-replica prefix-cache MODEL (`PrefixCacheModel` in tests/support/tgi_fake.py): time to
first token grows with the prompt tokens that replica has not cached as a prefix, prefills on one
replica queue behind each other, and each replica's cache is a bounded LRU. It is a model of the
effect routing has on a KV cache, not a measurement of TGI's own cache.

The load: `USERS` closed-loop clients (no think time) over h2ogpt-api's OpenAI side, streaming
chat. Half their sessions are multi-turn conversations (a new long opening message, then turns
whose history grows), half are RAG questions over one of `DOC_SETS` document sets (the same long
context of chunks, a different question each time); every request carries the same system
prompt. Both policies get the same sessions (one seed) against fresh replicas, in alternating
order over the rounds.

Reported: P50/P90 time to first token and throughput for each policy, the replicas' prefix-cache
hit rate (tokens), max replica in-flight / mean (sampled from `h2ogpt_api_replica_in_flight`
every `SAMPLE_S`), and the p99 of one routing decision (key + ring walk) in process.
Targets (issue 14): prefix P90 TTFT >= 5x lower than round_robin; no replica above 1.25x the
mean in-flight; routing decision p99 < 0.2 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
import httpx

from bench.common import (
    LOOPBACK,
    background_process,
    bench_main,
    free_port,
    h2ogpt_api_server,
    markdown_table,
    percentile,
    wait_http_ok,
)
from h2ogpt_api.prompts import ChatMessage
from h2ogpt_api.routing import Router, prefix_key

REPLICAS = 8
USERS = 48
QUICK_USERS = 24
DURATION_S = 40.0
QUICK_DURATION_S = 10.0
ROUNDS = 2
QUICK_ROUNDS = 1
TOKEN_DELAY_S = 0.025
MAX_TOKENS = 8
# The prefix-cache model: 0.1 ms per uncached prompt token (10k tokens/s of prefill, an 8B model
# on one modern GPU), 16-token blocks, 12k tokens of cache per replica.
PREFILL_S_PER_TOKEN = 0.0001
CACHE_TOKENS = 12_000
SYSTEM_WORDS = 150
OPENING_WORDS = 400  # a conversation's first message
DOC_SETS = 24
DOC_WORDS = 1200  # a RAG question's retrieved chunks
TURNS = 4
QUESTIONS_PER_RAG_SESSION = 3
SAMPLE_S = 0.1
DECISIONS = 20_000
SEED = 14
TTFT_TARGET_RATIO = 5.0
LOAD_TARGET = 1.25
DECISION_TARGET_MS = 0.2
MODEL = "fake/tgi-echo"


def words(rng: random.Random, count: int, tag: str) -> str:
    return " ".join(f"{tag}{rng.randrange(10_000)}" for _ in range(count))


@dataclass
class Workload:
    system: str
    documents: list[str]

    @classmethod
    def make(cls, seed: int) -> Workload:
        rng = random.Random(seed)
        return cls(words(rng, SYSTEM_WORDS, "sys"), [words(rng, DOC_WORDS, f"d{i}_") for i in range(DOC_SETS)])

    def sessions(self, user: int) -> Iterator[list[list[dict[str, str]]]]:
        """The user's sessions, each a list of requests' messages (deterministic per user)."""
        rng = random.Random(SEED * 1000 + user)
        system = {"role": "system", "content": self.system}
        while True:
            if rng.random() < 0.5:
                opening = words(rng, OPENING_WORDS, "open")
                history = [system, {"role": "user", "content": opening}]
                turns = []
                for turn in range(TURNS):
                    turns.append(list(history))
                    history += [
                        {"role": "assistant", "content": words(rng, MAX_TOKENS, "ans")},
                        {"role": "user", "content": f"follow-up {turn} " + words(rng, 20, "q")},
                    ]
                yield turns
            else:
                document = self.documents[rng.randrange(DOC_SETS)]
                yield [
                    [system, {"role": "user", "content": f"Context:\n{document}\n\nQuestion: " + words(rng, 15, "q")}]
                    for _ in range(QUESTIONS_PER_RAG_SESSION)
                ]


@dataclass
class PolicyRun:
    policy: str
    ttfts: list[float] = field(default_factory=list)
    completed: int = 0
    errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    load_ratios: list[float] = field(default_factory=list)
    prompt_tokens: int = 0
    cached_tokens: int = 0

    @property
    def throughput(self) -> float:
        return self.completed / self.wall_s if self.wall_s else 0.0


@contextlib.contextmanager
def fake_replicas() -> Iterator[list[str]]:
    ports = [free_port() for _ in range(REPLICAS)]
    command = [
        sys.executable, "-m", "tests.support.tgi_fake", "--host", LOOPBACK,
        "--ports", ",".join(map(str, ports)), "--token-delay", str(TOKEN_DELAY_S), "--repeat",
        "--prefix-cache-tokens", str(CACHE_TOKENS), "--prefill-s-per-token", str(PREFILL_S_PER_TOKEN),
    ]  # fmt: skip
    with background_process("tgi-fake-replicas", command) as running:
        urls = [f"http://{LOOPBACK}:{port}" for port in ports]
        for url in urls:
            wait_http_ok(url + "/health", running)
        yield urls


async def one_request(
    session: aiohttp.ClientSession, url: str, messages: list[dict[str, str]], run: PolicyRun
) -> None:
    body = {"model": MODEL, "messages": messages, "max_tokens": MAX_TOKENS, "stream": True}
    started = time.perf_counter()
    first: float | None = None
    try:
        async with session.post(url, json=body) as response:
            if response.status != 200:
                run.errors.append(f"HTTP {response.status}")
                return
            async for line in response.content:
                if not line.startswith(b"data: {"):
                    continue
                event = json.loads(line[6:])
                if "error" in event:
                    run.errors.append(str(event["error"].get("message")))
                    return
                if first is None and any(c["delta"].get("content") for c in event.get("choices") or []):
                    first = time.perf_counter()
    except aiohttp.ClientError as exc:
        run.errors.append(type(exc).__name__)
        return
    if first is None:
        run.errors.append("no token")
        return
    run.ttfts.append(first - started)
    run.completed += 1


async def sample_in_flight(metrics_url: str, run: PolicyRun, stop: asyncio.Event) -> None:
    """max/mean of the API's per-replica in-flight gauge, every SAMPLE_S, while the mean is >= 1."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.get(metrics_url) as response:
                text = await response.text()
            loads = [
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("h2ogpt_api_replica_in_flight{")
            ]
            if len(loads) == REPLICAS and sum(loads) >= REPLICAS:
                run.load_ratios.append(max(loads) / (sum(loads) / REPLICAS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def drive(openai_url: str, users: int, duration_s: float, run: PolicyRun) -> None:
    workload = Workload.make(SEED)
    url = f"{openai_url}/chat/completions"
    deadline = time.perf_counter() + duration_s
    stop = asyncio.Event()

    async def user(index: int, session: aiohttp.ClientSession) -> None:
        for requests in workload.sessions(index):
            for messages in requests:
                if time.perf_counter() >= deadline:
                    return
                await one_request(session, url, messages, run)

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as session:
        sampler = asyncio.create_task(sample_in_flight(openai_url.removesuffix("/v1") + "/metrics", run, stop))
        started = time.perf_counter()
        await asyncio.gather(*(user(index, session) for index in range(users)))
        run.wall_s = time.perf_counter() - started
        stop.set()
        await sampler


def measure(policy: str, users: int, duration_s: float) -> PolicyRun:
    run = PolicyRun(policy)
    with fake_replicas() as urls:
        args = ["--inference_server", ",".join(urls), "--routing", policy, "--base_model", MODEL,
                "--langchain_modes", "['LLM']", "--max_concurrency", "1024"]  # fmt: skip
        with h2ogpt_api_server(args) as api:
            assert api.openai_url is not None
            asyncio.run(drive(api.openai_url, users, duration_s, run))
        for url in urls:
            cache = httpx.get(url + "/fake/stats", timeout=10).json()["prefix_cache"]
            run.prompt_tokens += cache["prompt_tokens"]
            run.cached_tokens += cache["cached_tokens"]
    return run


def decision_times_ms() -> list[float]:
    """One routing decision as the API makes it (the prefix key of a RAG request, then the bounded
    ring walk over 8 replicas with requests in flight), timed one by one."""
    workload = Workload.make(SEED)
    rng = random.Random(SEED)
    router = Router([f"10.0.0.{index}:80" for index in range(REPLICAS)])
    requests = [
        (
            ChatMessage("system", workload.system),
            ChatMessage("user", f"Context:\n{workload.documents[rng.randrange(DOC_SETS)]}\n\nQuestion: {index}"),
        )
        for index in range(200)
    ]
    times = []
    in_flight: list[str] = []
    for index in range(DECISIONS):
        messages = requests[index % len(requests)]
        started = time.perf_counter_ns()
        decision = router.choose(prefix_key(messages, 1024))
        times.append((time.perf_counter_ns() - started) / 1e6)
        assert decision is not None
        router.started(decision.replica)
        in_flight.append(decision.replica)
        if len(in_flight) > USERS:  # keep about USERS requests in flight
            router.finished(in_flight.pop(rng.randrange(len(in_flight))))
    return times


def run(quick: bool = False) -> str:
    started = time.monotonic()
    users = QUICK_USERS if quick else USERS
    duration_s = QUICK_DURATION_S if quick else DURATION_S
    rounds = QUICK_ROUNDS if quick else ROUNDS
    decisions = decision_times_ms()
    runs: dict[str, list[PolicyRun]] = {"prefix": [], "round_robin": []}
    for round_index in range(rounds):
        order = ["prefix", "round_robin"] if round_index % 2 == 0 else ["round_robin", "prefix"]
        for policy in order:
            runs[policy].append(measure(policy, users, duration_s))

    def merged(policy: str) -> PolicyRun:
        total = PolicyRun(policy)
        for one in runs[policy]:
            total.ttfts += one.ttfts
            total.completed += one.completed
            total.errors += one.errors
            total.wall_s += one.wall_s
            total.load_ratios += one.load_ratios
            total.prompt_tokens += one.prompt_tokens
            total.cached_tokens += one.cached_tokens
        return total

    prefix, robin = merged("prefix"), merged("round_robin")
    rows = []
    for result in (prefix, robin):
        ttft = [t * 1000 for t in result.ttfts] or [float("nan")]
        ratios = result.load_ratios or [float("nan")]
        rows.append([
            result.policy, f"{percentile(ttft, 50):.0f}", f"{percentile(ttft, 90):.0f}", f"{percentile(ttft, 99):.0f}",
            f"{result.throughput:.1f}", f"{result.cached_tokens / max(1, result.prompt_tokens):.0%}",
            f"{percentile(ratios, 50):.2f} / {percentile(ratios, 99):.2f} / {max(ratios):.2f}",
            f"{len(result.errors)}/{result.completed + len(result.errors)}",
        ])  # fmt: skip
    p90_ratio = percentile(robin.ttfts, 90) / percentile(prefix.ttfts, 90)
    throughput_ratio = prefix.throughput / robin.throughput
    load_max = max(prefix.load_ratios) if prefix.load_ratios else float("nan")
    load_p99 = percentile(prefix.load_ratios, 99) if prefix.load_ratios else float("nan")
    decision_p50, decision_p99 = percentile(decisions, 50), percentile(decisions, 99)

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return "\n".join([
        "## Routing across inference replicas: prefix vs round_robin (bench/routing.py)",
        "",
        f"{REPLICAS} TGI fakes as replicas, each with the fake's prefix-cache MODEL ({CACHE_TOKENS} tokens of LRU "
        f"per replica in {16}-token blocks, {PREFILL_S_PER_TOKEN * 1e3:.1f} ms of prefill per uncached prompt "
        f"token, prefills queued per replica; {TOKEN_DELAY_S * 1000:.0f} ms/token, {MAX_TOKENS} tokens per "
        f"answer). {users} closed-loop users (no think time) through h2ogpt-api's OpenAI side for "
        f"{duration_s:.0f} s per policy per round, {rounds} round(s), policies alternating first; half "
        f"the sessions are {TURNS}-turn conversations opening with {OPENING_WORDS} words, half "
        f"{QUESTIONS_PER_RAG_SESSION} RAG questions over one of {DOC_SETS} document sets of {DOC_WORDS} "
        f"words; a {SYSTEM_WORDS}-word system prompt on every request. Fresh replicas (empty caches) "
        "for each measurement. Load ratio = max replica in-flight / mean, from the API's "
        f"`h2ogpt_api_replica_in_flight` every {SAMPLE_S * 1000:.0f} ms while the mean is >= 1.",
        "",
        markdown_table(
            ["policy", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", "requests/s", "prefix-cache hits (tokens)",
             "load ratio p50 / p99 / max", "errors"],
            rows,
        ),
        "",
        f"- P90 TTFT: round_robin / prefix = {p90_ratio:.1f}x (target >= {TTFT_TARGET_RATIO:.0f}x): "
        f"{verdict(p90_ratio >= TTFT_TARGET_RATIO)}. Throughput: prefix {throughput_ratio:.2f}x round_robin's.",
        f"- Max replica in-flight / mean under prefix routing: p99 {load_p99:.2f}, max {load_max:.2f} "
        f"(target <= {LOAD_TARGET}): {verdict(load_max <= LOAD_TARGET)}"
        + ("" if load_max <= LOAD_TARGET else
           f" (p99 {verdict(load_p99 <= LOAD_TARGET)}; the bound holds when a request is placed: a sample "
           "taken after other replicas' requests ended, before the next placement, can be above it)")
        + ".",
        f"- One routing decision (prefix key of a {DOC_WORDS}-word RAG prompt + bounded ring walk, "
        f"{REPLICAS} replicas, ~{USERS} in flight), {DECISIONS} in process: p50 {decision_p50 * 1000:.1f} us, "
        f"p99 {decision_p99 * 1000:.1f} us (target < {DECISION_TARGET_MS} ms): "
        f"{verdict(decision_p99 < DECISION_TARGET_MS)}.",
        "",
        f"Run time {time.monotonic() - started:.0f} s.",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    bench_main(run)
