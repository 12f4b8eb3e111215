"""Turn a configuration file into plain data: JSON read as V2Ray 4.34 reads it (``//``, ``#``
and ``/* */`` comments outside strings; a comment left open at the end and text after the
first JSON value are ignored, with a warning), or YAML; syntax errors become ConfigError with
line and column. Files whose name does not end in .yaml or .yml are JSON, as for V2Ray."""

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

FORMATS = {".yaml": "yaml", ".yml": "yaml"}


class ParsedObject(dict):
    """A JSON/YAML object that remembers the keys it saw more than once (last one wins)."""

    duplicates: tuple[Any, ...] = ()


def read_file(path: str | os.PathLike[str], name: str,
              warnings: list[str] | None = None) -> Any:
    """Read and parse ``path``: YAML for .yaml/.yml, else JSON (V2Ray reads any other name as
    JSON too, and refuses only .pb for protobuf); messages say ``name``. Warnings (lines
    without the file name) are added to ``warnings`` when given."""
    suffix = Path(path).suffix.lower()
    if suffix == ".pb":
        raise ConfigError([f"{name}: protobuf configurations (.pb) are not supported by "
                           "revproxy: give the JSON"])
    fmt = FORMATS.get(suffix, "json")
    try:
        data = Path(path).read_bytes()
    except IsADirectoryError:
        raise ConfigError([f"{name}: is a directory, not a configuration file"]) from None
    except OSError as exc:
        raise ConfigError([f"{name}: cannot read: {exc.strerror or exc}"]) from None
    except ValueError as exc:  # e.g. an embedded NUL in the path
        raise ConfigError([f"{name}: cannot read: {exc}"]) from None
    return parse_bytes(data, name, fmt, warnings)


def parse_bytes(data: bytes, source: str, fmt: str, warnings: list[str] | None = None) -> Any:
    """Decode UTF-8 (a BOM is allowed) and parse as ``fmt`` ("json" or "yaml")."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - data.rfind(b"\n", 0, exc.start)
        raise ConfigError([f"{source}: line {line} column {column}: not valid UTF-8 "
                           f"(byte 0x{data[exc.start]:02x})"]) from None
    return parse_text(text, source, fmt, warnings)


def parse_text(text: str, source: str, fmt: str, warnings: list[str] | None = None) -> Any:
    """Parse ``text`` as ``fmt``; problems name ``source``, warnings go to ``warnings``."""
    found: list[str] = [] if warnings is None else warnings
    try:
        return _parse_json(text, found) if fmt == "json" else _parse_yaml(text)
    except _SyntaxProblem as exc:
        raise ConfigError([f"{source}: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{source}: nested too deeply"]) from None


class _SyntaxProblem(Exception):
    pass


_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|//[^\n]*|#[^\n]*|/\*.*?\*/|/\*.*', re.DOTALL)
_NOT_NEWLINE = re.compile(r"[^\n]")
_DECODER = json.JSONDecoder(object_pairs_hook=lambda pairs: _json_object(pairs),
                            parse_constant=lambda name: _reject_constant(name))


def strip_comments(text: str, unterminated: list[int] | None = None) -> str:
    """Blank out comments, keeping every line and column where it was. A ``/*`` never
    closed runs to the end, as in V2Ray's reader; its offset is added to ``unterminated``."""

    def blank(match: re.Match[str]) -> str:
        token = match.group()
        if token.startswith('"'):
            return token
        if token.startswith("/*") and not (len(token) >= 4 and token.endswith("*/")):
            if unterminated is not None:
                unterminated.append(match.start())
        return _NOT_NEWLINE.sub(" ", token)

    return _JSON_TOKEN.sub(blank, text)


def _parse_json(text: str, warnings: list[str]) -> Any:
    """One JSON value, as Go's json.Decoder reads V2Ray's config: what follows it is not
    read (a warning says so)."""
    open_comment: list[int] = []
    plain = strip_comments(text, open_comment)
    start = len(plain) - len(plain.lstrip(" \t\n\r"))
    try:
        data, end = _DECODER.raw_decode(plain, start)
    except json.JSONDecodeError as exc:
        where = f"line {exc.lineno} column {exc.colno}"
        if open_comment and exc.pos >= len(plain.rstrip()):
            line, column = _position(text, open_comment[0])
            raise _SyntaxProblem(f"{where}: {exc.msg} (the /* comment at line {line} "
                                 f"column {column} is never closed)") from None
        raise _SyntaxProblem(f"{where}: {exc.msg}") from None
    except ValueError as exc:  # parse_constant, or an integer too long to convert
        raise _SyntaxProblem(f"invalid JSON: {exc}") from None
    rest = plain[end:]
    if rest.strip(" \t\n\r"):
        line, column = _position(plain, end + len(rest) - len(rest.lstrip(" \t\n\r")))
        warnings.append(f"line {line} column {column}: the text after the configuration is "
                        "ignored (as V2Ray does)")
    elif open_comment:
        line, column = _position(text, open_comment[0])
        warnings.append(f"line {line} column {column}: the /* comment is never closed (V2Ray "
                        "ignores the rest of the file too)")
    return data


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
