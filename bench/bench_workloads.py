"""Workloads side by side: distinct prompts, a shared system prompt, mixed lengths, one prompt.

bastion (default settings: engine process, prefix cache, time slicing) against llama-server
with the same model file, threads, slots, context and repacking decision (``_servers.py``).
Each server runs alone while it is measured; every repetition starts each server afresh, in
alternating order (A B, then B A, ...), and runs every workload at every client count. Per
workload and client count the report gives the median tokens/s over the repetitions, the
spread (min-max, and (max - min) / median), TTFT p50/p95 over all streams of all repetitions,
and each server's share of the decode-loop ceiling for as many sequences (``_ceiling.py``,
measured before and after the servers; for ``mixed`` it leaves out the long prefills, so the
share there is a lower bound of the real one). Workloads are defined in ``_load.workload``.

    .venv/bin/python bench/bench_workloads.py --llama-server PATH [--workloads distinct,system,
        mixed,shared] [--clients 1,4,8] [--reps 2] [--rounds 3] [--max-tokens 128]
        [--seed 0] [--json out.json] [--bastion-env KEY=VALUE] [--only bastion]
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

from _ceiling import measure
from _load import WORKLOADS, Sweep, run_clients, workload
from _servers import Peer, smollm2_weights, start_bastion, start_llama_server

Key = tuple[str, int, str]
"""(workload, clients, server)"""


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--reps", type=int, default=2, help="starts of each server")
    parser.add_argument("--rounds", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--only", choices=["bastion", "llama-server"])
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--bastion-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    names = args.workloads.split(",")
    plans = {name: workload(name, args.seed, args.max_tokens) for name in names}
    levels = [int(c) for c in args.clients.split(",")]
    model = smollm2_weights()
    extra = dict(item.split("=", 1) for item in args.bastion_env)
    starters: dict[str, Callable[[], Peer]] = {
        "bastion": lambda: start_bastion(args.threads, args.slots, args.ctx, extra)
    }
    if args.llama_server:
        starters["llama-server"] = lambda: start_llama_server(
            args.llama_server, model, args.threads, args.slots, args.ctx
        )
    if args.only:
        starters = {args.only: starters[args.only]}
    print(
        f"model {model.name}, {args.threads} threads, {args.slots} slots, {args.reps} reps, "
        f"{args.rounds} requests per client, max_tokens {args.max_tokens}, seed {args.seed}"
    )
    sequences = sorted({min(level, args.slots) for level in levels})
    ceilings: dict[int, list[float]] = {n: [] for n in sequences}

    def measure_ceiling() -> None:
        for n in sequences if not args.skip_ceiling else []:
            ceilings[n].append(measure(model, args.threads, n, args.ctx, args.max_tokens))

    results: dict[Key, list[Sweep]] = {}
    measure_ceiling()
    for rep in range(args.reps):
        order = list(starters) if rep % 2 == 0 else list(reversed(starters))
        for server in order:
            peer = starters[server]()
            try:
                run_clients(peer.base_url, 1, 1, 8)  # warm-up
                for name in names:
                    for level in levels:
                        sweep = run_clients(
                            peer.base_url, level, args.rounds, args.max_tokens, plans[name]
                        )
                        results.setdefault((name, level, server), []).append(sweep)
                        print(
                            f"  rep {rep + 1} {server:<12} {name:<8} {level} clients: "
                            f"{sweep.tokens_per_second:6.1f} tok/s, {sweep.failures} failed",
                            flush=True,
                        )
            finally:
                peer.stop()
    measure_ceiling()
    ceiling = {n: statistics.mean(r) for n, r in ceilings.items() if r}
    report(results, {level: ceiling.get(min(level, args.slots)) for level in levels})
    if args.json:
        dump(args.json, results, ceiling)


def spread(rates: list[float]) -> str:
    low, high, mid = min(rates), max(rates), statistics.median(rates)
    return f"{low:.1f}-{high:.1f} ({(high - low) / mid:.0%})"


def report(results: dict[Key, list[Sweep]], ceiling: dict[int, float | None]) -> None:
    print()
    print(
        f"{'workload':<9}{'clients':>7} {'server':<13}{'median':>8} {'min-max (spread)':<22}"
        f"{'of ceil':>8}{'TTFT p50':>9}{'TTFT p95':>9}{'prompt':>7}{'failed':>7}"
    )
    for (name, level, server), sweeps in results.items():
        rates = [s.tokens_per_second for s in sweeps]
        merged = _merged(sweeps)
        top = ceiling[level]
        share = f"{statistics.median(rates) / top:.0%}" if top else "-"
        prompt = statistics.mean(s.prompt_tokens for s in merged.streams) if merged.streams else 0
        print(
            f"{name:<9}{level:>7} {server:<13}{statistics.median(rates):>8.1f} "
            f"{spread(rates):<22}{share:>8}{merged.ttft(0.5):>9.3f}{merged.ttft(0.95):>9.3f}"
            f"{prompt:>7.0f}{merged.failures:>7}"
        )
    print()
    for level, top in ceiling.items():
        if top:
            print(f"decode-loop ceiling at {level} clients: {top:.1f} tok/s")
    for (name, level, server), sweeps in results.items():
        other = results.get((name, level, "llama-server"))
        if server != "bastion" or not other:
            continue
        ours = [s.tokens_per_second for s in sweeps]
        theirs = [s.tokens_per_second for s in other]
        mine, peer = _merged(sweeps), _merged(other)
        print(
            f"{name} at {level} clients, bastion vs llama-server: median tok/s "
            f"{statistics.median(ours) / statistics.median(theirs):.2f}x, TTFT p95 "
            f"{peer.ttft(0.95) / mine.ttft(0.95):.2f}x faster"
        )


def _merged(sweeps: list[Sweep]) -> Sweep:
    merged = sweeps[0]
    for sweep in sweeps[1:]:
        merged = merged.merge(sweep)
    return merged


def dump(path: Path, results: dict[Key, list[Sweep]], ceiling: dict[int, float]) -> None:
    rows = [
        {
            "workload": name,
            "clients": level,
            "server": server,
            "tokens_per_second": [s.tokens_per_second for s in sweeps],
            "ttft": [[st.ttft for st in s.streams] for s in sweeps],
            "failures": [s.failures for s in sweeps],
        }
        for (name, level, server), sweeps in results.items()
    ]
    path.write_text(json.dumps({"ceiling": ceiling, "runs": rows}, indent=1))


if __name__ == "__main__":
    main()
