"""YAML loading that remembers where every value came from and substitutes variables.

Values are plain dicts/lists (subclasses carrying line numbers), so any validator can
consume them, and `locate` maps a validation error's location back to ``file:line:col``.

Substitution in string values:

* ``${NAME}`` - environment variable (an error if unset), ``${NAME:-default}`` with a
  default;
* ``${file:/path}`` - the contents of a file, trailing newline removed (secrets kept out
  of the config file);
* ``${cred:name}`` - a systemd credential, read from ``$CREDENTIALS_DIRECTORY/name``;
* ``$$`` - a literal ``$``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml.constructor import ConstructorError
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

Position = tuple[int, int]  # 1-based line and column


class LineDict(dict[Any, Any]):
    """A mapping that knows the position of itself and of each of its keys."""

    pos: Position = (0, 0)
    key_pos: dict[Any, Position]


class LineList(list[Any]):
    """A sequence that knows the position of itself and of each of its items."""

    pos: Position = (0, 0)
    item_pos: list[Position]


@dataclass
class SourceError(Exception):
    """A problem found while reading a YAML file, with where it is."""

    file: str
    message: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}"
            if self.column is not None:
                where += f":{self.column}"
        return f"{where}: {self.message}"


_VAR = re.compile(r"\$\$|\$\{([^}]*)\}")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass
class _Substituter:
    file: str
    env: Mapping[str, str]
    base_dir: Path
    secrets: list[str] = field(default_factory=list)
    enabled: bool = True

    def __call__(self, text: str, pos: Position) -> str:
        if "$" not in text or not self.enabled:
            return text
        return _VAR.sub(lambda m: self._one(m, pos), text)

    def _one(self, match: re.Match[str], pos: Position) -> str:
        if match.group(0) == "$$":
            return "$"
        expr = match.group(1)
        kind, sep, arg = expr.partition(":")
        if sep and kind == "file":
            return self._read(Path(arg), expr, pos)
        if sep and kind == "cred":
            cred_dir = self.env.get("CREDENTIALS_DIRECTORY")
            if not cred_dir:
                raise self._error(
                    f"${{{expr}}}: CREDENTIALS_DIRECTORY is not set "
                    "(systemd sets it when the unit has LoadCredential=)",
                    pos,
                )
            return self._read(Path(cred_dir) / arg, expr, pos)
        name, has_default, default = expr.partition(":-")
        if not _ENV_NAME.match(name):
            raise self._error(
                f"${{{expr}}} is not a valid substitution "
                "(use ${NAME}, ${NAME:-default}, ${file:/path} or ${cred:name}; $$ for '$')",
                pos,
            )
        value = self.env.get(name)
        if value is None:
            if has_default:
                return default
            raise self._error(f"environment variable {name} is not set (used as ${{{name}}})", pos)
        if value:
            self.secrets.append(value)  # an environment variable may hold a password
        return value

    def _read(self, path: Path, expr: str, pos: Position) -> str:
        if not path.is_absolute():
            path = self.base_dir / path
        try:
            value = path.read_text(encoding="utf-8").rstrip("\r\n")
        except OSError as exc:
            raise self._error(f"${{{expr}}}: cannot read {path}: {exc.strerror}", pos) from exc
        self.secrets.append(value)
        return value

    def _error(self, message: str, pos: Position) -> SourceError:
        return SourceError(self.file, message, pos[0], pos[1])


def _pos(node: Node) -> Position:
    return (node.start_mark.line + 1, node.start_mark.column + 1)


class _Loader(yaml.SafeLoader):
    substitute: _Substituter

    def construct_line_mapping(self, node: MappingNode) -> LineDict:
        self.flatten_mapping(node)
        result = LineDict()
        result.pos = _pos(node)
        result.key_pos = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    "found an unhashable key",
                    key_node.start_mark,
                ) from exc
            if key in result:
                raise SourceError(
                    self.substitute.file,
                    f"duplicate key {key!r} (first at line {result.key_pos[key][0]})",
                    *_pos(key_node),
                )
            result[key] = self.construct_object(value_node, deep=True)
            result.key_pos[key] = _pos(key_node)
        return result

    def construct_line_sequence(self, node: SequenceNode) -> LineList:
        result = LineList(self.construct_object(child, deep=True) for child in node.value)
        result.pos = _pos(node)
        result.item_pos = [_pos(child) for child in node.value]
        return result

    def construct_substituted_str(self, node: ScalarNode) -> str:
        text = self.construct_scalar(node)
        return self.substitute(str(text), _pos(node))


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_line_mapping)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_line_sequence)
_Loader.add_constructor("tag:yaml.org,2002:str", _Loader.construct_substituted_str)


@dataclass(frozen=True, slots=True)
class Source:
    """A loaded YAML document and where it came from."""

    file: str
    data: Any
    secrets: tuple[str, ...] = ()

    def locate(self, loc: Sequence[str | int]) -> Position | None:
        """Position of the value at `loc` (a validation error's location), or of the
        nearest enclosing value that exists in the file."""
        node: Any = self.data
        best: Position | None = getattr(node, "pos", None)
        for part in loc:
            if isinstance(node, LineDict):
                if part in node:
                    best = node.key_pos[part]
                    node = node[part]
                    continue
                # tagged unions add the tag (e.g. "modbus") to the location
                if isinstance(part, str) and node.get("type") == part:
                    continue
                break
            if isinstance(node, LineList) and isinstance(part, int) and 0 <= part < len(node):
                best = node.item_pos[part]
                node = node[part]
                continue
            break
        return best


def load_text(
    text: str, file: str, env: Mapping[str, str] | None = None, *, substitute: bool = True
) -> Source:
    """Parse YAML `text` (named `file` in messages), substituting variables from `env`
    (unless not `substitute`: a rule bundle's ``$`` is its own)."""
    subst = _Substituter(
        file=file,
        env=os.environ if env is None else env,
        base_dir=Path(file).parent,
    )
    try:
        loader = _Loader(text)
    except yaml.reader.ReaderError as exc:  # a control character: found before parsing
        line = text.count("\n", 0, exc.position) + 1
        column = exc.position - (text.rfind("\n", 0, exc.position) + 1) + 1
        raise SourceError(
            file,
            f"invalid YAML: control character #x{exc.character:04x} is not allowed "
            '(remove it, or quote it as an escape like "\\x01")',
            line,
            column,
        ) from None
    subst.enabled = substitute
    loader.substitute = subst
    try:
        data = loader.get_single_data()
    except SourceError:
        raise
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        problem = " ".join(p for p in (exc.context, exc.problem) if p) or str(exc)
        raise SourceError(
            file,
            f"invalid YAML: {problem}",
            mark.line + 1 if mark else None,
            mark.column + 1 if mark else None,
        ) from exc
    except yaml.YAMLError as exc:
        raise SourceError(file, f"invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    return Source(file=file, data=data, secrets=tuple(subst.secrets))


def load_file(path: str | Path, env: Mapping[str, str] | None = None) -> Source:
    """Read and parse a YAML file; a missing or unreadable file is a `SourceError`."""
    name = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise SourceError(name, "file not found") from exc
    except IsADirectoryError as exc:
        raise SourceError(name, "is a directory, not a file") from exc
    except UnicodeDecodeError as exc:
        raise SourceError(name, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    except OSError as exc:
        raise SourceError(name, f"cannot read: {exc.strerror}") from exc
    return load_text(text, name, env)


M = TypeVar("M", bound=BaseModel)


def load_model(path: Path, model: type[M]) -> M:
    """Load YAML file `path` into pydantic `model`; the first problem is a `SourceError`
    with its line, e.g. for device profiles and rule bundles."""
    source = load_file(path)
    try:
        return model.model_validate(source.data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        err = errors[0]
        pos = source.locate(err["loc"])
        loc = ".".join(str(p) for p in err["loc"])
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise SourceError(
            str(path),
            f"{loc}: {err['msg']}{more}" if loc else f"{err['msg']}{more}",
            pos[0] if pos else None,
            pos[1] if pos else None,
        ) from None


def published_schema(model: type[BaseModel], name: str) -> str:
    """The JSON Schema of `model` as published in docs/schemas/{name}.schema.json."""
    schema = model.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = f"https://cityneuron.example/schemas/v1/{name}.schema.json"
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"
