"""Logging in V2Ray's style: ``2026/11/24 20:30:00 [Warning] message`` on stderr or a file.

Two loggers: ``revproxy`` for general messages at the configured level, ``revproxy.access``
for one line per accepted or rejected connection (V2Ray's access log format).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import time
import traceback
from typing import Protocol

LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "none": logging.CRITICAL + 10,
}
_SEVERITY = {
    logging.DEBUG: "Debug",
    logging.INFO: "Info",
    logging.WARNING: "Warning",
    logging.ERROR: "Error",
    logging.CRITICAL: "Error",
}

log = logging.getLogger("revproxy")
access_log = logging.getLogger("revproxy.access")


class V2RayFormatter(logging.Formatter):
    """Formats records the way V2Ray's logger writes them."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(record.created))
        if record.name == access_log.name:
            return f"{stamp} {record.getMessage()}"
        line = f"{stamp} [{_SEVERITY.get(record.levelno, 'Info')}] {record.getMessage()}"
        if record.exc_info and record.exc_info[1] is not None:
            line += ": " + _one_line(record.exc_info[1])
        return line


def _one_line(exc: BaseException) -> str:
    """An unexpected error as one log line: type, message and where it was raised."""
    tb = traceback.extract_tb(exc.__traceback__)
    where = f" at {tb[-1].filename.rsplit('/', 2)[-1]}:{tb[-1].lineno}" if tb else ""
    return f"{type(exc).__name__}: {exc}{where}"


class LogSettings(Protocol):
    """The config's ``log`` section, as far as logging reads it."""

    @property
    def level(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def access(self) -> str | None: ...


class _NoFollowFileHandler(logging.FileHandler):
    """Appends to a log file that must not be a symbolic link: the master runs as root and
    (re)opens files in directories the service user may own, so a link planted there must
    not make it write elsewhere. New files are created 0640."""

    def _open(self) -> io.TextIOWrapper:
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        return open(os.open(self.baseFilename, flags, 0o640), "a", encoding=self.encoding,
                    errors=self.errors)


def _handler(path: str | None, failures: list[str]) -> logging.Handler:
    """A handler writing to ``path`` (stderr without one). A file that cannot be opened is
    reported in ``failures`` and stderr is used instead: logging never stops the server."""
    handler: logging.Handler | None = None
    if path and path != "none":
        try:
            handler = _NoFollowFileHandler(path, encoding="utf-8")
        except OSError as exc:
            failures.append(f"cannot open log file {path}: {exc.strerror or exc}; "
                            "logging to stderr")
    if handler is None:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(V2RayFormatter())
    return handler


def configure(settings: LogSettings) -> None:
    """Configure logging as the config's ``log`` section says (at start, on reload, and to
    reopen files after rotation)."""
    setup(settings.level, settings.error, settings.access)


def setup(level: str = "warning", error_path: str | None = None,
          access_path: str | None = None) -> None:
    """(Re)configure both loggers; called at start and again to reopen files after rotation."""
    for logger in (log, access_log):
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
    failures: list[str] = []
    log.setLevel(LEVELS.get(level, logging.WARNING))
    log.addHandler(_handler(error_path, failures))
    log.propagate = False
    access_log.propagate = False
    if access_path == "none":  # V2Ray's spelling of "no access log"
        access_log.setLevel(LEVELS["none"])
    elif access_path:
        access_log.setLevel(logging.INFO)
        access_log.addHandler(_handler(access_path, failures))
    elif level in ("debug", "info"):
        # V2Ray prints access lines to stdout when no access file is set; we use stderr.
        access_log.setLevel(logging.INFO)
        access_log.addHandler(_handler(None, failures))
    else:
        access_log.setLevel(LEVELS["none"])
    for failure in failures:
        log.error("%s", failure)
