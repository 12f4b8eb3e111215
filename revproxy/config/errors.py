"""Problem reporting for configuration loading: the ConfigError users see and the path-aware
collector the parsers report into."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any


class ConfigError(Exception):
    """The configuration is unusable; ``problems`` holds one line per problem."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems: list[str] = [one_line(p) for p in problems]
        super().__init__("\n".join(self.problems))


class Invalid(Exception):
    """Raised by a value parser; the message is reported at the value's path."""


class Node:
    """A position in the document; problems reported here are recorded with its path."""

    __slots__ = ("path", "_problems")

    def __init__(self, problems: list[tuple[str, str]], path: str = "") -> None:
        self.path = path
        self._problems = problems

    def at(self, key: str | int) -> Node:
        if isinstance(key, int):
            return Node(self._problems, f"{self.path}[{key}]")
        return Node(self._problems, f"{self.path}.{key}" if self.path else key)

    def report(self, message: str) -> None:
        self._problems.append((self.path, message))

    def problem_count(self) -> int:
        """How many problems the whole document has so far."""
        return len(self._problems)

    def problem_paths(self) -> list[str]:
        return [path for path, _ in self._problems]


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
