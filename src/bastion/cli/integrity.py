"""``bastion integrity``: models, the Python environment, deployed files. Exit 1 on drift."""

from __future__ import annotations

import datetime as dt
import json
import syslog
from pathlib import Path
from typing import Annotated, Any

import typer

from bastion.catalog import load_catalog
from bastion.cli.help import PlainCommand, new_app
from bastion.errors import BastionError
from bastion.integrity.drift import (
    DEPLOYED_NAME,
    LOCK_NAME,
    EnvSnapshot,
    compare,
    deployed_drift,
    snapshot,
)
from bastion.settings import ensure_dir, home_dir, load_settings
from bastion.store.package import verify_local
from bastion.store.pull import state

app = new_app("Check models and the environment for drift.")


@app.command(cls=PlainCommand)
def freeze() -> None:
    """Record the Python environment (pip freeze --all, *.pth digests) as the reference."""
    home = ensure_dir(home_dir())
    path = ensure_dir(home / "integrity") / LOCK_NAME
    path.write_text(snapshot().to_json(), encoding="utf-8")
    typer.echo(f"wrote {path}")


@app.command(cls=PlainCommand)
def check(
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable.")] = False,
) -> None:
    """Verify every pulled model, the environment against its lock, and deployed files."""
    settings = load_settings()
    home = ensure_dir(home_dir())
    report: dict[str, Any] = {
        "time": dt.datetime.now(tz=dt.UTC).isoformat(),
        "models": {},
        "environment": [],
        "deployed_files": [],
        "notes": [],
    }
    catalog = load_catalog(home, settings.store.allowed_roots)
    for model in catalog:
        if state(home, model) not in ("pulled", "local"):
            continue
        try:
            local = verify_local(
                home, model, require_signature=settings.integrity.require_signature
            )
            report["models"][model.name] = {"ok": True, "signer": local.signer}
        except BastionError as exc:
            report["models"][model.name] = {"ok": False, "problem": exc.message}
    lock = home / "integrity" / LOCK_NAME
    if lock.is_file():
        report["environment"] = compare(EnvSnapshot.from_json(lock.read_text("utf-8")), snapshot())
    else:
        report["notes"].append("environment not checked: run `bastion integrity freeze` first")
    registry = home / "integrity" / DEPLOYED_NAME
    report["deployed_files"] = deployed_drift(registry)
    if not registry.is_file():
        # No command writes this list yet: say how to write it by hand.
        report["notes"].append(
            f"deployed files not checked: none registered; to watch copies you deploy (a "
            f"systemd unit, bastion.yaml), list them in {registry} as "
            '[{"path": "<deployed copy>", "canonical": "<reference copy>"}]'
        )
    failures = (
        [f"model {n}: {m['problem']}" for n, m in report["models"].items() if not m["ok"]]
        + [f"environment: {p}" for p in report["environment"]]
        + [f"deployed: {p}" for p in report["deployed_files"]]
    )
    report["ok"] = not failures
    if failures:
        _alert(home, failures)
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        for name, result in report["models"].items():
            typer.echo(
                f"{'ok  ' if result['ok'] else 'FAIL'} model {name}"
                + ("" if result["ok"] else f": {result['problem']}")
            )
        for problem in report["environment"]:
            typer.echo(f"FAIL environment: {problem}")
        for problem in report["deployed_files"]:
            typer.echo(f"FAIL deployed: {problem}")
        for note in report["notes"]:
            typer.echo(f"note {note}")
    raise typer.Exit(0 if report["ok"] else 1)


def _alert(home: Path, failures: list[str]) -> None:
    """Failures go to syslog (local0, alert) and to $BASTION_HOME/logs/integrity.log."""
    syslog.openlog("bastion", syslog.LOG_PID, syslog.LOG_LOCAL0)
    for failure in failures:
        syslog.syslog(syslog.LOG_ALERT, f"integrity: {failure}")
    syslog.closelog()
    logs = ensure_dir(home / "logs")
    with (logs / "integrity.log").open("a", encoding="utf-8") as handle:
        stamp = dt.datetime.now(tz=dt.UTC).isoformat()
        for failure in failures:
            handle.write(json.dumps({"time": stamp, "failure": failure}) + "\n")
