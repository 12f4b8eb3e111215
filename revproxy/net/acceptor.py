"""Accepts connections on a listening socket shared with sibling workers and starts a handler
for each on a reusable greenlet (``Tasks``).

The handler gets the socket, the peer's address and an ``Ending`` that it ends once the
connection is over, which may be after it returns; the acceptor then closes the socket. One
connection per wake-up, so a burst spreads over all workers waiting on the socket instead of
the first one to wake taking it all. At ``limit`` open connections it stops accepting until
one ends; accept errors (out of descriptors, ...) pause it with a back-off.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

from gevent import get_hub

from revproxy.log import log
from revproxy.net.session import Ending
from revproxy.net.tasks import Tasks

MAX_CONNECTIONS = 10000
MIN_DELAY = 0.05
MAX_DELAY = 1.0
_GONE_BEFORE_ACCEPT = (errno.EAGAIN, errno.ECONNABORTED, errno.EPROTO, errno.EINTR)


class Acceptor:
    def __init__(self, listener: socket.socket,
                 handle: Callable[[socket.socket, tuple, Ending], None],
                 limit: int = MAX_CONNECTIONS) -> None:
        listener.setblocking(False)  # accepting must never block the hub
        self.listener = listener
        self.handle = handle
        self.limit = limit
        self.tasks = Tasks()
        self.connections = 0  # accepted and not yet ended
        self.closed = False
        self._want = False  # accepting unless paused by the limit or an error
        self._watcher = get_hub().loop.io(listener.fileno(), 1)
        self._delay = MIN_DELAY
        self._retry = None

    def start_accepting(self) -> None:
        self._want = True
        self._resume()

    def stop_accepting(self) -> None:
        self._want = False
        self._watcher.stop()

    def close(self) -> None:
        """Accept no more and close this worker's copy of the listening socket."""
        if self.closed:
            return
        self.stop_accepting()
        self.closed = True
        if self._retry is not None:
            self._retry.close()
        self._watcher.close()
        self.listener.close()

    def _resume(self) -> None:
        if self._want and not self.closed and not self._watcher.active:
            self._watcher.start(self._accept_one)

    def _accept_one(self) -> None:
        """Runs in the hub when the listening socket is readable."""
        if self.connections >= self.limit:
            self._watcher.stop()  # resumed by _ended
            return
        try:
            # socket._accept returns the bare descriptor: no socket object per attempt
            fd, address = self.listener._accept()  # type: ignore[attr-defined]
        except OSError as exc:
            if exc.errno not in _GONE_BEFORE_ACCEPT:  # not just a sibling's catch
                self._back_off(exc)
            return
        self._delay = MIN_DELAY
        sock = socket.socket(self.listener.family, self.listener.type, 0, fileno=fd)
        sock.setblocking(False)  # for SocketStream
        self.connections += 1
        self.tasks.spawn(self._serve, sock, address)

    def _serve(self, sock: socket.socket, address: tuple) -> None:
        ending = Ending()
        ending.add(self._ended)
        ending.add(sock.close)
        try:
            self.handle(sock, address, ending)
        except BaseException:
            ending.end()
            raise

    def _ended(self) -> None:
        self.connections -= 1
        if self.connections < self.limit:
            self._resume()

    def _back_off(self, exc: OSError) -> None:
        log.warning("accept on %s failed: %s; pausing %.2f s", self.listener.getsockname(),
                    exc.strerror or exc, self._delay)
        self._watcher.stop()
        if self._retry is not None:
            self._retry.close()
        retry = self._retry = get_hub().loop.timer(self._delay)
        retry.start(self._resume)
        self._delay = min(MAX_DELAY, self._delay * 2)
