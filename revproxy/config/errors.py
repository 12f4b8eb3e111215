"""Problem reporting for configuration loading: the ConfigError users see, the Report that
collects problems (errors) and warnings by path, and the path-aware Node the parsers report
through. Every line says ``file: path: message`` (warnings: ``file: path: warning: message``)."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from typing import Any


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one line per problem and
    ``warnings`` the warning lines found on the way (shown with the problems)."""

    def __init__(self, problems: Iterable[str], warnings: Iterable[str] = ()) -> None:
        self.problems: list[str] = [one_line(p) for p in problems]
        self.warnings: list[str] = [one_line(w) for w in warnings]
        super().__init__("\n".join(self.problems))


class Invalid(Exception):
    """Raised by a value parser; the message is reported at the value's path."""


Locate = Callable[[str], tuple[str, str]]


class Report:
    """What loading found: problems (the configuration is refused) and warnings (it loads),
    each as (path, message). ``locate`` turns a path of the (merged) document into the file
    and the path in that file that the value came from."""

    __slots__ = ("problems", "warnings", "_locate", "_aliases")

    def __init__(self, locate: Locate) -> None:
        self.problems: list[tuple[str, str]] = []
        self.warnings: list[tuple[str, str]] = []
        self._locate = locate
        self._aliases: dict[str, str] = {}

    def alias(self, path: str, original: str) -> None:
        """The value at ``path`` is a copy of the one at ``original`` (say, V2Ray's global
        ``transport`` settings copied into a stream): messages point at the original."""
        self._aliases[path] = original

    def where(self, path: str) -> tuple[str, str]:
        """The file and the path in it that the value at ``path`` came from."""
        for prefix in prefixes(path):
            if prefix in self._aliases:
                path = self._aliases[prefix] + path[len(prefix):]
                break
        return self._locate(path)

    def problem_lines(self) -> list[str]:
        return _unique(format_problem(*self.where(path), message)
                       for path, message in self.problems)

    def warning_lines(self) -> list[str]:
        return _unique(format_problem(*self.where(path), f"warning: {message}")
                       for path, message in self.warnings)

    def describe(self, path: str, seen_from: str = "") -> str:
        """``path`` as a message about the value at ``seen_from`` names it: its path in its
        file, and that file when it is not the one the message is about."""
        name, where = self.where(path)
        here, _ = self.where(seen_from)
        return where if name == here else f"{where} (in {name})"


def prefixes(path: str) -> list[str]:
    """``path`` and each of its parents, longest first ("a.b[1]", "a.b", "a")."""
    found = [path]
    while True:
        cut = max(path.rfind("."), path.rfind("["))
        if cut <= 0:
            return found
        path = path[:cut]
        found.append(path)


def _unique(lines: Iterable[str]) -> list[str]:
    """The lines in order, each once (a value copied to several places is reported once)."""
    return list(dict.fromkeys(lines))


class Node:
    """A position in the document; problems and warnings reported here are recorded with
    its path."""

    __slots__ = ("path", "_report")

    def __init__(self, report: Report, path: str = "") -> None:
        self.path = path
        self._report = report

    def at(self, key: str | int) -> Node:
        if isinstance(key, int):
            return Node(self._report, f"{self.path}[{key}]")
        return Node(self._report, f"{self.path}.{key}" if self.path else key)

    def report(self, message: str) -> None:
        """A problem: the configuration is refused."""
        self._report.problems.append((self.path, message))

    def warn(self, message: str) -> None:
        """A warning: the configuration loads, and ``revproxy check`` shows the message."""
        self._report.warnings.append((self.path, message))

    def problem_count(self) -> int:
        """How many problems the whole document has so far."""
        return len(self._report.problems)

    def problem_paths(self) -> list[str]:
        return [path for path, _ in self._report.problems]

    def describe(self, path: str) -> str:
        """Another value's path for a message about this one (see ``Report.describe``)."""
        return self._report.describe(path, self.path)

    def alias_of(self, original: str) -> None:
        """This value is a copy of the one at ``original`` (see ``Report.alias``)."""
        self._report.alias(self.path, original)


def format_problem(source: str, path: str, message: str) -> str:
    return f"{source}: {path}: {message}" if path else f"{source}: {message}"


def show(value: Any) -> str:
    """Render a config value for a message: JSON-like, short, one line."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str):
        text = json.dumps(value if len(value) <= 60 else value[:57] + "...", ensure_ascii=False)
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, int):
        return str(value) if value.bit_length() < 64 else "a very large number"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, bytes):
        return "binary data"
    return f"a {type(value).__name__}"


def one_line(text: str) -> str:
    return " ".join(text.splitlines())
