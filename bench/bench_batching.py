"""Concurrency sweep: aggregate tokens/s and time to first token at 1, 2, 4, 8 clients.

bastion (continuous batching, N slots) against llama-cpp-python's server and, when a binary
is given, llama-server with as many slots; same model, same threads, same run. Each server runs
alone while it is measured, in the order A B C C B A, so they never compete for the cores and
drift in machine speed hits them alike. Before and after the servers, the ceiling is measured:
llama.cpp decoding as many sequences in a plain loop without any server (``_ceiling.py``); the
"of ceiling" column is the share of that decoding power each server delivers to its clients.

    .venv/bin/python bench/bench_batching.py [--clients 1,2,4,8] [--slots 4] [--rounds 2]
        [--max-tokens 128] [--threads 2] [--llama-server PATH] [--skip-llama-cpp-python]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from _ceiling import measure
from _load import Sweep, run_clients
from _servers import (
    Peer,
    smollm2_weights,
    start_bastion,
    start_llama_cpp_python,
    start_llama_server,
)


def main(clients: str = "1,2,4,8", rounds: int = 2, doc: str = __doc__ or "") -> None:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--clients", default=clients)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=rounds, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--skip-llama-cpp-python", action="store_true")
    parser.add_argument(
        "--bastion-env",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra environment for bastion (e.g. BASTION_ENGINE__TIME_SLICE=0)",
    )
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    model = smollm2_weights()
    extra = dict(item.split("=", 1) for item in args.bastion_env)
    starters: dict[str, Callable[[], Peer]] = {
        "bastion": lambda: start_bastion(args.threads, args.slots, args.ctx, extra)
    }
    if not args.skip_llama_cpp_python:
        starters["llama-cpp-python"] = lambda: start_llama_cpp_python(model, args.threads, args.ctx)
    if args.llama_server:
        starters["llama-server"] = lambda: start_llama_server(
            args.llama_server, model, args.threads, args.slots, args.ctx
        )
    print(
        f"model {model.name}, {args.threads} threads, {args.slots} slots, "
        f"{args.rounds} requests x {args.max_tokens} tokens per client"
    )
    # Each server runs alone (an idle peer must not take the cores from the measured one),
    # in the order A B C C B A so that drift in machine speed hits every server alike.
    results: dict[int, dict[str, Sweep]] = {n: {} for n in levels}
    ceiling: dict[int, list[float]] = {n: [] for n in levels}

    def measure_ceiling() -> None:
        for level in levels:
            sequences = min(level, args.slots)
            ceiling[level].append(
                measure(model, args.threads, sequences, args.ctx, args.max_tokens)
            )

    measure_ceiling()
    for name in [*starters, *reversed(starters)]:
        peer = starters[name]()
        try:
            run_clients(peer.base_url, 1, 1, 8)  # warm-up
            for level in levels:
                sweep = run_clients(peer.base_url, level, args.rounds, args.max_tokens)
                results[level][name] = (
                    results[level][name].merge(sweep) if (name in results[level]) else sweep
                )
        finally:
            peer.stop()
    measure_ceiling()
    report(results, {level: sum(rates) / len(rates) for level, rates in ceiling.items()})


def report(results: dict[int, dict[str, Sweep]], ceiling: dict[int, float]) -> None:
    print(
        f"{'clients':>7} {'server':<18} {'tok/s':>8} {'of ceiling':>10} {'TTFT p50':>9} "
        f"{'TTFT p95':>9} {'failed':>6}"
    )
    for clients, by_peer in results.items():
        print(f"{clients:>7} {'(decode loop)':<18} {ceiling[clients]:>8.1f}")
        for name, sweep in by_peer.items():
            share = sweep.tokens_per_second / ceiling[clients]
            print(
                f"{clients:>7} {name:<18} {sweep.tokens_per_second:>8.1f} {share:>10.0%} "
                f"{sweep.ttft(0.5):>9.3f} {sweep.ttft(0.95):>9.3f} {sweep.failures:>6}"
            )
    print()
    for clients, by_peer in results.items():
        ours = by_peer["bastion"]
        for name, sweep in by_peer.items():
            if name == "bastion":
                continue
            print(
                f"{clients} clients, bastion vs {name}: tokens/s "
                f"{ours.tokens_per_second / sweep.tokens_per_second:.2f}x, TTFT p50 "
                f"{sweep.ttft(0.5) / ours.ttft(0.5):.2f}x faster, p95 "
                f"{sweep.ttft(0.95) / ours.ttft(0.95):.2f}x faster"
            )


if __name__ == "__main__":
    main()
