"""Keys and signed model directories.

``$BASTION_HOME/keys/`` holds the server's own signing key (``signing.key``, 0600, minisign
format) and the signers it trusts (``trusted/*.pub``). Verifying a model directory checks the
signature over ``CHECKSUMS.sha256`` first and only then the files against it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bastion.integrity.manifest import MANIFEST_NAME, Manifest, ManifestError, parse
from bastion.integrity.signing import PublicKey, SecretKey, SignatureError, verify
from bastion.integrity.verify import SIGNATURE_NAME, Report, verify_directory
from bastion.settings import ensure_dir

log = logging.getLogger(__name__)
TRUST_PREFIX = "bastion-manifest"


class IntegrityError(Exception):
    """A model directory failed verification; ``problems`` names every file involved."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.problems = problems or []


@dataclass(frozen=True)
class Provenance:
    manifest: Manifest
    root_digest: str
    signer: str | None
    """Key id of the trusted signer, or None when signatures are not required and absent."""


def keys_dir(home: Path) -> Path:
    return home / "keys"


def write_private(path: Path, text: str) -> None:
    ensure_dir(path.parent)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.touch(mode=0o600)
    tmp.chmod(0o600)
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def generate_key(home: Path, *, force: bool = False) -> SecretKey:
    """Create the server's signing key (0600) and trust its public half."""
    path = keys_dir(home) / "signing.key"
    if path.exists() and not force:
        raise IntegrityError(f"{path} already exists; pass --force to replace it")
    key = SecretKey.generate()
    write_private(path, key.dump())
    (keys_dir(home) / "signing.pub").write_text(key.public.dump(), encoding="utf-8")
    trust(home, key.public)
    return key


def local_key(home: Path) -> SecretKey:
    """The server's signing key, created on first use."""
    path = keys_dir(home) / "signing.key"
    if not path.exists():
        log.info("creating this server's signing key in %s", path.parent)
        return generate_key(home)
    return SecretKey.parse(path.read_text(encoding="utf-8"))


def trust(home: Path, key: PublicKey) -> Path:
    directory = ensure_dir(keys_dir(home) / "trusted")
    path = directory / f"{key.id_text}.pub"
    path.write_text(key.dump(), encoding="utf-8")
    return path


def trusted_keys(home: Path) -> list[PublicKey]:
    keys = []
    for path in sorted((keys_dir(home) / "trusted").glob("*.pub")):
        try:
            keys.append(PublicKey.parse(path.read_text(encoding="utf-8")))
        except (OSError, SignatureError) as exc:
            log.warning("ignoring trusted key %s: %s", path.name, exc)
    return keys


def sign_directory(directory: Path, key: SecretKey) -> Path:
    """Sign ``directory``'s manifest; the trusted comment carries its root digest."""
    manifest_bytes = (directory / MANIFEST_NAME).read_bytes()
    root = parse(manifest_bytes.decode("utf-8")).root_digest()
    signature = key.sign(
        manifest_bytes,
        trusted_comment=f"{TRUST_PREFIX} root={root}",
        untrusted_comment=f"bastion signature of {directory.name}",
    )
    path = directory / SIGNATURE_NAME
    path.write_text(signature, encoding="utf-8")
    return path


def system_fingerprint(root_digest: str, signer: str | None) -> str:
    """What every answer carries as ``system_fingerprint``: the manifest's root digest (which
    pins every file's SHA-256, the weights' included) and the key that signed it."""
    return f"sha256:{root_digest}/key:{signer or 'unsigned'}"


def check_signature(
    directory: Path, trusted: list[PublicKey], *, require_signature: bool
) -> Provenance:
    """The manifest and its signature only, no file hashed: what the directory claims and
    who vouches for it. ``check_directory`` also holds the files to it."""
    try:
        manifest_bytes = (directory / MANIFEST_NAME).read_bytes()
        manifest = parse(manifest_bytes.decode("utf-8"))
    except FileNotFoundError:
        raise IntegrityError(f"{MANIFEST_NAME} is missing in {directory}") from None
    except (ManifestError, UnicodeDecodeError) as exc:
        raise IntegrityError(f"{directory / MANIFEST_NAME}: {exc}") from None
    signer = None
    sig_path = directory / SIGNATURE_NAME
    if sig_path.exists() or require_signature:
        if not sig_path.exists():
            raise IntegrityError(
                f"{sig_path.name} is missing in {directory} and integrity.require_signature is on"
            )
        try:
            verified = verify(manifest_bytes, sig_path.read_text(encoding="utf-8"), trusted)
        except SignatureError as exc:
            raise IntegrityError(f"{directory / MANIFEST_NAME}: {exc}") from None
        signer = verified.key.id_text
    return Provenance(manifest, manifest.root_digest(), signer)


def check_directory(
    directory: Path,
    trusted: list[PublicKey],
    *,
    require_signature: bool,
    files: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> Provenance:
    """Signature first, then every file; IntegrityError naming what failed."""
    provenance = check_signature(directory, trusted, require_signature=require_signature)
    manifest = provenance.manifest
    report: Report = verify_directory(directory, manifest, files=files, progress=progress)
    if not report.ok:
        problems = report.problems()
        raise IntegrityError(
            f"{directory.name}: {problems[0]}"
            + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""),
            problems,
        )
    return provenance
