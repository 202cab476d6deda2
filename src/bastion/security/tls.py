"""A private CA for this server: EC P-256, a server certificate and client certificates
for mutual TLS. Private keys are written 0600."""

from __future__ import annotations

import datetime as dt
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from bastion.integrity.trust import write_private
from bastion.settings import ensure_dir

CA_YEARS = 5
LEAF_DAYS = 397


class CertificateError(ValueError):
    pass


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path


def tls_dir(home: Path) -> Path:
    return home / "tls"


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "bastion"),
        ]
    )


def _write(path: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> Issued:
    ensure_dir(path.parent)
    cert_path, key_path = path.with_suffix(".crt"), path.with_suffix(".key")
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_private(
        key_path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode(),
    )
    return Issued(cert_path, key_path)


def init_ca(home: Path, *, force: bool = False) -> Issued:
    directory = ensure_dir(tls_dir(home))
    if (directory / "ca.key").exists() and not force:
        raise CertificateError(f"{directory / 'ca.key'} exists; pass --force to replace it")
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
    return _write(directory / "ca", cert, key)


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
    days: int = LEAF_DAYS,
    not_before: dt.datetime | None = None,
) -> Issued:
    """A client certificate (CN is the caller's identity) or, with ``server``, the server's."""
    ca_cert, ca_key = _load_ca(home)
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
    if server:
        names: list[x509.GeneralName] = []
        for san in sans or ["localhost", "127.0.0.1", "::1"]:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(san)))
            except ValueError:
                names.append(x509.DNSName(san))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    path = tls_dir(home) / "server" if server else tls_dir(home) / "clients" / cn
    return _write(path, cert, key)


def list_certs(home: Path) -> list[tuple[str, str, str]]:
    """(file, subject CN, not valid after) for every certificate."""
    out = []
    for path in sorted(tls_dir(home).rglob("*.crt")):
        cert = x509.load_pem_x509_certificate(path.read_bytes())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        out.append(
            (
                str(path.relative_to(tls_dir(home))),
                str(cn),
                cert.not_valid_after_utc.date().isoformat(),
            )
        )
    return out
