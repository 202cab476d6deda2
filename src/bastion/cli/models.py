"""``bastion models``: the catalog and the store from the command line."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer
import yaml
from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn
from rich.table import Table

from bastion.catalog import Catalog, ModelDef, load_catalog
from bastion.cli.help import PlainCommand, new_app
from bastion.errors import BastionError, InvalidParameterError
from bastion.integrity.manifest import MANIFEST_NAME, ManifestError
from bastion.integrity.trust import (
    IntegrityError,
    check_signature,
    system_fingerprint,
    trusted_keys,
)
from bastion.settings import Settings, ensure_dir, home_dir, load_settings
from bastion.store.package import local_weights_name, model_dir, verify_local
from bastion.store.pull import (
    DamagedModelError,
    PullResult,
    apply_offline,
    disk_usage,
    pull,
    remove,
    state,
)

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
    provenance = _provenance(home, model)
    if provenance:
        entry["provenance"] = provenance
    # YAML a script can read: no wrapping at the terminal's width, no markup.
    out.print(
        yaml.safe_dump(entry, sort_keys=False).rstrip(),
        soft_wrap=True,
        markup=False,
        highlight=False,
    )


def _provenance(home: Path, model: ModelDef) -> dict[str, Any]:
    """The digests as recorded in the store's signed manifest (no file hashed here: `models
    list` and `integrity check` hash them), labelled as /v1/models labels them."""
    directory = model_dir(home, model.name)
    if not (directory / MANIFEST_NAME).is_file():
        return {}
    try:
        recorded = check_signature(directory, trusted_keys(home), require_signature=False)
    except IntegrityError as exc:
        return {"error": exc.message}
    name = local_weights_name(model) if model.local_path is not None else model.weights_name
    return {
        "weights": name,
        "digest": f"sha256:{recorded.manifest.entries.get(name or '', '?')}",
        "manifest_digest": f"sha256:{recorded.root_digest}",
        "signer": recorded.signer,
        "system_fingerprint": system_fingerprint(recorded.root_digest, recorded.signer),
    }


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
            help="You vouch for the bytes: sign a package model that pins no sha256, or record "
            "the new digest of a local model whose files changed.",
        ),
    ] = False,
) -> None:
    """Fetch NAME's files into the store and write CHECKSUMS.sha256 (resumes partial URLs).
    A model already in the store is verified first; files that fail are fetched again."""
    settings, home, catalog = _open()
    try:
        model = catalog.get(name)
    except BastionError as exc:
        raise _fail(exc, 2) from None
    columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=err, transient=True) as progress:
        task = progress.add_task(name, total=None)
        try:
            result = pull(
                home,
                model,
                settings.store,
                lambda have, total: progress.update(task, completed=have, total=total),
                trust=trust,
            )
        except DamagedModelError as exc:
            failed = _fail(exc)
            if not catalog.is_builtin(name):
                # `rm` also drops an operator's own entry: say so before they run it
                err.print(_RM_DROPS_ENTRY.format(name=name), markup=False, soft_wrap=True)
            raise failed from None
        except BastionError as exc:
            raise _fail(exc) from None
    out.print(_pulled_message(name, result), markup=False, highlight=False, soft_wrap=True)


_RM_DROPS_ENTRY = (
    "bastion: note: `bastion models rm {name}` also deletes its catalog entry; "
    "add it again with `bastion models add` before pulling"
)


def _pulled_message(name: str, result: PullResult) -> str:
    where = result.directory
    if result.outcome == "verified":
        return f"{name}: already pulled, verified ({where})"
    if result.outcome == "recorded":
        if result.damaged:
            return f"recorded the new digest of {name} in {where} ({'; '.join(result.damaged)})"
        return f"pulled {name}: recorded its digest in {where}, verified"
    if result.outcome == "repaired":
        return (
            f"repaired {name}: fetched again what failed verification "
            f"({'; '.join(result.damaged)}); pulled into {where}, verified"
        )
    return f"pulled {name} into {where}, verified"


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


# ---- verbs that talk to the running server -------------------------------------------------


def _server(
    action: str, name: str, url: str | None, api_key: str | None, timeout: float
) -> dict[str, Any]:
    """POST /api/models/NAME/ACTION to the running server; its error, or a clear one when
    no server answers, ends the command."""
    import httpx  # noqa: PLC0415 - only the verbs that talk to a server need it

    settings = load_settings()
    base = (url or f"http://127.0.0.1:{settings.server.port}").rstrip("/")
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    target = f"{base}/api/models/{quote(name, safe='')}/{action}"
    try:
        response = httpx.post(target, headers=headers, timeout=timeout)
    except httpx.ConnectError:
        raise _fail(
            InvalidParameterError(
                f"no bastion server answers at {base}: start one with `bastion serve`, or "
                "point --url (or BASTION_BASE_URL) at it"
            )
        ) from None
    except httpx.TimeoutException:
        raise _fail(InvalidParameterError(f"{base} did not answer within {timeout:g}s")) from None
    except httpx.HTTPError as exc:
        raise _fail(InvalidParameterError(f"talking to {base}: {type(exc).__name__}")) from None
    try:
        body: Any = response.json()
    except ValueError:
        body = None
    if not response.is_success:
        message = f"the server answered {response.status_code}"
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            message += f": {body['error'].get('message')}"
        if response.status_code == 401:
            message += " (set BASTION_API_KEY to an admin key)"
        raise _fail(InvalidParameterError(message))
    if not isinstance(body, dict):
        raise _fail(InvalidParameterError(f"{base} did not answer like a bastion server"))
    return body


ServerUrl = Annotated[
    str | None,
    typer.Option(
        "--url",
        envvar="BASTION_BASE_URL",
        help="The running server (default http://127.0.0.1:<server.port>).",
    ),
]
ApiKey = Annotated[
    str | None,
    typer.Option(
        "--api-key",
        envvar="BASTION_API_KEY",
        hidden=True,
        help="An admin key; prefer the BASTION_API_KEY environment variable.",
    ),
]


@app.command("load", cls=PlainCommand)
def load_command(name: str, url: ServerUrl = None, api_key: ApiKey = None) -> None:
    """Load a model in the running server now (idle models make room; busy ones are left:
    use POST /api/swap to drain them). Needs the admin scope (loopback has it by default)."""
    timeout = load_settings().router.load_timeout + 60
    result = _server("load", name, url, api_key, timeout)
    loaded, unloaded = result.get("loaded"), result.get("unloaded") or []
    if not loaded:
        out.print(f"{name} is already loaded ({result.get('state')})", highlight=False)
        return
    gone = ", ".join(str(u.get("model")) for u in unloaded)
    out.print(
        f"loaded {name} in {loaded.get('seconds')}s" + (f" (unloaded {gone})" if gone else ""),
        highlight=False,
    )


@app.command("unload", cls=PlainCommand)
def unload_command(name: str, url: ServerUrl = None, api_key: ApiKey = None) -> None:
    """Unload a model from the running server now (refused while it has requests). It loads
    again on its next request."""
    result = _server("unload", name, url, api_key, 120.0)
    unloaded = result.get("unloaded") or []
    if not unloaded:
        out.print(f"{name} was not loaded", highlight=False)
        return
    out.print(f"unloaded {name} in {unloaded[0].get('seconds')}s", highlight=False)
