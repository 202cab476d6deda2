"""The audit middleware in the real app: where each request's record goes, what a refusal
carries, and the checkpoint the lifespan signs at shutdown."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from bastion.integrity.trust import local_key
from bastion.security.api_keys import KeyStore
from bastion.security.audit import LOG_NAME, UNAUTHENTICATED_NAME
from bastion.security.audit_verify import verify_home
from bastion.security.checkpoints import Checkpoint, checkpoints_path
from bastion.settings import Settings
from tests.api.stub_app import MODEL, client, fake_app, store_model

REMOTE = "192.0.2.10"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def records(home: Path, name: str) -> list[dict[str, object]]:
    path = home / "audit" / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


async def serve(home: Path, *, requests: int, refusals: int) -> None:
    """Run the app's lifespan around ``requests`` authenticated chats and ``refusals``."""
    store_model(home)
    key = KeyStore(home).create("alice")
    settings = Settings(
        server={"default_model": MODEL},
        auth={"loopback_bypass": False},
        audit={"max_bytes": 16384, "unauthenticated_max_bytes": 4096},
    )
    app, _ = fake_app(settings, home)
    async with app.router.lifespan_context(app):
        await app.state.registry.wait_loaded()
        async with client(app, REMOTE, key) as caller, client(app, REMOTE) as stranger:
            for i in range(max(requests, refusals)):
                if i < requests:
                    assert (await caller.post("/v1/chat/completions", json=CHAT)).status_code == 200
                if i < refusals:
                    bad = {"Authorization": "Bearer sk-wrong"} if i % 2 else {}
                    response = await stranger.get("/v1/models", headers=bad)
                    assert response.status_code == 401


def test_refusals_go_to_their_own_log_with_the_client_address(tmp_path: Path) -> None:
    home = tmp_path / "home"
    asyncio.run(serve(home, requests=2, refusals=3))
    assert [r["identity"] for r in records(home, LOG_NAME)] == ["key:alice"] * 2
    refused = records(home, UNAUTHENTICATED_NAME)
    assert [(r["status"], r["client"], r["identity"]) for r in refused] == [(401, REMOTE, None)] * 3


def test_a_refusal_flood_leaves_authenticated_records_in_place(tmp_path: Path) -> None:
    home = tmp_path / "home"
    asyncio.run(serve(home, requests=5, refusals=400))
    assert [r["seq"] for r in records(home, LOG_NAME)] == [1, 2, 3, 4, 5]
    assert not (home / "audit" / f"{LOG_NAME}.1").exists()
    assert (home / "audit" / f"{UNAUTHENTICATED_NAME}.1").exists(), "the flood rotated its own"


def test_shutdown_signs_a_checkpoint_that_anchors_every_record(tmp_path: Path) -> None:
    home = tmp_path / "home"
    asyncio.run(serve(home, requests=3, refusals=2))
    for name, count in ((LOG_NAME, 3), (UNAUTHENTICATED_NAME, 2)):
        lines = checkpoints_path(home / "audit" / name).read_text().splitlines()
        last = Checkpoint.parse(lines[-1])
        assert (last.reason, last.seq) == ("shutdown", count)
        last.check([local_key(home).public])
    reports = verify_home(home / "audit", [local_key(home).public])
    assert [(r.problems, r.notes, r.anchored) for r in reports] == [([], [], 3), ([], [], 2)]
