"""Output decoders by name: the built-in ones and plugins from entry points.

Plugins register under ``cityneuron.models.decoders``; each entry point names a callable
with a compatible ``api_version`` (models/api.py). One that fails to import, is not
callable, declares another API or takes a built-in's name is reported and skipped; a
package naming it then fails to load with that reason, and the node runs on.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field

from gateway.kernel.plugins import Plugin, PluginFailure, compatible, load_group
from models.api import DECODER_API_VERSION, DecodeFn

logger = logging.getLogger(__name__)

DECODER_GROUP = "cityneuron.models.decoders"


@dataclass
class DecoderRegistry:
    """The decoders a model package may name, by name, and the plugins that failed."""

    decoders: dict[str, DecodeFn] = field(default_factory=dict)
    origins: dict[str, str] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def get(self, name: str) -> DecodeFn:
        """The decoder `name`; a `LookupError` says which ones exist, or why it failed."""
        decoder = self.decoders.get(name)
        if decoder is not None:
            return decoder
        failed = next((f for f in self.failures if f.name == name), None)
        if failed is not None:
            raise LookupError(f"decoder plugin {name!r} ({failed.source}) failed: {failed.reason}")
        known = ", ".join(sorted(self.decoders))
        raise LookupError(
            f"unknown decoder {name!r}: neither built in nor an installed plugin "
            f"(available: {known}, and classification for task classify)"
        )

    def _add(self, plugin: Plugin) -> str | None:
        obj = plugin.obj
        if not callable(obj):
            return f"{obj!r} is not callable"
        version = getattr(obj, "api_version", None)
        if not isinstance(version, str) or not compatible(version, DECODER_API_VERSION):
            return f"written for decoder API {version}, this node offers {DECODER_API_VERSION}"
        if plugin.name in self.decoders or plugin.name == "classification":
            return (
                f"the name {plugin.name!r} is taken by {self.origins.get(plugin.name, 'built-in')}"
            )
        self.decoders[plugin.name] = obj
        self.origins[plugin.name] = plugin.source
        return None


def builtin_decoders() -> DecoderRegistry:
    from models.decoders import BUILTIN_DECODERS  # noqa: PLC0415 - OpenCV

    registry = DecoderRegistry()
    for name, fn in BUILTIN_DECODERS.items():
        registry.decoders[name] = fn
        registry.origins[name] = "built-in"
    return registry


def load_decoders(*, plugins: bool = True) -> DecoderRegistry:
    """The built-in decoders and, unless `plugins` is false, the installed plugins."""
    registry = builtin_decoders()
    if plugins:
        for item in load_group(DECODER_GROUP):
            if isinstance(item, PluginFailure):
                registry.failures.append(item)
                continue
            reason = registry._add(item)
            if reason is not None:
                registry.failures.append(PluginFailure(item.name, item.source, reason))
        for failure in registry.failures:
            logger.error(
                "decoder plugin %s (%s) skipped: %s", failure.name, failure.source, failure.reason
            )
    return registry


@functools.cache
def installed_decoders() -> DecoderRegistry:
    """`load_decoders()`, once per process (entry points do not change while it runs)."""
    return load_decoders()
