"""Start and stop the servers a benchmark compares, all on loopback with the same model."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from bastion.engine.cpu import decide_repack, read_cpu_flags

VENV_BIN = Path(sys.executable).parent


def smollm2_weights() -> Path:
    """The default model's GGUF inside its installed package (what every peer loads)."""
    from bastion.catalog import BUILTIN_MODELS, SMOLLM2  # noqa: PLC0415
    from bastion.store.package import locate_package_file  # noqa: PLC0415

    source = BUILTIN_MODELS[SMOLLM2].package
    assert source is not None
    return locate_package_file(source.distribution, source.file)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Peer:
    """One server under test: its name, base URL and process."""

    name: str
    base_url: str
    process: subprocess.Popen[str]
    log: list[str] = field(default_factory=list)
    scratch: Path | None = None
    """A home made for this run only (an imported model: ~100 MB), removed at stop."""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
            self.scratch = None


def _spawn(name: str, argv: list[str], env: dict[str, str] | None = None) -> Peer:
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    peer = Peer(name, "", process)

    def pump() -> None:
        assert process.stderr is not None
        for line in process.stderr:
            peer.log.append(line)

    threading.Thread(target=pump, daemon=True).start()
    return peer


def _wait(peer: Peer, path: str, timeout: float = 180) -> Peer:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if peer.process.poll() is not None:
            peer.stop()  # removes its scratch home
            raise RuntimeError(f"{peer.name} exited:\n{''.join(peer.log[-30:])}")
        try:
            if httpx.get(f"{peer.base_url}{path}", timeout=2).status_code == 200:
                return peer
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    peer.stop()
    raise RuntimeError(f"{peer.name} did not become ready")


def start_bastion(
    threads: int, slots: int, ctx_per_slot: int, extra_env: dict[str, str] | None = None
) -> Peer:
    home = tempfile.mkdtemp(prefix="bastion-bench-")
    env = {k: v for k, v in os.environ.items() if not k.startswith("BASTION_")}
    env["BASTION_HOME"] = home
    env.update(extra_env or {})
    port = free_port()
    peer = _spawn(
        "bastion",
        [
            str(VENV_BIN / "bastion"),
            "serve",
            "--port",
            str(port),
            "--threads",
            str(threads),
            "--slots",
            str(slots),
            "--ctx-per-slot",
            str(ctx_per_slot),
        ],
        env,
    )
    peer.base_url = f"http://127.0.0.1:{port}"
    peer.scratch = Path(home)
    return _wait(peer, "/ready")


def start_llama_cpp_python(model: Path, threads: int, ctx: int) -> Peer:
    port = free_port()
    peer = _spawn(
        "llama-cpp-python",
        [
            sys.executable,
            str(Path(__file__).with_name("_llama_cpp_python_server.py")),
            "--model",
            str(model),
            "--n_threads",
            str(threads),
            "--n_threads_batch",
            str(threads),
            "--n_ctx",
            str(ctx),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--verbose",
            "False",
            "--model_alias",
            "smollm2-135m-instruct",
        ],
    )
    peer.base_url = f"http://127.0.0.1:{port}"
    return _wait(peer, "/v1/models")


def start_llama_server(
    binary: Path, model: Path, threads: int, slots: int, ctx_per_slot: int
) -> Peer:
    port = free_port()
    peer = _spawn(
        "llama-server",
        [
            str(binary),
            "-m",
            str(model),
            "-t",
            str(threads),
            "-tb",
            str(threads),
            "-c",
            str(ctx_per_slot * slots),
            "-np",
            str(slots),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--alias",
            "smollm2-135m-instruct",
            *llama_server_repack_args(),
        ],
    )
    peer.base_url = f"http://127.0.0.1:{port}"
    return _wait(peer, "/health")


def llama_server_repack_args() -> list[str]:
    """llama-server crashes like bastion did on CPUs with AMX unless told not to repack; with
    ``--no-repack`` there, both servers run the same kernels."""
    return [] if decide_repack("auto", read_cpu_flags(), "").enabled else ["--no-repack"]


def parse_listening(log: str) -> str | None:
    match = re.search(r"listening on (http://\S+?)/v1", log)
    return match.group(1) if match else None
