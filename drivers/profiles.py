"""Device profiles: a shipped one by name, or a YAML file by path, loaded once.

A profile describes a device model as data (the Modbus register map, the serial frame
format). The config names it in a `ProfileRef` field; the file is read when the config's
files are loaded (`DriverConfig.load_files`), not while the config is validated, and a
profile edited on disk is read again.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Annotated, Generic, TypeVar

from pydantic import AfterValidator, BaseModel, ValidationInfo

from gateway.kernel.config_paths import config_dir
from gateway.kernel.yamlsource import SourceError, load_model

M = TypeVar("M", bound=BaseModel)


def is_path(ref: str) -> bool:
    """Whether `ref` names a file (``./my.yaml``, ``/etc/x.yaml``) rather than a shipped profile."""
    return "/" in ref or ref.endswith((".yaml", ".yml"))


def _relative(value: str, info: ValidationInfo) -> str:
    base = config_dir(info)
    if base is not None and is_path(value) and not Path(value).is_absolute():
        return str(base / value)
    return value


ProfileRef = Annotated[str, AfterValidator(_relative)]
"""A config field naming a profile: a shipped name, or a path relative to the config file."""


class ProfileLoader(Generic[M]):
    """Finds and loads one kind of profile (cached by file and modification time)."""

    def __init__(
        self, model: type[M], shipped_dir: Path, *, kind: str, error: type[ValueError]
    ) -> None:
        self.model = model
        self.shipped_dir = shipped_dir
        self.kind = kind
        self.error = error
        self._cached = lru_cache(maxsize=64)(self._read)

    def shipped(self) -> list[str]:
        """Names of the profiles shipped with the driver."""
        return sorted(p.stem for p in self.shipped_dir.glob("*.yaml"))

    def resolve(self, ref: str, base_dir: Path | None = None) -> Path:
        """The file of profile `ref`: a shipped name, or a path (relative to `base_dir`)."""
        if not is_path(ref):
            path = self.shipped_dir / f"{ref}.yaml"
            if not path.exists():
                raise self.error(
                    f"no shipped {self.kind} {ref!r} (shipped: {', '.join(self.shipped())}); "
                    "or give a path to your own profile file"
                )
            return path
        path = Path(ref)
        if not path.is_absolute() and base_dir is not None:
            path = base_dir / path
        return path

    def load(self, ref: str, base_dir: Path | None = None) -> M:
        """The validated profile named or located by `ref`; raises the loader's error."""
        path = self.resolve(ref, base_dir)
        try:
            mtime = path.stat().st_mtime
        except OSError as exc:
            raise self.error(f"profile {path}: {exc.strerror}") from None
        return self._cached(path, mtime)

    def _read(self, path: Path, mtime: float) -> M:
        del mtime  # part of the cache key: an edited file is read again
        try:
            return load_model(path, self.model)
        except SourceError as exc:
            raise self.error(f"profile {exc}") from None
