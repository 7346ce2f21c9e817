"""Loading plugins from entry points without letting a broken one stop the node."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib.metadata import entry_points


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin that could not be loaded, and why."""

    name: str
    source: str
    reason: str


@dataclass(frozen=True, slots=True)
class Plugin:
    """An entry point that imported: its name, where it comes from, and the object."""

    name: str
    source: str
    obj: object


def load_group(group: str) -> Iterator[Plugin | PluginFailure]:
    """Every entry point of `group`, imported; an import error becomes a `PluginFailure`."""
    for ep in entry_points(group=group):
        source = f"{ep.dist.name if ep.dist else '?'} ({ep.value})"
        try:
            obj = ep.load()
        except Exception as exc:  # noqa: BLE001 - a broken plugin must not stop the node
            yield PluginFailure(ep.name, source, f"import failed: {type(exc).__name__}: {exc}")
            continue
        yield Plugin(ep.name, source, obj)


def compatible(plugin_api: str, host_api: str) -> bool:
    """Whether a plugin written for API `plugin_api` can run on a host offering `host_api`
    (``"MAJOR.MINOR"``: the same major, a minor not newer than the host's)."""
    try:
        p_major, p_minor = (int(p) for p in plugin_api.split("."))
        h_major, h_minor = (int(p) for p in host_api.split("."))
    except ValueError:
        return False
    return p_major == h_major and p_minor <= h_minor
