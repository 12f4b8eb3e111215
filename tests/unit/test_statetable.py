"""Tests for the shared-memory state table: layout and header, file and directory modes, row
round trips, the seqlock under a concurrent writer process, and the VMess replay filter
shared between processes."""

from __future__ import annotations

import fcntl
import mmap
import os
import random
import signal
import struct
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import revproxy.server.statetable as statetable
from revproxy.config.sections import MAX_WORKERS
from revproxy.proxy.vmess.replay import REPLAY_WINDOW, ReplayFilter
from revproxy.server.statetable import (
    ROLE_BRIDGE,
    TABLE_SIZE,
    TUNNEL_DRAINING,
    TUNNEL_FREE,
    TUNNELS_PER_WORKER,
    WORKER_FREE,
    WORKER_RUNNING,
    WORKER_SLOTS,
    StateTable,
    StateTableError,
    TunnelRow,
    WorkerRow,
    default_state_path,
    fit_text,
)

U8, U16, U32, U64 = (st.integers(0, 2**bits - 1) for bits in (8, 16, 32, 64))
I32 = st.integers(-(2**31), 2**31 - 1)
TIMES = st.floats(allow_nan=False)
TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
               max_size=60)  # spelled so that bookworm's hypothesis 6.67 accepts it


@pytest.fixture
def table(tmp_path: Path) -> Iterator[StateTable]:
    with StateTable.create(str(tmp_path / "revproxy.state"), 4242) as created:
        yield created


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StateTable]:
    """One table for the hypothesis tests (function fixtures do not reset between examples)."""
    path = tmp_path_factory.mktemp("state") / "revproxy.state"
    with StateTable.create(str(path), 1) as created:
        yield created


def in_child(body: Callable[[], object]) -> int:
    """Fork, run body in the child and exit 0, or 1 with a traceback; returns the child pid."""
    pid = os.fork()
    if pid == 0:
        code = 0
        try:
            body()
        except BaseException:
            traceback.print_exc()
            code = 1
        os._exit(code)
    return pid


def exit_code(pid: int) -> int:
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def header(table: StateTable) -> tuple[int, int, float]:
    """master pid, generation and creation time, as the header holds them."""
    _seq, master_pid, generation, created, *_geometry = table._header()
    return master_pid, generation, created


def write_worker(table: StateTable, slot: int, row: WorkerRow) -> None:
    table.worker_writer(slot, row)  # publishes the row


def write_tunnel(table: StateTable, slot: int, index: int, row: TunnelRow) -> None:
    table.tunnel_writer(slot, index, row)  # publishes the row


def read_tunnel(table: StateTable, slot: int, index: int) -> TunnelRow:
    """One tunnel row as a seqlock reader sees it, FREE or not."""
    values = statetable._read(table._buf, statetable._tunnel_offset(slot, index),
                              statetable._TUNNEL)
    if values is None:
        raise StateTableError(f"tunnel row {slot}/{index} stuck mid-write")
    return statetable._tunnel_row(values)


def poke(path: str, offset: int, data: bytes) -> None:
    """Write raw bytes into the file, as a foreign or dying process might have left them."""
    with open(path, "r+b") as raw:
        raw.seek(offset)
        raw.write(data)


# layout, create, open


def test_layout_is_the_documented_one() -> None:
    assert (statetable.HEADER_SIZE, statetable.WORKER_ROW_SIZE, statetable.TUNNEL_ROW_SIZE) \
        == (64, 64, 152)
    assert (statetable.WORKERS_OFFSET, statetable.TUNNELS_OFFSET, statetable.REPLAY_OFFSET,
            statetable.SERVER_OFFSET, statetable.KEYS_OFFSET, statetable.BLOCKS_OFFSET,
            statetable.BASELINES_OFFSET, TABLE_SIZE) == (
        64, 16448, 2506816, 4_080_424, 4_080_488, 4_098_920, 5_688_208, 5_692_312)
    assert (statetable.KEY_SIZE, statetable.BLOCK_SIZE, statetable.BASELINES_SIZE) \
        == (72, 6184, 4104)
    doc = statetable.__doc__ or ""
    for text in ("@64 ", "@16448 ", "@2506816 ", "@4080424 ", "@4080488 ", "@4098920 ",
                 "@5688208 ", "size 5,692,312", "256 slots x 64 bytes",
                 "256 x 64 rows x 152 bytes", "x 24 bytes", "worker slots (256)",
                 "256 keys x 72 bytes", "x 6184 bytes", "4104 bytes", "layout version (2)"):
        assert text in doc


def test_a_reload_has_room_for_two_generations_of_the_most_workers() -> None:
    assert WORKER_SLOTS == 256 == 2 * MAX_WORKERS


def test_create_makes_directory_file_and_header(tmp_path: Path) -> None:
    path = tmp_path / "run" / "revproxy" / "revproxy.state"
    before = time.time()
    with StateTable.create(str(path), 777) as table:
        assert table.path == str(path)
        assert path.stat().st_size == TABLE_SIZE
        assert path.read_bytes()[:12] == b"RPXSTATE" + struct.pack("<I", 2)
        master_pid, generation, created = header(table)
        assert (master_pid, generation, table.generation) == (777, 0, 0)
        assert before <= created <= time.time()
        assert table.workers() == [] and table.tunnels() == []
        table.set_generation(9)
        assert table.generation == 9 and header(table) == (777, 9, created)


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_the_table_and_the_directory_it_makes_are_private(tmp_path: Path, umask: int) -> None:
    """Rows name pids, tags and bridge addresses: no other user may read them."""
    path = tmp_path / "run" / "revproxy" / "revproxy.state"
    previous = os.umask(umask)
    try:
        table = StateTable.create(str(path), 1)
    finally:
        os.umask(previous)
    with table:
        assert path.stat().st_mode & 0o777 == 0o600
        assert path.parent.stat().st_mode & 0o777 == 0o700
        assert [p.name for p in path.parent.iterdir()] == ["revproxy.state"]


def test_an_existing_directory_is_made_private_only_when_it_is_revproxys(
        tmp_path: Path) -> None:
    shared_dir, own_dir = tmp_path / "operators", tmp_path / "revproxy"
    for directory in (shared_dir, own_dir):
        directory.mkdir()
        directory.chmod(0o755)  # as an older revproxy made its own
    with StateTable.create(str(shared_dir / "a.state"), 1):
        assert shared_dir.stat().st_mode & 0o777 == 0o755  # the operator's choice
        assert (shared_dir / "a.state").stat().st_mode & 0o777 == 0o600
    with StateTable.create(str(own_dir / "b.state"), 1, private_directory=True):
        assert own_dir.stat().st_mode & 0o777 == 0o700


def test_a_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("making a directory another user owns needs root")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.chown(foreign, 65534, 65534)
    with pytest.raises(StateTableError, match="belongs to uid 65534"):
        StateTable.create(str(foreign / "revproxy.state"), 1)


def test_open_sees_what_the_creator_wrote(table: StateTable) -> None:
    table.set_generation(3)
    write_worker(table, 5, WorkerRow(1234, generation=3, index=2, state=WORKER_RUNNING))
    with StateTable.open(table.path) as other:
        assert other.writable
        assert header(other) == header(table) and header(other)[:2] == (4242, 3)
        assert other.workers() == [(5, table.read_worker(5))]
        write_tunnel(other, 5, 0, TunnelRow(1234, 5, 1, tag="t"))
    assert read_tunnel(table, 5, 0).tag == "t"


def test_create_replaces_the_file_of_a_previous_master(tmp_path: Path) -> None:
    path = str(tmp_path / "revproxy.state")
    old = StateTable.create(path, 1)
    write_worker(old, 0, WorkerRow(11))
    with StateTable.create(path, 2) as new:
        assert new.read_worker(0).state == WORKER_FREE
        assert old.read_worker(0).pid == 11  # still mapped: no SIGBUS, the old data
        assert header(old)[0] == 1 and header(new)[0] == 2
    old.close()
    old.close()  # idempotent


def test_open_readonly(table: StateTable) -> None:
    write_worker(table, 1, WorkerRow(5))
    with StateTable.open(table.path, readonly=True) as reader:
        assert not reader.writable
        assert reader.read_worker(1).pid == 5
        with pytest.raises(TypeError):
            write_worker(reader, 1, WorkerRow(6))
        with pytest.raises(StateTableError, match="read-only"):
            reader.replay_filter(REPLAY_WINDOW)


@pytest.mark.parametrize("content", [
    b"",
    b"RPXSTATE",
    random.Random(7).randbytes(TABLE_SIZE),
    b"RPXSTATE" + struct.pack("<I", 1) + bytes(TABLE_SIZE - 12),
    b"RPXSTATE" + struct.pack("<I", 3) + bytes(TABLE_SIZE - 12),
])
def test_open_refuses_other_files(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "other"
    path.write_bytes(content)
    with pytest.raises(StateTableError):
        StateTable.open(str(path))


def test_open_refuses_a_truncated_table(table: StateTable) -> None:
    os.truncate(table.path, TABLE_SIZE - 24)
    with pytest.raises(StateTableError, match="geometry"):
        StateTable.open(table.path)


def test_default_state_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert default_state_path() == "/run/revproxy/revproxy.state"
    assert default_state_path(321) == "/run/revproxy/revproxy-321.state"
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/1000")
    assert default_state_path() == "/run/user/1000/revproxy/revproxy.state"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert default_state_path(5) == "/tmp/revproxy-1000/revproxy-5.state"


def test_module_does_not_import_gevent() -> None:
    code = "import sys, revproxy.server.statetable; sys.exit('gevent' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# rows


workers = st.builds(WorkerRow, I32, U32, U16, U8, TIMES, TIMES, U32, U64, U64, U64)
tunnels = st.builds(TunnelRow, I32, U16, U32, U8, U8, TEXT, TEXT, U32, U32, U64, U64, TIMES,
                    TIMES, TIMES, U32)


@settings(max_examples=200)
@given(slot=st.integers(0, WORKER_SLOTS - 1), row=workers)
def test_worker_row_round_trip(shared: StateTable, slot: int, row: WorkerRow) -> None:
    write_worker(shared, slot, row)
    assert shared.read_worker(slot) == row


@settings(max_examples=200)
@given(slot=st.integers(0, WORKER_SLOTS - 1), index=st.integers(0, TUNNELS_PER_WORKER - 1),
       row=tunnels)
def test_tunnel_row_round_trip(shared: StateTable, slot: int, index: int,
                               row: TunnelRow) -> None:
    write_tunnel(shared, slot, index, row)
    got = read_tunnel(shared, slot, index)
    assert row.tag.startswith(got.tag) and row.peer.startswith(got.peer)
    assert len(got.tag.encode()) <= 32 and len(got.peer.encode()) <= 48
    assert got.tag == fit_text(row.tag, 32).decode() and got.peer == fit_text(row.peer, 48).decode()
    assert got == TunnelRow(**{**{name: getattr(row, name) for name in row.__slots__},
                               "tag": got.tag, "peer": got.peer})


def test_long_text_is_cut_at_a_character_boundary(table: StateTable) -> None:
    write_tunnel(table, 0, 0, TunnelRow(1, tag="é" * 20, peer="a" + "€" * 20))
    row = read_tunnel(table, 0, 0)
    assert row.tag == "é" * 16  # 32 bytes exactly
    assert row.peer == "a" + "€" * 15  # 46 bytes; a 16th € would need 49
    assert fit_text("ab\udcff", 8) == b"ab?"  # a lone surrogate does not raise


def test_rows_are_indexed_checked(table: StateTable) -> None:
    for call in (lambda: table.read_worker(WORKER_SLOTS), lambda: table.read_worker(-1),
                 lambda: table.tunnel_writer(0, TUNNELS_PER_WORKER, TunnelRow(1)),
                 lambda: table.tunnel_writer(WORKER_SLOTS, 0, TunnelRow(1)),
                 lambda: table.worker_writer(WORKER_SLOTS, WorkerRow(1)),
                 lambda: table.clear_worker(WORKER_SLOTS)):
        with pytest.raises(IndexError):
            call()


def test_listing_clear_and_free(table: StateTable) -> None:
    last = WORKER_SLOTS - 1
    write_worker(table, 2, WorkerRow(20, state=WORKER_RUNNING))
    write_worker(table, last, WorkerRow(630))
    for slot, index in ((2, 0), (2, 63), (3, 5), (last, 63)):
        write_tunnel(table, slot, index, TunnelRow(slot * 10, slot, index, ROLE_BRIDGE))
    assert [slot for slot, _ in table.workers()] == [2, last]
    assert [(s, i, r.tunnel_id) for s, i, r in table.tunnels()] \
        == [(2, 0, 0), (2, 63, 63), (3, 5, 5), (last, 63, 63)]
    assert [(s, i) for s, i, _ in table.tunnels([last, 2])] == [(2, 0), (2, 63), (last, 63)]
    table.clear_worker(2)
    assert table.read_worker(2) == WorkerRow(0, state=WORKER_FREE)
    assert read_tunnel(table, 2, 63) == TunnelRow(0, role=0, state=TUNNEL_FREE)
    assert [(s, i) for s, i, _ in table.tunnels()] == [(3, 5), (last, 63)]
    table.clear_worker(last)
    assert [(s, i) for s, i, _ in table.tunnels()] == [(3, 5)]
    assert table.workers() == []


def test_tunnel_slot_writer(table: StateTable) -> None:
    writer = table.tunnel_writer(4, 7, TunnelRow(99, 4, 12, ROLE_BRIDGE, tag="bridge-😀",
                                                 peer="10.0.0.1:443", opened=5.0))
    assert read_tunnel(table, 4, 7).tag == "bridge-😀"
    writer.active_sessions += 2
    writer.total_sessions = 2**32 + 3  # a counter that outlived u32 wraps instead of raising
    writer.bytes_up, writer.bytes_down, writer.throughput = 10, 20, 1.5
    writer.heartbeat, writer.state = 6.0, TUNNEL_DRAINING
    assert read_tunnel(table, 4, 7).active_sessions == 0  # nothing shows before publish()
    writer.publish()
    assert read_tunnel(table, 4, 7) == TunnelRow(
        99, 4, 12, ROLE_BRIDGE, TUNNEL_DRAINING, "bridge-😀", "10.0.0.1:443", 2, 3, 10, 20,
        1.5, 5.0, 6.0, 0)
    writer.free()
    assert table.tunnels() == []
    write_tunnel(table, 4, 8, TunnelRow(1, total_sessions=2**32 + 3))
    assert read_tunnel(table, 4, 8).total_sessions == 3


def test_worker_slot_writer(table: StateTable) -> None:
    writer = table.worker_writer(6, WorkerRow(66, 2, 1, started=3.0))
    writer.connections, writer.total_connections, writer.state = 4, 40, WORKER_RUNNING
    writer.bytes_in, writer.bytes_out, writer.heartbeat = 7, 8, 9.0
    writer.publish()
    assert table.read_worker(6) == WorkerRow(66, 2, 1, WORKER_RUNNING, 3.0, 9.0, 4, 40, 7, 8)


def test_a_row_left_mid_write_is_skipped_then_cleared(table: StateTable) -> None:
    write_worker(table, 1, WorkerRow(10))
    write_tunnel(table, 1, 3, TunnelRow(10))
    write_tunnel(table, 2, 0, TunnelRow(20))
    offset = statetable.TUNNELS_OFFSET + (1 * TUNNELS_PER_WORKER + 3) * 152
    poke(table.path, offset, struct.pack("<I", 7))  # odd: its writer was killed mid-write
    with pytest.raises(StateTableError, match="mid-write"):
        read_tunnel(table, 1, 3)
    assert [(s, i) for s, i, _ in table.tunnels()] == [(2, 0)]
    table.clear_worker(1)  # the supervisor, once the worker is reaped
    assert read_tunnel(table, 1, 3).state == TUNNEL_FREE
    write_tunnel(table, 1, 3, TunnelRow(11))  # a new owner of the slot writes as usual
    assert read_tunnel(table, 1, 3).owner_pid == 11


# the seqlock against a writer in another process


def counted_tunnel(k: int) -> TunnelRow:
    return TunnelRow(k, k % 2**16, k, k % 256, k % 256, str(k), f"peer-{k}", k, k, k, k,
                     float(k), float(k), float(k), k)


def counted_worker(k: int) -> WorkerRow:
    return WorkerRow(k, k, k % 2**16, k % 256, float(k), float(k), k, k, k, k)


def test_readers_never_see_a_torn_row(table: StateTable) -> None:
    ready_r, ready_w = os.pipe()

    def writer() -> None:
        k = 1
        while True:
            write_tunnel(table, 9, 9, counted_tunnel(k))
            write_worker(table, 9, counted_worker(k))
            if k == 1:
                os.write(ready_w, b"1")
            k += 1

    pid = in_child(writer)
    try:
        assert os.read(ready_r, 1) == b"1"
        seen: set[int] = set()
        reads, deadline = 0, time.monotonic() + 8.0
        while (reads < 20_000 or len(seen) < 200) and time.monotonic() < deadline:
            tunnel = read_tunnel(table, 9, 9)
            assert tunnel == counted_tunnel(tunnel.tunnel_id)
            worker = table.read_worker(9)
            assert worker == counted_worker(worker.pid)
            seen.add(tunnel.tunnel_id)
            reads += 1
        assert len(seen) >= 200  # the child really was writing all along
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


def test_a_row_counter_only_ever_shows_values_its_writer_stored(table: StateTable) -> None:
    # The counter must never pass through a value nobody published: pack_into zero-fills
    # before it writes, and a 0 read before and after a copy (0 is even) let a torn row in.
    ready_r, ready_w = os.pipe()
    offset = statetable.WORKERS_OFFSET + 9 * statetable.WORKER_ROW_SIZE

    def writer() -> None:
        row = counted_worker(1)
        write_worker(table, 9, row)
        os.write(ready_w, b"1")
        while True:
            write_worker(table, 9, row)

    pid = in_child(writer)
    try:
        assert os.read(ready_r, 1) == b"1"
        with open(table.path, "rb") as raw, \
                mmap.mmap(raw.fileno(), 0, prot=mmap.PROT_READ) as view:
            seq = struct.Struct("<I")
            last, changes, deadline = 2, 0, time.monotonic() + 5.0
            while changes < 20_000 and time.monotonic() < deadline:
                now = seq.unpack_from(view, offset)[0]
                assert now >= last, f"counter read {now} after {last}"
                changes += now != last
                last = now
        assert changes >= 1000  # the child really was writing all along
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        os.close(ready_r)
        os.close(ready_w)


# the shared replay filter


def test_shared_filter_is_a_replay_filter(table: StateTable) -> None:
    replay: ReplayFilter = table.replay_filter(REPLAY_WINDOW)
    first, second = os.urandom(16), os.urandom(16)
    assert replay.check_and_add(first, 1000.0)
    assert not replay.check_and_add(first, 1000.0)
    assert replay.check_and_add(second, 1000.0)
    assert replay.check_and_add(bytes(16), 1000.0)  # all zeros is an id like any other
    assert not replay.check_and_add(bytearray(16), 1000.5)
    with pytest.raises(ValueError):
        replay.check_and_add(b"short", 1000.0)


def test_entries_expire_after_the_window(table: StateTable) -> None:
    replay = table.replay_filter(REPLAY_WINDOW)
    auth_id = os.urandom(16)
    assert replay.check_and_add(auth_id, 1000.0)
    assert not replay.check_and_add(auth_id, 1000.0 + REPLAY_WINDOW - 0.01)
    assert replay.check_and_add(auth_id, 1000.0 + REPLAY_WINDOW)
    # remembered again from then
    assert not replay.check_and_add(auth_id, 1000.0 + REPLAY_WINDOW + 80.0)


def test_replays_are_refused_across_processes(table: StateTable) -> None:
    replay = table.replay_filter(REPLAY_WINDOW)
    from_child, from_parent = os.urandom(16), os.urandom(16)
    assert replay.check_and_add(from_parent, 50.0)

    def child() -> None:  # its own mapping and descriptor, as an unrelated process would
        with StateTable.open(table.path) as own:
            assert not own.replay_filter(REPLAY_WINDOW).check_and_add(from_parent, 51.0)
        assert replay.check_and_add(from_child, 51.0)  # the inherited object works too

    assert exit_code(in_child(child)) == 0
    assert not replay.check_and_add(from_child, 52.0)


def same_home(count: int, seed: int) -> list[bytes]:
    prefix = random.Random(seed).randbytes(4)
    return [prefix + random.Random(seed + 1 + n).randbytes(12) for n in range(count)]


def test_a_full_window_evicts_the_entry_expiring_first(table: StateTable) -> None:
    replay = table.replay_filter(REPLAY_WINDOW)
    ids = same_home(statetable.REPLAY_PROBE + 1, seed=1)
    for n, auth_id in enumerate(ids):
        assert replay.check_and_add(auth_id, 100.0 + n)
    assert replay.check_and_add(ids[0], 140.0)  # evicted by the 33rd: accepted again
    for auth_id in ids[2:]:  # ...which evicted ids[1]; the others are still refused
        assert not replay.check_and_add(auth_id, 140.0)


def replay_entry(table: StateTable, number: int) -> bytes:
    """Entry number of the replay area, read straight from the file."""
    offset = statetable.REPLAY_OFFSET + number * 24
    with open(table.path, "rb") as raw, mmap.mmap(raw.fileno(), 0, prot=mmap.PROT_READ) as view:
        return view[offset:offset + 24]


def test_a_match_across_two_entries_is_not_a_match(table: StateTable) -> None:
    replay = table.replay_filter(REPLAY_WINDOW)
    home = bytes([7, 1, 0, 0])  # entry 263
    stored = home + os.urandom(4) + home + os.urandom(4)  # bytes 8..16 start with the home
    assert replay.check_and_add(stored, 10.0)
    straddling = stored[8:] + struct.pack("<d", 10.0 + REPLAY_WINDOW)  # id tail + its expiry
    assert replay.check_and_add(straddling, 50.0)
    assert replay_entry(table, 263) == stored + struct.pack("<d", 10.0 + REPLAY_WINDOW)
    assert replay_entry(table, 264) == straddling + struct.pack("<d", 50.0 + REPLAY_WINDOW)
    assert not replay.check_and_add(straddling, 50.0)
    assert not replay.check_and_add(stored, 50.0)


def test_many_ids_keep_refusing_recent_ones(table: StateTable) -> None:
    replay = table.replay_filter(REPLAY_WINDOW)
    source = random.Random(3)
    ids = [source.randbytes(16) for _ in range(200_000)]
    for n, auth_id in enumerate(ids):  # 200k ids within 20 s: three times the capacity
        assert replay.check_and_add(auth_id, 1000.0 + n * 1e-4)
    assert not any(replay.check_and_add(auth_id, 1020.0) for auth_id in ids[-2000:])


def test_a_process_killed_holding_the_lock_does_not_wedge_the_filter(table: StateTable) -> None:
    replay = table.replay_filter(REPLAY_WINDOW)
    ready_r, ready_w = os.pipe()

    def holder() -> None:
        fd = os.open(table.path, os.O_RDWR)
        fcntl.lockf(fd, fcntl.LOCK_EX)  # the whole file, so every probe window
        os.write(ready_w, b"1")
        time.sleep(0.3)
        os.kill(os.getpid(), signal.SIGKILL)

    def give_up(signum: int, frame: object) -> None:
        raise TimeoutError("the replay filter stayed locked")

    previous = signal.signal(signal.SIGALRM, give_up)
    signal.alarm(5)
    try:
        pid = in_child(holder)
        assert os.read(ready_r, 1) == b"1"
        started = time.monotonic()
        assert replay.check_and_add(os.urandom(16), 10.0)
        assert time.monotonic() - started > 0.15  # it did wait for the holder...
        status = os.waitpid(pid, 0)[1]
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL  # ...to die
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        os.close(ready_r)
        os.close(ready_w)


def test_the_filter_region_is_the_documented_one(table: StateTable) -> None:
    auth_id = bytes(range(16))  # little-endian 0x03020100: home entry 0x0100
    table.replay_filter(REPLAY_WINDOW).check_and_add(auth_id, 5.0)
    assert replay_entry(table, 0x0100) == auth_id + struct.pack("<d", 5.0 + REPLAY_WINDOW)
