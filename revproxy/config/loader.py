"""The configuration entry points: read a file or take parsed data, validate everything,
and give a Config or raise one ConfigError listing every problem."""

from __future__ import annotations

import os
from collections.abc import Mapping

from revproxy.config import sections
from revproxy.config.checks import check
from revproxy.config.errors import ConfigError, Node, format_problem
from revproxy.config.model import Config
from revproxy.config.reader import read_file


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load a .json (comments allowed, as in V2Ray), .yaml or .yml configuration file.
    Messages name the file by its base name; ``Config.source`` keeps the path."""
    source = os.fspath(path)
    name = os.path.basename(source) or source
    return _parse(read_file(source, name), name, source)


def parse_config(data: Mapping, source: str) -> Config:
    """Validate already-parsed data; ``source`` names it in messages."""
    return _parse(data, source, source)


def _parse(data: Mapping, name: str, source: str) -> Config:
    problems: list[tuple[str, str]] = []
    node = Node(problems)
    config = sections.config(node, data, source)
    check(config, node)
    if problems:
        raise ConfigError(format_problem(name, path, message) for path, message in problems)
    return config
