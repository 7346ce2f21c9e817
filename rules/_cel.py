"""The CEL engine, imported without its interactive command line.

The ``cel`` package's ``__init__`` imports ``cel.cli`` (a REPL built on prompt_toolkit,
rich, typer and pygments): about 25 MB of resident memory and 0.15 s of start-up that a
node never uses. An empty module registered as ``cel.cli`` first keeps it out; the
expression engine (the Rust extension) and ``cel.stdlib`` load as usual.
"""

from __future__ import annotations

import sys
import types

if "cel" not in sys.modules:
    sys.modules.setdefault("cel.cli", types.ModuleType("cel.cli"))

import cel

__all__ = ["cel"]
