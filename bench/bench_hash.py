"""SHA-256 throughput: bastion's parallel hashing against coreutils ``sha256sum``.

Same files, same run, page cache warm for both (each file is read once before timing).
One file shows the per-core speed of Python's OpenSSL-backed hashlib; several files show the
thread pool using every core.

    .venv/bin/python bench/bench_hash.py [--files 4] [--mib 256]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from bastion.integrity.manifest import hash_file
from bastion.integrity.verify import hash_files


def timed(fn: object) -> float:
    started = time.perf_counter()
    fn()  # type: ignore[operator]
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--mib", type=int, default=256)
    args = parser.parse_args()
    sha256sum = shutil.which("sha256sum")
    assert sha256sum, "coreutils sha256sum is needed"
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i in range(args.files):
            path = Path(tmp) / f"part{i}.bin"
            with path.open("wb") as handle:
                for _ in range(args.mib):
                    handle.write(os.urandom(1024 * 1024))
            paths.append(path)
        for path in paths:  # warm the page cache
            path.read_bytes()
        gib_one = args.mib / 1024
        gib_all = gib_one * args.files
        ours_one = timed(lambda: hash_file(paths[0]))
        theirs_one = timed(
            lambda: subprocess.run([sha256sum, str(paths[0])], check=True, capture_output=True)
        )
        ours_all = timed(lambda: hash_files(paths))
        theirs_all = timed(
            lambda: subprocess.run([sha256sum, *map(str, paths)], check=True, capture_output=True)
        )
    print(f"{'':<28}{'bastion GiB/s':>14}{'sha256sum GiB/s':>16}{'ratio':>8}")
    print(
        f"{'one file':<28}{gib_one / ours_one:>14.2f}{gib_one / theirs_one:>16.2f}"
        f"{theirs_one / ours_one:>7.2f}x"
    )
    print(
        f"{f'{args.files} files':<28}{gib_all / ours_all:>14.2f}{gib_all / theirs_all:>16.2f}"
        f"{theirs_all / ours_all:>7.2f}x"
    )


if __name__ == "__main__":
    main()
