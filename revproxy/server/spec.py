"""What the master hands a forked worker, and the exit status it expects back when the worker
cannot start. Gevent-free: the master imports it."""

from __future__ import annotations

import socket
from dataclasses import dataclass

from revproxy.config import Config
from revproxy.server.statetable import StateTable

BOOT_ERROR = 3  # a worker's exit status when it could not start


@dataclass
class WorkerSpec:
    config: Config
    listeners: dict[int, socket.socket]
    table: StateTable
    slot: int
    index: int
    count: int
    generation: int
