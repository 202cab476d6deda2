"""Streamed tokens/s and time to first token at one client: bastion vs its peers.

The same measurement as ``bench_batching.py`` at one client (six requests in a row): bastion
against llama-cpp-python's server and, given a binary, llama-server; same model, same threads,
each server alone while measured, same run. Prints the ratios.

    .venv/bin/python bench/bench_serve.py [--rounds 6] [--max-tokens 128] [--threads 2]
                                          [--llama-server /path/to/llama-server]
"""

from __future__ import annotations

from bench_batching import main

if __name__ == "__main__":
    main(clients="1", rounds=6, doc=__doc__ or "")
