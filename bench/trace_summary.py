"""Summarise engine step traces (``BASTION_ENGINE_TRACE``, see bastion.engine.llamacpp.trace).

One row per trace file (name it after the workload, e.g. ``distinct-4.jsonl``): steps, the
share of the owner thread's time spent inside ``llama_decode``, the mean batch composition,
how often a step carried fewer sequences than the engine held requests for, and where the
time between steps went. Then, per number of decode tokens in a pure decode step (no prompt
tokens), the mean ``llama_decode`` time: what one more sequence in the batch costs.

    .venv/bin/python bench/trace_summary.py TRACE.jsonl [TRACE.jsonl ...] [--idle-ms 50]

Gaps longer than ``--idle-ms`` count as idle (no request to work on) and are left out of the
decode share; they are reported on their own.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path


def load(path: Path) -> list[dict[str, float]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def summarise(name: str, steps: list[dict[str, float]], idle_ms: float) -> None:
    decode_ms = sum(s["decode_ms"] for s in steps)
    gaps = [s["gap_ms"] for s in steps]
    busy_gaps = [g for g in gaps if g <= idle_ms]
    idle = sum(g for g in gaps if g > idle_ms)
    n = len(steps)
    mixed = sum(1 for s in steps if s["prefill"] and s["decode"])
    print(f"== {name}: {n} steps over {(decode_ms + sum(gaps)) / 1000:.2f} s")
    print(
        f"  inside llama_decode {decode_ms / 1000:.2f} s = "
        f"{decode_ms / (decode_ms + sum(busy_gaps)):.1%} of busy time; between steps "
        f"{sum(busy_gaps) / 1000:.2f} s (mean {statistics.mean(busy_gaps or [0]):.2f} ms, "
        f"p95 {_quantile(busy_gaps, 0.95):.2f} ms); idle gaps > {idle_ms:g} ms: "
        f"{sum(1 for g in gaps if g > idle_ms)} totalling {idle / 1000:.2f} s"
    )
    print(
        f"  per step: decode tokens {statistics.mean(s['decode'] for s in steps):.2f}, prefill "
        f"tokens {statistics.mean(s['prefill'] for s in steps):.1f}, running "
        f"{statistics.mean(s['running'] for s in steps):.2f}, active "
        f"{statistics.mean(s['active'] for s in steps):.2f}"
    )
    prefill_ms = sum(s["decode_ms"] for s in steps if s["prefill"])
    print(
        f"  steps with prompt tokens: {sum(1 for s in steps if s['prefill'])} "
        f"({mixed} also decoding), {prefill_ms / 1000:.2f} s of llama_decode"
    )
    print(
        f"  steps decoding fewer sequences than active: "
        f"{sum(1 for s in steps if s['decode'] < s['active']) / n:.1%}; holding fewer slots "
        f"than active: {sum(1 for s in steps if s['running'] < s['active']) / n:.1%}"
    )
    by_size: dict[int, list[float]] = defaultdict(list)
    for s in steps:
        if not s["prefill"]:
            by_size[int(s["decode"])].append(s["decode_ms"])
    for size in sorted(by_size):
        times = by_size[size]
        share = sum(times) / decode_ms
        print(
            f"  pure decode of {size}: {len(times)} steps, mean {statistics.mean(times):.2f} ms "
            f"({statistics.mean(times) / size:.2f} ms per token), {share:.0%} of decode time"
        )


def _quantile(values: list[float], q: float) -> float:
    if len(values) < 2:
        return values[0] if values else 0.0
    return statistics.quantiles(values, n=100, method="inclusive")[int(q * 100) - 1]


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("traces", nargs="+", type=Path)
    parser.add_argument("--idle-ms", type=float, default=50.0)
    args = parser.parse_args()
    for path in args.traces:
        steps = load(path)
        if steps:
            summarise(path.stem, steps, args.idle_ms)
        else:
            print(f"== {path.stem}: empty")


if __name__ == "__main__":
    main()
