"""``/ready`` and the 503 for a model that failed verification: callers learn where operators
look (``/api/status``), never the reason itself."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from bastion.security.api_keys import INFERENCE, KeyStore
from bastion.settings import Settings
from tests.api.stub_app import MODEL, client, fake_app, store_model

POINTER = "/api/status"


def _flip_a_byte(directory: Path) -> None:
    weights = directory / "tiny.gguf"
    data = bytearray(weights.read_bytes())
    data[3] ^= 0x01
    weights.write_bytes(bytes(data))


def _truncate(directory: Path) -> None:
    (directory / "tiny.gguf").write_bytes(b"GGUF")


def _delete_weights(directory: Path) -> None:
    (directory / "tiny.gguf").unlink()


def _edit_the_manifest(directory: Path) -> None:
    manifest = directory / "CHECKSUMS.sha256"
    manifest.write_text(manifest.read_text().replace("tiny.gguf", "other.gguf"))


async def _responses(home: Path) -> tuple[dict[str, object], dict[str, object], object]:
    settings = Settings(server={"default_model": MODEL})
    token = KeyStore(home).create("caller", {INFERENCE})  # a caller, not an operator
    app, _ = fake_app(settings, home)
    async with app.router.lifespan_context(app):
        await app.state.registry.wait_loaded()
        async with (
            client(app, "10.0.0.9", token) as caller,
            client(app, "127.0.0.1") as operator,
        ):
            ready = await caller.get("/ready")
            assert ready.status_code == 503
            chat = await caller.post(
                "/v1/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]}
            )
            assert chat.status_code == 503
            status = await operator.get("/api/status")
            assert status.status_code == 200
            return ready.json(), chat.json(), status.json()


@pytest.mark.parametrize("damage", [_flip_a_byte, _truncate, _delete_weights, _edit_the_manifest])
def test_a_model_that_failed_verification_points_operators_to_status(
    home: Path, damage: Callable[[Path], None]
) -> None:
    damage(store_model(home))
    ready, chat, status = asyncio.run(_responses(home))

    assert ready["ready"] is False
    assert POINTER in str(ready["detail"])
    error = chat["error"]
    assert isinstance(error, dict)
    assert error["code"] == "model_unavailable"
    assert POINTER in error["message"]
    for public in (ready, chat):  # the reason names server files: it stays off these bodies
        assert str(home) not in str(public)
        assert "tiny.gguf" not in str(public)
    assert "tiny.gguf" in str(status) or "CHECKSUMS" in str(status)  # where operators look
