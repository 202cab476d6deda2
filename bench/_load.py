"""Streaming clients for the benchmarks: one request, or N concurrent clients, each sending
the same prompt or what a workload (``workload``) gives it."""

from __future__ import annotations

import json
import math
import random
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx

# Streamed chat. Greedy, this request runs past 128 tokens on every server (a story does not
# end early), so each request decodes the same number of tokens.
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
MODEL = "smollm2-135m-instruct"
# llama-server (cpp-httplib) closes a kept-alive connection after a few requests, and a POST
# sent just as it does fails; every server gets a fresh connection per request instead.
FRESH_CONNECTION = {"Connection": "close"}
REQUEST_TIMEOUT = 300.0
"""Seconds one streamed request may take at most (connect, and between any two reads)."""

Messages = list[dict[str, str]]
Plan = Callable[[int, int], tuple[Messages, int]]
"""(client, round) -> the messages that client sends in that round, and their max_tokens."""


@dataclass(frozen=True)
class Stream:
    ttft: float
    """Seconds from sending the request to the first token."""
    seconds: float
    """Seconds from sending the request to the last token."""
    tokens: int
    prompt_tokens: int = 0
    prompt_computed: int = -1
    """Prompt tokens the server evaluated (the rest came from its cache); -1 if unknown."""
    prompt_ms: float = -1.0
    """Milliseconds the server says it spent on the prompt; -1 if unknown (bastion)."""


def stream_once(
    client: httpx.Client, base_url: str, max_tokens: int, messages: Messages | None = None
) -> Stream:
    body = {
        "model": MODEL,
        "messages": messages or MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = 0.0
    events = usage = prompt = 0
    cached = computed = -1
    prompt_ms = -1.0
    with client.stream(
        "POST",
        f"{base_url}/v1/chat/completions",
        json=body,
        timeout=REQUEST_TIMEOUT,
        headers=FRESH_CONNECTION,
    ) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if (event.get("usage") or {}).get("completion_tokens"):
                usage = event["usage"]["completion_tokens"]  # an event may carry several
                prompt = event["usage"].get("prompt_tokens") or 0
                details = event["usage"].get("prompt_tokens_details") or {}
                cached = details.get("cached_tokens", -1)
            if timings := event.get("timings"):  # llama-server, on its last event
                computed = timings.get("prompt_n", -1)
                prompt_ms = timings.get("prompt_ms", -1.0)
            choices = event.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                last = time.perf_counter()
                events += 1
                if events == 1:
                    first = last
    if computed < 0 <= cached:  # bastion reports what its prefix cache supplied
        computed = prompt - cached
    return Stream(first - started, last - started, usage or events, prompt, computed, prompt_ms)


@dataclass
class Sweep:
    """Results of ``clients`` concurrent clients, each sending ``rounds`` requests in a row."""

    clients: int
    wall: float = 0.0
    streams: list[Stream] = field(default_factory=list)
    failures: int = 0

    def merge(self, other: Sweep) -> Sweep:
        """Two measurements of the same load taken as one."""
        return Sweep(
            self.clients,
            self.wall + other.wall,
            self.streams + other.streams,
            self.failures + other.failures,
        )

    @property
    def tokens_per_second(self) -> float:
        return sum(s.tokens for s in self.streams) / self.wall

    @property
    def prefill(self) -> float | None:
        """Mean prompt tokens the server computed per request, None if it did not say."""
        known = [s.prompt_computed for s in self.streams if s.prompt_computed >= 0]
        return statistics.mean(known) if known else None

    def ttft(self, q: float) -> float:
        values = sorted(s.ttft for s in self.streams)
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def run_clients(
    base_url: str, clients: int, rounds: int, max_tokens: int, plan: Plan | None = None
) -> Sweep:
    """``clients`` threads, each sending ``rounds`` streamed requests one after the other:
    the story prompt, or what ``plan`` gives that client for that round."""
    sweep = Sweep(clients)
    lock = threading.Lock()

    def client_loop(index: int) -> None:
        with httpx.Client() as client:
            for round_ in range(rounds):
                messages, limit = plan(index, round_) if plan else (MESSAGES, max_tokens)
                try:
                    result = stream_once(client, base_url, limit, messages)
                except httpx.HTTPError:
                    with lock:
                        sweep.failures += 1
                    continue
                with lock:
                    sweep.streams.append(result)

    threads = [threading.Thread(target=client_loop, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sweep.wall = time.perf_counter() - started
    return sweep


# ---- workloads (bench_workloads.py) ---------------------------------------------------------

WORKLOADS = ("distinct", "system", "mixed", "shared")
SUBJECTS = (
    "a lighthouse keeper",
    "a young baker",
    "an old sailor",
    "a travelling musician",
    "a village doctor",
    "a clockmaker",
    "a forest ranger",
    "a retired astronaut",
    "a street painter",
    "a mountain guide",
    "a school teacher",
    "a fisherman's daughter",
)
DEEDS = (
    "finds a hidden map",
    "loses an important letter",
    "meets a talking fox",
    "builds a strange machine",
    "hears music at night",
    "opens a forgotten door",
    "saves a stranded whale",
    "discovers a secret garden",
)
PLACES = (
    "a snowy town",
    "a busy harbour",
    "a desert city",
    "an island village",
    "a quiet valley",
    "a rainy capital",
    "a northern forest",
    "a floating market",
)
SYSTEM_PROMPT = (
    "You are Quill, the writing assistant of a small publishing house that prints illustrated "
    "books for readers of every age. Always answer in plain English prose, without lists, "
    "headings, tables or code. Write vivid, concrete scenes with named characters, sensory "
    "details and natural dialogue, and keep a warm, hopeful tone even when the story turns "
    "sad. Never mention that you are an assistant, never refuse a harmless creative request, "
    "and never ask the reader questions back. Avoid violence, brand names, real people and "
    "places that would date the story. When a request is vague, choose the most interesting "
    "interpretation and begin at once. Stories should have a clear beginning, a turning point "
    "and an ending that resolves the main problem, but when space runs out it is fine to stop "
    "in the middle of a scene. Use past tense and the third person unless asked otherwise, "
    "vary sentence length, and prefer simple words a twelve year old would understand. Our "
    "readers love animals, weather, food, old machines and small acts of kindness."
)
FILLER_TEXT = (
    "the sea wind carried salt over the old stone wall while gulls circled above boats "
    "that rocked gently in the grey morning light and a bell rang twice from the church "
    "tower as children ran along the harbour road with bread still warm in their hands"
)
FILLER = FILLER_TEXT.split()
MIXED_MAX_TOKENS = (32, 64, 128, 256)
MIXED_PROMPT_TOKENS = (20, 1500)
TOKENS_PER_WORD = 1.25
"""SmolLM2's tokenizer on the filler text above, roughly; the real counts come from usage."""


def _distinct_prompt(rng: random.Random) -> str:
    """About fifteen words, different for every (client, round) of a seed."""
    subject, deed, place = rng.choice(SUBJECTS), rng.choice(DEEDS), rng.choice(PLACES)
    return f"Write a long story about {subject} who {deed} in {place}, with every detail."


def workload(name: str, seed: int, max_tokens: int, variant: str = "") -> Plan:
    """What each client sends, deterministic per seed: ``distinct`` (its own short prompt),
    ``system`` (a shared ~200-token system prompt, distinct user turns), ``mixed`` (prompts
    of 20 to 1,500 tokens, log-uniform, and max_tokens drawn from MIXED_MAX_TOKENS) and
    ``shared`` (the one story prompt every client sends).

    ``variant`` changes the words but not the shape (prompt lengths, max_tokens): a server
    that stays up between measurements then finds no earlier prompt in its cache."""
    if name not in WORKLOADS:
        raise ValueError(f"unknown workload {name!r}; choose from {', '.join(WORKLOADS)}")

    def plan(client: int, round_: int) -> tuple[Messages, int]:
        shape = random.Random(f"{seed}:{name}:{client}:{round_}")
        words = random.Random(f"{seed}:{name}:{client}:{round_}:{variant}")
        if name == "shared":
            return MESSAGES, max_tokens
        user = {"role": "user", "content": _distinct_prompt(words)}
        if name == "distinct":
            return [user], max_tokens
        if name == "system":
            return [{"role": "system", "content": SYSTEM_PROMPT}, user], max_tokens
        low, high = MIXED_PROMPT_TOKENS
        tokens = math.exp(shape.uniform(math.log(low), math.log(high)))
        start = words.randrange(len(FILLER))
        filler = [FILLER[(start + i) % len(FILLER)] for i in range(int(tokens / TOKENS_PER_WORD))]
        text = " ".join(filler[:-12]) + " " + user["content"]  # the request ends the prompt
        return [{"role": "user", "content": text}], shape.choice(MIXED_MAX_TOKENS)

    return plan
