"""A private CA for this server: EC P-256, a server certificate, client certificates for
mutual TLS, and a certificate revocation list (``tls/crl.pem``, signed by the CA) that the
HTTPS listener checks on every handshake. Private keys are written 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import re
import ssl
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.errors import ConfigError
from bastion.integrity.trust import write_private
from bastion.security.names import name_path
from bastion.settings import ensure_dir

log = logging.getLogger(__name__)
CA_YEARS = 5
LEAF_DAYS = 397
# Client names that would read as the CA's, the server's or the revocation list's files.
RESERVED_CERT_NAMES = frozenset({"ca", "server", "crl"})
LOOPBACK_SANS = ("localhost", "127.0.0.1", "::1")
WILDCARD_HOSTS = frozenset({"0.0.0.0", "::", "[::]", ""})
_PEM_CRL = re.compile(rb"-----BEGIN X509 CRL-----.+?-----END X509 CRL-----", re.DOTALL)


class CertificateError(ValueError):
    pass


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path
    revoked_replaced: bool = False
    """A client certificate of this CA that ``force`` replaced went onto the list."""
    sans: tuple[str, ...] = ()
    """A server certificate's subject alternative names, as written."""


@dataclass(frozen=True)
class CertInfo:
    file: str
    """Path relative to ``tls/``."""
    cn: str
    expires: str
    revoked: bool


def tls_dir(home: Path) -> Path:
    return home / "tls"


def crl_path(home: Path) -> Path:
    return tls_dir(home) / "crl.pem"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bastion"),
        ]
    )


def _client_path(home: Path, cn: str, suffix: str) -> Path:
    return name_path(
        tls_dir(home) / "clients",
        cn,
        kind="certificate",
        suffix=suffix,
        reserved=RESERVED_CERT_NAMES,
    )


def _refuse_overwrite(paths: tuple[Path, ...], force: bool) -> None:
    existing = [str(p) for p in paths if p.exists() or p.is_symlink()]
    if existing and not force:
        raise CertificateError(f"{' and '.join(existing)} exists; pass --force to replace it")


def _write_public(path: Path, data: bytes) -> None:
    """Written whole or not at all: a reader never sees half a certificate or list."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.write_bytes(data)
    tmp.replace(path)


def _write(
    cert_path: Path, key_path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> Issued:
    ensure_dir(cert_path.parent)
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    _write_public(cert_path, cert.public_bytes(serialization.Encoding.PEM))
    return Issued(cert_path, key_path)


def init_ca(home: Path, *, force: bool = False) -> Issued:
    """The CA and an empty revocation list (certificates of a replaced CA stop verifying)."""
    directory = ensure_dir(tls_dir(home))
    cert_path, key_path = directory / "ca.crt", directory / "ca.key"
    _refuse_overwrite((key_path,), force)
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(tz=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("bastion CA"))
        .issuer_name(_name("bastion CA"))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=365 * CA_YEARS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    issued = _write(cert_path, key_path, cert, key)
    _write_crl(home, cert, key, [], number=1)
    return issued


def _load_ca(home: Path) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    directory = tls_dir(home)
    try:
        cert = x509.load_pem_x509_certificate((directory / "ca.crt").read_bytes())
        key = serialization.load_pem_private_key((directory / "ca.key").read_bytes(), None)
    except FileNotFoundError:
        raise CertificateError("no CA yet: run `bastion certs init`") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise CertificateError("the CA key is not an EC key")
    return cert, key


def issue(
    home: Path,
    cn: str,
    *,
    server: bool = False,
    sans: list[str] | None = None,
    hosts: list[str] | None = None,
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
    force: bool = False,
) -> Issued:
    """A client certificate (CN is the caller's identity and its file name) or, with
    ``server``, the server's (``tls/server.crt``; its CN is not a file name; names as
    ``server_sans`` lists them, ``hosts`` being what the server binds). Existing files
    are replaced only with ``force``; a replaced client certificate is revoked first, since
    its file is the only record of its serial and ``revoke`` could never reach it again."""
    if server:
        paths = (tls_dir(home) / "server.crt", tls_dir(home) / "server.key")
    else:
        paths = (_client_path(home, cn, ".crt"), _client_path(home, cn, ".key"))
    _refuse_overwrite(paths, force)
    ca_cert, ca_key = _load_ca(home)
    replaced = None if server else _ours_or_none(paths[0], ca_cert)
    if replaced is not None:
        _add_to_crl(home, ca_cert, ca_key, replaced.serial_number)
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or (dt.datetime.now(tz=dt.UTC) - dt.timedelta(minutes=5))
    usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(cn))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    )
    written: tuple[str, ...] = ()
    if server:
        written = tuple(server_sans(cn, sans or [], hosts))
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in written]), critical=False
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    issued = _write(*paths, cert, key)
    return Issued(issued.cert, issued.key, revoked_replaced=replaced is not None, sans=written)


def server_sans(cn: str, sans: list[str], hosts: list[str] | None = None) -> list[str]:
    """A server certificate's names, in order and once each: the CN (when it can be a host
    name), ``sans``, the loopback names, and the non-wildcard ``hosts`` the server binds."""
    wanted = [cn, *sans, *LOOPBACK_SANS, *(hosts or [])]
    out: list[str] = []
    for raw in wanted:
        name = _san_text(raw)
        if name and name not in WILDCARD_HOSTS and " " not in name and name not in out:
            out.append(name)
    return out


def _san_text(value: str) -> str:
    text = value.strip().strip("[]").lower()
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        return text.rstrip(".")


def _general_name(name: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def certificate_sans(certfile: Path) -> list[str]:
    """The DNS names and IP addresses a certificate is valid for (empty if it has none)."""
    cert = x509.load_pem_x509_certificate(certfile.read_bytes())
    try:
        ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    ips = [str(ip) for ip in ext.get_values_for_type(x509.IPAddress)]
    return [*(n.lower() for n in ext.get_values_for_type(x509.DNSName)), *ips]


def uncovered(names: list[str], sans: list[str]) -> list[str]:
    """Those of ``names`` (host names or addresses; wildcards skipped) that no SAN covers,
    matching as TLS clients do: exact, or one leftmost label under ``*.``."""
    out = []
    for raw in names:
        name = _san_text(raw)
        if not name or name in WILDCARD_HOSTS or name in out:
            continue
        if not any(_covers(san, name) for san in sans):
            out.append(name)
    return out


def _covers(san: str, name: str) -> bool:
    san = _san_text(san)
    if san == name:
        return True
    if san.startswith("*.") and "." in name:
        return name.split(".", 1)[1] == san[2:]
    return False


def _client_cert(path: Path, cn: str, ca_cert: x509.Certificate) -> x509.Certificate:
    try:
        cert = x509.load_pem_x509_certificate(path.read_bytes())
    except FileNotFoundError:
        raise CertificateError(f"no client certificate named '{cn}' ({path})") from None
    except ValueError:
        raise CertificateError(f"{path} is not a PEM certificate") from None
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise CertificateError(f"{path} was not issued by this CA") from None
    return cert


def _ours_or_none(path: Path, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """The certificate at ``path`` if this CA issued it (only then can its list revoke it)."""
    try:
        return _client_cert(path, path.stem, ca_cert)
    except CertificateError:
        return None


def _load_crl(home: Path, ca_cert: x509.Certificate) -> x509.CertificateRevocationList | None:
    """The CA's revocation list; None if there is none. One not signed by this CA is an
    error, never silently replaced (it would drop every earlier revocation)."""
    try:
        crl = x509.load_pem_x509_crl(crl_path(home).read_bytes())
    except FileNotFoundError:
        return None
    except ValueError:
        raise CertificateError(f"{crl_path(home)} is not a PEM revocation list") from None
    if crl.issuer != ca_cert.subject or not crl.is_signature_valid(ca_cert.public_key()):  # type: ignore[arg-type]
        raise CertificateError(f"{crl_path(home)} is not signed by this CA")
    return crl


def _crl_number(crl: x509.CertificateRevocationList) -> int:
    try:
        return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        return 0


def _write_crl(
    home: Path,
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    revoked: list[x509.RevokedCertificate],
    *,
    number: int,
) -> None:
    now = dt.datetime.now(tz=dt.UTC)
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca_cert.subject)
        .last_update(now - dt.timedelta(minutes=5))
        # OpenSSL refuses every client once nextUpdate passes; the list lives beside the
        # server rather than being fetched, so it stays current until the CA itself expires.
        .next_update(ca_cert.not_valid_after_utc)
        .add_extension(x509.CRLNumber(number), critical=False)
    )
    for entry in revoked:
        builder = builder.add_revoked_certificate(entry)
    crl = builder.sign(ca_key, hashes.SHA256())
    _write_public(crl_path(home), crl.public_bytes(serialization.Encoding.PEM))


def revoke(home: Path, cn: str) -> bool:
    """Add the client certificate of ``cn`` to the CA's revocation list. False if it was
    already there. The HTTPS listener picks the new list up on the next handshake."""
    cert_path = _client_path(home, cn, ".crt")
    ca_cert, ca_key = _load_ca(home)
    cert = _client_cert(cert_path, cn, ca_cert)
    return _add_to_crl(home, ca_cert, ca_key, cert.serial_number)


def _add_to_crl(
    home: Path, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey, serial: int
) -> bool:
    crl = _load_crl(home, ca_cert)
    entries = list(crl) if crl is not None else []
    if any(e.serial_number == serial for e in entries):
        return False
    entries.append(
        x509.RevokedCertificateBuilder()
        .serial_number(serial)
        .revocation_date(dt.datetime.now(tz=dt.UTC))
        .build()
    )
    number = _crl_number(crl) + 1 if crl is not None else 1
    _write_crl(home, ca_cert, ca_key, entries, number=number)
    return True


def _revoked_serials(home: Path) -> frozenset[int]:
    try:
        ca_cert, _ = _load_ca(home)
        crl = _load_crl(home, ca_cert)
    except CertificateError:
        return frozenset()
    return frozenset(e.serial_number for e in crl) if crl is not None else frozenset()


def list_certs(home: Path) -> list[CertInfo]:
    """Every certificate under ``tls/`` with its CN, expiry and revocation."""
    revoked = _revoked_serials(home)
    out = []
    for path in sorted(tls_dir(home).rglob("*.crt")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        out.append(
            CertInfo(
                file=str(path.relative_to(tls_dir(home))),
                cn=str(cn),
                expires=cert.not_valid_after_utc.date().isoformat(),
                revoked=cert.serial_number in revoked,
            )
        )
    return out


def server_context(
    certfile: Path, keyfile: Path, *, client_ca: Path | None, home: Path
) -> ssl.SSLContext:
    """The HTTPS listener's context. With ``client_ca`` a client certificate is required (the
    listener refuses a connection without one; see ``_build``) and checked for revocation on
    every handshake: ``tls/crl.pem`` for bastion's CA (an empty one is written at start when
    the CA key is here and there is none) and a CRL appended to the ``client_ca`` bundle
    for any other CA in it; a CA without a list stops the start. A list changed by
    ``bastion certs revoke`` applies from the next handshake on."""
    if client_ca is not None and _stamp(crl_path(home)) is None:
        _start_empty_list(home, client_ca)
    return _Listener(certfile, keyfile, client_ca, crl_path(home)).base


def _start_empty_list(home: Path, client_ca: Path) -> None:
    """Revocation is enforced from the first handshake (OpenSSL fixes a connection's verify
    flags when it starts, before a reloaded context can be swapped in), so a revocation must
    always have a list to land in."""
    try:
        ca_cert, ca_key = _load_ca(home)
        trusted = ca_cert in x509.load_pem_x509_certificates(client_ca.read_bytes())
    except (CertificateError, OSError, ValueError):
        return  # no usable CA here: _check_lists names the CA that has no list
    if trusted:
        _write_crl(home, ca_cert, ca_key, [], number=1)
        log.warning(
            "no revocation list at %s: started an empty one; a certificate revoked in a lost "
            "list is valid again until revoked anew",
            crl_path(home),
        )


def _stamp(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_size, st.st_mtime_ns


class _Listener:
    """Builds the context; when the revocation list changes, the next ClientHello swaps a
    fresh context (with the new list) into that connection, so no restart is needed. Only
    the certificate store comes from the swapped context: the connection keeps the base
    context's verify flags, which is why the base always checks revocation."""

    def __init__(self, certfile: Path, keyfile: Path, client_ca: Path | None, crl: Path) -> None:
        self.certfile, self.keyfile, self.client_ca, self.crl = certfile, keyfile, client_ca, crl
        self._stamp = _stamp(crl)
        self.base = self._build(with_crl=self._stamp is not None)
        self._current = self.base
        if client_ca is not None:
            self.base.sni_callback = self._on_client_hello

    def _build(self, *, with_crl: bool) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        # A resumed session skips certificate verification, revocation included.
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
        try:
            context.load_cert_chain(self.certfile, self.keyfile)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load the server certificate {self.certfile} and key {self.keyfile}: "
                f"{exc.strerror or exc.__class__.__name__}"
            ) from None
        if self.client_ca is None:
            return context
        # A presented certificate is verified in the handshake as with CERT_REQUIRED; a
        # client that sends none completes it and is refused in plain words by the HTTPS
        # listener (403 client_certificate_required, api/protocol.py): a failed handshake
        # reaches the client as an empty reply, its alert lost when asyncio aborts the socket.
        context.verify_mode = ssl.CERT_OPTIONAL
        try:
            context.load_verify_locations(self.client_ca)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"cannot load tls.client_ca {self.client_ca}: "
                f"{exc.strerror or exc.__class__.__name__}"
            ) from None
        _check_lists(self.client_ca, self.crl if with_crl else None)
        if with_crl:
            context.load_verify_locations(self.crl)
        context.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return context

    def _on_client_hello(
        self, connection: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        stamp = _stamp(self.crl)
        if stamp != self._stamp:
            self._reload(stamp)
        if self._current is not self.base:
            connection.context = self._current

    def _reload(self, stamp: tuple[int, int, int] | None) -> None:
        """Logged once per change of the file; on failure the last list stays in force."""
        had_list, self._stamp = self._stamp is not None, stamp
        if stamp is None and had_list:
            # Fail closed: a deleted list must not quietly readmit revoked clients.
            log.error("revocation list %s is gone; still enforcing the last one loaded", self.crl)
            return
        try:
            self._current = self._build(with_crl=stamp is not None)
        except ConfigError as exc:
            log.error("%s; still enforcing the last revocation list loaded", exc.message)  # noqa: TRY400 - the message says it all
            return
        log.info("revocation list %s reloaded", self.crl)


def _check_lists(client_ca: Path, crl_file: Path | None) -> None:
    """Each CA in ``client_ca`` needs a current list signed by it (``crl_file`` or a CRL in
    the bundle): OpenSSL would otherwise refuse every one of its clients with nothing in the
    log to say why. A second list for the CA of ``crl_file`` could shadow its revocations."""
    try:
        bundle = client_ca.read_bytes()
        cas = x509.load_pem_x509_certificates(bundle)
        extra = [x509.load_pem_x509_crl(block) for block in _PEM_CRL.findall(bundle)]
        ours = x509.load_pem_x509_crl(crl_file.read_bytes()) if crl_file is not None else None
    except (OSError, ValueError):
        raise ConfigError(
            f"{crl_file or 'the revocation list'} or {client_ca} cannot be read as PEM; "
            "reissue the list with `bastion certs revoke` or fix the bundle"
        ) from None
    names = [ca.subject for ca in cas]
    twins = [n for n in names if names.count(n) > 1]
    if twins:
        raise ConfigError(
            f"tls.client_ca ({client_ca}) holds two CAs named '{twins[0].rfc4514_string()}'; "
            "OpenSSL cannot tell them (or their revocation lists) apart: keep one"
        )
    if ours is not None and any(crl.issuer == ours.issuer for crl in extra):
        raise ConfigError(
            f"tls.client_ca ({client_ca}) carries a second revocation list for the CA of "
            f"{crl_file}; remove it from the bundle: {crl_file} is that CA's one list"
        )
    lists = extra if ours is None else [ours, *extra]
    now = dt.datetime.now(tz=dt.UTC)
    for ca in cas:
        name = ca.subject.rfc4514_string()
        signed = [
            crl
            for crl in lists
            if crl.issuer == ca.subject and crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
        ]
        if not signed:
            raise ConfigError(
                f"tls.client_ca ({client_ca}) holds the CA '{name}' but no revocation list "
                "signed by it, so every one of its clients would be refused; append that "
                "CA's CRL (PEM) to the bundle (for bastion's own CA, bastion starts "
                "tls/crl.pem itself when tls/ca.key is there)"
            )
        if not any(_current(crl, now) for crl in signed):
            raise ConfigError(
                f"the revocation list of the CA '{name}' in tls.client_ca is out of date or "
                "not yet valid, so every one of its clients would be refused; replace it "
                "with a current one"
            )


def _current(crl: x509.CertificateRevocationList, now: dt.datetime) -> bool:
    """As OpenSSL judges it: past ``nextUpdate``, or before ``thisUpdate``, fails a client."""
    expired = crl.next_update_utc is not None and crl.next_update_utc < now
    return not expired and crl.last_update_utc <= now
