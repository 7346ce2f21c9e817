"""Inbound commands: validation, routing to handlers, and the reply each one gets.

A command is a JSON object ``{"id": "...", "args": {...}}`` (both optional) published to
``{prefix}/{node}/cmd/{name}`` or ``{prefix}/fleet/{group}/cmd/{name}``. Every command
gets exactly one reply ``{"id", "command_id", "node", "command", "ok", "result" | "error"}``;
a command that is malformed, unknown or too large gets an error reply and changes nothing.
A redelivered command (same id and the same content) is answered from a bounded cache
instead of being run twice; the same id with other content is refused (`duplicate_id`).
Payloads are bounded in size and in nesting depth before anything looks inside them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from gateway.kernel.records import new_id
from gateway.kernel.refusal import Refused

logger = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], Awaitable[dict[str, Any]]]

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


class CommandRouter:
    """Named command handlers plus the rules every command goes through."""

    def __init__(self, *, max_bytes: int = 1024 * 1024, remember: int = 256) -> None:
        self.max_bytes = max_bytes
        self._handlers: dict[str, Handler] = {}
        self._recent: OrderedDict[str, tuple[str, Reply]] = OrderedDict()  # id -> digest
        self._remember = remember
        self.handled = 0
        self.refused = 0

    def register(self, name: str, handler: Handler) -> Callable[[], None]:
        """Add a handler; returns a function that removes it again."""
        if name in self._handlers:
            raise ValueError(f"command {name!r} already has a handler")
        self._handlers[name] = handler

        def remove() -> None:
            if self._handlers.get(name) is handler:
                del self._handlers[name]

        return remove

    @property
    def names(self) -> list[str]:
        return sorted(self._handlers)

    async def handle(self, name: str, payload: bytes) -> Reply:
        """Run command `name` with raw `payload`; never raises for a bad command."""
        try:
            command_id, args = self._parse(name, payload)
        except CommandError as exc:
            self.refused += 1
            logger.warning("command %s refused: %s", name, exc.message)
            return Reply(name, None, ok=False, error_code=exc.code, error=exc.message)
        digest = hashlib.sha256(name.encode() + b"\0" + payload).hexdigest()
        if command_id is not None and command_id in self._recent:
            seen, cached = self._recent[command_id]
            if seen == digest:
                logger.info("command %s %s is a repeat; answering from cache", name, command_id)
                return cached
            self.refused += 1
            logger.warning(
                "command %s refused: id %s was used for another command", name, command_id
            )
            return Reply(
                name,
                command_id,
                ok=False,
                error_code="duplicate_id",
                error=f"id {command_id!r} was already used for another command; use a new id",
            )
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
        if command_id is not None:
            self._recent[command_id] = (digest, reply)
            while len(self._recent) > self._remember:
                self._recent.popitem(last=False)
        return reply

    def _parse(self, name: str, payload: bytes) -> tuple[str | None, dict[str, Any]]:
        if name not in self._handlers:
            known = ", ".join(self.names)
            raise CommandError("unknown_command", f"unknown command {name!r} (known: {known})")
        if len(payload) > self.max_bytes:
            raise CommandError(
                "too_large", f"command is {len(payload)} bytes; the limit is {self.max_bytes}"
            )
        if not payload.strip():
            return None, {}
        body = parse_json(payload)
        if not isinstance(body, dict):
            raise CommandError("malformed", "payload must be a JSON object")
        unknown = set(body) - {"id", "args", "reply_to", "correlation_id"}
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
        return command_id, args
