"""Prefix reuse: time to first token over a 10-turn chat with a shared system prompt.

Each turn resends the whole conversation, as chat clients do. bastion with its prefix cache
is compared with bastion without it (``engine.prefix_cache=false``), and with
llama-cpp-python's server and llama-server when given; same model and threads, one server at
a time, same run.

    .venv/bin/python bench/bench_prefix.py [--turns 10] [--llama-server PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from _load import FRESH_CONNECTION
from _servers import (
    Peer,
    smollm2_weights,
    start_bastion,
    start_llama_cpp_python,
    start_llama_server,
)

SYSTEM = (
    "You are the assistant of a lighthouse keeper on a remote island. You answer briefly, "
    "in plain words, and you always mention the weather when it matters. "
) * 6
QUESTIONS = [
    "What should I check first this morning?",
    "The wind is rising. Anything to change?",
    "How often should I trim the wick?",
    "A ship signals from the north. What now?",
    "Fog is coming in. What do I do?",
    "How do I log the night's events?",
    "The lamp flickers. Why?",
    "Supplies arrive tomorrow. What to order?",
    "How do I keep the glass clean in salt spray?",
    "Summarise today's advice in one line.",
]


def chat_turns(base_url: str, turns: int) -> list[float]:
    """TTFT of each turn of one conversation (greedy, 40 tokens per answer)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": SYSTEM}]
    ttfts = []
    with httpx.Client(timeout=300) as client:
        for question in QUESTIONS[:turns]:
            messages.append({"role": "user", "content": question})
            body = {
                "model": "smollm2-135m-instruct",
                "messages": messages,
                "stream": True,
                "temperature": 0,
                "max_tokens": 40,
            }
            started = time.perf_counter()
            first = 0.0
            answer = []
            with client.stream(
                "POST", f"{base_url}/v1/chat/completions", json=body, headers=FRESH_CONNECTION
            ) as resp:
                resp.raise_for_status()
                for line in resp.iter_lines():
                    if not line.startswith("data: {"):
                        continue
                    choices = json.loads(line[6:]).get("choices") or [{}]
                    piece = (choices[0].get("delta") or {}).get("content")
                    if piece:
                        first = first or time.perf_counter()
                        answer.append(piece)
            ttfts.append(first - started)
            messages.append({"role": "assistant", "content": "".join(answer)})
    return ttfts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--turns", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=4096)
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    args = parser.parse_args()
    model = smollm2_weights()
    starters: dict[str, Callable[[], Peer]] = {
        "bastion": lambda: start_bastion(args.threads, 4, args.ctx),
        "bastion, no cache": lambda: start_bastion(
            args.threads, 4, args.ctx, {"BASTION_ENGINE__PREFIX_CACHE": "false"}
        ),
    }
    if not args.skip_llama_cpp_python:
        starters["llama-cpp-python"] = lambda: start_llama_cpp_python(model, args.threads, args.ctx)
    if args.llama_server:
        starters["llama-server"] = lambda: start_llama_server(
            args.llama_server, model, args.threads, 4, args.ctx
        )
    results: dict[str, list[float]] = {}
    for name, start in starters.items():
        peer = start()
        try:
            chat_turns(peer.base_url, 1)  # warm-up on another conversation start
            results[name] = chat_turns(peer.base_url, args.turns)
        except httpx.HTTPError as exc:
            print(f"{name} failed: {exc!r}")
        finally:
            peer.stop()
    print(f"time to first token (s) per turn, {args.turns}-turn chat, {args.threads} threads")
    print("turn " + "".join(f"{name:>19}" for name in results))
    for turn in range(args.turns):
        print(f"{turn + 1:>4} " + "".join(f"{r[turn]:>19.3f}" for r in results.values()))
    ours = results["bastion"]
    for name, values in results.items():
        if name == "bastion":
            continue
        print(
            f"bastion vs {name}: TTFT over turns 2-{args.turns} "
            f"{statistics.mean(values[1:]) / statistics.mean(ours[1:]):.2f}x faster, "
            f"last turn {values[-1] / ours[-1]:.2f}x faster"
        )


if __name__ == "__main__":
    main()
