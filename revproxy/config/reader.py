"""Turn a configuration file into plain data: JSON with V2Ray's comments (``//``, ``#``,
``/* */`` outside strings), or YAML; syntax errors become ConfigError with line and column."""

from __future__ import annotations

import functools
import json
import os
import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from revproxy.config.errors import ConfigError

FORMATS = {".json": "json", ".jsonc": "json", ".yaml": "yaml", ".yml": "yaml"}


class ParsedObject(dict):
    """A JSON/YAML object that remembers the keys it saw more than once (last one wins)."""

    duplicates: tuple[Any, ...] = ()


def read_file(path: str | os.PathLike[str], name: str) -> Any:
    """Read and parse ``path`` (the format follows its extension); messages say ``name``."""
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ConfigError([f"{name}: unknown file type (expected .json, .yaml or .yml)"])
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory, not a configuration file"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise ConfigError([f"{name}: cannot read: {exc}"]) from None
    return parse_bytes(data, name, fmt)


def parse_bytes(data: bytes, source: str, fmt: str) -> Any:
    """Decode UTF-8 (a BOM is allowed) and parse as ``fmt`` ("json" or "yaml")."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError([f"{source}: line {line} column {column}: not valid UTF-8 "
                           f"(byte 0x{data[exc.start]:02x})"]) from None
    return parse_text(text, source, fmt)


def parse_text(text: str, source: str, fmt: str) -> Any:
    try:
        return _parse_json(text) if fmt == "json" else _parse_yaml(text)
    except _SyntaxProblem as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply"]) from None


class _SyntaxProblem(Exception):
    pass


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|#[^\n]*|/\*.*?\*/|/\*', re.DOTALL)
_NOT_NEWLINE = re.compile(r"[^\n]")


def strip_comments(text: str) -> str:
    """Blank out comments, keeping every line and column where it was."""

    def blank(match: re.Match[str]) -> str:
        token = match.group()
        if token.startswith('"'):
            return token
        if token == "/*":
            line, column = _position(text, match.start())
            raise _SyntaxProblem(f"line {line} column {column}: unterminated /* comment")
        return _NOT_NEWLINE.sub(" ", token)

    return _JSON_TOKEN.sub(blank, text)


def _parse_json(text: str) -> Any:
    try:
        return json.loads(strip_comments(text), object_pairs_hook=_json_object,
                          parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise _SyntaxProblem(f"line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except ValueError as exc:  # parse_constant, or an integer too long to convert
        raise _SyntaxProblem(f"invalid JSON: {exc}") from None


def _json_object(pairs: list[tuple[str, Any]]) -> ParsedObject:
    obj = ParsedObject(pairs)
    if len(obj) != len(pairs):
        counts = Counter(key for key, _ in pairs)
        obj.duplicates = tuple(key for key, count in counts.items() if count > 1)
    return obj


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed")


@functools.cache
def _yaml_loader() -> type:
    """A SafeLoader that records duplicate keys. PyYAML is imported only for YAML files:
    every worker is forked from the master, so a module loaded there costs each of them."""
    import yaml

    class YamlLoader(yaml.SafeLoader):
        pass

    def yaml_map(loader: YamlLoader, node: yaml.MappingNode) -> Iterator[ParsedObject]:
        obj = ParsedObject()
        yield obj
        seen: list[Any] = []
        duplicates: list[Any] = []
        for key_node, _ in node.value:
            if key_node.tag != "tag:yaml.org,2002:merge":
                key = loader.construct_object(key_node)
                (duplicates if key in seen else seen).append(key)
        obj.update(loader.construct_mapping(node))
        obj.duplicates = tuple(duplicates)

    YamlLoader.add_constructor("tag:yaml.org,2002:map", yaml_map)
    return YamlLoader


def _parse_yaml(text: str) -> Any:
    import yaml

    try:
        return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: plain data only
    except yaml.MarkedYAMLError as exc:
        where = ""
        if exc.problem_mark is not None:
            where = f"line {exc.problem_mark.line + 1} column {exc.problem_mark.column + 1}: "
        what = "; ".join(str(p) for p in (exc.context, exc.problem) if p)
        raise _SyntaxProblem(f"{where}{what or 'invalid YAML'}") from None
    except yaml.YAMLError as exc:
        raise _SyntaxProblem(f"invalid YAML: {exc}") from None
    except ValueError as exc:  # an integer too long to convert
        raise _SyntaxProblem(f"invalid YAML: {exc}") from None


def _position(text: str, offset: int) -> tuple[int, int]:
    return text.count("\n", 0, offset) + 1, offset - text.rfind("\n", 0, offset)
