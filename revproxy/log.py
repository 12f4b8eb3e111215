"""Logging in V2Ray's style: ``2026/11/24 20:30:00 [Warning] message`` on stderr or a file.

Two loggers: ``revproxy`` for general messages at the configured level, ``revproxy.access``
for one line per accepted or rejected connection (V2Ray's access log format).
"""

from __future__ import annotations

import logging
import sys
import time
import traceback

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


def _handler(path: str | None) -> logging.Handler:
    if path and path != "none":
        handler: logging.Handler = logging.FileHandler(path, encoding="utf-8")
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(V2RayFormatter())
    return handler


def setup(level: str = "warning", error_path: str | None = None,
          access_path: str | None = None) -> None:
    """(Re)configure both loggers; called at start and again to reopen files after rotation."""
    for logger in (log, access_log):
        for old in list(logger.handlers):
            logger.removeHandler(old)
            old.close()
    log.setLevel(LEVELS.get(level, logging.WARNING))
    log.addHandler(_handler(error_path))
    log.propagate = False
    access_log.propagate = False
    if access_path == "none":  # V2Ray's spelling of "no access log"
        access_log.setLevel(LEVELS["none"])
    elif access_path:
        access_log.setLevel(logging.INFO)
        access_log.addHandler(_handler(access_path))
    elif level in ("debug", "info"):
        # V2Ray prints access lines to stdout when no access file is set; we use stderr.
        access_log.setLevel(logging.INFO)
        access_log.addHandler(_handler(None))
    else:
        access_log.setLevel(LEVELS["none"])
