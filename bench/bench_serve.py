"""Streamed tokens/s and time to first token at one client: bastion vs its peers.

Every server runs the same GGUF with the same thread count, started in this run; requests
alternate between servers so machine noise hits all of them alike. Prints the ratios.

    .venv/bin/python bench/bench_serve.py [--requests 6] [--max-tokens 128] [--threads 2]
                                          [--llama-server /path/to/llama-server]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from _servers import Peer, start_bastion, start_llama_cpp_python, start_llama_server
from bastion.catalog import builtin_model
from bastion.store.package import locate_package_file

# Greedy counting runs to max_tokens on every server, so each request decodes the same tokens.
PROMPT = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10,"


@dataclass
class Samples:
    ttft: list[float] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    tokens: list[int] = field(default_factory=list)


def stream_once(base_url: str, max_tokens: int) -> tuple[float, float, int]:
    """One streamed completion: (time to first token, tokens/s over the stream, tokens)."""
    body = {
        "model": "smollm2-135m-instruct",
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    first = last = 0.0
    tokens = 0
    with httpx.stream("POST", f"{base_url}/v1/completions", json=body, timeout=300) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("text"):
                last = time.perf_counter()
                tokens += 1
                if tokens == 1:
                    first = last
    return first - started, tokens / (last - started), tokens


def measure(peers: list[Peer], requests: int, max_tokens: int) -> dict[str, Samples]:
    results = {peer.name: Samples() for peer in peers}
    for peer in peers:  # warm-up, not measured
        stream_once(peer.base_url, 8)
    for _ in range(requests):
        for peer in peers:
            ttft, rate, tokens = stream_once(peer.base_url, max_tokens)
            samples = results[peer.name]
            samples.ttft.append(ttft)
            samples.rates.append(rate)
            samples.tokens.append(tokens)
    return results


def report(results: dict[str, Samples]) -> None:
    print(f"{'server':<18} {'tokens/s p50':>13} {'TTFT p50 (s)':>13} {'tokens/req':>11}")
    for name, s in results.items():
        print(
            f"{name:<18} {statistics.median(s.rates):>13.1f} "
            f"{statistics.median(s.ttft):>13.3f} {statistics.median(s.tokens):>11.0f}"
        )
    ours = results["bastion"]
    for name, s in results.items():
        if name == "bastion":
            continue
        rate = statistics.median(ours.rates) / statistics.median(s.rates)
        ttft = statistics.median(s.ttft) / statistics.median(ours.ttft)
        print(f"bastion vs {name}: tokens/s ratio {rate:.2f}x, TTFT speed-up {ttft:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=6)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--llama-server", type=Path, help="path to a llama-server binary")
    args = parser.parse_args()
    model_def = builtin_model("smollm2-135m-instruct")
    model = locate_package_file(model_def.package, model_def.file)
    print(
        f"model {model.name}, {args.threads} threads, {args.requests} requests x "
        f"{args.max_tokens} tokens, one client"
    )
    peers: list[Peer] = []
    try:
        peers.append(start_bastion(args.threads, slots=1, ctx_per_slot=args.ctx))
        peers.append(start_llama_cpp_python(model, args.threads, args.ctx))
        if args.llama_server:
            peers.append(start_llama_server(args.llama_server, model, args.threads, 1, args.ctx))
        report(measure(peers, args.requests, args.max_tokens))
    finally:
        for peer in peers:
            peer.stop()


if __name__ == "__main__":
    main()
