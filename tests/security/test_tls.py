"""The private CA: names that cannot escape ``tls/``, no silent overwrite, and a signed
revocation list that a real mutual-TLS handshake enforces."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from bastion.errors import ConfigError, InvalidNameError
from bastion.security.tls import (
    CertificateError,
    Issued,
    crl_path,
    init_ca,
    issue,
    list_certs,
    revoke,
    server_context,
)

ODD_NAMES = ["../ca", "..", "../../..", "a/b", "/abs", "ca", "server", "crl", "Alice", "", "x" * 65]
ODD_NAMES += ["\u0430lice", "\uff41lice", "alice.", ".alice"]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"
    init_ca(home)
    return home


def snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def serial(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


@pytest.mark.parametrize("name", ODD_NAMES)
def test_odd_names_are_refused_and_nothing_is_written(home: Path, name: str) -> None:
    before = snapshot(home.parent)
    with pytest.raises(InvalidNameError):
        issue(home, name)
    with pytest.raises(InvalidNameError):
        revoke(home, name)
    assert snapshot(home.parent) == before


def test_the_ca_stays_a_ca(home: Path) -> None:
    with pytest.raises(InvalidNameError):
        issue(home, "../ca", force=True)
    ca = x509.load_pem_x509_certificate((home / "tls" / "ca.crt").read_bytes())
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_an_existing_certificate_is_replaced_only_with_force(home: Path) -> None:
    first = issue(home, "alice")
    original = serial(first.cert)
    with pytest.raises(CertificateError, match="--force"):
        issue(home, "alice")
    assert serial(first.cert) == original
    second = issue(home, "alice", force=True)
    assert serial(second.cert) != original
    assert oct(second.key.stat().st_mode & 0o777) == "0o600"


def test_the_server_certificate_is_replaced_only_with_force(home: Path) -> None:
    issue(home, "bastion.local", server=True)
    with pytest.raises(CertificateError, match=r"server\.crt"):
        issue(home, "other.local", server=True)
    issue(home, "other.local", server=True, force=True)


def test_a_lone_key_left_behind_also_blocks(home: Path) -> None:
    issued = issue(home, "alice")
    issued.cert.unlink()
    with pytest.raises(CertificateError, match=r"alice\.key"):
        issue(home, "alice")


def test_dotted_names_keep_their_own_files(home: Path) -> None:
    # with_suffix() once turned both into clients/svc.crt
    a, b = issue(home, "svc.v1"), issue(home, "svc.v2")
    assert a.cert.name == "svc.v1.crt"
    assert b.cert.name == "svc.v2.crt"


def test_init_writes_an_empty_list_signed_by_the_ca(home: Path) -> None:
    crl = x509.load_pem_x509_crl(crl_path(home).read_bytes())
    ca = x509.load_pem_x509_certificate((home / "tls" / "ca.crt").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0


def test_revoke_adds_the_serial_and_list_shows_it(home: Path) -> None:
    alice, bob = issue(home, "alice"), issue(home, "bob")
    assert revoke(home, "alice") is True
    assert revoke(home, "alice") is False
    crl = x509.load_pem_x509_crl(crl_path(home).read_bytes())
    assert [e.serial_number for e in crl] == [serial(alice.cert)]
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    assert number == 2
    shown = {c.file: c.revoked for c in list_certs(home)}
    assert shown == {"ca.crt": False, "clients/alice.crt": True, "clients/bob.crt": False}
    assert bob.cert.exists()


def test_reissuing_a_revoked_name_gives_a_valid_certificate(home: Path) -> None:
    issue(home, "alice")
    revoke(home, "alice")
    issue(home, "alice", force=True)
    assert not {c.file: c.revoked for c in list_certs(home)}["clients/alice.crt"]


def test_revoke_needs_a_certificate_of_this_ca(home: Path, tmp_path: Path) -> None:
    with pytest.raises(CertificateError, match="no client certificate named 'nobody'"):
        revoke(home, "nobody")
    other = tmp_path / "other"
    init_ca(other)
    stranger = issue(other, "stranger")
    (home / "tls" / "clients").mkdir(exist_ok=True)
    (home / "tls" / "clients" / "stranger.crt").write_bytes(stranger.cert.read_bytes())
    with pytest.raises(CertificateError, match="not issued by this CA"):
        revoke(home, "stranger")


def test_a_list_from_another_ca_is_never_overwritten(home: Path, tmp_path: Path) -> None:
    issue(home, "alice")
    other = tmp_path / "other"
    init_ca(other)
    crl_path(home).write_bytes(crl_path(other).read_bytes())
    with pytest.raises(CertificateError, match="not signed by this CA"):
        revoke(home, "alice")


# Real handshakes against an in-process listener built by server_context.


async def _handshake(context: ssl.SSLContext, client: ssl.SSLContext) -> bool:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"ok")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client)
        # TLS 1.3: the server's verdict on the client certificate arrives after the client's
        # side of the handshake, so a refused client sees the connection end, not "ok".
        data = await reader.read(2)
        writer.close()
    except (ssl.SSLError, ConnectionError):
        return False
    finally:
        server.close()
    return data == b"ok"


def handshake(home: Path, who: Issued, context: ssl.SSLContext) -> bool:
    client = ssl.create_default_context(cafile=str(home / "tls" / "ca.crt"))
    client.load_cert_chain(who.cert, who.key)
    return asyncio.run(_handshake(context, client))


@pytest.fixture
def listener(home: Path) -> ssl.SSLContext:
    issue(home, "localhost", server=True, sans=["127.0.0.1"])
    tls = home / "tls"
    return server_context(
        tls / "server.crt", tls / "server.key", client_ca=tls / "ca.crt", home=home
    )


def test_a_revoked_client_fails_the_handshake_and_a_valid_one_passes(home: Path) -> None:
    alice, bob = issue(home, "alice"), issue(home, "bob")
    revoke(home, "bob")
    tls = home / "tls"
    issue(home, "localhost", server=True, sans=["127.0.0.1"])
    context = server_context(
        tls / "server.crt", tls / "server.key", client_ca=tls / "ca.crt", home=home
    )
    assert handshake(home, alice, context)
    assert not handshake(home, bob, context)


def test_a_revocation_applies_without_a_restart(home: Path, listener: ssl.SSLContext) -> None:
    alice, carol = issue(home, "alice"), issue(home, "carol")
    assert handshake(home, carol, listener)
    revoke(home, "carol")
    assert not handshake(home, carol, listener)
    assert handshake(home, alice, listener)
    revoke(home, "alice")
    assert not handshake(home, alice, listener)


def test_a_deleted_list_keeps_the_last_one_in_force(
    home: Path, listener: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    dave = issue(home, "dave")
    revoke(home, "dave")
    assert not handshake(home, dave, listener)
    crl_path(home).unlink()
    with caplog.at_level(logging.ERROR):
        assert not handshake(home, dave, listener)
    assert "is gone" in caplog.text


def test_a_list_not_signed_by_the_client_ca_stops_the_start(home: Path, tmp_path: Path) -> None:
    issue(home, "localhost", server=True)
    other = tmp_path / "other"
    init_ca(other)
    crl_path(home).write_bytes(crl_path(other).read_bytes())
    tls = home / "tls"
    with pytest.raises(ConfigError, match="CN=bastion CA' but no revocation list"):
        server_context(tls / "server.crt", tls / "server.key", client_ca=tls / "ca.crt", home=home)


def listen(home: Path, client_ca: Path | None = None) -> ssl.SSLContext:
    tls = home / "tls"
    if not (tls / "server.crt").exists():
        issue(home, "localhost", server=True, sans=["127.0.0.1"])
    return server_context(
        tls / "server.crt", tls / "server.key", client_ca=client_ca or tls / "ca.crt", home=home
    )


# Revocation is enforced from the first handshake: a connection keeps the verify flags of the
# context it started on, so a list that appears later must still be checked.


def test_without_a_list_at_start_an_empty_one_is_written(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    crl_path(home).unlink()
    with caplog.at_level(logging.WARNING):
        listen(home)
    crl = x509.load_pem_x509_crl(crl_path(home).read_bytes())
    ca = x509.load_pem_x509_certificate((home / "tls" / "ca.crt").read_bytes())
    assert crl.is_signature_valid(ca.public_key())  # type: ignore[arg-type]
    assert len(crl) == 0
    assert "started an empty one" in caplog.text


def test_a_revocation_applies_when_there_was_no_list_at_start(home: Path) -> None:
    alice, bob, carol = issue(home, "alice"), issue(home, "bob"), issue(home, "carol")
    crl_path(home).unlink()
    context = listen(home)
    assert handshake(home, bob, context)
    revoke(home, "bob")
    assert not handshake(home, bob, context)
    assert handshake(home, alice, context)
    revoke(home, "carol")  # never connected before its revocation
    assert not handshake(home, carol, context)


def test_without_a_list_or_the_ca_key_the_start_is_refused(home: Path) -> None:
    issue(home, "localhost", server=True, sans=["127.0.0.1"])
    crl_path(home).unlink()
    (home / "tls" / "ca.key").unlink()
    with pytest.raises(ConfigError, match="no revocation list signed by it"):
        listen(home)
    assert not crl_path(home).exists()


# `issue --force` replaces a client certificate: the old one is revoked, since its file was the
# only record of its serial and `revoke` could never reach it afterwards.


def test_a_replaced_client_certificate_is_revoked(home: Path, listener: ssl.SSLContext) -> None:
    first = issue(home, "alice")
    old = Issued(home / "old.crt", home / "old.key")
    old.cert.write_bytes(first.cert.read_bytes())
    old.key.write_bytes(first.key.read_bytes())
    assert handshake(home, old, listener)
    second = issue(home, "alice", force=True)
    assert second.revoked_replaced
    assert not handshake(home, old, listener)
    assert handshake(home, second, listener)
    shown = {c.file: c.revoked for c in list_certs(home)}
    assert shown["clients/alice.crt"] is False
    revoke(home, "alice")
    assert not handshake(home, second, listener)
    crl = x509.load_pem_x509_crl(crl_path(home).read_bytes())
    assert {e.serial_number for e in crl} == {serial(old.cert), serial(second.cert)}


def test_each_replacement_revokes_the_one_before(home: Path) -> None:
    serials = []
    for _ in range(3):
        serials.append(serial(issue(home, "bob", force=True).cert))
    crl = x509.load_pem_x509_crl(crl_path(home).read_bytes())
    assert [e.serial_number for e in crl] == serials[:2]


def test_replacing_what_this_ca_cannot_revoke_changes_no_list(home: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    init_ca(other)
    clients = home / "tls" / "clients"
    clients.mkdir(parents=True, exist_ok=True)
    (clients / "stranger.crt").write_bytes(issue(other, "stranger").cert.read_bytes())
    (clients / "garbled.crt").write_bytes(b"not a certificate")
    issue(home, "localhost", server=True)
    before = crl_path(home).read_bytes()
    assert not issue(home, "stranger", force=True).revoked_replaced
    assert not issue(home, "garbled", force=True).revoked_replaced
    assert not issue(home, "localhost", server=True, force=True).revoked_replaced
    assert crl_path(home).read_bytes() == before


def test_a_replacement_is_refused_while_the_list_is_foreign(home: Path, tmp_path: Path) -> None:
    first = issue(home, "alice")
    other = tmp_path / "other"
    init_ca(other)
    crl_path(home).write_bytes(crl_path(other).read_bytes())
    with pytest.raises(CertificateError, match="not signed by this CA"):
        issue(home, "alice", force=True)
    assert serial(first.cert) == serial(home / "tls" / "clients" / "alice.crt")


# tls.client_ca may hold CAs besides bastion's: each needs its own list, appended to the bundle.


def ca_key(home: Path) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key((home / "tls" / "ca.key").read_bytes(), None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return key


def write_list(
    home: Path, *, next_update: dt.datetime, last_update: dt.datetime | None = None
) -> Path:
    """An empty list signed by the CA of ``home``, valid until ``next_update``."""
    ca = x509.load_pem_x509_certificate((home / "tls" / "ca.crt").read_bytes())
    crl = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.subject)
        .last_update(last_update or dt.datetime.now(tz=dt.UTC) - dt.timedelta(days=20))
        .next_update(next_update)
        .sign(ca_key(home), hashes.SHA256())
    )
    crl_path(home).write_bytes(crl.public_bytes(serialization.Encoding.PEM))
    return crl_path(home)


@pytest.fixture
def other(tmp_path: Path) -> Path:
    """A partner CA with a name of its own (OpenSSL finds a CA and its list by name)."""
    other = tmp_path / "other"
    init_ca(other)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "partner CA")])
    now = dt.datetime.now(tz=dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(ca_key(other).public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key(other), hashes.SHA256())
    )
    (other / "tls" / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    write_list(other, next_update=now + dt.timedelta(days=30))
    return other


def bundle(tmp_path: Path, *parts: Path) -> Path:
    path = tmp_path / "bundle.pem"
    path.write_bytes(b"".join(p.read_bytes() for p in parts))
    return path


def test_a_bundle_ca_without_a_list_stops_the_start(
    home: Path, other: Path, tmp_path: Path
) -> None:
    cas = bundle(tmp_path, home / "tls" / "ca.crt", other / "tls" / "ca.crt")
    with pytest.raises(ConfigError, match="append that CA's CRL"):
        listen(home, cas)


def test_each_ca_in_the_bundle_revokes_through_its_own_list(
    home: Path, other: Path, tmp_path: Path
) -> None:
    alice, mallory, trent = issue(home, "alice"), issue(other, "mallory"), issue(other, "trent")
    revoke(other, "mallory")
    cas = bundle(tmp_path, home / "tls" / "ca.crt", other / "tls" / "ca.crt", crl_path(other))
    context = listen(home, cas)
    assert handshake(home, alice, context)
    assert handshake(home, trent, context)
    assert not handshake(home, mallory, context)
    revoke(home, "alice")
    assert not handshake(home, alice, context)
    assert handshake(home, trent, context)


@pytest.mark.parametrize(("last", "next_"), [(-20, -1), (1, 30)])
def test_a_list_in_the_bundle_that_is_not_current_stops_the_start(
    home: Path, other: Path, tmp_path: Path, last: int, next_: int
) -> None:
    """Out of date, or not valid yet (a skewed clock): OpenSSL would refuse every client."""
    now = dt.datetime.now(tz=dt.UTC)
    stale = write_list(
        other, next_update=now + dt.timedelta(days=next_), last_update=now + dt.timedelta(days=last)
    )
    cas = bundle(tmp_path, home / "tls" / "ca.crt", other / "tls" / "ca.crt", stale)
    with pytest.raises(ConfigError, match="out of date"):
        listen(home, cas)


def test_two_cas_of_one_name_in_the_bundle_stop_the_start(home: Path, tmp_path: Path) -> None:
    twin = tmp_path / "twin"
    init_ca(twin)
    cas = bundle(tmp_path, home / "tls" / "ca.crt", twin / "tls" / "ca.crt", crl_path(twin))
    with pytest.raises(ConfigError, match="two CAs named"):
        listen(home, cas)


def test_a_second_list_for_bastions_ca_in_the_bundle_stops_the_start(
    home: Path, tmp_path: Path
) -> None:
    """OpenSSL could pick the older list and miss a later revocation."""
    cas = bundle(tmp_path, home / "tls" / "ca.crt", crl_path(home))
    with pytest.raises(ConfigError, match="second revocation list"):
        listen(home, cas)


def test_a_bundle_without_bastions_ca_gets_no_list_written(
    home: Path, other: Path, tmp_path: Path
) -> None:
    crl_path(home).unlink()
    trent = issue(other, "trent")
    context = listen(home, bundle(tmp_path, other / "tls" / "ca.crt", crl_path(other)))
    assert not crl_path(home).exists()
    assert handshake(home, trent, context)
