"""Workloads side by side: distinct prompts, a shared system prompt, mixed lengths, one prompt.

bastion (default settings: engine process, prefix cache, time slicing) against llama-server
with the same model file, threads, slots, context and repacking decision (``_servers.py``).

This machine's speed drifts by up to +-25% over tens of seconds, so two measurements minutes
apart differ by more than the servers do. Every server therefore starts once and stays up (an
idle server uses no CPU; each is warmed up with a request per slot), and the measurements
interleave at the finest grain: for each workload and client count ("cell"), each repetition
runs every server back to back, in alternating order (A B, then B A, ...), and only then moves
on. Each repetition of a cell sends other words of the same shape (``_load.workload``'s
``variant``), so no server finds an earlier repetition's prompts in its cache. ``--restart``
instead starts the servers afresh for every repetition and runs all cells in it (the old way,
coarser).

Per cell the report gives each server's median tokens/s over the repetitions and the spread
(min-max, and (max - min) / median), TTFT p50/p95 over all streams of all repetitions, the mean
prompt tokens per request and how many of them the server computed (the rest came from its
cache: llama-server's ``timings.prompt_n``, bastion's ``prompt_tokens - cached_tokens``),
failures, and the share of the decode-loop ceiling for as many sequences (``_ceiling.py``;
measured before and after the servers, or with ``--ceiling-each`` in the interleave of every
repetition of every cell; for ``mixed`` it leaves out the long prefills, so the share there is
a lower bound of the real one). bastion against llama-server is the PAIRED ratio: per
repetition the ratio of the two back-to-back measurements, reported as the median ratio and
its min-max. A final Markdown table is ready for docs/performance.md.

``--null`` compares two identical bastion servers (bastion and bastion-b, both with any
``--bastion-env``) instead: their paired ratio should be 1.00, and its spread is the noise
floor of the method. Workloads are defined in ``_load.workload``.

    .venv/bin/python bench/bench_workloads.py --llama-server PATH [--workloads distinct,system,
        mixed,shared] [--clients 1,4,8] [--reps 2] [--rounds 3] [--max-tokens 128]
        [--seed 0] [--json out.json] [--bastion-env KEY=VALUE] [--only bastion] [--null]
        [--ceiling-each] [--restart] [--skip-ceiling]
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

Cell = tuple[str, int]
"""(workload, clients)"""
Results = dict[Cell, dict[str, list[Sweep]]]
"""Per cell and server, one sweep per repetition (the same index is the same repetition)."""
CEILING = "ceiling"
SHORT = {"bastion": "b", "llama-server": "l", "bastion-b": "b2"}
"""Server names in the Markdown table's combined columns."""


def main() -> None:
    args = _parse()
    names = args.workloads.split(",")
    levels = [int(c) for c in args.clients.split(",")]
    cells = [(name, level) for name in names for level in levels]
    for name in names:
        workload(name, args.seed, args.max_tokens)  # an unknown name fails before any start
    model = smollm2_weights()
    starters = _starters(args, model)
    print(
        f"model {model.name}, {args.threads} threads, {args.slots} slots, {args.reps} reps, "
        f"{args.rounds} requests per client, max_tokens {args.max_tokens}, seed {args.seed}, "
        f"servers {' and '.join(starters)}, {'restarted' if args.restart else 'resident'}"
    )

    def ceiling(level: int) -> float:
        return measure(model, args.threads, min(level, args.slots), args.ctx, args.max_tokens)

    # Without --ceiling-each: once per sequence count before the servers and once after.
    around = not args.skip_ceiling and not args.ceiling_each
    sequences = {min(level, args.slots): level for level in levels} if around else {}
    before = {n: ceiling(level) for n, level in sequences.items()}
    results, ceilings = run(args, starters, cells, ceiling)
    if around:
        after = {n: ceiling(level) for n, level in sequences.items()}
        for name, level in cells:
            n = min(level, args.slots)
            ceilings[name, level] = [before[n], after[n]]
    report(results, ceilings)
    if args.json:
        dump(args.json, results, ceilings)


def _parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--workloads", default=",".join(WORKLOADS))
    parser.add_argument("--clients", default="1,4,8")
    parser.add_argument("--reps", type=int, default=2, help="measurements per server and cell")
    parser.add_argument("--rounds", type=int, default=3, help="requests per client")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ctx", type=int, default=2048, help="context per slot")
    parser.add_argument("--llama-server", type=Path)
    parser.add_argument("--only", choices=["bastion", "llama-server"])
    parser.add_argument("--null", action="store_true", help="bastion against a second bastion")
    parser.add_argument("--restart", action="store_true", help="start servers every repetition")
    parser.add_argument("--skip-ceiling", action="store_true")
    parser.add_argument(
        "--ceiling-each", action="store_true", help="measure the ceiling in every interleave"
    )
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--bastion-env", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    if args.null and (args.llama_server or args.only):
        parser.error("--null compares two bastion servers; drop --llama-server and --only")
    return args


def _starters(args: argparse.Namespace, model: Path) -> dict[str, Callable[[], Peer]]:
    """Server name -> how to start it, in the order of the first repetition."""
    extra = dict(item.split("=", 1) for item in args.bastion_env)

    def bastion() -> Peer:
        return start_bastion(args.threads, args.slots, args.ctx, extra)

    if args.null:
        return {"bastion": bastion, "bastion-b": bastion}
    starters: dict[str, Callable[[], Peer]] = {"bastion": bastion}
    if args.llama_server:
        starters["llama-server"] = lambda: start_llama_server(
            args.llama_server, model, args.threads, args.slots, args.ctx
        )
    return {args.only: starters[args.only]} if args.only else starters


def run(
    args: argparse.Namespace,
    starters: dict[str, Callable[[], Peer]],
    cells: list[Cell],
    ceiling: Callable[[int], float],
) -> tuple[Results, dict[Cell, list[float]]]:
    """Every repetition of every cell, with the servers (and with ``--ceiling-each`` the
    ceiling) measured back to back; returns the sweeps and the ceilings measured here."""
    results: Results = {cell: {server: [] for server in starters} for cell in cells}
    ceilings: dict[Cell, list[float]] = {cell: [] for cell in cells}
    # Resident servers: all repetitions of a cell together. Restarted: a repetition is a start.
    if args.restart:
        schedule = [(rep, cell) for rep in range(args.reps) for cell in cells]
    else:
        schedule = [(rep, cell) for cell in cells for rep in range(args.reps)]
    peers: dict[str, Peer] = {}
    started_for = -1
    interleaved = [CEILING] if args.ceiling_each and not args.skip_ceiling else []
    try:
        for rep, (name, level) in schedule:
            if not peers or (args.restart and rep != started_for):
                _stop(peers)
                _start(starters, peers, args.slots)
                started_for = rep
            order = [*starters, *interleaved]
            if rep % 2:
                order.reverse()
            plan = workload(name, args.seed, args.max_tokens, variant=f"{rep}:{level}")
            for who in order:
                if who == CEILING:
                    rate = ceiling(level)
                    ceilings[name, level].append(rate)
                    print(
                        f"  rep {rep + 1} {who:<12} {name:<8} {level} clients: {rate:6.1f} tok/s",
                        flush=True,
                    )
                    continue
                url = peers[who].base_url
                sweep = run_clients(url, level, args.rounds, args.max_tokens, plan)
                results[name, level][who].append(sweep)
                print(
                    f"  rep {rep + 1} {who:<12} {name:<8} {level} clients: "
                    f"{sweep.tokens_per_second:6.1f} tok/s, prefill {_num(sweep.prefill)}, "
                    f"{sweep.failures} failed",
                    flush=True,
                )
    finally:
        _stop(peers)
    return results, ceilings


def _start(starters: dict[str, Callable[[], Peer]], peers: dict[str, Peer], slots: int) -> None:
    """Start every server into ``peers`` (so a failed start still stops the earlier ones) and
    warm it up with one short request per slot, so no first cell meets a cold slot."""
    for server, start in starters.items():
        peers[server] = start()
        run_clients(peers[server].base_url, slots, 1, 8)


def _stop(peers: dict[str, Peer]) -> None:
    for peer in peers.values():
        peer.stop()
    peers.clear()


# ---- report ---------------------------------------------------------------------------------


def paired(results: Results, cell: Cell) -> tuple[str, str, list[float]] | None:
    """The first two servers of a cell and, per repetition, the ratio of their tokens/s."""
    servers = list(results[cell])
    if len(servers) < 2:
        return None
    a, b = results[cell][servers[0]], results[cell][servers[1]]
    ratios = [
        x.tokens_per_second / y.tokens_per_second for x, y in zip(a, b, strict=True) if y.streams
    ]
    return servers[0], servers[1], ratios


def report(results: Results, ceilings: dict[Cell, list[float]]) -> None:
    print()
    print(
        f"{'workload':<9}{'clients':>7} {'server':<13}{'median':>8} {'min-max (spread)':<22}"
        f"{'of ceil':>8}{'TTFT p50':>9}{'TTFT p95':>9}{'prompt':>7}{'prefill':>8}{'failed':>7}"
    )
    for (name, level), by_server in results.items():
        top = _ceiling(ceilings, (name, level))
        for server, sweeps in by_server.items():
            rates = [s.tokens_per_second for s in sweeps]
            merged = _merged(sweeps)
            prompts = [s.prompt_tokens for s in merged.streams]
            prompt = statistics.mean(prompts) if prompts else 0
            print(
                f"{name:<9}{level:>7} {server:<13}{statistics.median(rates):>8.1f} "
                f"{spread(rates):<22}{_share(rates, top):>8}{_ttft(merged, 0.5):>9}"
                f"{_ttft(merged, 0.95):>9}{prompt:>7.0f}{_num(merged.prefill):>8}"
                f"{merged.failures:>7}"
            )
    print()
    for cell, values in ceilings.items():
        if values:
            print(f"decode-loop ceiling, {cell[0]} at {cell[1]} clients: {spread(values)}")
    for cell in results:
        pair = paired(results, cell)
        if pair and pair[2]:
            a, b, ratios = pair
            print(
                f"{cell[0]} at {cell[1]} clients, {a} / {b} paired tok/s ratio: median "
                f"{statistics.median(ratios):.2f}, {min(ratios):.2f}-{max(ratios):.2f} "
                f"over {len(ratios)} reps"
            )
    print()
    print("\n".join(markdown(results, ceilings)))


def markdown(results: Results, ceilings: dict[Cell, list[float]]) -> list[str]:
    """The summary table for docs/performance.md, one row per cell."""
    servers = list(next(iter(results.values())))
    a, b = [*servers, "-"][:2]
    both = f"{SHORT.get(a, a)} / {SHORT.get(b, b)}"
    header = (
        f"| workload | clients | {a} tok/s (spread) | {b} tok/s (spread) | paired ratio median "
        f"(min-max) | of ceiling {both} | TTFT p95 {both} | prefill {both} |"
    )
    lines = [header, "|---|--:|--:|--:|--:|--:|--:|--:|"]
    for (name, level), by_server in results.items():
        top = _ceiling(ceilings, (name, level))
        cols: list[list[str]] = []
        for server in (a, b):
            sweeps = by_server.get(server)
            if not sweeps:
                cols.append(["-"] * 4)
                continue
            rates = [s.tokens_per_second for s in sweeps]
            merged = _merged(sweeps)
            mid = statistics.median(rates)
            relative = f"{(max(rates) - min(rates)) / mid:.0%}" if mid else "-"
            rate = f"{mid:.1f} ({relative})"
            cols.append([rate, _share(rates, top), _ttft(merged, 0.95), _num(merged.prefill)])
        pair = paired(results, (name, level))
        ratio = "-"
        if pair and pair[2]:
            r = pair[2]
            ratio = f"{statistics.median(r):.2f} ({min(r):.2f}-{max(r):.2f})"
        x, y = cols
        lines.append(
            f"| {name} | {level} | {x[0]} | {y[0]} | {ratio} | {x[1]} / {y[1]} | "
            f"{x[2]} / {y[2]} | {x[3]} / {y[3]} |"
        )
    return lines


def spread(rates: list[float]) -> str:
    low, high, mid = min(rates), max(rates), statistics.median(rates)
    relative = f"{(high - low) / mid:.0%}" if mid else "-"
    return f"{low:.1f}-{high:.1f} ({relative})"


def _ceiling(ceilings: dict[Cell, list[float]], cell: Cell) -> float | None:
    values = ceilings.get(cell)
    return statistics.median(values) if values else None


def _share(rates: list[float], top: float | None) -> str:
    return f"{statistics.median(rates) / top:.0%}" if top else "-"


def _ttft(sweep: Sweep, q: float) -> str:
    return f"{sweep.ttft(q):.3f}" if sweep.streams else "-"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _merged(sweeps: list[Sweep]) -> Sweep:
    merged = sweeps[0]
    for sweep in sweeps[1:]:
        merged = merged.merge(sweep)
    return merged


def dump(path: Path, results: Results, ceilings: dict[Cell, list[float]]) -> None:
    runs = [
        {
            "workload": name,
            "clients": level,
            "server": server,
            "tokens_per_second": [s.tokens_per_second for s in sweeps],
            "ttft": [[st.ttft for st in s.streams] for s in sweeps],
            "prompt_tokens": [[st.prompt_tokens for st in s.streams] for s in sweeps],
            "prompt_computed": [[st.prompt_computed for st in s.streams] for s in sweeps],
            "prompt_ms": [[st.prompt_ms for st in s.streams] for s in sweeps],
            "failures": [s.failures for s in sweeps],
        }
        for (name, level), by_server in results.items()
        for server, sweeps in by_server.items()
    ]
    pairs = []
    for name, level in results:
        if pair := paired(results, (name, level)):
            a, b, ratios = pair
            pairs.append({"workload": name, "clients": level, "servers": [a, b], "ratios": ratios})
    ceiling = [
        {"workload": name, "clients": level, "tokens_per_second": values}
        for (name, level), values in ceilings.items()
        if values
    ]
    path.write_text(json.dumps({"ceiling": ceiling, "runs": runs, "paired": pairs}, indent=1))


if __name__ == "__main__":
    main()
