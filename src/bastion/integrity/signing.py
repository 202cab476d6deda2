"""Ed25519 signatures in minisign's formats, so operators can check them with ``minisign``.

Public key file::

    untrusted comment: minisign public key <KEY ID>
    base64("Ed" || key id (8 bytes) || public key (32 bytes))

Signature file (``<file>.minisig``), prehashed mode::

    untrusted comment: <free text>
    base64("ED" || key id || Ed25519(BLAKE2b-512(file)))
    trusted comment: <text covered by the global signature>
    base64(Ed25519(signature || trusted comment))

Secret keys use minisign's layout unencrypted (``minisign -W``): the file is the key, kept 0600.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import secrets
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

UNTRUSTED = "untrusted comment: "
TRUSTED = "trusted comment: "
_KDF_NONE = b"\x00\x00"


class SignatureError(ValueError):
    """The signature does not verify, or a key or signature file is malformed."""


def _b64(line: str, what: str, *, strict: bool = False) -> bytes:
    text = line if strict else line.strip()
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError(f"{what}: not valid base64") from None
    # Only the canonical encoding: unused low bits of the last character must be zero, or
    # several texts would decode to the same signature.
    if strict and base64.b64encode(raw).decode() != text:
        raise SignatureError(f"{what}: not canonical base64")
    return raw


def key_id_text(key_id: bytes) -> str:
    """minisign prints the 8-byte id as a little-endian 64-bit number in hex."""
    return key_id[::-1].hex().upper()


@dataclass(frozen=True)
class PublicKey:
    key_id: bytes
    key: bytes

    @property
    def id_text(self) -> str:
        return key_id_text(self.key_id)

    def dump(self) -> str:
        body = base64.b64encode(b"Ed" + self.key_id + self.key).decode()
        return f"{UNTRUSTED}minisign public key {self.id_text}\n{body}\n"

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        raw = _b64(lines[-1] if lines else "", "public key")
        if len(raw) != 42 or raw[:2] != b"Ed":
            raise SignatureError("public key: not a minisign Ed25519 public key")
        return cls(raw[2:10], raw[10:])

    def verify_raw(self, signature: bytes, message: bytes) -> bool:
        try:
            Ed25519PublicKey.from_public_bytes(self.key).verify(signature, message)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class SecretKey:
    key_id: bytes
    seed: bytes

    @classmethod
    def generate(cls) -> SecretKey:
        private = Ed25519PrivateKey.generate()
        seed = private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return cls(secrets.token_bytes(8), seed)

    @property
    def public(self) -> PublicKey:
        key = Ed25519PrivateKey.from_private_bytes(self.seed).public_key()
        return PublicKey(self.key_id, key.public_bytes(Encoding.Raw, PublicFormat.Raw))

    def dump(self) -> str:
        sk = self.seed + self.public.key  # libsodium's 64-byte secret key
        checksum = hashlib.blake2b(b"Ed" + self.key_id + sk, digest_size=32).digest()
        raw = (
            b"Ed"
            + _KDF_NONE
            + b"B2"
            + bytes(32)
            + bytes(8)
            + bytes(8)
            + self.key_id
            + sk
            + checksum
        )
        comment = f"{UNTRUSTED}minisign secret key {self.public.id_text} (unencrypted)"
        return f"{comment}\n{base64.b64encode(raw).decode()}\n"

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        lines = [ln for ln in text.splitlines() if ln.strip()]
        raw = _b64(lines[-1] if lines else "", "secret key")
        if len(raw) != 158 or raw[:2] != b"Ed" or raw[4:6] != b"B2":
            raise SignatureError("secret key: not a minisign Ed25519 secret key")
        if raw[2:4] != _KDF_NONE:
            raise SignatureError(
                "secret key: password-protected keys are not supported; "
                "bastion keys are protected by file permissions"
            )
        key_id, sk, checksum = raw[54:62], raw[62:126], raw[126:158]
        key = cls(key_id, sk[:32])
        # Either check proves the key is intact: the checksum, or the public half matching
        # the one derived from the seed (minisign's own unencrypted keys pass only the latter).
        intact = hashlib.blake2b(b"Ed" + key_id + sk, digest_size=32).digest() == checksum
        if not intact and key.public.key != sk[32:]:
            raise SignatureError("secret key: checksum mismatch (corrupted key file)")
        return key

    def sign(
        self,
        data: bytes,
        *,
        trusted_comment: str,
        untrusted_comment: str = "signature from bastion",
    ) -> str:
        """A ``.minisig`` document for ``data`` (prehashed, as ``minisign -S`` makes)."""
        if "\n" in trusted_comment or "\n" in untrusted_comment:
            raise SignatureError("comments must be single lines")
        private = Ed25519PrivateKey.from_private_bytes(self.seed)
        signature = private.sign(hashlib.blake2b(data, digest_size=64).digest())
        global_sig = private.sign(signature + trusted_comment.encode())
        return (
            f"{UNTRUSTED}{untrusted_comment}\n"
            f"{base64.b64encode(b'ED' + self.key_id + signature).decode()}\n"
            f"{TRUSTED}{trusted_comment}\n"
            f"{base64.b64encode(global_sig).decode()}\n"
        )


@dataclass(frozen=True)
class Verified:
    key: PublicKey
    trusted_comment: str


def verify(data: bytes, minisig: str, trusted: list[PublicKey]) -> Verified:
    """Check ``minisig`` over ``data`` against the trusted keys; SignatureError otherwise."""
    # Only "\n" separates lines: splitlines() would also split on \v, \f and others,
    # letting a changed byte leave the parsed lines intact.
    # "\r\n" is tolerated; a "\r" that ends no line is not.
    parts = minisig.split("\n")
    lines = [line.removesuffix("\r") for line in parts[:-1]] + parts[-1:]
    if (
        len(lines) < 4
        or any(lines[4:])
        or not lines[0].startswith(UNTRUSTED)
        or not lines[2].startswith(TRUSTED)
    ):
        raise SignatureError("signature file: not in minisign format")
    raw = _b64(lines[1], "signature", strict=True)
    if len(raw) != 74 or raw[:2] not in (b"ED", b"Ed"):
        raise SignatureError("signature file: not an Ed25519 minisign signature")
    key_id, signature = raw[2:10], raw[10:]
    key = next((k for k in trusted if k.key_id == key_id), None)
    if key is None:
        raise SignatureError(
            f"signature verification failed: key {key_id_text(key_id)} is not a trusted signer"
        )
    message = hashlib.blake2b(data, digest_size=64).digest() if raw[:2] == b"ED" else data
    comment = lines[2][len(TRUSTED) :]
    global_sig = _b64(lines[3], "global signature", strict=True)
    if not key.verify_raw(signature, message) or not key.verify_raw(
        global_sig, signature + comment.encode()
    ):
        raise SignatureError("signature verification failed")
    return Verified(key, comment)
