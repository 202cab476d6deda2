"""The ceiling for any server on this model: llama.cpp decoding N sequences together in a
plain loop, with no HTTP, no scheduling and greedy sampling in C, using the context parameters
bastion's engine uses (one KV stream per sequence, same batch size and threads).

A server's aggregate tokens/s divided by this says how much of the machine's decoding power it
delivers to clients. Run as a subprocess, so it runs alone like the servers do:

    .venv/bin/python bench/_ceiling.py MODEL --threads 2 --sequences 4 --steps 128
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PROMPT = b"Write a long story about a lighthouse keeper."


def measure(model: Path, threads: int, sequences: int, ctx: int, steps: int) -> float:
    """Tokens per second of the plain decode loop, measured in a fresh process."""
    argv = [sys.executable, __file__, str(model), "--threads", str(threads)]
    argv += ["--sequences", str(sequences), "--ctx", str(ctx), "--steps", str(steps)]
    result = subprocess.run(argv, capture_output=True, text=True, check=True)
    return float(json.loads(result.stdout.splitlines()[-1])["tokens_per_second"])


def _decode_loop(model_path: Path, threads: int, sequences: int, ctx: int, steps: int) -> float:
    import llama_cpp as ll  # noqa: PLC0415 - only in the measuring process

    from bastion.engine.cpu import decide_repack, read_cpu_flags  # noqa: PLC0415

    ll.llama_backend_init()
    model_params = ll.llama_model_default_params()
    # The same kernels bastion uses: no repacking where it crashes (CPUs with AMX).
    system_info = ll.llama_print_system_info().decode()
    model_params.use_extra_bufts = decide_repack("auto", read_cpu_flags(), system_info).enabled
    model = ll.llama_model_load_from_file(str(model_path).encode(), model_params)
    vocab = ll.llama_model_get_vocab(model)
    params = ll.llama_context_default_params()
    params.n_ctx = ctx * sequences
    params.n_seq_max = sequences
    params.n_batch = params.n_ubatch = 512
    params.n_threads = params.n_threads_batch = threads
    params.kv_unified = False
    params.no_perf = True
    ctx_ptr = ll.llama_init_from_model(model, params)
    buffer = (ll.llama_token * 256)()
    n_prompt = ll.llama_tokenize(vocab, PROMPT, len(PROMPT), buffer, 256, True, False)
    batch = ll.llama_batch_init(512, 0, 1)
    samplers = []
    for _ in range(sequences):
        chain = ll.llama_sampler_chain_init(ll.llama_sampler_chain_default_params())
        ll.llama_sampler_chain_add(chain, ll.llama_sampler_init_greedy())
        samplers.append(chain)

    def add(token: int, pos: int, seq: int, logits: bool) -> None:
        i = batch.n_tokens
        batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, pos, 1
        batch.seq_id[i][0], batch.logits[i] = seq, logits
        batch.n_tokens = i + 1

    batch.n_tokens = 0
    for seq in range(sequences):
        for pos in range(n_prompt):
            add(buffer[pos], pos, seq, pos == n_prompt - 1)
    ll.llama_decode(ctx_ptr, batch)
    outputs = [n_prompt * (seq + 1) - 1 for seq in range(sequences)]
    started = time.perf_counter()
    for step in range(steps):
        pairs = zip(samplers, outputs, strict=True)
        tokens = [ll.llama_sampler_sample(chain, ctx_ptr, i) for chain, i in pairs]
        batch.n_tokens = 0
        for seq, token in enumerate(tokens):
            add(token, n_prompt + step, seq, True)
        outputs = list(range(sequences))
        ll.llama_decode(ctx_ptr, batch)
    return sequences * steps / (time.perf_counter() - started)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--sequences", type=int, default=4)
    parser.add_argument("--ctx", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=128)
    args = parser.parse_args()
    rate = _decode_loop(args.model, args.threads, args.sequences, args.ctx, args.steps)
    print(json.dumps({"tokens_per_second": rate}))
