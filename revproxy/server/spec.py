"""What the master hands a forked worker, the exit status it expects back when the worker
cannot start, and the tie that makes a worker die with its master. Gevent-free: the master
imports it."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass

from revproxy.config import Config
from revproxy.server.statetable import StateTable

BOOT_ERROR = 3  # a worker's exit status when it could not start
MASTER_GONE = 1  # a worker's exit status when it finds its master already dead

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
_prctl: Callable[..., int] | None = None
_prctl_loaded = False


@dataclass
class WorkerSpec:
    """One worker's charge: its generation's config and listening sockets, the table and
    its slot there, and its place among its siblings ("worker index/count gen G")."""

    config: Config
    listeners: dict[int, socket.socket]
    table: StateTable
    slot: int
    index: int
    count: int
    generation: int
    master_pid: int = 0  # the process whose death the worker must not outlive
    handoff_dir: str = ""  # the private directory of the hand-off channel (server.handoff)


def load_prctl() -> None:
    """Find libc's prctl once, in the master, so that forked workers share the loaded ctypes
    instead of each importing it after the fork. Without Linux's prctl, die_with_master
    falls back to the parent pid check alone."""
    global _prctl, _prctl_loaded
    if _prctl_loaded:
        return
    _prctl_loaded = True
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (ImportError, OSError, AttributeError):
        return
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
                      ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    _prctl = prctl


def die_with_master(master_pid: int) -> None:
    """Have the kernel SIGKILL this process as soon as its parent dies, then exit at once if
    the parent is no longer ``master_pid`` (it died between the fork and the prctl call).

    SIGKILL, not a graceful signal: with the master gone nobody reaps, replaces or times
    out the workers, and a restarted server must not find them holding its ports. Linux
    clears the setting when the process changes its user or group ids, so a worker that
    drops privileges must call this again afterwards."""
    load_prctl()
    if _prctl is not None and _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        import ctypes

        errno = ctypes.get_errno()
        raise OSError(errno, f"prctl(PR_SET_PDEATHSIG): {os.strerror(errno)}")
    if os.getppid() != master_pid:
        os._exit(MASTER_GONE)
