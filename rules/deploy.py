"""Deploying rule bundles remotely: verify, validate, compile, dry-run, persist, swap.

The node's `rules.deploy`, `rules.rollback` and `rules.status` commands call this
(gateway/rules_host.py); a refusal is a `DeployError` with a machine-readable code.

Every step can refuse the bundle with a precise reason; until the final swap nothing about
the running rules changes, so a bad push never leaves the node without rules.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from gateway.kernel.records import iso_time
from gateway.kernel.refusal import Refused
from rules.bundle import BundleError, locate_rule, parse_bundle
from rules.compiler import CompiledBundle, compile_bundle
from rules.engine import EngineStats
from rules.store import Deployed

if TYPE_CHECKING:  # cryptography (7 MB resident) loads when a signed bundle arrives
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

logger = logging.getLogger(__name__)


class DeployError(Refused):
    """A deployment or rollback was refused; `code` is machine-readable, the message why."""


class Engine(Protocol):
    """What the deployer needs of the engine: the running bundle, a dry run and a swap."""

    compiled: CompiledBundle | None
    stats: EngineStats
    disabled: dict[str, str]

    @property
    def version(self) -> int | None: ...

    def dry_run(self, compiled: CompiledBundle) -> list[dict[str, Any]]: ...

    def swap(self, compiled: CompiledBundle | None) -> None: ...


class Store(Protocol):
    """Where deployed bundles are kept (rules.store.RuleStore on the node)."""

    @property
    def max_version(self) -> int: ...

    def current(self) -> Deployed | None: ...

    def previous(self) -> Deployed | None: ...

    def save(self, deployed: Deployed) -> None: ...

    def rollback(self) -> Deployed: ...


class RuleDeployer:
    """Deployments, rollbacks and the status of the running bundle."""

    def __init__(
        self,
        engine: Engine,
        store: Store,
        *,
        trusted: dict[str, Ed25519PublicKey],
        require_signature: bool = True,
        max_bytes: int = 256 * 1024,
    ) -> None:
        self.engine = engine
        self.store = store
        self.trusted = trusted
        self.require_signature = require_signature
        self.max_bytes = max_bytes
        self._lock = asyncio.Lock()  # one deployment at a time
        self.deployed: Deployed | None = None

    # --- pipeline ----------------------------------------------------------------------

    def check(
        self, text: str, signature: str | None, key: str | None, *, min_version: int
    ) -> CompiledBundle:
        """Verify and compile a bundle; raises `DeployError` with the reason."""
        data = text.encode("utf-8")
        if len(data) > self.max_bytes:
            raise DeployError(
                "too_large", f"bundle is {len(data)} bytes; the limit is {self.max_bytes}"
            )
        if signature is not None or key is not None or self.require_signature:
            if not signature or not key:
                raise DeployError("unsigned", "the bundle needs a signature and a key id")
            from rules.signing import SignatureError, verify  # noqa: PLC0415

            try:
                verify(data, signature, key, self.trusted)
            except SignatureError as exc:
                raise DeployError(exc.code, str(exc)) from None
        try:
            bundle = parse_bundle(text)
        except BundleError as exc:
            raise DeployError("invalid_bundle", _at_line(exc)) from None
        if bundle.version <= min_version:
            raise DeployError(
                "stale_version",
                f"version {bundle.version} is not newer than {min_version}, the highest "
                "accepted so far",
            )
        try:
            return compile_bundle(bundle)
        except BundleError as exc:
            if exc.rule is not None:
                pos = locate_rule(text, exc.rule, exc.field)
                exc.line, exc.column = pos if pos else (None, None)
            raise DeployError("compile_error", _at_line(exc)) from None

    async def deploy(self, text: str, signature: str | None, key: str | None) -> dict[str, Any]:
        async with self._lock:
            compiled = self.check(text, signature, key, min_version=self.store.max_version)
            try:
                dry = self.engine.dry_run(compiled)
            except ValueError as exc:
                raise DeployError("dry_run_failed", str(exc)) from None
            deployed = Deployed(
                text=text,
                signature=signature,
                key=key,
                version=compiled.version,
                deployed_at=iso_time(datetime.now(UTC)),
            )
            previous = self.engine.version
            try:
                await asyncio.to_thread(self.store.save, deployed)
            except OSError as exc:
                raise DeployError("storage", f"cannot store the bundle: {exc}") from None
            self.engine.swap(compiled)
            self.deployed = deployed
            logger.info("rules: deployed bundle %d (was %s)", compiled.version, previous)
            return {
                "version": compiled.version,
                "previous_version": previous,
                "rules": len(compiled.rules),
                "dry_run": [d for d in dry if d["holds"]],
                # conditions that cannot be evaluated yet: not an error, but worth knowing
                "missing_data": [d for d in dry if d["holds"] is None],
            }

    def load_stored(self) -> None:
        """At start: run the stored bundle (current, else previous) if it still verifies."""
        for deployed in (self.store.current(), self.store.previous()):
            if deployed is None:
                continue
            try:
                compiled = self.check(
                    deployed.text,
                    deployed.signature,
                    deployed.key,
                    min_version=deployed.version - 1,
                )
            except DeployError as exc:
                logger.error(  # noqa: TRY400 - the reason is the message, no traceback
                    "stored rule bundle %d refused: %s", deployed.version, exc.message
                )
                continue
            self.engine.swap(compiled)
            self.deployed = deployed
            return

    def load_local(self, path: Path) -> None:
        """Run a bundle file from the node's own config (trusted: it is on the box)."""
        try:
            compiled = compile_bundle(parse_bundle(path.read_text(encoding="utf-8")))
        except (OSError, BundleError) as exc:
            raise BundleError(f"{path}: {exc}") from None
        self.engine.swap(compiled)

    # --- the other operations -------------------------------------------------------

    async def rollback(self) -> dict[str, Any]:
        """Run the previous bundle again; the current one becomes previous."""
        async with self._lock:
            previous = self.store.previous()
            if previous is None:
                raise DeployError("no_previous", "there is no previous bundle to roll back to")
            compiled = compile_bundle(parse_bundle(previous.text))
            current = self.engine.version
            await asyncio.to_thread(self.store.rollback)
            self.engine.swap(compiled)
            self.deployed = previous
            return {"version": compiled.version, "rolled_back_from": current}

    def status(self) -> dict[str, Any]:
        stats = self.engine.stats
        return {
            "version": self.engine.version,
            "rules": len(self.engine.compiled.rules) if self.engine.compiled else 0,
            "deployed_at": self.deployed.deployed_at if self.deployed else None,
            "max_version": self.store.max_version,
            "evaluations": stats.evaluations,
            "fired": stats.fired,
            "errors": stats.errors,
            "missing_data": stats.missing,
            "disabled": dict(self.engine.disabled),
        }


def _at_line(exc: BundleError) -> str:
    """A bundle error for a reply: ``line 8:5: rule 2 (b): ...``."""
    return f"line {exc.at()}{exc.message}" if exc.line is not None else exc.message
