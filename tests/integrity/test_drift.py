"""Environment drift: packages and *.pth files against the frozen lock."""

from __future__ import annotations

from pathlib import Path

from bastion.integrity.drift import EnvSnapshot, compare, snapshot


def test_no_drift_when_nothing_changed(tmp_path: Path) -> None:
    (tmp_path / "a.pth").write_text("/some/path\n")
    lock = snapshot(("numpy==2.0", "pip==24"), [tmp_path])
    assert compare(EnvSnapshot.from_json(lock.to_json()), snapshot(lock.packages, [tmp_path])) == []


def test_every_kind_of_drift_is_named(tmp_path: Path) -> None:
    (tmp_path / "a.pth").write_text("/some/path\n")
    (tmp_path / "gone.pth").write_text("x\n")
    lock = snapshot(("numpy==2.0", "requests==2.31"), [tmp_path])
    (tmp_path / "a.pth").write_text("import os; os.system('evil')\n")
    (tmp_path / "gone.pth").unlink()
    (tmp_path / "new.pth").write_text("import evil\n")
    problems = compare(lock, snapshot(("numpy==2.1", "requests==2.31"), [tmp_path]))
    text = "\n".join(problems)
    assert "package added or changed: numpy==2.1" in text
    assert "package removed or changed: numpy==2.0" in text
    assert f".pth file changed: {tmp_path / 'a.pth'}" in text
    assert f"new .pth file: {tmp_path / 'new.pth'}" in text
    assert f".pth file removed: {tmp_path / 'gone.pth'}" in text


def test_deployed_files_are_compared_with_their_canonical_copies(tmp_path: Path) -> None:
    import json  # noqa: PLC0415

    from bastion.integrity.drift import deployed_drift  # noqa: PLC0415

    canonical = tmp_path / "bastion.service.canonical"
    deployed = tmp_path / "bastion.service"
    canonical.write_text("[Service]\nExecStart=/usr/bin/bastion serve\n")
    deployed.write_text(canonical.read_text())
    registry = tmp_path / "deployed.json"
    registry.write_text(json.dumps([{"path": str(deployed), "canonical": str(canonical)}]))
    assert deployed_drift(registry) == []
    deployed.write_text("[Service]\nExecStart=/tmp/evil\n")
    assert deployed_drift(registry) == [
        f"deployed file differs from its canonical copy: {deployed}"
    ]
    deployed.unlink()
    assert deployed_drift(registry) == [f"deployed file missing: {deployed}"]
    assert deployed_drift(tmp_path / "none.json") == []
