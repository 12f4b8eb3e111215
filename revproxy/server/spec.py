"""What the master hands a forked worker, the exit status it expects back when the worker
cannot start, and the tie that makes a worker die with its master. Gevent-free: the master
imports it."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from revproxy.config import Config
from revproxy.server.statetable import KIND_INBOUND, KIND_OUTBOUND, KIND_USER, StateTable

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
    # (kind, name) -> index of the traffic counters in the table (net/traffic.py)
    counter_keys: dict[tuple[int, str], int] = field(default_factory=dict)
    api_socket: str = ""  # the API process's socket, when the config has an ``api``


def counter_keys_of(config: Config) -> list[tuple[int, str]]:
    """The traffic counters a configuration's workers keep: every tagged inbound and bridge
    (inbound kind), every tagged outbound, portal and the API (outbound kind), every user
    with an e-mail."""
    keys: list[tuple[int, str]] = []
    keys += [(KIND_INBOUND, inbound.tag) for inbound in config.inbounds if inbound.tag]
    keys += [(KIND_INBOUND, bridge.tag) for bridge in config.reverse.bridges]
    keys += [(KIND_OUTBOUND, outbound.tag) for outbound in config.outbounds if outbound.tag]
    keys += [(KIND_OUTBOUND, portal.tag) for portal in config.reverse.portals]
    if config.api is not None:
        keys.append((KIND_OUTBOUND, config.api.tag))
    for inbound in config.inbounds:
        for client in getattr(inbound.settings, "clients", ()) or ():
            email = getattr(client, "email", None)
            if email:
                keys.append((KIND_USER, email))
    return list(dict.fromkeys(keys))


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
