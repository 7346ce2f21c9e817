"""Ed25519 signatures over the exact bytes of a rule bundle."""

from __future__ import annotations

import base64
import binascii

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey


class SignatureError(ValueError):
    """A signature was refused; `code` is unknown_key or bad_signature."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def generate() -> tuple[bytes, str]:
    """A new key pair: (private key PEM, public key as base64 of its 32 raw bytes)."""
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return private, public_text(key.public_key())


def public_text(key: Ed25519PublicKey) -> str:
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def load_private(pem: bytes) -> Ed25519PrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise TypeError("not an Ed25519 private key")
    return key


def load_public(text: str) -> Ed25519PublicKey:
    """A public key from base64 of its 32 raw bytes, or from PEM."""
    text = text.strip()
    if text.startswith("-----BEGIN"):
        key = serialization.load_pem_public_key(text.encode())
        if not isinstance(key, Ed25519PublicKey):
            raise TypeError("not an Ed25519 public key")
        return key
    try:
        raw = base64.b64decode(text, validate=True)
    except binascii.Error as exc:
        raise ValueError("public key is neither PEM nor base64") from exc
    if len(raw) != 32:
        raise ValueError(f"an Ed25519 public key has 32 bytes, this one {len(raw)}")
    return Ed25519PublicKey.from_public_bytes(raw)


def sign(data: bytes, private: Ed25519PrivateKey) -> str:
    return base64.b64encode(private.sign(data)).decode()


def verify(data: bytes, signature: str, key_id: str, trusted: dict[str, Ed25519PublicKey]) -> None:
    """Raise `SignatureError` unless `signature` is `key_id`'s valid signature of `data`."""
    key = trusted.get(key_id)
    if key is None:
        known = ", ".join(sorted(trusted)) or "none configured"
        raise SignatureError("unknown_key", f"key {key_id!r} is not trusted (trusted: {known})")
    try:
        raw = base64.b64decode(signature, validate=True)
    except binascii.Error:
        raise SignatureError("bad_signature", "signature is not base64") from None
    try:
        key.verify(raw, data)
    except InvalidSignature:
        raise SignatureError(
            "bad_signature", f"signature does not match the bundle for key {key_id!r}"
        ) from None
