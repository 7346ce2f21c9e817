"""Inbound commands: validation, routing to handlers, and the reply each one gets.

A command is a JSON object ``{"id": "...", "args": {...}}`` (both optional) published to
``{prefix}/{node}/cmd/{name}`` or ``{prefix}/fleet/{group}/cmd/{name}``. Every command
gets exactly one reply ``{"id", "command_id", "node", "command", "ok", "result" | "error"}``;
a command that is malformed, unknown or too large gets an error reply and changes nothing.
A redelivered command (same id and the same content) is answered from a bounded cache
instead of being run twice; the same id with other content is refused (`duplicate_id`).
Payloads are bounded in size and in nesting depth before anything looks inside them.

A command registered with a role it `needs` changes the node: it goes through the router's
`guard` (gateway/authz.py: signature, expiry, replay, role, audit) before its handler runs;
the others (ping, status) are open.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.kernel.records import new_id
from gateway.kernel.refusal import Refused

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]
# what a state-changing command needs of its signer: a role, or one worked out from its args
Needs = str | Callable[[dict[str, Any]], str]

MAX_DEPTH = 32  # nesting of objects and arrays in a command; real ones use 3 or 4


class CommandError(Refused):
    """A command was refused; `code` is machine-readable, the message says why."""


@dataclass(frozen=True, slots=True)
class Reply:
    command: str
    command_id: str | None
    ok: bool
    result: dict[str, Any] | None = None
    error_code: str | None = None
    error: str | None = None

    def to_dict(self, node: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": new_id(),
            "node": node,
            "command": self.command,
            "command_id": self.command_id,
            "ok": self.ok,
        }
        if self.ok:
            out["result"] = self.result or {}
        else:
            out["error"] = {"code": self.error_code, "message": self.error}
        return out


def parse_json(payload: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """`payload` as JSON, refused (`CommandError` malformed) when it is not JSON or nests
    deeper than `max_depth`. Python's parser recurses: a deep document must not reach it
    unchecked."""
    try:
        body = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CommandError("malformed", f"payload is not valid JSON: {exc}") from exc
    except RecursionError:
        raise CommandError("malformed", f"payload nests deeper than {max_depth}") from None
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > max_depth:
                raise CommandError("malformed", f"payload nests deeper than {max_depth}")
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return body


@dataclass(frozen=True, slots=True)
class Guarded:
    """A state-changing command on its way through the guard."""

    name: str
    topic: str
    command_id: str | None
    body: dict[str, Any]
    args: dict[str, Any]
    needed: str


class Guard(Protocol):
    """Authorizes and audits state-changing commands (gateway/authz.py)."""

    async def admit(self, command: Guarded) -> object:
        """Return a token for `outcome`, or raise `CommandError` (audited) to refuse."""
        ...

    async def refused(self, command: Guarded, code: str, message: str) -> None:
        """Audit a command refused before authorization (malformed, reused id)."""
        ...

    async def outcome(self, command: Guarded, token: object, reply: Reply) -> None:
        """Audit what an admitted command did."""
        ...


class CommandRouter:
    """Named command handlers plus the rules every command goes through."""

    def __init__(
        self, *, max_bytes: int = 1024 * 1024, remember: int = 256, guard: Guard | None = None
    ) -> None:
        self.max_bytes = max_bytes
        self.guard = guard
        self._handlers: dict[str, Handler] = {}
        self._needs: dict[str, Needs] = {}
        self._recent: OrderedDict[str, tuple[str, Reply]] = OrderedDict()  # id -> digest
        self._remember = remember
        self.handled = 0
        self.refused = 0

    def register(
        self, name: str, handler: Handler, *, needs: Needs | None = None
    ) -> Callable[[], None]:
        """Add a handler; returns a function that removes it again. A command that changes
        the node `needs` a role of its signer (a fixed one, or one from its args)."""
        if name in self._handlers:
            raise ValueError(f"command {name!r} already has a handler")
        self._handlers[name] = handler
        if needs is not None:
            self._needs[name] = needs

        def remove() -> None:
            if self._handlers.get(name) is handler:
                del self._handlers[name]
                self._needs.pop(name, None)

        return remove

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    def needs(self, name: str, args: dict[str, Any]) -> str | None:
        """The role command `name` with `args` needs, or None for an open command."""
        needs = self._needs.get(name)
        if needs is None or isinstance(needs, str):
            return needs
        return needs(args)

    async def handle(self, name: str, payload: bytes, *, topic: str = "") -> Reply:
        """Run command `name` received on `topic` with raw `payload`; never raises for a
        bad command."""
        guarded = Guarded(name, topic, None, {}, {}, self._needs_label(name))
        try:
            command_id, args, body = self._parse(name, payload)
            guarded = Guarded(name, topic, command_id, body, args, self.needs(name, args) or "")
        except CommandError as exc:
            return await self._refuse(guarded, None, exc.code, exc.message)
        # a state-changing command is authorized first: a signed one is never answered
        # from the cache, its second arrival is a replay
        guard, token = self.guard if name in self._needs else None, None
        if name in self._needs:
            if guard is None:
                return await self._refuse(
                    guarded, command_id, "unauthorized", "this node accepts no such commands"
                )
            try:
                token = await guard.admit(guarded)
            except CommandError as exc:  # refused and audited by the guard
                self.refused += 1
                logger.warning("command %s refused: %s", name, exc.message)
                return Reply(name, command_id, ok=False, error_code=exc.code, error=exc.message)
        digest = hashlib.sha256(topic.encode() + b"\0" + name.encode() + b"\0" + payload)
        reply: Reply | None = None
        if command_id is not None and command_id in self._recent:
            seen, cached = self._recent[command_id]
            if seen != digest.hexdigest():
                reply = self._refused(
                    name,
                    command_id,
                    "duplicate_id",
                    f"id {command_id!r} was already used for another command; use a new id",
                )
            else:
                logger.info("command %s %s is a repeat; answering from cache", name, command_id)
                reply = cached
        if reply is None:
            reply = await self._run(name, command_id, args)
            if command_id is not None:
                self._recent[command_id] = (digest.hexdigest(), reply)
                while len(self._recent) > self._remember:
                    self._recent.popitem(last=False)
        if guard is not None:
            await guard.outcome(guarded, token, reply)
        return reply

    def _needs_label(self, name: str) -> str:
        needs = self._needs.get(name)
        return needs if isinstance(needs, str) else ("" if needs is None else f"{name}:?")

    async def _refuse(
        self, guarded: Guarded, command_id: str | None, code: str, message: str
    ) -> Reply:
        """Refuse a command before authorization (audited when it changes the node)."""
        if guarded.name in self._needs and self.guard is not None:
            await self.guard.refused(guarded, code, message)
        return self._refused(guarded.name, command_id, code, message)

    def _refused(self, name: str, command_id: str | None, code: str, message: str) -> Reply:
        self.refused += 1
        logger.warning("command %s refused: %s", name, message)
        return Reply(name, command_id, ok=False, error_code=code, error=message)

    async def _run(self, name: str, command_id: str | None, args: dict[str, Any]) -> Reply:
        try:
            result = await self._handlers[name](args)
        except Refused as exc:  # a CommandError, or a refusal from a layer below
            self.refused += 1
            logger.warning("command %s refused: %s", name, exc.message)
            reply = Reply(name, command_id, ok=False, error_code=exc.code, error=exc.message)
        except Exception as exc:
            self.refused += 1
            logger.exception("command %s failed", name)
            reply = Reply(
                name,
                command_id,
                ok=False,
                error_code="internal",
                error=f"{type(exc).__name__}: {exc}",
            )
        else:
            self.handled += 1
            reply = Reply(name, command_id, ok=True, result=result)
        return reply

    def _parse(
        self, name: str, payload: bytes
    ) -> tuple[str | None, dict[str, Any], dict[str, Any]]:
        if name not in self._handlers:
            known = ", ".join(self.names)
            raise CommandError("unknown_command", f"unknown command {name!r} (known: {known})")
        if len(payload) > self.max_bytes:
            raise CommandError(
                "too_large", f"command is {len(payload)} bytes; the limit is {self.max_bytes}"
            )
        if not payload.strip():
            return None, {}, {}
        body = parse_json(payload)
        if not isinstance(body, dict):
            raise CommandError("malformed", "payload must be a JSON object")
        unknown = set(body) - {"id", "args", "reply_to", "correlation_id", "auth"}
        if unknown:
            raise CommandError("malformed", f"unknown field(s): {', '.join(sorted(unknown))}")
        command_id = body.get("id")
        if command_id is not None and not (
            isinstance(command_id, str) and 0 < len(command_id) <= 128
        ):
            raise CommandError("malformed", "id must be a string of 1 to 128 characters")
        args = body.get("args", {})
        if not isinstance(args, dict):
            raise CommandError("malformed", "args must be a JSON object")
        return command_id, args, body
