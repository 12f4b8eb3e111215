"""The shared-memory state table: workers, tunnels and the VMess replay filter of one master.

The table is a fixed-size regular file mapped ``MAP_SHARED`` by the supervisor, inherited by
its forked workers and read by ``revproxy status``. Every row has exactly one writer, its
owner; readers never see a torn row because each row starts with a u32 sequence counter (a
seqlock): the writer makes it odd, packs the fields with one precompiled ``Struct.pack_into``
and makes it even; a reader retries while the counter is odd or changed under it. The counter
is stored with one aligned 4-byte copy (an mmap slice assignment), never with ``pack_into``:
that zero-fills its bytes before it writes them, and a reader that caught the counter at 0,
an even value, before and after its copy accepted a half-written row. The one
exception to "one writer per row" is the supervisor clearing (FREE) the rows of a worker slot
after that worker died: the owner is gone, so there is still a single writer. Worker slot *i*
owns tunnel rows ``[64*i, 64*i + 64)``, so tunnel rows need no allocation lock. The seqlock
relies on the CPU making a process's stores visible in program order (x86-64 TSO); Python has
no memory fences, so on weakly ordered CPUs a reader could in theory still see a mixed row.

There are 256 worker slots: a reload runs the new generation beside the old one, so the table
holds two generations of the most workers ``server.workers`` allows (128, checked with the
config). The file is 0600 and sits in a directory only its owner can read: rows name pids,
tunnel tags and bridge addresses.

The replay filter is an open-addressing hash table of AuthIDs shared by all workers;
check-and-insert runs under an ``fcntl.lockf`` byte-range lock on the probe window, which the
kernel drops if the holder dies (a ``multiprocessing.Lock`` would wedge the siblings).

Layout version 2 (offsets follow from the geometry in the header), little-endian, offsets in
bytes (size 5,692,312)::

    header          @0         64 bytes
      0  8s  magic b"RPXSTATE"         24 f64 created (unix)
      8  u32 layout version (2)        32 u32 worker slots (256)
      12 u32 seq over bytes 16..48     36 u32 tunnel rows per worker (64)
      16 i32 master pid                40 u32 replay slots (65536)
      20 u32 generation                44 u32 replay probe window (32); 48..64 zero
    worker rows     @64        256 slots x 64 bytes
      0  u32 seq      12 u16 index (I of "worker I/N")     32 u32 active connections
      4  i32 pid      14 u8  state FREE/BOOTING/RUNNING/   40 u64 total connections
      8  u32 gen.            RETIRING = 0/1/2/3; 15 pad    48 u64 bytes in
                      16 f64 started  24 f64 heartbeat     56 u64 bytes out  (36 pad)
    tunnel rows     @16448     256 x 64 rows x 152 bytes
      0  u32 seq       14 u8  role PORTAL/BRIDGE = 1/2      104 u64 bytes up
      4  i32 owner pid 15 u8  state FREE/ACTIVE/DRAINING    112 u64 bytes down
      8  u32 tunnel id        = 0/1/2                       120 f64 throughput (bytes/s)
      12 u16 slot      16 32s tag (UTF-8, NUL padded)       128 f64 opened (unix)
                       48 48s peer (UTF-8, NUL padded)      136 f64 heartbeat (unix)
                       96 u32 active sessions               144 u32 generation
                       100 u32 total sessions (mod 2**32)   148 pad
    replay filter   @2506816   (65536 + 31) entries x 24 bytes
      0  16s AuthID    16 f64 expires (unix; 0 = empty)
    server row      @4080424   64 bytes, written by the master
      0  u32 seq       8 u64 reloads done    24 u64 workers respawned
      4  u32 keys      16 u64 reloads refused                      56 u32 fold seq; 32..56 pad
    counter keys    @4080488   256 keys x 72 bytes, written by the master, append-only
      0  u8 kind INBOUND/OUTBOUND/USER = 1/2/3; 1..8 pad; 8 64s name (UTF-8, NUL padded)
    counter blocks  @4098920   (256 workers + 1 departed) blocks x 6184 bytes
      0  u32 seq; 4 pad; 8 4 x u64 events (handshake failures, replays refused, hand-offs
      sent, hand-offs received); 40 256 keys x (u64 bytes up, u64 bytes down, u64 sessions)
    reset baselines @5688208   4104 bytes, written by the stats API process
      0  u32 seq; 4 pad; 8 256 keys x (u64 up, u64 down): subtracted from the totals it serves

Counters: every worker counts the traffic of each inbound, outbound and user key in its own
block (one writer); the master registers the keys (from each configuration it loads) and,
when it reaps a worker, adds that worker's block into the *departed* block and zeroes it,
with the fold seq odd meanwhile, so a reader summing departed + live blocks (``totals``)
retries instead of counting a worker twice or not at all. Totals only grow, as Prometheus
counters must. V2Ray's ``reset`` is a baseline the stats API process keeps in the last
region, so nobody else's block is written.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import time
from collections.abc import Iterable
from dataclasses import dataclass
from types import TracebackType

from revproxy.config.sections import MAX_WORKERS
from revproxy.net.traffic import EVENTS as EVENTS  # what the counter blocks hold
from revproxy.net.traffic import KIND_INBOUND as KIND_INBOUND
from revproxy.net.traffic import KIND_OUTBOUND as KIND_OUTBOUND
from revproxy.net.traffic import KIND_USER as KIND_USER
from revproxy.net.traffic import VALUES_PER_KEY as VALUES_PER_KEY

MAGIC = b"RPXSTATE"
LAYOUT_VERSION = 2
WORKER_SLOTS = 2 * MAX_WORKERS  # two generations side by side during a reload
TUNNELS_PER_WORKER = 64
REPLAY_SLOTS = 1 << 16
REPLAY_PROBE = 32

WORKER_FREE, WORKER_BOOTING, WORKER_RUNNING, WORKER_RETIRING = 0, 1, 2, 3
TUNNEL_FREE, TUNNEL_ACTIVE, TUNNEL_DRAINING = 0, 1, 2
ROLE_PORTAL, ROLE_BRIDGE = 1, 2

TAG_SIZE = 32
PEER_SIZE = 48
COUNTER_KEYS = 256
KEY_NAME_SIZE = 64
_U32 = 0xFFFFFFFF
_U64 = 0xFFFFFFFFFFFFFFFF

_SEQ = struct.Struct("<I")
_HEADER_ID = struct.Struct("<8sI")
_HEADER = struct.Struct("<IiIdIIII")  # at offset 12: seq, then the seqlocked fields
_WORKER = struct.Struct("<IiIHBxddI4xQQQ")
_TUNNEL = struct.Struct(f"<IiIHBB{TAG_SIZE}s{PEER_SIZE}sIIQQdddI4x")
_HEADER_BODY, _WORKER_BODY, _TUNNEL_BODY = (  # the same rows without their counter
    struct.Struct(row.format.replace("<I", "<", 1)) for row in (_HEADER, _WORKER, _TUNNEL))
_ENTRY = struct.Struct("<16sd")
_WINDOW_EXPIRIES = struct.Struct("<" + "16xd" * REPLAY_PROBE)

HEADER_SIZE = 64
HEADER_SEQ_OFFSET = 12
WORKER_ROW_SIZE = _WORKER.size
TUNNEL_ROW_SIZE = _TUNNEL.size
WORKERS_OFFSET = HEADER_SIZE
TUNNELS_OFFSET = WORKERS_OFFSET + WORKER_SLOTS * WORKER_ROW_SIZE
REPLAY_OFFSET = TUNNELS_OFFSET + WORKER_SLOTS * TUNNELS_PER_WORKER * TUNNEL_ROW_SIZE
REPLAY_ENTRY_SIZE = _ENTRY.size
REPLAY_SIZE = (REPLAY_SLOTS + REPLAY_PROBE - 1) * REPLAY_ENTRY_SIZE  # no wrap-around
_SERVER = struct.Struct("<IIQQQ")  # seq, keys, reloads, reloads refused, respawns
_SERVER_BODY = struct.Struct("<IQQQ")
_KEY = struct.Struct(f"<B7x{KEY_NAME_SIZE}s")
_BLOCK = struct.Struct(f"<I4x{len(EVENTS) + COUNTER_KEYS * VALUES_PER_KEY}Q")
_BLOCK_BODY = struct.Struct(f"<4x{len(EVENTS) + COUNTER_KEYS * VALUES_PER_KEY}Q")
_BASELINES = struct.Struct(f"<I4x{COUNTER_KEYS * 2}Q")
_BASELINES_BODY = struct.Struct(f"<4x{COUNTER_KEYS * 2}Q")
SERVER_OFFSET = REPLAY_OFFSET + REPLAY_SIZE
SERVER_SIZE = 64
FOLD_SEQ_OFFSET = SERVER_OFFSET + 56
KEYS_OFFSET = SERVER_OFFSET + SERVER_SIZE
KEY_SIZE = _KEY.size
BLOCKS_OFFSET = KEYS_OFFSET + COUNTER_KEYS * KEY_SIZE
BLOCK_SIZE = _BLOCK.size
DEPARTED = WORKER_SLOTS  # the block after the workers' holds what departed workers counted
BASELINES_OFFSET = BLOCKS_OFFSET + (WORKER_SLOTS + 1) * BLOCK_SIZE
BASELINES_SIZE = _BASELINES.size
TABLE_SIZE = BASELINES_OFFSET + BASELINES_SIZE
_WORKER_STATE_OFFSET = 14
_TUNNEL_STATE_OFFSET = 15
_NONZERO = bytes([0] + [1] * 255)  # translate table: state byte -> in use

_SPINS = 100  # seqlock read: busy retries, then short sleeps, then give up
_SLEEPS = 200
_SLEEP = 0.0001


class StateTableError(Exception):
    """Not a state table, a layout we do not know, or a row stuck mid-write."""


@dataclass(frozen=True, slots=True)
class WorkerRow:
    pid: int
    generation: int = 0
    index: int = 0
    state: int = WORKER_BOOTING
    started: float = 0.0
    heartbeat: float = 0.0
    connections: int = 0
    total_connections: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass(frozen=True, slots=True)
class TunnelRow:
    """One tunnel; tag and peer are cut to 32 and 48 UTF-8 bytes at a character boundary."""

    owner_pid: int
    slot: int = 0
    tunnel_id: int = 0
    role: int = ROLE_PORTAL
    state: int = TUNNEL_ACTIVE
    tag: str = ""
    peer: str = ""
    active_sessions: int = 0
    total_sessions: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    throughput: float = 0.0
    opened: float = 0.0
    heartbeat: float = 0.0
    generation: int = 0


@dataclass(frozen=True, slots=True)
class ServerCounters:
    """The master's own counters."""

    reloads: int = 0
    reloads_refused: int = 0
    respawns: int = 0


def default_state_path(pid: int | None = None) -> str:
    """/run/revproxy as root, else $XDG_RUNTIME_DIR/revproxy or /tmp/revproxy-<uid>; with a
    pid the name is revproxy-<pid>.state, so two masters on one host do not collide."""
    uid = os.geteuid()
    if uid == 0:
        directory = "/run/revproxy"
    elif os.environ.get("XDG_RUNTIME_DIR"):
        directory = os.path.join(os.environ["XDG_RUNTIME_DIR"], "revproxy")
    else:
        directory = f"/tmp/revproxy-{uid}"
    name = "revproxy.state" if pid is None else f"revproxy-{pid}.state"
    return os.path.join(directory, name)


def fit_text(text: str, size: int) -> bytes:
    """text as UTF-8, cut to at most size bytes without splitting a character."""
    raw = text.encode("utf-8", "replace")
    if len(raw) <= size:
        return raw
    return raw[:size].decode("utf-8", "ignore").encode("utf-8")


def _text(raw: bytes) -> str:
    return raw.rstrip(b"\x00").decode("utf-8", "replace")


def _store_seq(buf: mmap.mmap, offset: int, value: int) -> None:
    """A sequence counter's new value in one 4-byte copy: readers see the old or the new
    value, never the zeros ``pack_into`` writes first."""
    buf[offset:offset + 4] = _SEQ.pack(value)


def _publish(buf: mmap.mmap, offset: int, body: struct.Struct, values: tuple) -> None:
    """Seqlock write of one row: counter odd, every field in one pack_into, counter even."""
    odd = ((_SEQ.unpack_from(buf, offset)[0] + 1) | 1) & _U32  # odd even if a writer died
    _store_seq(buf, offset, odd)
    body.pack_into(buf, offset + 4, *values)
    _store_seq(buf, offset, (odd + 1) & _U32)


def _read(buf: mmap.mmap, offset: int, row: struct.Struct) -> tuple | None:
    """Seqlock read of one row (counter first); None if it stays mid-write (writer died)."""
    for attempt in range(_SPINS + _SLEEPS):
        values = row.unpack_from(buf, offset)
        seq = values[0]
        if not seq & 1 and _SEQ.unpack_from(buf, offset)[0] == seq:
            return values
        if attempt >= _SPINS:
            time.sleep(_SLEEP)
    return None


def _check_slot(slot: int) -> None:
    if not 0 <= slot < WORKER_SLOTS:
        raise IndexError(f"worker slot {slot} not in 0..{WORKER_SLOTS - 1}")


def _tunnel_offset(slot: int, index: int) -> int:
    _check_slot(slot)
    if not 0 <= index < TUNNELS_PER_WORKER:
        raise IndexError(f"tunnel row {index} not in 0..{TUNNELS_PER_WORKER - 1}")
    return TUNNELS_OFFSET + (slot * TUNNELS_PER_WORKER + index) * TUNNEL_ROW_SIZE


def _worker_values(row: WorkerRow) -> tuple:
    return (row.pid, row.generation, row.index, row.state, row.started, row.heartbeat,
            row.connections, row.total_connections, row.bytes_in, row.bytes_out)


def _tunnel_row(values: tuple) -> TunnelRow:
    (_, owner_pid, tunnel_id, slot, role, state, tag, peer, active, total, up, down,
     throughput, opened, heartbeat, generation) = values
    return TunnelRow(owner_pid, slot, tunnel_id, role, state, _text(tag), _text(peer), active,
                     total, up, down, throughput, opened, heartbeat, generation)


def _block(buf: mmap.mmap, slot: int) -> tuple[int, ...]:
    """A counter block's events and values. One stuck mid-write (its worker died in
    publish()) is read as it is: each u64 is whole, and one publish only raises them."""
    offset = BLOCKS_OFFSET + slot * BLOCK_SIZE
    values = _read(buf, offset, _BLOCK)
    if values is None:
        values = _BLOCK.unpack_from(buf, offset)
    return values[1:]


_FREE_WORKER = _worker_values(WorkerRow(0, state=WORKER_FREE))
_ZERO_BLOCK = (0,) * (len(EVENTS) + COUNTER_KEYS * VALUES_PER_KEY)
_FREE_TUNNEL = (0, 0, 0, 0, TUNNEL_FREE, b"", b"", 0, 0, 0, 0, 0.0, 0.0, 0.0, 0)


class StateTable:
    """One mapped state file. Forked workers may keep the parent's object: the mapping is
    shared and fcntl locks belong to whichever process takes them."""

    def __init__(self, path: str, fd: int, buf: mmap.mmap, writable: bool) -> None:
        self.path = path
        self.writable = writable
        self._fd = fd  # stays open: lockf needs it and `status` finds the table by it
        self._buf = buf

    @classmethod
    def create(cls, path: str, master_pid: int, *, private_directory: bool = False
               ) -> StateTable:
        """A zeroed table with its header written, replacing any file at path (atomically,
        so a process still mapping the old file keeps reading it instead of faulting).

        The file is 0600. A directory it has to make is 0700; an existing one is the
        operator's and is left as it is, unless ``private_directory`` says it is revproxy's
        own (the default location), which is then made 0700 if it was not."""
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o700, exist_ok=True)
            os.chmod(directory, 0o700)  # whatever the umask
        info = os.stat(directory)
        if info.st_uid not in (0, os.geteuid()):
            raise StateTableError(f"{directory} belongs to uid {info.st_uid}, not to us")
        if private_directory and info.st_uid == os.geteuid() and info.st_mode & 0o077:
            os.chmod(directory, 0o700)  # made 0755 by an older revproxy
        # not tempfile.mkstemp: tempfile pulls in shutil, random and the compressors, and
        # every worker would inherit that memory
        temp = os.path.join(directory, f".revproxy-{os.getpid()}-{os.urandom(6).hex()}.tmp")
        fd = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        buf: mmap.mmap | None = None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask, and not world-readable
            os.ftruncate(fd, TABLE_SIZE)
            buf = mmap.mmap(fd, TABLE_SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            _publish(buf, HEADER_SEQ_OFFSET, _HEADER_BODY, (
                master_pid, 0, time.time(), WORKER_SLOTS, TUNNELS_PER_WORKER, REPLAY_SLOTS,
                REPLAY_PROBE))
            _HEADER_ID.pack_into(buf, 0, MAGIC, LAYOUT_VERSION)  # last: only now a table
            os.replace(temp, path)
            return cls(path, fd, buf, True)
        except BaseException:
            if buf is not None:
                buf.close()
            os.close(fd)
            os.unlink(temp)
            raise

    @classmethod
    def open(cls, path: str, *, readonly: bool | None = None) -> StateTable:
        """Attach to an existing table; readonly=None means read-write if permitted."""
        fd = -1
        if not readonly:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            except PermissionError:
                if readonly is False:
                    raise
        writable = fd >= 0
        if not writable:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_SIZE:
                raise StateTableError("not a revproxy state file (too short)")
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, prot)
        except BaseException:
            os.close(fd)
            raise
        table = cls(path, fd, buf, writable)
        try:
            table._validate(size)
        except BaseException:
            table.close()
            raise
        return table

    def _validate(self, size: int) -> None:
        magic, version = _HEADER_ID.unpack_from(self._buf, 0)
        if magic != MAGIC:
            raise StateTableError("not a revproxy state file (bad magic)")
        if version != LAYOUT_VERSION:
            raise StateTableError(f"state file layout version {version}, "
                                  f"this revproxy reads version {LAYOUT_VERSION}")
        geometry = self._header()[4:]
        expected = (WORKER_SLOTS, TUNNELS_PER_WORKER, REPLAY_SLOTS, REPLAY_PROBE)
        if geometry != expected or size != TABLE_SIZE:
            raise StateTableError(f"state file geometry {geometry}/{size} bytes, "
                                  f"expected {expected}/{TABLE_SIZE} bytes")

    def close(self) -> None:
        if self._fd < 0:
            return
        self._buf.close()
        os.close(self._fd)
        self._fd = -1

    def __enter__(self) -> StateTable:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # header

    def _header(self) -> tuple:
        values = _read(self._buf, HEADER_SEQ_OFFSET, _HEADER)
        if values is None:
            raise StateTableError("state file header stuck mid-write")
        return values

    @property
    def generation(self) -> int:
        return self._header()[2]

    @property
    def created(self) -> float:
        """When the master made the table (unix time): the server's start."""
        return self._header()[3]

    def set_generation(self, generation: int) -> None:
        """Supervisor only: the header's one changing field."""
        values = list(self._header()[1:])
        values[1] = generation
        _publish(self._buf, HEADER_SEQ_OFFSET, _HEADER_BODY, tuple(values))

    # worker rows

    def read_worker(self, slot: int) -> WorkerRow:
        _check_slot(slot)
        values = _read(self._buf, WORKERS_OFFSET + slot * WORKER_ROW_SIZE, _WORKER)
        if values is None:
            raise StateTableError(f"worker row {slot} stuck mid-write")
        return WorkerRow(*values[1:])

    def worker_writer(self, slot: int, row: WorkerRow) -> WorkerSlotWriter:
        """A mutable writer for the worker's own row (publishes row now)."""
        _check_slot(slot)
        return WorkerSlotWriter(self._buf, WORKERS_OFFSET + slot * WORKER_ROW_SIZE, row)

    def workers(self) -> list[tuple[int, WorkerRow]]:
        """(slot, row) of every non-FREE worker row; rows stuck mid-write are skipped."""
        found = []
        for slot in self._in_use(WORKERS_OFFSET, WORKER_ROW_SIZE, _WORKER_STATE_OFFSET,
                                 WORKER_SLOTS):
            values = _read(self._buf, WORKERS_OFFSET + slot * WORKER_ROW_SIZE, _WORKER)
            if values is not None and values[4] != WORKER_FREE:
                found.append((slot, WorkerRow(*values[1:])))
        return found

    def clear_worker(self, slot: int) -> None:
        """Supervisor only, once the slot's worker is dead: fold its counters into the
        departed block, FREE its tunnels, then its row."""
        _check_slot(slot)
        self.fold_counters(slot)
        for index in range(TUNNELS_PER_WORKER):
            _publish(self._buf, _tunnel_offset(slot, index), _TUNNEL_BODY, _FREE_TUNNEL)
        _publish(self._buf, WORKERS_OFFSET + slot * WORKER_ROW_SIZE, _WORKER_BODY,
                 _FREE_WORKER)

    # tunnel rows

    def tunnel_writer(self, slot: int, index: int, row: TunnelRow) -> TunnelSlotWriter:
        """A mutable writer for one of the owner's tunnel rows (publishes row now)."""
        return TunnelSlotWriter(self._buf, _tunnel_offset(slot, index), row)

    def tunnels(self, slots: Iterable[int] | None = None) -> list[tuple[int, int, TunnelRow]]:
        """(slot, index, row) of every non-FREE tunnel row, or only those of the workers in
        ``slots`` (which keeps a reader from touching every page of the table); rows stuck
        mid-write are skipped."""
        if slots is None:
            blocks = [(0, WORKER_SLOTS * TUNNELS_PER_WORKER)]
        else:
            blocks = [(slot * TUNNELS_PER_WORKER, TUNNELS_PER_WORKER) for slot in sorted(slots)]
        found = []
        for first, count in blocks:
            start = TUNNELS_OFFSET + first * TUNNEL_ROW_SIZE
            for number in self._in_use(start, TUNNEL_ROW_SIZE, _TUNNEL_STATE_OFFSET, count):
                values = _read(self._buf, start + number * TUNNEL_ROW_SIZE, _TUNNEL)
                if values is not None and values[5] != TUNNEL_FREE:
                    found.append((*divmod(first + number, TUNNELS_PER_WORKER),
                                  _tunnel_row(values)))
        return found

    def _in_use(self, start: int, size: int, state_offset: int, count: int) -> list[int]:
        """Row numbers whose state byte is non-zero, from one strided slice scanned in C. A row
        caught mid-write is re-checked by the seqlock read; one just being filled is missed
        until the next scan, as if the scan had come a moment earlier."""
        states = self._buf[start + state_offset:start + count * size:size].translate(_NONZERO)
        found = []
        number = states.find(1)
        while number >= 0:
            found.append(number)
            number = states.find(1, number + 1)
        return found

    # server row, counter keys and counter blocks

    def _server(self) -> tuple:
        values = _read(self._buf, SERVER_OFFSET, _SERVER)
        if values is None:
            raise StateTableError("state file server row stuck mid-write")
        return values

    def server_counters(self) -> ServerCounters:
        _, _, reloads, refused, respawns = self._server()
        return ServerCounters(reloads, refused, respawns)

    def count_server_event(self, *, reloads: int = 0, refused: int = 0,
                           respawns: int = 0) -> None:
        """Supervisor only: add to the server row's counters."""
        _, keys, done, not_done, respawned = self._server()
        _publish(self._buf, SERVER_OFFSET, _SERVER_BODY,
                 (keys, done + reloads, not_done + refused, respawned + respawns))

    def register_counter(self, kind: int, name: str) -> int:
        """Supervisor only: the index of the counter key (kind, name), appended if new.
        Raises StateTableError when all COUNTER_KEYS are taken (keys are never removed: the
        workers of an older generation may still count under theirs)."""
        raw = fit_text(name, KEY_NAME_SIZE)
        keys = self._server()[1]
        for index in range(keys):
            found_kind, found_name = _KEY.unpack_from(self._buf, KEYS_OFFSET + index * KEY_SIZE)
            if found_kind == kind and found_name.rstrip(b"\x00") == raw:
                return index
        if keys >= COUNTER_KEYS:
            raise StateTableError(f"all {COUNTER_KEYS} counter keys are in use")
        _KEY.pack_into(self._buf, KEYS_OFFSET + keys * KEY_SIZE, kind, raw)
        _, _, done, refused, respawns = self._server()
        _publish(self._buf, SERVER_OFFSET, _SERVER_BODY, (keys + 1, done, refused, respawns))
        return keys

    def counter_keys(self) -> list[tuple[int, str]]:
        """(kind, name) of every registered key, by index. An entry is written before the
        count that makes it visible, and never changes after."""
        keys = self._server()[1]
        found = []
        for index in range(min(keys, COUNTER_KEYS)):
            kind, name = _KEY.unpack_from(self._buf, KEYS_OFFSET + index * KEY_SIZE)
            found.append((kind, _text(name)))
        return found

    def counter_writer(self, slot: int) -> CounterWriter:
        """The writer of a worker's own counter block (starts from what the block holds)."""
        _check_slot(slot)
        return CounterWriter(self._buf, BLOCKS_OFFSET + slot * BLOCK_SIZE)

    def read_counters(self, slot: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(events, values) of a worker slot's block (``DEPARTED`` for the departed block);
        values[3 * key + 0/1/2] are bytes up, bytes down and sessions."""
        if slot != DEPARTED:
            _check_slot(slot)
        values = _block(self._buf, slot)
        return values[:len(EVENTS)], values[len(EVENTS):]

    def fold_counters(self, slot: int) -> None:
        """Supervisor only, once the slot's worker is dead: add its block into the departed
        block and zero it, the fold seq odd meanwhile (see ``totals``)."""
        _check_slot(slot)
        mine = _block(self._buf, slot)
        if not any(mine):
            return
        fold = _SEQ.unpack_from(self._buf, FOLD_SEQ_OFFSET)[0]
        _store_seq(self._buf, FOLD_SEQ_OFFSET, ((fold + 1) | 1) & _U32)
        try:
            departed = _block(self._buf, DEPARTED)
            _publish(self._buf, BLOCKS_OFFSET + DEPARTED * BLOCK_SIZE, _BLOCK_BODY,
                     tuple((a + b) & _U64 for a, b in zip(departed, mine, strict=True)))
            _publish(self._buf, BLOCKS_OFFSET + slot * BLOCK_SIZE, _BLOCK_BODY, _ZERO_BLOCK)
        finally:
            _store_seq(self._buf, FOLD_SEQ_OFFSET, ((fold + 1) | 1) + 1 & _U32)

    def totals(self, slots: Iterable[int] | None = None
               ) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """(events, values) summed over the departed block and the workers' blocks (every
        slot, or ``slots``). Retried while the master folds a block, so that a worker being
        reaped is counted exactly once."""
        chosen = range(WORKER_SLOTS) if slots is None else sorted(slots)
        for attempt in range(_SPINS + _SLEEPS):
            fold = _SEQ.unpack_from(self._buf, FOLD_SEQ_OFFSET)[0]
            if not fold & 1:
                sums = list(_block(self._buf, DEPARTED))
                for slot in chosen:
                    block = _block(self._buf, slot)
                    if any(block):
                        sums = [a + b for a, b in zip(sums, block, strict=True)]
                if _SEQ.unpack_from(self._buf, FOLD_SEQ_OFFSET)[0] == fold:
                    return tuple(sums[:len(EVENTS)]), tuple(sums[len(EVENTS):])
            if attempt >= _SPINS:
                time.sleep(_SLEEP)
        raise StateTableError("counter totals: the master stays mid-fold")

    def baselines(self) -> tuple[int, ...]:
        """The stats API's reset baselines: [2 * key + 0/1] for bytes up/down."""
        values = _read(self._buf, BASELINES_OFFSET, _BASELINES)
        if values is None:
            raise StateTableError("counter baselines stuck mid-write")
        return values[1:]

    def set_baselines(self, values: Iterable[int]) -> None:
        """Stats API process only (one writer)."""
        _publish(self._buf, BASELINES_OFFSET, _BASELINES_BODY, tuple(values))

    # replay filter

    def replay_filter(self, window: float) -> SharedReplayFilter:
        """The shared filter; it remembers an AuthID for ``window`` seconds."""
        if not self.writable:
            raise StateTableError(f"{self.path} is open read-only")
        return SharedReplayFilter(self._fd, self._buf, window)


class WorkerSlotWriter:
    """The worker's own row as plain attributes; publish() re-packs it without building a
    WorkerRow. pid, generation, index and started are fixed at creation."""

    __slots__ = ("_buf", "_offset", "_head", "_started", "state", "heartbeat", "connections",
                 "total_connections", "bytes_in", "bytes_out")

    def __init__(self, buf: mmap.mmap, offset: int, row: WorkerRow) -> None:
        self._buf = buf
        self._offset = offset
        self._head = (row.pid, row.generation, row.index)
        self._started = row.started
        self.state = row.state
        self.heartbeat = row.heartbeat
        self.connections = row.connections
        self.total_connections = row.total_connections
        self.bytes_in = row.bytes_in
        self.bytes_out = row.bytes_out
        self.publish()

    def publish(self) -> None:
        _publish(self._buf, self._offset, _WORKER_BODY, (
            *self._head, self.state, self._started, self.heartbeat, self.connections,
            self.total_connections, self.bytes_in, self.bytes_out))


class TunnelSlotWriter:
    """A tunnel owner's hot-path writer: update() re-packs the row with the changing fields
    without building a TunnelRow (tag and peer are encoded once). owner_pid, slot, tunnel_id,
    role, tag, peer, opened and generation are fixed at creation."""

    __slots__ = ("_buf", "_offset", "_head", "_tag", "_peer", "_opened", "_generation",
                 "state", "active_sessions", "total_sessions", "bytes_up", "bytes_down",
                 "throughput", "heartbeat")

    def __init__(self, buf: mmap.mmap, offset: int, row: TunnelRow) -> None:
        self._buf = buf
        self._offset = offset
        self._head = (row.owner_pid, row.tunnel_id, row.slot, row.role)
        self._tag = fit_text(row.tag, TAG_SIZE)
        self._peer = fit_text(row.peer, PEER_SIZE)
        self._opened = row.opened
        self._generation = row.generation
        self.update(row.state, row.active_sessions, row.total_sessions, row.bytes_up,
                    row.bytes_down, row.throughput, row.heartbeat)

    def update(self, state: int, active_sessions: int, total_sessions: int, bytes_up: int,
               bytes_down: int, throughput: float, heartbeat: float) -> None:
        """Set the changing fields and publish the row."""
        self.state = state
        self.active_sessions = active_sessions
        self.total_sessions = total_sessions
        self.bytes_up = bytes_up
        self.bytes_down = bytes_down
        self.throughput = throughput
        self.heartbeat = heartbeat
        self.publish()

    def publish(self) -> None:
        _publish(self._buf, self._offset, _TUNNEL_BODY, (
            *self._head, self.state, self._tag, self._peer, self.active_sessions,
            self.total_sessions & _U32, self.bytes_up, self.bytes_down, self.throughput,
            self._opened, self.heartbeat, self._generation))

    def free(self) -> None:
        """FREE the row (the tunnel closed); a later publish() would bring it back."""
        _publish(self._buf, self._offset, _TUNNEL_BODY, _FREE_TUNNEL)


class CounterWriter:
    """A worker's counter block: ``events`` (as ``EVENTS`` names them) and ``values``
    ([3 * key + 0/1/2]: bytes up, bytes down, sessions) are plain lists the worker adds to;
    publish() writes them all with one seqlocked pack."""

    __slots__ = ("_buf", "_offset", "events", "values")

    def __init__(self, buf: mmap.mmap, offset: int) -> None:
        self._buf = buf
        self._offset = offset
        current = _BLOCK.unpack_from(buf, offset)[1:]
        self.events = list(current[:len(EVENTS)])
        self.values = list(current[len(EVENTS):])

    def publish(self) -> None:
        _publish(self._buf, self._offset, _BLOCK_BODY,
                 tuple(v & _U64 for v in (*self.events, *self.values)))


_EXPIRES = struct.Struct("<d")
_PROBE_SPAN = REPLAY_PROBE * REPLAY_ENTRY_SIZE


class SharedReplayFilter:
    """A ReplayFilter shared by every process mapping the table.

    An AuthID is AES output, so its first 4 bytes pick its home entry (mod 65536); it lives in
    the 32 entries from there (31 spare entries end the area, so windows never wrap). An entry
    stores the id and its expiry, now + the window; an expired entry counts as empty. Each
    check-and-insert holds an exclusive ``lockf`` lock on its own 768-byte window only, so
    ids in distant windows do not contend; while another process holds an overlapping window
    (microseconds) the call blocks the whole process, gevent loop included. POSIX locks belong
    to a process, so one filter must not be used from two threads of one process.

    When all 32 entries of a window are live, the one expiring first is overwritten: under a
    flood of valid AuthIDs (tens of thousands within 120 s) a replay of an evicted id would
    be accepted. This trades replay protection for service, as MemoryReplayFilter does,
    where V2Ray's full filter refuses everyone instead.
    """

    __slots__ = ("_fd", "_buf", "_window")

    def __init__(self, fd: int, buf: mmap.mmap, window: float) -> None:
        self._fd = fd
        self._buf = buf
        self._window = window

    def check_and_add(self, auth_id: bytes, now: float) -> bool:
        """Record auth_id at time now; False if any process recorded it within the window."""
        key = bytes(auth_id)
        if len(key) != 16:
            raise ValueError(f"an AuthID is 16 bytes, not {len(key)}")
        home = int.from_bytes(key[:4], "little") & (REPLAY_SLOTS - 1)
        start = REPLAY_OFFSET + home * REPLAY_ENTRY_SIZE
        fcntl.lockf(self._fd, fcntl.LOCK_EX, _PROBE_SPAN, start)
        try:
            window = self._buf[start:start + _PROBE_SPAN]
            at = window.find(key)
            while at > 0 and at % REPLAY_ENTRY_SIZE:  # a match across two entries
                at = window.find(key, at + 1)
            if at >= 0:
                if _EXPIRES.unpack_from(window, at + 16)[0] > now:
                    return False
            else:
                expiries = _WINDOW_EXPIRIES.unpack(window)
                at = expiries.index(min(expiries)) * REPLAY_ENTRY_SIZE
            _ENTRY.pack_into(self._buf, start + at, key, now + self._window)
            return True
        finally:
            fcntl.lockf(self._fd, fcntl.LOCK_UN, _PROBE_SPAN, start)
