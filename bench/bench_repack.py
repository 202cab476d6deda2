"""llama.cpp with weight repacking on and off, on this CPU: prompt and decode tokens/s.

Why ``engine.repack: auto`` keeps repacking on where the CPU has no AMX: llama.cpp's repacked
kernels (AVX2/AVX-512 layouts for Q4_0 and Q4_K) may speed up prompt processing. Each
measurement loads the model in a fresh process with ``use_extra_bufts`` on or off, prefills a
256-token prompt three times (prompt tokens/s, a fresh sequence each time) and decodes 64 tokens
greedily (tokens/s), in the order on off off on per repetition so drift hits both alike. On a CPU
with AMX, "on" crashes (llama.cpp issue 20824) and is skipped unless --force.

    .venv/bin/python bench/bench_repack.py [--reps 3] [--threads 2] [--force]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PROMPT_TOKENS = 256
DECODE_TOKENS = 64


def _measure(model: Path, threads: int, repack: bool) -> dict[str, float]:
    """Prompt and decode tokens/s of one fresh process."""
    argv = [sys.executable, __file__, "--child", str(model), str(threads), str(int(repack))]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return dict(json.loads(result.stdout.splitlines()[-1]))


def _child(model_path: Path, threads: int, repack: bool) -> dict[str, float]:
    import llama_cpp as ll  # noqa: PLC0415 - only in the measuring process

    ll.llama_backend_init()
    params = ll.llama_model_default_params()
    params.use_extra_bufts = repack
    model = ll.llama_model_load_from_file(str(model_path).encode(), params)
    vocab = ll.llama_model_get_vocab(model)
    cparams = ll.llama_context_default_params()
    cparams.n_ctx = 1024
    cparams.n_batch = cparams.n_ubatch = 512
    cparams.n_threads = cparams.n_threads_batch = threads
    cparams.no_perf = True
    ctx = ll.llama_init_from_model(model, cparams)
    memory = ll.llama_get_memory(ctx)
    batch = ll.llama_batch_init(512, 0, 1)
    n_vocab = ll.llama_vocab_n_tokens(vocab)

    def run(tokens: list[int], start: int) -> None:
        batch.n_tokens = len(tokens)
        for i, token in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
            batch.seq_id[i][0], batch.logits[i] = 0, i == len(tokens) - 1
        if ll.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed")

    # Distinct, ordinary tokens: a prompt is not a repetition of one token.
    prompt = [(1000 + 37 * i) % n_vocab for i in range(PROMPT_TOKENS)]
    run(prompt[:8], 0)  # warm-up
    prefill = []
    for _ in range(3):
        ll.llama_memory_clear(memory, True)
        started = time.perf_counter()
        run(prompt, 0)
        prefill.append(PROMPT_TOKENS / (time.perf_counter() - started))
    chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
    ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
    started = time.perf_counter()
    for step in range(DECODE_TOKENS):
        token = ll.llama_sampler_sample(chain, ctx, -1)
        run([token], PROMPT_TOKENS + step)
    decode = DECODE_TOKENS / (time.perf_counter() - started)
    return {"prompt": statistics.median(prefill), "decode": decode}


def _models(home: Path) -> dict[str, Path]:
    from bastion.catalog import BUILTIN_MODELS  # noqa: PLC0415
    from bastion.store.package import verify_local  # noqa: PLC0415
    from bastion.store.pull import prepare  # noqa: PLC0415

    found = {}
    for name, model in BUILTIN_MODELS.items():
        prepare(home, model)
        found[name] = verify_local(home, model, require_signature=False).weights
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--force", action="store_true", help="measure 'on' even with AMX")
    args = parser.parse_args()

    from bastion.engine.cpu import decide_repack, read_cpu_flags  # noqa: PLC0415

    auto = decide_repack("auto", read_cpu_flags(), "")
    print(f"auto on this CPU: repack {auto.label} ({auto.reason})")
    if not auto.enabled and not args.force:
        print("this CPU has AMX: repacking on would crash llama.cpp; nothing to compare")
        return
    with tempfile.TemporaryDirectory(prefix="bastion-bench-") as home:
        import os  # noqa: PLC0415

        os.environ["BASTION_HOME"] = home
        for name, weights in _models(Path(home)).items():
            runs: dict[bool, list[dict[str, float]]] = {True: [], False: []}
            for _ in range(args.reps):
                for repack in (True, False, False, True):
                    runs[repack].append(_measure(weights, args.threads, repack))
            print(f"\n{name} ({weights.name}), {args.threads} threads, {2 * args.reps} runs each")
            for metric in ("prompt", "decode"):
                on = [r[metric] for r in runs[True]]
                off = [r[metric] for r in runs[False]]
                print(
                    f"  {metric:>6} tok/s: on {statistics.median(on):7.1f} "
                    f"[{min(on):.1f}-{max(on):.1f}]  off {statistics.median(off):7.1f} "
                    f"[{min(off):.1f}-{max(off):.1f}]  on/off "
                    f"{statistics.median(on) / statistics.median(off):.2f}x"
                )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        rates = _child(Path(sys.argv[2]), int(sys.argv[3]), bool(int(sys.argv[4])))
        print(json.dumps(rates))
    else:
        main()
