"""Streaming clients for the benchmarks: one request, or N concurrent clients."""

from __future__ import annotations

import json
import statistics
import threading
import time
from dataclasses import dataclass, field

import httpx

# Streamed chat. Greedy, this request runs past 128 tokens on every server (a story does not
# end early), so each request decodes the same number of tokens.
MESSAGES = [{"role": "user", "content": "Write a long story about a lighthouse keeper."}]
MODEL = "smollm2-135m-instruct"
# llama-server (cpp-httplib) closes a kept-alive connection after a few requests, and a POST
# sent just as it does fails; every server gets a fresh connection per request instead.
FRESH_CONNECTION = {"Connection": "close"}


@dataclass(frozen=True)
class Stream:
    ttft: float
    """Seconds from sending the request to the first token."""
    seconds: float
    """Seconds from sending the request to the last token."""
    tokens: int


def stream_once(client: httpx.Client, base_url: str, max_tokens: int) -> Stream:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = last = 0.0
    events = usage = 0
    with client.stream(
        "POST", f"{base_url}/v1/chat/completions", json=body, timeout=600, headers=FRESH_CONNECTION
    ) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            event = json.loads(line[6:])
            if (event.get("usage") or {}).get("completion_tokens"):
                usage = event["usage"]["completion_tokens"]  # an event may carry several
            choices = event.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                last = time.perf_counter()
                events += 1
                if events == 1:
                    first = last
    return Stream(first - started, last - started, usage or events)


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

    def ttft(self, q: float) -> float:
        values = sorted(s.ttft for s in self.streams)
        if len(values) == 1:
            return values[0]
        return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def run_clients(base_url: str, clients: int, rounds: int, max_tokens: int) -> Sweep:
    sweep = Sweep(clients)
    lock = threading.Lock()

    def client_loop() -> None:
        with httpx.Client() as client:
            for _ in range(rounds):
                try:
                    result = stream_once(client, base_url, max_tokens)
                except httpx.HTTPError:
                    with lock:
                        sweep.failures += 1
                    continue
                with lock:
                    sweep.streams.append(result)

    threads = [threading.Thread(target=client_loop) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    sweep.wall = time.perf_counter() - started
    return sweep
