"""Paths written in a config file are relative to that file, not to the working directory.

The node validates its config with the context ``{"config_dir": <folder of the file>}``;
a field typed `ConfigPath` (or validated with `relative_to_config`) is resolved against it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator, ValidationInfo

CONFIG_DIR = "config_dir"  # key of the validation context


def config_dir(info: ValidationInfo) -> Path | None:
    """The folder of the config file being validated, if the validation has one."""
    base = (info.context or {}).get(CONFIG_DIR)
    return Path(base) if base else None


def relative_to_config(value: Path, info: ValidationInfo) -> Path:
    """`value`, made relative to the config file's folder when it is relative."""
    base = config_dir(info)
    if base is not None and not value.is_absolute():
        return base / value
    return value


ConfigPath = Annotated[Path, AfterValidator(relative_to_config)]
