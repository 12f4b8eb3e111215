"""Several configuration files into one document, by V2Ray 4.34's rules for
``v2ray -config a.json -config b.json`` and ``-confdir DIR`` (its JSON loader, ``jsonem``,
with ``conf.Config.Override``; ``v2ctl config`` merges the same way):

- the files are the ``-config`` ones in the order given, then each confdir's regular files
  whose name ends in ``.json``, sorted by name;
- the first file is taken whole; each later one replaces whole top-level sections (``log``,
  ``routing``, ``dns``, ``transport``, ``policy``, ``api``, ``stats``, ``reverse``, the
  deprecated ``inbound``/``outbound``/``inboundDetour``/``outboundDetour``, and revproxy's
  ``server``): sections are not merged key by key;
- ``inbounds``/``outbounds`` of a later file: a list of several items replaces the list; a
  single item replaces the item with the same tag, or else is appended (inbounds) or put
  first (outbounds, so it becomes the default), except that a file whose path contains
  "tail" appends its outbound; an empty list changes nothing;
- the deprecated top-level ``port`` is read from the first file only.

``Locator`` remembers where each part of the merged document came from, so that messages name
the file and the path in that file.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from revproxy.config.errors import ConfigError, format_problem, prefixes, show
from revproxy.config.reader import ParsedObject

SECTIONS = ("log", "routing", "dns", "transport", "policy", "api", "stats", "reverse",
            "server", "inbound", "outbound", "inboundDetour", "outboundDetour")
LISTS = ("inbounds", "outbounds")
_CANONICAL = {name.lower(): name for name in (*SECTIONS, *LISTS, "port")}


class ConfigSource(str):
    """``Config.source``: prints as the files read (separated by spaces, as V2Ray prints
    them), and keeps the ``-c`` paths and confdirs so that a reload reads them again (new
    files in a confdir included)."""

    files: tuple[str, ...]
    confdirs: tuple[str, ...]

    def __new__(cls, text: str, files: Sequence[str] = (),
                confdirs: Sequence[str] = ()) -> ConfigSource:
        self = super().__new__(cls, text)
        self.files = tuple(files) if files or confdirs else (text,)
        self.confdirs = tuple(confdirs)
        return self

    @classmethod
    def of(cls, files: Sequence[str | os.PathLike[str]],
           confdirs: Sequence[str | os.PathLike[str]] = ()) -> ConfigSource:
        names = [os.fspath(path) for path in files]
        dirs = [os.fspath(path) for path in confdirs]
        return cls(" ".join(names + dirs), names, dirs)

    def paths(self) -> list[str]:
        """The files to read, in order (raises ConfigError for a confdir that cannot be
        listed, or when there is no file at all)."""
        found = list(self.files)
        for directory in self.confdirs:
            try:
                entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
            except NotADirectoryError:
                raise ConfigError([f"{directory}: the confdir is not a directory"]) from None
            except OSError as exc:
                raise ConfigError([f"{directory}: cannot read the confdir: "
                                   f"{exc.strerror or exc}"]) from None
            found += [os.path.join(directory, entry.name) for entry in entries
                      if entry.name.endswith(".json") and entry.is_file()]
        if not found:
            where = ", ".join(self.confdirs)
            raise ConfigError([f"{where}: no configuration file (*.json) in the confdir"])
        return found


def display_names(paths: Sequence[str]) -> list[str]:
    """How messages name each file: its base name, or its whole path when two files share a
    base name."""
    bases = [os.path.basename(path) or path for path in paths]
    return [base if bases.count(base) == 1 else path
            for base, path in zip(bases, paths, strict=True)]


class Locator:
    """Maps a path of the merged document to (file name, path in that file); parts are
    registered by path prefix, and a path no part covers belongs to the first file."""

    __slots__ = ("default", "_origins")

    def __init__(self, default: str) -> None:
        self.default = default
        self._origins: dict[str, tuple[str, str]] = {}

    def add(self, path: str, name: str, original: str) -> None:
        self._origins[path] = (name, original)

    def __call__(self, path: str) -> tuple[str, str]:
        for prefix in prefixes(path):
            if prefix in self._origins:
                name, original = self._origins[prefix]
                return name, original + path[len(prefix):]
        return self.default, path


def merge(documents: Sequence[tuple[str, str, Any]], problems: list[str],
          warnings: list[str]) -> tuple[Any, Locator]:
    """Merge (name, path, data) documents in order. Problems and warnings that belong to one
    file are added as whole lines."""
    locator = Locator(documents[0][0] if documents else "")
    if len(documents) == 1:
        return documents[0][2], locator
    merged: dict[str, Any] = ParsedObject()
    for number, (name, path, data) in enumerate(documents):
        if not isinstance(data, dict):
            problems.append(format_problem(name, "", f"the top level must be an object, got "
                                                     f"{show(data)}"))
            continue
        for key in getattr(data, "duplicates", ()):
            warnings.append(format_problem(name, "", f"warning: duplicate key {show(key)}: the "
                                                     "last one is used (as V2Ray does)"))
        for key, value in data.items():
            canonical = _CANONICAL.get(key.lower(), key) if isinstance(key, str) else key
            if value is None:
                continue
            if canonical == "port" and number:
                warnings.append(format_problem(name, str(key), "warning: ignored: only the "
                                               "first file's port is read (as V2Ray does)"))
            elif canonical in LISTS and number and isinstance(value, list):
                _merge_list(merged, locator, canonical, value, name, path, str(key))
            else:
                merged[canonical] = value
                locator.add(str(canonical), name, str(key))
                if canonical in LISTS and isinstance(value, list):
                    for index in range(len(value)):
                        locator.add(f"{canonical}[{index}]", name, f"{key}[{index}]")
    return merged, locator


def _merge_list(merged: dict[str, Any], locator: Locator, key: str, items: list[Any],
                name: str, path: str, spelled: str) -> None:
    current = merged.get(key)
    if not items:
        return
    if not (isinstance(current, list) and current and len(items) == 1):
        merged[key] = list(items)
        locator.add(key, name, spelled)
        for index in range(len(items)):
            locator.add(f"{key}[{index}]", name, f"{spelled}[{index}]")
        return
    origins = [locator(f"{key}[{index}]") for index in range(len(current))]
    tag = _tag(items[0])
    match = next((index for index, item in enumerate(current) if _tag(item) == tag), None)
    if match is not None:
        current = current[:match] + [items[0]] + current[match + 1:]
        origins[match] = (name, f"{spelled}[0]")
    elif key == "inbounds" or "tail" in path.lower():
        current = current + [items[0]]
        origins.append((name, f"{spelled}[0]"))
    else:
        current = [items[0]] + current
        origins.insert(0, (name, f"{spelled}[0]"))
    merged[key] = current
    for index, (origin_name, original) in enumerate(origins):
        locator.add(f"{key}[{index}]", origin_name, original)


def _tag(item: Any) -> str | None:
    """An inbound's or outbound's tag as V2Ray compares them ("" when it has none); None when
    it is not readable (it then matches nothing)."""
    if not isinstance(item, dict):
        return None
    tag: Any = ""
    for key, value in item.items():
        if isinstance(key, str) and key.lower() == "tag":
            tag = "" if value is None else value
    return tag if isinstance(tag, str) else None
