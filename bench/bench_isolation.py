"""What the engine process costs: ``engine.isolation: process`` against ``thread``.

Both are ``bastion serve`` on the same model, threads and slots; only
BASTION_ENGINE__ISOLATION differs. Each repetition starts each mode once, alone on the machine,
in alternating order (T P, P T, ...) so that drift in machine speed hits both alike, and measures
aggregate tokens/s and time to first token at each client count. The ratios process/thread are
paired per repetition; the spread is their range over the repetitions.

    .venv/bin/python bench/bench_isolation.py [--reps 3] [--clients 1,4] [--rounds 2]
        [--max-tokens 128] [--threads 2] [--slots 4]

Target (issue 13): throughput >= 0.97x at 1 and 4 clients, median TTFT at most 2 ms more.
"""

from __future__ import annotations

import argparse
import statistics

from _load import Sweep, run_clients
from _servers import start_bastion

MODES = ("thread", "process")


def measure(mode: str, args: argparse.Namespace, levels: list[int]) -> dict[int, Sweep]:
    peer = start_bastion(args.threads, args.slots, args.ctx, {"BASTION_ENGINE__ISOLATION": mode})
    try:
        run_clients(peer.base_url, 1, 1, 8)  # warm-up
        return {n: run_clients(peer.base_url, n, args.rounds, args.max_tokens) for n in levels}
    finally:
        peer.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--clients", default="1,4")
    parser.add_argument("--rounds", type=int, default=2, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    args = parser.parse_args()
    levels = [int(c) for c in args.clients.split(",")]
    print(
        f"{args.reps} repetitions, {args.threads} threads, {args.slots} slots, "
        f"{args.rounds} requests x {args.max_tokens} tokens per client"
    )
    runs: list[dict[str, dict[int, Sweep]]] = []
    for rep in range(args.reps):
        order = MODES if rep % 2 == 0 else tuple(reversed(MODES))
        runs.append({mode: measure(mode, args, levels) for mode in order})
        for level in levels:
            print(
                f"rep {rep + 1} clients {level}: "
                + ", ".join(
                    f"{mode} {runs[-1][mode][level].tokens_per_second:.1f} tok/s "
                    f"TTFT p50 {runs[-1][mode][level].ttft(0.5) * 1000:.1f} ms"
                    for mode in MODES
                ),
                flush=True,
            )
    report(runs, levels)


def report(runs: list[dict[str, dict[int, Sweep]]], levels: list[int]) -> None:
    print()
    print(
        f"{'clients':>7} {'thread tok/s':>12} {'process tok/s':>13} {'ratio':>6} "
        f"{'(min-max)':>11} {'TTFT p50 T':>10} {'TTFT p50 P':>10} {'delta ms':>8} "
        f"{'(min-max)':>13} {'failed':>6}"
    )
    for level in levels:
        thread = [run["thread"][level] for run in runs]
        process = [run["process"][level] for run in runs]
        ratios = [
            p.tokens_per_second / t.tokens_per_second for p, t in zip(process, thread, strict=True)
        ]
        deltas = [(p.ttft(0.5) - t.ttft(0.5)) * 1000 for p, t in zip(process, thread, strict=True)]
        failed = sum(s.failures for s in thread + process)
        print(
            f"{level:>7} {statistics.median(s.tokens_per_second for s in thread):>12.1f} "
            f"{statistics.median(s.tokens_per_second for s in process):>13.1f} "
            f"{statistics.median(ratios):>5.3f}x {min(ratios):>5.3f}-{max(ratios):<5.3f} "
            f"{statistics.median(s.ttft(0.5) for s in thread) * 1000:>10.1f} "
            f"{statistics.median(s.ttft(0.5) for s in process) * 1000:>10.1f} "
            f"{statistics.median(deltas):>+8.1f} {min(deltas):>+6.1f}-{max(deltas):<+6.1f} "
            f"{failed:>6}"
        )


if __name__ == "__main__":
    main()
