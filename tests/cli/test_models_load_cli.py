"""``bastion models load|unload`` against a running server (real HTTP on a loopback port,
over the shared fake engine), and a clear error when no server answers."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from bastion.settings import Settings
from tests.api.stub_app import MODEL, fake_app, store_model
from tests.conftest import bastion_models
from tests.fakes import FakeEngine

OTHER = "other"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path, list[FakeEngine]]]:
    """The app over fake engines, served on a free loopback port in a thread."""
    home = tmp_path / "home"
    store_model(home)
    store_model(home, OTHER, b"other stand-in weights")
    app, engines = fake_app(Settings(server={"default_model": MODEL}), home)
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", lifespan="on")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=lambda: asyncio.run(running.serve([listener])))
    thread.start()
    try:
        for _ in range(500):
            if running.started:
                break
            threading.Event().wait(0.01)
        assert running.started
        yield f"http://127.0.0.1:{port}", home, engines
    finally:
        running.should_exit = True
        thread.join(30)
        listener.close()


def test_load_and_unload_talk_to_the_running_server(
    server: tuple[str, Path, list[FakeEngine]],
) -> None:
    url, home, engines = server
    env = {"BASTION_HOME": str(home), "BASTION_BASE_URL": url}
    loaded = bastion_models(env, "load", OTHER)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.startswith(f"loaded {OTHER} in ")
    assert [e.spec.name for e in engines][-1] == OTHER
    again = bastion_models(env, "load", OTHER)
    assert again.stdout.strip() == f"{OTHER} is already loaded (ready)"
    unloaded = bastion_models(env, "unload", OTHER, "--url", url)
    assert unloaded.returncode == 0, unloaded.stderr
    assert unloaded.stdout.startswith(f"unloaded {OTHER} in ")
    assert engines[-1].lifecycle.state.value == "stopped"
    unknown = bastion_models(env, "load", "nope")
    assert unknown.returncode == 1
    assert unknown.stderr.startswith("bastion: the server answered 404: ")


def test_no_server_is_a_clear_error(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {"BASTION_HOME": str(tmp_path), "BASTION_BASE_URL": f"http://127.0.0.1:{port}"}
    result = bastion_models(env, "unload", MODEL)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"bastion: no bastion server answers at http://127.0.0.1:{port}"
    )
    assert "Traceback" not in result.stderr
