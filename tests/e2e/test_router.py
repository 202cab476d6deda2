"""One ``bastion serve``, the whole catalog: both built-in models by name through one server
that may hold only one of them at a time, swaps grouped, and an idle model unloaded with its
engine process gone."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.conftest import bastion_command
from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e
SMOL = "smollm2-135m-instruct"
GEMMA = "gemma3-270m"
REQUESTS = 20
ENGINE_PID = r"engine process for {} started, pid (\d+)"


def _complete(server: Server, model: str, n: int) -> str:
    reply = server.client(timeout=300).completions.create(
        model=model, prompt=f"Count: {n},", max_tokens=4, temperature=0
    )
    assert reply.model == model
    return reply.choices[0].text


def _gone(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split()[2]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_interleaved_requests_for_two_models_share_one_place_in_few_swaps(
    shared_home: Path,
) -> None:
    server = start_server(
        shared_home,
        env={
            "BASTION_ROUTER__MAX_LOADED": "1",
            "BASTION_ROUTER__SWAP_AFTER": "3",
            "BASTION_ROUTER__IDLE_TTL": "8",
            "BASTION_ENGINE__SLOTS": "2",
            "BASTION_ENGINE__CTX_PER_SLOT": "512",
        },
    )
    try:
        listed = {m["id"]: m for m in httpx.get(f"{server.v1}/models").json()["data"]}
        assert listed[SMOL]["state"] == "ready"
        assert listed[GEMMA]["state"] == "stopped"  # in the catalog, served on demand

        models = [SMOL if n % 2 else GEMMA for n in range(REQUESTS)]
        with ThreadPoolExecutor(REQUESTS) as pool:
            answers = list(pool.map(_complete, [server] * REQUESTS, models, range(REQUESTS)))
        assert len(answers) == REQUESTS

        swaps = re.findall(r"swapping .+ out for ", server.log_text())
        assert 1 <= len(swaps) <= 4, f"{len(swaps)} swaps for {REQUESTS} interleaved requests"

        # Whichever model served last goes idle; after router.idle_ttl it is unloaded and its
        # engine process exits.
        states = httpx.get(f"{server.base_url}/ready").json()["models"]
        loaded = [name for name, s in states.items() if s["state"] == "ready"]
        assert len(loaded) == 1, states
        pid = int(re.findall(ENGINE_PID.format(re.escape(loaded[0])), server.log_text())[-1])
        server.wait_for_log(rf"unloading model {re.escape(loaded[0])}: ", timeout=60)
        deadline = time.monotonic() + 30
        while not _gone(pid):
            assert time.monotonic() < deadline, f"engine process {pid} still runs"
            time.sleep(0.1)
        states = httpx.get(f"{server.base_url}/ready").json()["models"]
        assert states[loaded[0]]["state"] == "stopped"
        assert httpx.get(f"{server.base_url}/health").status_code == 200
        # and it comes back on demand
        assert _complete(server, loaded[0], 99)
    finally:
        assert server.stop() == 0


def test_models_load_and_unload_from_the_shell(shared_home: Path) -> None:
    server = start_server(shared_home)
    try:
        env = {"BASTION_HOME": str(shared_home), "BASTION_BASE_URL": server.base_url}
        loaded = bastion_command(env, "models", "load", GEMMA)
        assert loaded.returncode == 0, loaded.stderr
        states = httpx.get(f"{server.base_url}/ready").json()["models"]
        assert states[GEMMA]["state"] == "ready"
        unloaded = bastion_command(env, "models", "unload", GEMMA)
        assert unloaded.returncode == 0, unloaded.stderr
        states = httpx.get(f"{server.base_url}/ready").json()["models"]
        assert states[GEMMA]["state"] == "stopped"
        swapped = httpx.post(f"{server.base_url}/api/swap", json={"model": GEMMA}, timeout=120)
        assert swapped.status_code == 200, swapped.text
        assert _complete(server, GEMMA, 1)
    finally:
        assert server.stop() == 0
