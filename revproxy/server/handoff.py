"""Passing an accepted visitor to the sibling worker that owns the tunnel picked for it: the
channel, the sender, the receiving loop and the metadata codec.

**The channel.** Before it forks, the master makes a private directory (mode 0700, owned by
the service user when workers drop privileges; ``create_directory``). Each worker binds a Unix
datagram socket in it named after its pid, with SO_PASSCRED so that the kernel says who sent
each message. Only the service user (and root) can reach these sockets, no name can be
squatted, and a message is taken only from our own uid and from a pid that the state table
shows as a sibling. A worker sends through one socket per sibling, connected to that
sibling's endpoint (``Sender``): while the sibling's queue is full (net.unix.max_dgram_qlen
messages) the kernel holds that socket unwritable, so a sender waits for room instead of
polling.

**A hand-off** is one datagram: the metadata and the visitor's first payload (``Handoff``: a
versioned binary codec whose ``decode`` validates every field), and the visitor's socket as
SCM_RIGHTS: its own TCP or UDP socket, or the far end of a pair that the sender relays to a
visitor that could not move as it is (``carried``, net/pairs.py: a loopback TCP connection
or, for datagrams, a Unix SOCK_SEQPACKET socket). The sender sets SO_LINGER 0 on the visitor
first, so that a visitor the receiver cannot take (it is out of descriptors, refuses the
message, or exits with it queued) is reset rather than closed in good order; the receiver
clears it when it takes the visitor.

**The receiving loop** (``Receiver``) checks every message, closes every descriptor it does
not keep, logs every visitor it loses, and leaves messages queued while it has no descriptor
to spare (its senders then find the queue full and keep their visitors). A visitor it takes
becomes a ``Session`` that carries the outbound and tunnel chosen by the sibling, for the
dispatcher to serve like a visitor accepted here. It ends only if its socket fails, which the
worker must treat as fatal.

Gevent-free (the master imports it to make the directory): the worker passes in its waits,
and net/pairs.py (which imports gevent) is imported only by the functions workers call.
"""

from __future__ import annotations

import array
import dataclasses
import errno
import os
import socket
import stat
import struct
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from revproxy.log import log
from revproxy.net.session import Session, Target

VERSION = 2  # 2: the visitor's policy level
MAX_TEXT = 1024  # bytes of one text field (tags, address, source, email)
MAX_DATAGRAM = 200_000  # a whole hand-off: metadata and first payload
MAX_FDS = 4  # room for more descriptors than the one expected, to close them all
SEND_PATIENCE = 2.0  # seconds a sender waits on a full queue before it gives up
MAX_LINKS = 256  # connected sender sockets a worker keeps (one per sibling)
_ANCILLARY_SPACE = socket.CMSG_SPACE(struct.calcsize("3i")) + socket.CMSG_SPACE(4 * MAX_FDS)
_UCRED = struct.Struct("3i")  # pid, uid, gid
_NO_LINGER = struct.pack("ii", 0, 0)
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)

# Metadata: version, network, flags, tunnel id, port, policy level; then u16-length-prefixed
# UTF-8 texts:
# outbound tag, address, source, inbound tag (if flagged), email (if flagged); then the first
# payload, to the end of the datagram. Flag ``_CARRIED``: the sender relays the visitor
# through the descriptor (and counts its traffic).
_HEAD = struct.Struct("!BBBIHI")
_LENGTH = struct.Struct("!H")
_NETWORKS = {"tcp": 1, "udp": 2}
_NETWORK_NAMES = {number: name for name, number in _NETWORKS.items()}
_HAS_INBOUND_TAG = 0x01
_HAS_EMAIL = 0x02
_CARRIED = 0x04
_FLAGS = _HAS_INBOUND_TAG | _HAS_EMAIL | _CARRIED
MAX_FIRST_PAYLOAD = MAX_DATAGRAM - _HEAD.size - 5 * (_LENGTH.size + MAX_TEXT)


class HandoffError(ValueError):
    """A hand-off that cannot be encoded, or a message that is not a valid hand-off."""


@dataclass(frozen=True, slots=True)
class Handoff:
    """What travels with a handed-off visitor's socket."""

    tunnel_id: int
    outbound_tag: str  # the portal that routing chose
    network: str  # "tcp" or "udp"
    address: str
    port: int
    source: str
    inbound_tag: str | None = None
    email: str | None = None
    first_payload: bytes = b""
    carried: bool = False  # the descriptor is the far end of a pair (net/pairs.py)
    level: int = 0  # the visitor's policy level, whose limits the receiver applies

    @classmethod
    def of_session(cls, session: Session, outbound_tag: str, tunnel_id: int) -> Handoff:
        target = session.target
        return cls(tunnel_id, outbound_tag, target.network, target.address, target.port,
                   session.source, session.inbound_tag, session.email, session.first_payload,
                   level=session.level or 0)

    def session(self) -> Session:
        """The session to dispatch on the receiving side: already routed."""
        return Session(Target(self.network, self.address, self.port), self.inbound_tag,
                       source=self.source, email=self.email, outbound_tag=self.outbound_tag,
                       level=self.level, tunnel_id=self.tunnel_id,
                       first_payload=self.first_payload)

    def encode(self) -> bytes:
        """Raises HandoffError if a field does not fit or would not decode (the checks are
        the decoder's, so that a sender knows before it sends)."""
        network = _NETWORKS.get(self.network)
        if network is None:
            raise HandoffError(f"network {self.network!r}")
        if not 0 < self.tunnel_id <= 0xFFFFFFFF or not 0 <= self.port <= 0xFFFF:
            raise HandoffError("tunnel id or port out of range")
        if not 0 <= self.level <= 0xFFFFFFFF:  # V2Ray's levels are uint32
            raise HandoffError(f"policy level {self.level} out of range")
        if len(self.first_payload) > MAX_FIRST_PAYLOAD:
            raise HandoffError(f"first payload of {len(self.first_payload)} bytes")
        if not self.outbound_tag or not self.address:
            raise HandoffError("empty outbound tag or address")
        flags = ((_HAS_INBOUND_TAG if self.inbound_tag is not None else 0)
                 | (_HAS_EMAIL if self.email is not None else 0)
                 | (_CARRIED if self.carried else 0))
        parts = [_HEAD.pack(VERSION, network, flags, self.tunnel_id, self.port, self.level)]
        for text in (self.outbound_tag, self.address, self.source, self.inbound_tag,
                     self.email):
            if text is not None:
                raw = _raw(text)
                parts += (_LENGTH.pack(len(raw)), raw)
        parts.append(self.first_payload)
        return b"".join(parts)

    @classmethod
    def decode(cls, data: bytes) -> Handoff:
        """Raises HandoffError on anything malformed."""
        if data[:1] != bytes((VERSION,)):  # first: another version's head may be shorter
            raise HandoffError(f"version {data[0]}" if data else "no data")
        if len(data) < _HEAD.size:
            raise HandoffError(f"{len(data)} bytes is too short")
        _version, network, flags, tunnel_id, port, level = _HEAD.unpack_from(data)
        name = _NETWORK_NAMES.get(network)
        if name is None:
            raise HandoffError(f"network {network}")
        if flags & ~_FLAGS:
            raise HandoffError(f"flags {flags:#x}")
        if tunnel_id == 0:
            raise HandoffError("tunnel id 0")
        offset = _HEAD.size
        texts: list[str | None] = []
        for present in (True, True, True, bool(flags & _HAS_INBOUND_TAG),
                        bool(flags & _HAS_EMAIL)):
            if not present:
                texts.append(None)
                continue
            if len(data) < offset + _LENGTH.size:
                raise HandoffError("cut short in a text field")
            (size,) = _LENGTH.unpack_from(data, offset)
            offset += _LENGTH.size
            if size > MAX_TEXT or len(data) < offset + size:
                raise HandoffError(f"a text field of {size} bytes")
            texts.append(_text(data[offset:offset + size]))
            offset += size
        outbound_tag, address, source, inbound_tag, email = texts
        assert outbound_tag is not None and address is not None and source is not None
        if not outbound_tag or not address:
            raise HandoffError("empty outbound tag or address")
        first_payload = bytes(data[offset:])
        if len(first_payload) > MAX_FIRST_PAYLOAD:
            raise HandoffError(f"first payload of {len(first_payload)} bytes")
        return cls(tunnel_id, outbound_tag, name, address, port, source, inbound_tag, email,
                   first_payload, bool(flags & _CARRIED), level)


def _raw(text: str) -> bytes:
    if not text.isprintable():
        raise HandoffError("a text field has control characters")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise HandoffError("a text field is not UTF-8") from None
    if len(raw) > MAX_TEXT:
        raise HandoffError(f"a text field of {len(raw)} bytes")
    return raw


def _text(raw: bytes) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise HandoffError("a text field is not UTF-8") from None
    if not text.isprintable():
        raise HandoffError("a text field has control characters")
    return text


def parse_ancillary(ancdata: Sequence[tuple[int, int, bytes]]
                    ) -> tuple[list[int], tuple[int, int, int] | None]:
    """The descriptors and the sender's (pid, uid, gid) in a message's ancillary data."""
    fds: list[int] = []
    credentials = None
    for level, kind, payload in ancdata:
        if level != socket.SOL_SOCKET:
            continue
        if kind == socket.SCM_RIGHTS:
            received = array.array("i")
            received.frombytes(payload[:len(payload) - len(payload) % received.itemsize])
            fds.extend(received)
        elif kind == socket.SCM_CREDENTIALS and len(payload) >= _UCRED.size:
            credentials = _UCRED.unpack_from(payload)
    return fds, credentials


# -- the channel


def create_directory(owner: tuple[int, int] | None = None) -> str:
    """Master only, before forking: a fresh private directory (0700) for the workers'
    endpoints, given to ``owner`` (uid, gid) if the workers will run as that user. (Not
    tempfile.mkdtemp: tempfile pulls in modules every worker would inherit.)"""
    parent = os.environ.get("TMPDIR") or "/tmp"
    if len(parent) > 64 or not os.path.isdir(parent):  # a socket's path fits in 108 bytes
        parent = "/tmp"
    while True:
        path = os.path.join(parent, f"revproxy-{os.getpid()}-{os.urandom(4).hex()}")
        try:
            os.mkdir(path, 0o700)
            break
        except FileExistsError:
            continue
    try:
        os.chmod(path, 0o700)  # whatever the umask
        if owner is not None:
            os.chown(path, *owner)
    except BaseException:
        os.rmdir(path)
        raise
    return path


def remove_directory(directory: str) -> None:
    """Master only, at exit: the directory and what the workers left in it."""
    try:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("master: cannot remove the hand-off directory %s: %s", directory, exc)


def endpoint_path(directory: str, pid: int) -> str:
    return os.path.join(directory, str(pid))


def bind_endpoint(directory: str, pid: int) -> socket.socket:
    """Worker ``pid``'s end of the channel: a non-blocking datagram socket that receives
    its hand-offs (with the senders' credentials)."""
    info = os.lstat(directory)
    if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid()
            or info.st_mode & 0o077):
        raise OSError(errno.EPERM, f"the hand-off directory {directory} is not private to "
                                   f"uid {os.geteuid()}")
    path = endpoint_path(directory, pid)
    try:
        os.unlink(path)  # a dead worker's, whose pid this one reuses
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind(path)
        os.chmod(path, 0o600)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# -- sending


class _Link:
    """A datagram socket connected to one sibling's endpoint, and that endpoint's inode (a
    restarted sibling, or a new worker with a reused pid, binds a new one)."""

    __slots__ = ("sock", "inode", "users", "dropped", "sent")

    def __init__(self, sock: socket.socket, inode: int) -> None:
        self.sock = sock
        self.inode = inode
        self.users = 0  # sends in progress: the socket is closed only when none is
        self.dropped = False
        self.sent = False  # a message went through it


class Sender:
    """This worker's sending side: one datagram socket per sibling, ``connect()``ed to its
    endpoint. A full queue makes a connected Unix datagram socket unwritable (the kernel
    wakes it when the receiver dequeues), so a sender waits with ``wait_writable(fd,
    seconds)`` (the worker's cooperative wait, raising TimeoutError) instead of retrying
    blindly. The endpoint's path is looked up before every send, so a sibling that went
    away fails at once, and one replaced (a new socket at that path) is connected anew."""

    def __init__(self, directory: str,
                 wait_writable: Callable[[int, float], None]) -> None:
        self.directory = directory
        self.wait_writable = wait_writable
        self._links: dict[int, _Link] = {}  # by pid

    def send(self, pid: int, handoff: Handoff, visitor: socket.socket,
             patience: float = SEND_PATIENCE) -> None:
        """Send ``visitor`` to worker ``pid`` (a ``CarriedSocket`` as a carried visitor's
        end, net/pairs.py). Raises HandoffError if the hand-off cannot be encoded,
        TimeoutError if that worker takes no hand-off within ``patience`` seconds, and
        OSError if it is gone; the caller then still owns the visitor."""
        from revproxy.net.pairs import CarriedSocket  # (gevent: workers only, see above)

        if isinstance(visitor, CarriedSocket) and not handoff.carried:
            handoff = dataclasses.replace(handoff, carried=True)
        message = [handoff.encode()]
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [visitor.fileno()]))]
        visitor.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
        try:
            link = self._link(pid)
            try:
                self._send_on(link, pid, message, ancillary, patience)
            except ConnectionRefusedError:
                if not link.sent:
                    raise
                # Its socket is closed; a restarted sibling may have bound a new one whose
                # inode has the old one's number: connect anew, once.
                self._send_on(self._link(pid), pid, message, ancillary, patience)
        except BaseException:
            try:
                visitor.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
            except OSError:
                pass
            raise

    def _send_on(self, link: _Link, pid: int, message: list[bytes],
                 ancillary: list[tuple[int, int, array.array[int]]], patience: float) -> None:
        link.users += 1
        deadline = 0.0
        try:
            while True:
                try:
                    link.sock.sendmsg(message, ancillary, socket.MSG_DONTWAIT)
                    link.sent = True
                    return
                except BlockingIOError:
                    now = time.monotonic()
                    deadline = deadline or now + patience
                    if now >= deadline:
                        raise TimeoutError(f"worker {pid} takes no hand-off") from None
                    self.wait_writable(link.sock.fileno(), deadline - now)
        except TimeoutError:
            raise
        except OSError:
            self._drop(pid, link)  # gone, or this socket failed: connect anew next time
            raise
        finally:
            link.users -= 1
            if link.dropped and not link.users:
                link.sock.close()

    def _link(self, pid: int) -> _Link:
        """The connection to ``pid``'s endpoint as it is bound now; raises OSError if none
        is (FileNotFoundError: not bound, ConnectionRefusedError: its socket is closed)."""
        path = endpoint_path(self.directory, pid)
        inode = os.stat(path).st_ino  # before connecting: a later rebind is seen next time
        link = self._links.get(pid)
        if link is not None:
            if link.inode == inode:
                return link
            self._drop(pid, link)
        if len(self._links) >= MAX_LINKS:  # (pids of workers long gone)
            for old_pid, old in list(self._links.items()):
                self._drop(old_pid, old)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, MAX_DATAGRAM * 4)
            sock.connect(path)
        except BaseException:
            sock.close()
            raise
        link = self._links[pid] = _Link(sock, inode)
        return link

    def _drop(self, pid: int, link: _Link) -> None:
        if self._links.get(pid) is link:
            del self._links[pid]
        if not link.dropped:
            link.dropped = True
            if not link.users:
                link.sock.close()

    def close(self) -> None:
        for pid, link in list(self._links.items()):
            self._drop(pid, link)


# -- receiving


class _Refused(Exception):
    """This message is not served; the reason is logged."""


class Receiver:
    """This worker's receiving loop (see the module docstring).

    ``is_sibling(pid)`` says whether a pid is a sibling worker; ``refusal(handoff)`` why a
    hand-off cannot be served here (unknown portal or tunnel), or None; ``serve(session,
    visitor)`` starts serving a taken visitor without waiting. ``wait_readable(fd)`` and
    ``sleep(seconds)`` are the worker's cooperative waits.
    """

    def __init__(self, endpoint: socket.socket, path: str, *,
                 is_sibling: Callable[[int], bool],
                 refusal: Callable[[Handoff], str | None],
                 serve: Callable[[Session, socket.socket], None],
                 wait_readable: Callable[[int], None],
                 sleep: Callable[[float], None]) -> None:
        self.endpoint = endpoint
        self.path = path
        self.is_sibling = is_sibling
        self.refusal = refusal
        self.serve = serve
        self.wait_readable = wait_readable
        self.sleep = sleep
        self.taken = 0
        self.lost = 0  # siblings' visitors that could not be taken
        self.refused = 0  # messages from anyone else
        self._last_complaint = -60.0
        self._complaints_left_out = 0

    def run(self) -> None:
        """Receive until the endpoint fails; raises that error."""
        fd = self.endpoint.fileno()
        starved = 0.0
        pending = True  # something may be queued: try before waiting
        while True:
            if not pending:
                self.wait_readable(fd)
            if not _descriptor_to_spare(fd):
                # Leave the hand-offs queued: once the queue is full the siblings keep
                # their visitors (V2Ray too leaves visitors waiting until it can accept).
                starved = min(0.5, starved * 2 or 0.01)
                self._complain("worker %d: out of file descriptors: no hand-off is received "
                               "until some are free", os.getpid())
                self.sleep(starved)
                pending = True
                continue
            starved = 0.0
            try:
                data, ancdata, flags, _ = self.endpoint.recvmsg(
                    MAX_DATAGRAM + 1, _ANCILLARY_SPACE, socket.MSG_DONTWAIT)
            except (BlockingIOError, InterruptedError):
                pending = False
                continue
            except OSError as exc:
                if exc.errno not in (errno.ENOBUFS, errno.ENOMEM):
                    raise
                log.warning("worker %d: hand-off receive failed: %s", os.getpid(), exc)
                self.sleep(0.1)
                continue
            pending = True
            self.take(data, ancdata, flags)

    def take(self, data: bytes, ancdata: Sequence[tuple[int, int, bytes]], flags: int) -> bool:
        """Handle one received message: serve its visitor or close what came with it.
        Whether the visitor was taken."""
        fds, credentials = parse_ancillary(ancdata)
        visitor: socket.socket | None = None
        sender = credentials[0] if credentials is not None else None
        from_sibling = False
        try:
            if credentials is None:
                raise _Refused("no sender credentials")
            pid, uid, _gid = credentials
            if uid != os.getuid():
                raise _Refused(f"from pid {pid} uid {uid}")
            if not self.is_sibling(pid):
                raise _Refused(f"from pid {pid}, not a sibling")
            from_sibling = True
            if flags & socket.MSG_CTRUNC:
                raise _Refused("no descriptor to receive the visitor with" if len(fds) < 1
                               else "too many descriptors")
            if flags & socket.MSG_TRUNC:
                raise _Refused("an oversized message")
            if len(fds) != 1:
                raise _Refused(f"{len(fds)} descriptors")
            try:
                handoff = Handoff.decode(data)
            except HandoffError as exc:
                raise _Refused(f"bad metadata: {exc}") from None
            reason = self.refusal(handoff)
            if reason is not None:
                raise _Refused(reason)
            visitor = _visitor_socket(fds, udp=handoff.network == "udp",
                                      carried=handoff.carried)
            self.serve(handoff.session(), visitor)
            visitor = None  # served: no longer ours to close
            self.taken += 1
            return True
        except _Refused as exc:
            if from_sibling:
                self.lost += 1
                log.warning("worker %d: a visitor handed over by worker %d is lost: %s (it "
                            "is reset)", os.getpid(), sender, exc)
            else:
                self.refused += 1
                self._complain("worker %d: hand-off refused: %s", os.getpid(), exc)
            return False
        except Exception:
            self.lost += 1
            log.exception("worker %d: a visitor handed over by worker %s is lost", os.getpid(),
                          sender)
            return False
        finally:
            for fd in fds:
                _close(fd)
            if visitor is not None:  # taken, then lost: reset it as well
                try:
                    visitor.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET_ON_CLOSE)
                except OSError:
                    pass
                visitor.close()

    def close(self) -> None:
        """At exit: take no more hand-offs; what is queued is lost (logged, reset)."""
        try:
            os.unlink(self.path)  # senders now fail at once and keep their visitors
        except OSError:
            pass
        while True:
            try:
                data, ancdata, flags, _ = self.endpoint.recvmsg(
                    MAX_DATAGRAM + 1, _ANCILLARY_SPACE, socket.MSG_DONTWAIT)
            except OSError:
                break
            fds, credentials = parse_ancillary(ancdata)
            for fd in fds:
                _close(fd)
            if credentials is not None and self.is_sibling(credentials[0]):
                self.lost += 1
                log.warning("worker %d: a visitor handed over by worker %d is lost: this "
                            "worker is exiting (it is reset)", os.getpid(), credentials[0])
        self.endpoint.close()

    def _complain(self, message: str, *args: object) -> None:
        """A warning at most every 10 s (a local process may send garbage in a loop)."""
        now = time.monotonic()
        if now - self._last_complaint < 10.0:
            self._complaints_left_out += 1
            return
        if self._complaints_left_out:
            message += " (and %d more since the last such warning)"
            args += (self._complaints_left_out,)
        log.warning(message, *args)
        self._last_complaint = now
        self._complaints_left_out = 0


def _descriptor_to_spare(fd: int) -> bool:
    """Whether this process could take one more descriptor now."""
    try:
        os.close(os.dup(fd))
    except OSError as exc:
        if exc.errno in (errno.EMFILE, errno.ENFILE):
            return False
        raise
    return True


def _visitor_socket(fds: list[int], udp: bool = False, carried: bool = False
                    ) -> socket.socket:
    """The one received descriptor as a visitor's socket: a connected TCP socket, no longer
    reset on close (``udp``: a UDP socket connected to one source, net/udp.py; ``udp`` and
    ``carried``: a Unix SOCK_SEQPACKET socket; ``carried``: a ``CarriedSocket``). Raises
    _Refused if it is something else (the descriptor then stays in ``fds``, for the caller
    to close); on success it leaves ``fds``."""
    from revproxy.net.pairs import CarriedSocket  # (gevent: workers only, see the top)

    fd = fds[0]
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            raise _Refused("not a socket")
        sock = CarriedSocket(fileno=fd) if carried else socket.socket(fileno=fd)
    except OSError as exc:
        raise _Refused(f"an unusable descriptor: {exc}") from None
    fds.remove(fd)  # the socket object owns it now
    try:
        if udp and carried:
            if sock.family != socket.AF_UNIX or sock.type != socket.SOCK_SEQPACKET:
                raise _Refused("not a Unix SOCK_SEQPACKET socket")
            sock.getpeername()  # connected, else OSError
            sock.setblocking(False)
            return sock
        if udp:
            if sock.family not in (socket.AF_INET, socket.AF_INET6) \
                    or sock.type != socket.SOCK_DGRAM:
                raise _Refused("not a UDP socket")
            sock.getpeername()  # connected to its source, else OSError
            sock.setblocking(False)
            return sock
        listening = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
        if sock.family not in (socket.AF_INET, socket.AF_INET6) \
                or sock.type != socket.SOCK_STREAM or listening:
            raise _Refused("not a TCP connection")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _NO_LINGER)
        sock.setblocking(False)  # for SocketStream
    except OSError as exc:
        sock.close()
        raise _Refused(f"an unusable socket: {exc}") from None
    except BaseException:
        sock.close()
        raise
    return sock


def _close(fd: int) -> None:
    try:
        os.close(fd)
    except OSError:
        pass
