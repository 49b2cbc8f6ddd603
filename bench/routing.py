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
every `SAMPLE_S`, and right after each placement in the in-process decision run), and the p99
of one routing decision (key + ring walk) in process.
Targets (issue 14): prefix P90 TTFT >= 5x lower than round_robin; no replica above 1.25x the
mean in-flight; routing decision p99 < 0.2 ms.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import aiohttp
from h2ogpt_api.prompts import ChatMessage
from h2ogpt_api.routing import Router, prefix_key

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

REPLICAS = 8
USERS = 32
QUICK_USERS = 32
DURATION_S = 60.0
QUICK_DURATION_S = 25.0
# Before each measurement the same load runs this long unmeasured, so replicas' caches hold what
# the policy puts there (a cold start is every policy's miss).
WARMUP_S = 15.0
QUICK_WARMUP_S = 8.0
ROUNDS = 1  # one round: `make bench` must stay under 20 minutes in all (bench/README.md)
QUICK_ROUNDS = 1
TOKEN_DELAY_S = 0.1
MAX_TOKENS = 8
# The prefix-cache model: 1 ms per uncached prompt token, 16-token blocks, 16k tokens of cache per
# replica: room for a replica's share of the document sets, not for all of them. The model's times
# (prefill and TOKEN_DELAY_S) are about 10x a GPU's, so that the CPU time of the API, the fakes
# and the load (2 shared cores) stays small beside them; the ratios are what the bench compares.
PREFILL_S_PER_TOKEN = 0.001
CACHE_TOKENS = 16_000
SYSTEM_WORDS = 300
OPENING_WORDS = 300  # a conversation's first message
DOC_SETS = 24
DOC_WORDS = 2000  # a RAG question's retrieved chunks
TURNS = 5
QUESTIONS_PER_RAG_SESSION = 3
SAMPLE_S = 0.1
# Load ratios are judged where the mean in flight per replica is at least this: below it the
# ratio is mostly rounding (9 requests on 8 replicas: one has 2, mean 1.125, ratio 1.78).
STEADY_MEAN = 4
DECISIONS = 20_000
DECISION_ROUNDS = 5
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
        documents = [words(rng, DOC_WORDS, f"d{i}_") for i in range(DOC_SETS)]
        return cls(words(rng, SYSTEM_WORDS, "sys"), documents)

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
                questions = [words(rng, 15, "q") for _ in range(QUESTIONS_PER_RAG_SESSION)]
                yield [
                    [system, {"role": "user", "content": f"Context:\n{document}\n\nQuestion: {question}"}]
                    for question in questions
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
            if len(loads) == REPLICAS and sum(loads) >= STEADY_MEAN * REPLICAS:
                run.load_ratios.append(max(loads) / (sum(loads) / REPLICAS))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), SAMPLE_S)


async def cache_totals(session: aiohttp.ClientSession, replica_urls: list[str]) -> tuple[int, int]:
    """(prompt tokens, cached tokens) over the replicas' prefix-cache models so far."""
    prompt = cached = 0
    for url in replica_urls:
        async with session.get(url + "/fake/stats") as response:
            cache = (await response.json())["prefix_cache"]
        prompt += cache["prompt_tokens"]
        cached += cache["cached_tokens"]
    return prompt, cached


async def drive(openai_url: str, replica_urls: list[str], users: int, *, warmup_s: float, duration_s: float,
                run: PolicyRun) -> None:
    """`users` closed loops; requests that start in the `duration_s` after `warmup_s` are measured."""
    workload = Workload.make(SEED)
    url = f"{openai_url}/chat/completions"
    measured_from = time.perf_counter() + warmup_s
    deadline = measured_from + duration_s
    warmup = PolicyRun(run.policy)
    stop = asyncio.Event()

    async def user(index: int, session: aiohttp.ClientSession) -> None:
        for requests in workload.sessions(index):
            for messages in requests:
                now = time.perf_counter()
                if now >= deadline:
                    return
                await one_request(session, url, messages, run if now >= measured_from else warmup)

    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        users_done = asyncio.gather(*(user(index, session) for index in range(users)))
        await asyncio.sleep(warmup_s)
        before = await cache_totals(session, replica_urls)
        metrics_url = openai_url.removesuffix("/v1") + "/metrics"
        sampler = asyncio.create_task(sample_in_flight(metrics_url, run, stop))
        await users_done
        run.wall_s = time.perf_counter() - measured_from
        stop.set()
        await sampler
        after = await cache_totals(session, replica_urls)
    run.prompt_tokens, run.cached_tokens = after[0] - before[0], after[1] - before[1]
    run.errors += warmup.errors  # a failure counts wherever it happens


def measure(policy: str, users: int, warmup_s: float, duration_s: float) -> PolicyRun:
    run = PolicyRun(policy)
    with fake_replicas() as urls:
        args = ["--inference_server", ",".join(urls), "--routing", policy, "--base_model", MODEL,
                "--langchain_modes", "['LLM']", "--max_concurrency", "1024"]  # fmt: skip
        with h2ogpt_api_server(args) as api:
            assert api.openai_url is not None
            asyncio.run(drive(api.openai_url, urls, users, warmup_s=warmup_s, duration_s=duration_s, run=run))
    return run


def decisions_in_process() -> tuple[list[list[float]], list[float], list[float]]:
    """One routing decision as the API makes it (the prefix key of a RAG request, then the bounded
    ring walk over 8 replicas with about USERS requests in flight, ending in random order), timed
    one by one, in `DECISION_ROUNDS` rounds: wall-clock ms per round, CPU ms (this thread's, which a
    busy machine's other processes do not add to), and max replica in-flight / mean right after
    each placement."""
    workload = Workload.make(SEED)
    rng = random.Random(SEED)
    router = Router([f"10.0.0.{index}:80" for index in range(REPLICAS)])
    requests = [
        (
            ChatMessage("system", workload.system),
            ChatMessage("user", f"Context:\n{workload.documents[rng.randrange(DOC_SETS)]}\n\nQuestion: {i}"),
        )
        for i in range(200)
    ]
    rounds: list[list[float]] = []
    cpu: list[float] = []
    placed_ratios: list[float] = []
    in_flight: list[str] = []
    for _ in range(DECISION_ROUNDS):
        times: list[float] = []
        for index in range(DECISIONS):
            messages = requests[index % len(requests)]
            started, started_cpu = time.perf_counter_ns(), time.thread_time_ns()
            decision = router.choose(prefix_key(messages, 1024))
            cpu.append((time.thread_time_ns() - started_cpu) / 1e6)
            times.append((time.perf_counter_ns() - started) / 1e6)
            assert decision is not None
            router.started(decision.replica)
            in_flight.append(decision.replica)
            loads = [router.state(name).in_flight for name in router.replicas]
            if sum(loads) >= STEADY_MEAN * REPLICAS:
                placed_ratios.append(max(loads) / (sum(loads) / REPLICAS))
            if len(in_flight) >= USERS:  # keep about USERS requests in flight
                router.finished(in_flight.pop(rng.randrange(len(in_flight))))
        rounds.append(times)
    return rounds, cpu, placed_ratios


def run(quick: bool = False) -> str:
    started = time.monotonic()
    users = QUICK_USERS if quick else USERS
    duration_s = QUICK_DURATION_S if quick else DURATION_S
    warmup_s = QUICK_WARMUP_S if quick else WARMUP_S
    rounds = QUICK_ROUNDS if quick else ROUNDS
    load_average = os.getloadavg()[0]
    decision_rounds, decision_cpu, placed_ratios = decisions_in_process()
    runs: dict[str, list[PolicyRun]] = {"prefix": [], "round_robin": []}
    for round_index in range(rounds):
        order = ["prefix", "round_robin"] if round_index % 2 == 0 else ["round_robin", "prefix"]
        for policy in order:
            runs[policy].append(measure(policy, users, warmup_s, duration_s))

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
            result.policy,
            f"{percentile(ttft, 50):.0f}", f"{percentile(ttft, 90):.0f}", f"{percentile(ttft, 99):.0f}",
            f"{result.throughput:.1f}", f"{result.cached_tokens / max(1, result.prompt_tokens):.0%}",
            f"{percentile(ratios, 50):.2f} / {percentile(ratios, 99):.2f} / {max(ratios):.2f}",
            f"{len(result.errors)}/{result.completed + len(result.errors)}",
        ])  # fmt: skip
    p90_ratio = percentile(robin.ttfts, 90) / percentile(prefix.ttfts, 90)
    throughput_ratio = prefix.throughput / robin.throughput
    load_max = max(prefix.load_ratios) if prefix.load_ratios else float("nan")
    load_p99 = percentile(prefix.load_ratios, 99) if prefix.load_ratios else float("nan")
    round_p99s = sorted(percentile(times, 99) for times in decision_rounds)
    decision_p50 = percentile([t for times in decision_rounds for t in times], 50)
    decision_p99 = percentile(round_p99s, 50)  # the median round's p99
    cpu_p99 = percentile(decision_cpu, 99)
    sampled_note = (
        "" if load_max <= LOAD_TARGET else
        " (a sample can be above the bound: it is kept when a request is placed; between placements, "
        "requests "
        "ending on other replicas lower the mean while a replica with slow prefills keeps its count)"
    )

    def verdict(ok: bool) -> str:
        return "met" if ok else "MISSED"

    return "\n".join([
        "## Routing across inference replicas: prefix vs round_robin (bench/routing.py)",
        "",
        f"{REPLICAS} TGI fakes as replicas, each with the fake's prefix-cache MODEL ({CACHE_TOKENS} tokens "
        f"of LRU per replica in 16-token blocks, {PREFILL_S_PER_TOKEN * 1e3:.1f} ms of prefill per uncached "
        f"prompt token, prefills sharing each replica's compute; {TOKEN_DELAY_S * 1000:.0f} ms/token, "
        f"{MAX_TOKENS} tokens per answer: about 10x a GPU's times, so that the CPU time of the API, "
        f"the fakes and the load on 2 shared cores stays small beside them; read the ratios). "
        f"{users} closed-loop users (no think time) through h2ogpt-api's OpenAI side for "
        f"{duration_s:.0f} s per policy per round after {warmup_s:.0f} s of the same load unmeasured, "
        f"{rounds} round(s), policies alternating first; half "
        f"the sessions are {TURNS}-turn conversations opening with {OPENING_WORDS} words, half "
        f"{QUESTIONS_PER_RAG_SESSION} RAG questions over one of {DOC_SETS} document sets of {DOC_WORDS} "
        f"words; a {SYSTEM_WORDS}-word system prompt on every request. Fresh replicas (empty caches) "
        "for each measurement. Load ratio = max replica in-flight / mean, from the API's "
        f"`h2ogpt_api_replica_in_flight` every {SAMPLE_S * 1000:.0f} ms while the mean is >= {STEADY_MEAN}.",
        "",
        markdown_table(
            ["policy", "TTFT p50 ms", "TTFT p90 ms", "TTFT p99 ms", "requests/s",
             "prefix-cache hits (tokens)",
             "load ratio p50 / p99 / max", "errors"],
            rows,
        ),
        "",
        f"- P90 TTFT: round_robin / prefix = {p90_ratio:.1f}x (target >= {TTFT_TARGET_RATIO:.0f}x): "
        f"{verdict(p90_ratio >= TTFT_TARGET_RATIO)}. Throughput: prefix {throughput_ratio:.2f}x "
        "round_robin's.",
        f"- Max replica in-flight / mean under prefix routing, right after each placement (in process, "
        f"{len(placed_ratios)} placements at >= {STEADY_MEAN} per replica): max {max(placed_ratios):.2f} "
        f"(target <= {LOAD_TARGET}): {verdict(max(placed_ratios) <= LOAD_TARGET)}. End to end, sampled "
        f"every {SAMPLE_S * 1000:.0f} ms while the mean is >= {STEADY_MEAN}: p50 "
        f"{percentile(prefix.load_ratios or [math.nan], 50):.2f}, p99 {load_p99:.2f}, max {load_max:.2f}: "
        f"{verdict(load_max <= LOAD_TARGET)}{sampled_note}.",
        f"- One routing decision (prefix key of a {DOC_WORDS}-word RAG prompt + bounded ring walk, "
        f"{REPLICAS} replicas, ~{USERS} in flight), {DECISION_ROUNDS} rounds of {DECISIONS} in process: "
        f"p50 {decision_p50 * 1000:.1f} us; p99 {cpu_p99 * 1000:.1f} us of CPU time (target < "
        f"{DECISION_TARGET_MS} ms): {verdict(cpu_p99 < DECISION_TARGET_MS)}. Wall-clock p99 "
        f"{decision_p99 * 1000:.0f} us (the median round's; rounds "
        f"{', '.join(f'{p * 1000:.0f}' for p in round_p99s)} us): "
        + (verdict(True) if decision_p99 < DECISION_TARGET_MS else
           f"above the target, by the machine: the load average was {load_average:.1f} on {os.cpu_count()} "
           "CPUs, so 1 % of calls wait for a CPU; the CPU time is what the router costs")
        + ".",
        "",
        f"Run time {time.monotonic() - started:.0f} s.",
        "",
    ])  # fmt: skip


if __name__ == "__main__":
    bench_main(run)
