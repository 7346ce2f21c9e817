"""Who may change a node: signed commands, operator roles, expiry, replays, the audit trail.

A state-changing command (a write, a rule deploy or rollback, a model swap) carries an
``auth`` object signed by an operator's Ed25519 key::

    {"id": "...", "args": {...},
     "auth": {"key": "ops-2026", "expires": 1796640000, "nonce": "3f9c...", "sig": "..."}}

The signature covers the topic the command is published to (so the node or group and the
command name) and every field of the command but ``sig`` itself, serialised canonically
(`signed_bytes`). The node refuses a command that is unsigned, signed by a key it does not
trust, tampered with, expired, valid for longer than it accepts, seen before (its nonce),
or signed by a key whose roles do not cover it. Roles are patterns over what a command
needs: ``write:<device>`` (``write:valve-*``), ``rules``, ``models``, or ``*``.

Every decision on a state-changing command, accepted or refused, is appended to the audit
log (JSON lines in the data directory, mode 0600) before the command runs; the accepted
nonces still within their expiry are read back from it at start, so a restart does not
reopen the replay window.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import heapq
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.commands import CommandError, Guarded, Reply
from gateway.kernel.records import Event, Severity, iso_time, utcnow

logger = logging.getLogger(__name__)

AUTH_FIELDS = frozenset({"key", "expires", "nonce", "sig"})
MIN_NONCE, MAX_NONCE = 16, 128
MAX_SIG = 128  # base64 of a 64-byte Ed25519 signature is 88 characters
MAX_NONCES = 100_000  # accepted nonces remembered until they expire
AUDIT_MAX_BYTES = 8 * 1024 * 1024  # then the log is rotated once (commands.jsonl.1)
ARG_TEXT = 200  # longer strings in audited arguments are cut (a bundle is by its digest)


class AuthError(CommandError):
    """A command was refused by authorization; `code` says which check failed."""


def canonical(value: Any) -> bytes:
    """`value` as canonical JSON: keys sorted, no whitespace, UTF-8, no NaN."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode()


def signed_bytes(topic: str, body: dict[str, Any]) -> bytes:
    """The bytes an operator signs: the command `body` without ``auth.sig``, plus the
    `topic` it is published to."""
    auth = body.get("auth")
    doc = {k: v for k, v in body.items() if k != "auth"}
    if isinstance(auth, dict):
        doc["auth"] = {k: v for k, v in auth.items() if k != "sig"}
    doc["topic"] = topic
    return canonical(doc)


def sign_command(
    topic: str,
    body: dict[str, Any],
    *,
    key_id: str,
    private: Ed25519PrivateKey,
    lifetime: float = 300.0,
    now: float | None = None,
) -> dict[str, Any]:
    """A copy of command `body` with an ``auth`` object signed by `private`, valid for
    `lifetime` seconds, for publishing to `topic`."""
    issued = time.time() if now is None else now
    auth = {
        "key": key_id,
        "expires": int(issued + lifetime),
        "nonce": base64.urlsafe_b64encode(os.urandom(18)).decode(),
    }
    out = {**{k: v for k, v in body.items() if k != "auth"}, "auth": auth}
    auth["sig"] = base64.b64encode(private.sign(signed_bytes(topic, out))).decode()
    return out


@dataclass(frozen=True, slots=True)
class OperatorKey:
    """A trusted public key and what its holder may do."""

    id: str
    key: Ed25519PublicKey
    roles: tuple[str, ...]

    def grants(self, needed: str) -> bool:
        return any(fnmatchcase(needed, role) for role in self.roles)


@dataclass(frozen=True, slots=True)
class Decision:
    """An authorization outcome, as the audit log records it."""

    accepted: bool
    key: str | None = None
    nonce: str | None = None
    expires: int | None = None
    code: str | None = None
    message: str | None = None


@dataclass
class _Nonces:
    """Accepted (key, nonce) pairs until their expiry, bounded."""

    limit: int = MAX_NONCES
    seen: dict[tuple[str, str], int] = field(default_factory=dict)
    heap: list[tuple[int, tuple[str, str]]] = field(default_factory=list)

    def purge(self, now: float) -> None:
        while self.heap and self.heap[0][0] < now:
            _, pair = heapq.heappop(self.heap)
            self.seen.pop(pair, None)

    def add(self, pair: tuple[str, str], expires: int) -> None:
        self.seen[pair] = expires
        heapq.heappush(self.heap, (expires, pair))


class CommandAuth:
    """Checks the ``auth`` of state-changing commands against the trusted operator keys."""

    def __init__(
        self,
        keys: Sequence[OperatorKey],
        *,
        require: bool = True,
        max_lifetime: float = 3600.0,
        wall: Callable[[], float] = time.time,
        max_nonces: int = MAX_NONCES,
    ) -> None:
        self.keys = {k.id: k for k in keys}
        self.require = require
        self.max_lifetime = max_lifetime
        self.wall = wall
        self._nonces = _Nonces(max_nonces)

    def authorize(self, topic: str, body: dict[str, Any], needed: str) -> Decision:
        """Check command `body` received on `topic`, which needs role `needed`; raises
        `AuthError` (its `decision` attribute says what to audit) or returns the decision.
        An accepted nonce is remembered: the same command is refused the next time."""
        auth = body.get("auth")
        if auth is None:
            if self.require:
                raise AuthError(
                    "unauthorized",
                    f"this command changes the node and must be signed by an operator key "
                    f"with role {needed!r} (cityneuron cmd send --key ...)",
                )
            return Decision(accepted=True)
        key_id, expires, nonce, sig = self._fields(auth)
        key = self.keys.get(key_id)
        if key is None:
            known = ", ".join(sorted(self.keys)) or "none configured"
            raise AuthError("unknown_key", f"key {key_id!r} is not trusted (trusted: {known})")
        try:
            key.key.verify(_canonical_b64(sig), signed_bytes(topic, body))
        except (binascii.Error, InvalidSignature, ValueError):
            raise AuthError(
                "bad_signature",
                f"signature does not match this command and topic for key {key_id!r}",
            ) from None
        now = self.wall()
        if expires < now:
            raise AuthError(
                "expired", f"the command expired {now - expires:.0f} s ago; sign it again"
            )
        if expires - now > self.max_lifetime:
            raise AuthError(
                "expiry_too_far",
                f"the command is valid for {expires - now:.0f} s; this node accepts at most "
                f"{self.max_lifetime:.0f} s",
            )
        if not key.grants(needed):
            raise AuthError(
                "forbidden",
                f"key {key_id!r} may not do {needed!r} (its roles: {', '.join(key.roles)})",
            )
        self._nonces.purge(now)
        pair = (key_id, nonce)
        if pair in self._nonces.seen:
            raise AuthError("replayed", "this signed command was already received; sign it again")
        if len(self._nonces.seen) >= self._nonces.limit:
            raise AuthError("busy", "too many signed commands within their expiry; retry later")
        self._nonces.add(pair, expires)
        return Decision(accepted=True, key=key_id, nonce=nonce, expires=expires)

    def restore(self, accepted: Iterator[tuple[str, str, int]]) -> int:
        """Remember nonces accepted before a restart (key, nonce, expires); returns how
        many are still within their expiry."""
        now = self.wall()
        count = 0
        for key_id, nonce, expires in accepted:
            if expires >= now and (key_id, nonce) not in self._nonces.seen:
                self._nonces.add((key_id, nonce), expires)
                count += 1
        return count

    @staticmethod
    def _fields(auth: Any) -> tuple[str, int, str, str]:
        if not isinstance(auth, dict):
            raise AuthError("malformed_auth", "auth must be an object {key, expires, nonce, sig}")
        missing = AUTH_FIELDS - set(auth)
        extra = set(auth) - AUTH_FIELDS
        if missing or extra:
            problem = (
                f"missing {', '.join(sorted(missing))}"
                if missing
                else f"unknown {', '.join(sorted(extra))}"
            )
            raise AuthError("malformed_auth", f"auth fields: {problem}")
        key_id, expires, nonce, sig = auth["key"], auth["expires"], auth["nonce"], auth["sig"]
        if not isinstance(key_id, str) or not 0 < len(key_id) <= 64:
            raise AuthError("malformed_auth", "auth.key must be a key id of 1 to 64 characters")
        if isinstance(expires, bool) or not isinstance(expires, int):
            raise AuthError("malformed_auth", "auth.expires must be a Unix time in seconds")
        if not isinstance(nonce, str) or not MIN_NONCE <= len(nonce) <= MAX_NONCE:
            raise AuthError(
                "malformed_auth",
                f"auth.nonce must be a string of {MIN_NONCE} to {MAX_NONCE} characters",
            )
        if not isinstance(sig, str) or not 0 < len(sig) <= MAX_SIG:
            raise AuthError("malformed_auth", "auth.sig must be a base64 Ed25519 signature")
        return key_id, expires, nonce, sig


def audited_args(args: dict[str, Any]) -> dict[str, Any]:
    """`args` as the audit log keeps them: long strings cut, with their length."""
    out: dict[str, Any] = {}
    for name, value in list(args.items())[:32]:
        if isinstance(value, str) and len(value) > ARG_TEXT:
            out[name] = f"{value[:ARG_TEXT]}... ({len(value)} characters)"
        elif isinstance(value, dict | list):
            text = canonical(value).decode()
            out[name] = value if len(text) <= ARG_TEXT else f"{text[:ARG_TEXT]}..."
        else:
            out[name] = value
    return out


class AuditLog:
    """The node's append-only record of state-changing commands (JSON lines, mode 0600,
    rotated once at `max_bytes`). Blocking: call it from a worker thread."""

    def __init__(self, path: Path, *, max_bytes: int = AUDIT_MAX_BYTES) -> None:
        self.path = path
        self.max_bytes = max_bytes

    def append(self, entry: dict[str, Any]) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        line = canonical({"ts": iso_time(utcnow()), **entry}) + b"\n"
        try:
            if self.path.stat().st_size + len(line) > self.max_bytes:
                self.path.replace(self.path.with_name(self.path.name + ".1"))
        except FileNotFoundError:
            pass
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)

    def accepted_nonces(self) -> Iterator[tuple[str, str, int]]:
        """(key, nonce, expires) of every accepted signed command in the log."""
        for path in (self.path.with_name(self.path.name + ".1"), self.path):
            try:
                with path.open("rb") as f:
                    lines = f.read().splitlines()
            except FileNotFoundError:
                continue
            for raw in lines:
                try:
                    entry = json.loads(raw)
                except ValueError:
                    continue  # a line cut by a power loss
                if not isinstance(entry, dict) or entry.get("decision") != "accepted":
                    continue
                key, nonce, expires = entry.get("key"), entry.get("nonce"), entry.get("expires")
                if isinstance(key, str) and isinstance(nonce, str) and isinstance(expires, int):
                    yield key, nonce, expires


Report = Callable[[Event], Awaitable[None]]


class CommandGuard:
    """The router's guard (gateway/commands.py): authorizes each state-changing command,
    writes the audit log before the command runs and after, and reports each decision
    upstream as a ``command.audit`` event (refusals at most `refusal_events` a minute,
    the rest counted in the next one)."""

    def __init__(
        self,
        auth: CommandAuth,
        audit: AuditLog | None,
        *,
        node: str,
        report: Report | None = None,
        refusal_events: int = 30,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auth = auth
        self.audit = audit
        self.node = node
        self.report = report
        self.refusal_events = refusal_events
        self.monotonic = monotonic
        self.accepted = 0
        self.refusals: dict[str, int] = {}
        self._window = (0.0, 0)  # start of the current minute, refusal events sent in it
        self._suppressed = 0

    def restore(self) -> int:
        """Read back the nonces accepted before a restart (blocking: at start)."""
        if self.audit is None:
            return 0
        return self.auth.restore(self.audit.accepted_nonces())

    async def admit(self, command: Guarded) -> object:
        try:
            decision = self.auth.authorize(command.topic, command.body, command.needed)
        except AuthError as exc:
            await self.refused(command, exc.code, exc.message)
            raise
        self.accepted += 1
        await self._audit(command, "accepted", decision=decision)
        return decision

    async def refused(self, command: Guarded, code: str, message: str) -> None:
        self.refusals[code] = self.refusals.get(code, 0) + 1
        auth = command.body.get("auth")
        key = auth.get("key") if isinstance(auth, dict) else None
        await self._audit(
            command,
            "refused",
            decision=Decision(False, key=key if isinstance(key, str) else None),
            code=code,
            message=message,
        )

    async def outcome(self, command: Guarded, token: object, reply: Reply) -> None:
        decision = token if isinstance(token, Decision) else Decision(True)
        await self._audit(
            command,
            "done",
            decision=decision,
            code=None if reply.ok else reply.error_code,
            message=None if reply.ok else reply.error,
        )

    async def _audit(
        self,
        command: Guarded,
        phase: str,
        *,
        decision: Decision,
        code: str | None = None,
        message: str | None = None,
    ) -> None:
        entry: dict[str, Any] = {
            "decision": phase,
            "command": command.name,
            "command_id": command.command_id,
            "topic": command.topic,
            "needs": command.needed,
            "key": decision.key,
        }
        if phase == "accepted":
            entry.update(nonce=decision.nonce, expires=decision.expires)
            entry["args"] = audited_args(command.args)
        elif phase == "refused":
            entry.update(code=code, message=message, args=audited_args(command.args))
        else:
            entry["outcome"] = "ok" if code is None else code
            if message is not None:
                entry["message"] = message
        if self.audit is not None:
            try:
                await asyncio.to_thread(self.audit.append, entry)
            except OSError as exc:
                logger.error("audit log %s: %s", self.audit.path, exc)  # noqa: TRY400 - no trace
                if phase == "accepted":  # nothing runs that could not be recorded
                    raise AuthError(
                        "audit_failed", f"the audit log cannot be written ({exc.strerror})"
                    ) from None
        if phase == "accepted":
            return  # reported once, with its outcome
        if phase == "refused" and not self._may_report_refusal():
            return
        await self._report(entry)

    def _may_report_refusal(self) -> bool:
        now = self.monotonic()
        start, sent = self._window
        if now - start >= 60.0:
            start, sent = now, 0
        if sent >= self.refusal_events:
            self._window = (start, sent)
            self._suppressed += 1
            return False
        self._window = (start, sent + 1)
        return True

    async def _report(self, entry: dict[str, Any]) -> None:
        if self.report is None:
            return
        data = dict(entry)
        if entry["decision"] == "refused" and self._suppressed:
            data["suppressed"], self._suppressed = self._suppressed, 0
        refused = entry["decision"] == "refused" or entry.get("outcome") != "ok"
        what = (
            f"refused ({entry['code']})"
            if entry["decision"] == "refused"
            else f"by key {entry['key']}: {entry['outcome']}"
        )
        await self.report(
            Event(
                kind="command.audit",
                source=entry["command"],
                severity=Severity.WARNING if refused else Severity.INFO,
                message=f"command {entry['command']} {what}",
                data=data,
                node=self.node,
            )
        )


def _canonical_b64(text: str) -> bytes:
    """The bytes `text` spells in base64, accepting only the one canonical spelling: set
    unused bits in the last character would give one signature many texts."""
    raw = base64.b64decode(text, validate=True)
    if base64.b64encode(raw).decode() != text:
        raise ValueError("non-canonical base64")
    return raw
