"""Runs one worker in the current process until TERM (graceful) or INT/QUIT (fast)."""

from __future__ import annotations

import signal

import gevent
from gevent.event import Event

from revproxy import log as logging_setup
from revproxy.config import Config
from revproxy.log import log


def run_single(config: Config) -> int:
    from revproxy.worker import Worker

    logging_setup.setup(config.log.level, config.log.error, config.log.access)
    worker = Worker(config)
    try:
        worker.start()
    except OSError as exc:
        log.error("cannot start: %s", exc)
        return 1
    stop = Event()
    graceful = {"value": True}

    def request_stop(is_graceful: bool) -> None:
        graceful["value"] = is_graceful
        stop.set()

    gevent.signal_handler(signal.SIGTERM, request_stop, True)
    gevent.signal_handler(signal.SIGINT, request_stop, False)
    gevent.signal_handler(signal.SIGQUIT, request_stop, False)
    log.warning("revproxy started (%s)", config.source)
    stop.wait()
    timeout = config.server.graceful_timeout if graceful["value"] else 0
    log.warning("revproxy stopping (%s)", "graceful" if graceful["value"] else "fast")
    worker.stop(timeout=timeout)
    return 0
