"""The configuration entry points: read one or several files (merged by V2Ray's rules) or
take parsed data, validate everything, and give a Config (its ``warnings`` listing what was
accepted but not honoured) or raise one ConfigError listing every problem."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Any

from revproxy.config import sections
from revproxy.config.checks import check
from revproxy.config.errors import ConfigError, Node, Report
from revproxy.config.merge import ConfigSource, Locator, display_names, merge
from revproxy.config.model import Config
from revproxy.config.reader import read_file

PathLike = str | os.PathLike[str]


def load_config(paths: PathLike | Sequence[PathLike],
                confdirs: Sequence[PathLike] = ()) -> Config:
    """Load a configuration: one file, or several (``-c`` given more than once, then each
    confdir's ``*.json`` by name) merged as V2Ray merges them. A .yaml/.yml file is YAML,
    anything else JSON with V2Ray's comments. Messages name each file by its base name;
    ``Config.source`` is a ``ConfigSource``: a printable string that a reload passes back
    here to read the same files again."""
    if isinstance(paths, ConfigSource):
        source = paths
    elif isinstance(paths, str | os.PathLike):
        source = ConfigSource.of([paths], confdirs)
    else:
        source = ConfigSource.of(list(paths), confdirs)
    files = source.paths()
    problems: list[str] = []
    warnings: list[str] = []
    documents: list[tuple[str, str, Any]] = []
    for path, name in zip(files, display_names(files), strict=True):
        if path.startswith(("http://", "https://")) or path == "stdin:":
            problems.append(f"{name}: reading the configuration from a URL or standard input "
                            "is not supported by revproxy: give a file")
            continue
        found: list[str] = []
        try:
            data = read_file(path, name, found)
        except ConfigError as exc:
            problems += exc.problems
            continue
        warnings += [f"{name}: warning: {warning}" for warning in found]
        documents.append((name, path, data))
    if problems:
        raise ConfigError(problems, warnings)
    data, locator = merge(documents, problems, warnings)
    if problems:
        raise ConfigError(problems, warnings)
    return _parse(data, Report(locator), source, warnings)


def parse_config(data: Mapping, source: str) -> Config:
    """Validate already-parsed data; ``source`` names it in messages."""
    return _parse(data, Report(Locator(source)), source, [])


def _parse(data: Any, report: Report, source: str, warnings: list[str]) -> Config:
    node = Node(report)
    config, layout = sections.config(node, data, source)
    config = check(config, node, layout)
    warnings = warnings + report.warning_lines()
    if report.problems:
        raise ConfigError(report.problem_lines(), warnings)
    return dataclasses.replace(config, warnings=tuple(warnings))
