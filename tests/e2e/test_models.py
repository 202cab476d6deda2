"""The model catalog over HTTP, and serving the second built-in model offline."""

from __future__ import annotations

import functools
import hashlib
import http.server
import threading
from pathlib import Path

import httpx
import openai
import pytest
import yaml

from tests.conftest import bastion_models
from tests.e2e.conftest import Server, start_server

pytestmark = pytest.mark.e2e


def test_api_models_lists_the_catalog_with_state(server: Server) -> None:
    body = httpx.get(f"{server.base_url}/api/models").json()
    by_name = {m["name"]: m for m in body["data"]}
    assert by_name["smollm2-135m-instruct"]["state"] == "pulled"
    assert by_name["gemma3-270m"]["source"] == "package"


def test_post_validates_the_whole_entry_before_persisting(
    server: Server, shared_home: Path
) -> None:
    bad = httpx.post(
        f"{server.base_url}/api/models", json={"name": "Bad Name", "url": {"url": "ftp://x/m.gguf"}}
    )
    assert bad.status_code == 422
    message = bad.json()["error"]["message"]
    for field in ("name", "url"):
        assert field in message
    catalog = shared_home / "catalog.yaml"
    assert "Bad Name" not in (catalog.read_text() if catalog.exists() else "")
    good = httpx.post(
        f"{server.base_url}/api/models",
        json={
            "name": "api-added",
            "url": {"url": "https://example.org/m.gguf", "sha256": "ab" * 32},
        },
    )
    assert good.status_code == 201
    assert good.json()["state"] == "not pulled"
    assert "api-added" in catalog.read_text()
    deleted = httpx.delete(f"{server.base_url}/api/models/api-added")
    assert deleted.status_code == 200
    assert "api-added" not in catalog.read_text()


def test_delete_of_an_unknown_model_is_404(server: Server) -> None:
    missing = httpx.delete(f"{server.base_url}/api/models/no-such-model")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "model_not_found"


def test_delete_refuses_local_models_with_409(shared_home: Path, tmp_path: Path) -> None:
    root = tmp_path / "mine"
    root.mkdir()
    (root / "w.gguf").write_bytes(b"GGUF")
    server = start_server(shared_home, env={"BASTION_STORE__ALLOWED_ROOTS": f'["{tmp_path}"]'})
    try:
        added = httpx.post(
            f"{server.base_url}/api/models", json={"name": "mine-local", "local_path": str(root)}
        )
        assert added.status_code == 201, added.text
        refused = httpx.delete(f"{server.base_url}/api/models/mine-local")
        assert refused.status_code == 409
        assert "never deletes" in refused.json()["error"]["message"]
        assert (root / "w.gguf").exists()
    finally:
        server.stop()
        catalog = shared_home / "catalog.yaml"
        data = yaml.safe_load(catalog.read_text())
        data["models"].pop("mine-local", None)
        catalog.write_text(yaml.safe_dump(data))


def test_pull_then_serve_gemma_offline_completion_only(shared_home: Path) -> None:
    """A base model completes; chat is refused by name instead of answering in ChatML."""
    env = {"BASTION_HOME": str(shared_home), "HF_HUB_OFFLINE": "1"}
    pulled = bastion_models(env, "pull", "gemma3-270m")
    assert pulled.returncode == 0, pulled.stderr
    server = start_server(shared_home, "--model", "gemma3-270m")
    try:
        models = httpx.get(f"{server.v1}/models").json()["data"]
        assert [m["id"] for m in models] == ["gemma3-270m", "smollm2-135m-instruct"]
        assert models[0]["capabilities"]["chat"] is False
        assert models[1]["state"] == "stopped"  # not preloaded: it loads on demand
        client = server.client(timeout=120)
        reply = client.completions.create(
            model="gemma3-270m", prompt="The capital of France is", max_tokens=8, temperature=0
        )
        assert reply.choices[0].text.strip()
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as refused:
                client.chat.completions.create(
                    model="gemma3-270m",
                    messages=[{"role": "user", "content": "What is 2+2?"}],
                    max_tokens=8,
                    stream=stream,
                )
            error = refused.value.body
            assert isinstance(error, dict)
            assert (error["code"], error["param"]) == ("model_not_chat", "model")
            assert "gemma3-270m" in error["message"]
            assert "/v1/completions" in error["message"]
        assert "gemma3-270m is completion only (the catalog marks it" in server.log_text()
    finally:
        server.stop()


def test_the_chat_model_still_chats(server: Server) -> None:
    card = httpx.get(f"{server.v1}/models").json()["data"][0]
    assert card["capabilities"] == {"chat": True, "completion": True}
    reply = server.client(timeout=120).chat.completions.create(
        model="smollm2-135m-instruct",
        messages=[{"role": "user", "content": "What is 2+2? Answer with the number."}],
        max_tokens=8,
        temperature=0,
    )
    text = reply.choices[0].message.content or ""
    assert "<|im_" not in text
    assert text.strip()


def test_a_url_model_pulls_from_a_mirror_and_serves(
    shared_home: Path, smollm2_file: Path, tmp_path: Path
) -> None:
    """A mirror on this machine stands in for a remote host (allowlisted, plain http)."""
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(smollm2_file.parent)
    )
    mirror = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=mirror.serve_forever, daemon=True).start()
    home = tmp_path / "home"
    env = {
        "BASTION_HOME": str(home),
        "BASTION_STORE__ALLOW_HTTP": "true",
        # host:port as the URL writes it: the allowlist is never matched by address alone
        "BASTION_STORE__URL_ALLOWLIST": f'["127.0.0.1:{mirror.server_address[1]}"]',
    }
    digest = hashlib.sha256(smollm2_file.read_bytes()).hexdigest()
    url = f"http://127.0.0.1:{mirror.server_address[1]}/{smollm2_file.name}"
    try:
        for args in (["add", "mirrored", "--url", url, "--sha256", digest], ["pull", "mirrored"]):
            done = bastion_models(env, *args)
            assert done.returncode == 0, done.stderr
    finally:
        mirror.shutdown()
        mirror.server_close()
    server = start_server(home, "--model", "mirrored", env=env)
    try:
        models = httpx.get(f"{server.v1}/models").json()["data"]
        assert models[0]["id"] == "mirrored"
        assert models[0]["digest"] == f"sha256:{digest}"
    finally:
        server.stop()


def test_a_local_model_is_served_in_place_with_its_catalog_settings(
    smollm2_file: Path, tmp_path: Path
) -> None:
    """Digest recorded by pull, directory untouched, ctx and chat template from the entry."""
    root = tmp_path / "local-models"
    (root / "mine").mkdir(parents=True)
    (root / "mine" / "tuned.gguf").write_bytes(smollm2_file.read_bytes())
    (root / "mine" / "chat.jinja").write_text("{{ messages[-1]['content'] }}")
    entry = tmp_path / "entry.yaml"
    entry.write_text(
        yaml.safe_dump(
            {
                "name": "tuned",
                "local_path": str(root / "mine"),
                "file": "tuned.gguf",
                "ctx": 512,
                "chat_template": "chat.jinja",
            }
        )
    )
    home = tmp_path / "home"
    env = {"BASTION_HOME": str(home), "BASTION_STORE__ALLOWED_ROOTS": f'["{root}"]'}
    for args in (["add", "--from-file", str(entry)], ["pull", "tuned"]):
        done = bastion_models(env, *args)
        assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (root / "mine").iterdir()) == ["chat.jinja", "tuned.gguf"]
    server = start_server(home, "--model", "tuned", env=env)
    try:
        card = httpx.get(f"{server.v1}/models").json()["data"][0]
        assert (card["id"], card["context_length"]) == ("tuned", 512)
        reply = server.client(timeout=60).chat.completions.create(
            model="tuned", max_tokens=3, messages=[{"role": "user", "content": "Hello"}]
        )
        assert reply.usage is not None
        assert reply.usage.prompt_tokens <= 2  # the entry's bare template, not the GGUF's
    finally:
        server.stop()
