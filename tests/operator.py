"""The test operator: one Ed25519 key, trusted by the nodes the tests start, that signs
the state-changing commands they send."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.authz import sign_command
from gateway.config import OperatorKey, SecuritySection
from rules.signing import public_text

OPERATOR_ID = "ops-test"
OPERATOR_KEY = Ed25519PrivateKey.generate()


def operator_key(
    roles: Sequence[str] = ("*",),
    *,
    key_id: str = OPERATOR_ID,
    private: Ed25519PrivateKey = OPERATOR_KEY,
) -> OperatorKey:
    """The config entry trusting `private` with `roles`."""
    return OperatorKey(id=key_id, public_key=public_text(private.public_key()), roles=list(roles))


def operator_security(roles: Sequence[str] = ("*",), **kw: Any) -> SecuritySection:
    """A security section trusting the test operator with `roles`."""
    return SecuritySection(keys=[operator_key(roles)], **kw)


def signed(
    topic: str,
    body: dict[str, Any],
    *,
    key_id: str = OPERATOR_ID,
    private: Ed25519PrivateKey = OPERATOR_KEY,
    lifetime: float = 300.0,
    now: float | None = None,
) -> dict[str, Any]:
    return sign_command(topic, body, key_id=key_id, private=private, lifetime=lifetime, now=now)
