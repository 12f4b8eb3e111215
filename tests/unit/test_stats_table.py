"""The state table's counters: keys the master registers, blocks the workers write, the fold
of a reaped worker's block into the departed one, totals that only grow, and the stats API's
reset baselines."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from revproxy.server import statetable
from revproxy.server.statetable import (
    COUNTER_KEYS,
    DEPARTED,
    EVENTS,
    KIND_INBOUND,
    KIND_OUTBOUND,
    KIND_USER,
    StateTable,
    StateTableError,
    WorkerRow,
)


@pytest.fixture
def table(tmp_path: Path) -> Iterator[StateTable]:
    with StateTable.create(str(tmp_path / "t.state"), os.getpid()) as table:
        yield table


def test_keys_are_appended_once_and_read_back(table: StateTable) -> None:
    assert table.counter_keys() == []
    assert table.register_counter(KIND_INBOUND, "public") == 0
    assert table.register_counter(KIND_OUTBOUND, "direct") == 1
    assert table.register_counter(KIND_USER, "a@b") == 2
    assert table.register_counter(KIND_INBOUND, "public") == 0
    assert table.register_counter(KIND_OUTBOUND, "public") == 3  # another kind, another key
    assert table.counter_keys() == [(KIND_INBOUND, "public"), (KIND_OUTBOUND, "direct"),
                                    (KIND_USER, "a@b"), (KIND_OUTBOUND, "public")]


def test_a_full_key_directory_is_refused(table: StateTable) -> None:
    for index in range(COUNTER_KEYS):
        table.register_counter(KIND_USER, f"u{index}")
    with pytest.raises(StateTableError, match="counter keys"):
        table.register_counter(KIND_USER, "one more")
    assert table.register_counter(KIND_USER, "u7") == 7


def test_a_long_name_is_cut_at_a_character(table: StateTable) -> None:
    table.register_counter(KIND_USER, "é" * 40)
    assert table.counter_keys() == [(KIND_USER, "é" * 32)]


def test_workers_publish_and_totals_add_them_up(table: StateTable) -> None:
    first, second = table.counter_writer(0), table.counter_writer(5)
    first.values[0:3] = [10, 20, 1]
    first.events[EVENTS.index("replays_refused")] = 2
    first.publish()
    second.values[0:3] = [1, 2, 3]
    second.publish()
    events, values = table.totals()
    assert values[:3] == (11, 22, 4)
    assert events[EVENTS.index("replays_refused")] == 2
    assert table.totals(slots=[5])[1][:3] == (1, 2, 3)
    assert table.read_counters(0)[1][:3] == (10, 20, 1)


def test_a_reaped_worker_is_folded_and_totals_never_drop(table: StateTable) -> None:
    writer = table.counter_writer(3)
    writer.values[3:6] = [100, 200, 5]
    writer.events[0] = 4
    writer.publish()
    table.worker_writer(3, WorkerRow(pid=1234))
    before = table.totals()
    table.clear_worker(3)  # the master reaped it
    assert table.totals() == before
    assert not any(table.read_counters(3)[1])
    assert table.read_counters(DEPARTED)[1][3:6] == (100, 200, 5)
    # its successor starts from zero and adds to the departed totals
    successor = table.counter_writer(3)
    assert successor.values[3] == 0
    successor.values[3] = 1
    successor.publish()
    assert table.totals()[1][3] == 101
    assert table.totals()[0][0] == 4


def test_totals_wait_for_a_fold_in_progress(table: StateTable,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A reader never sums while the fold seq is odd: it would see the block twice."""
    buf = table._buf
    statetable._SEQ.pack_into(buf, statetable.FOLD_SEQ_OFFSET, 1)
    monkeypatch.setattr(statetable, "_SLEEPS", 2)
    with pytest.raises(StateTableError, match="mid-fold"):
        table.totals()
    statetable._SEQ.pack_into(buf, statetable.FOLD_SEQ_OFFSET, 2)
    assert table.totals()[1] == (0,) * (COUNTER_KEYS * 3)


def test_a_block_stuck_mid_write_is_still_read(table: StateTable) -> None:
    writer = table.counter_writer(1)
    writer.values[0] = 7
    writer.publish()
    statetable._SEQ.pack_into(table._buf, statetable.BLOCKS_OFFSET + statetable.BLOCK_SIZE, 9)
    assert table.read_counters(1)[1][0] == 7
    table.clear_worker(1)
    assert table.read_counters(DEPARTED)[1][0] == 7


def test_server_counters_and_baselines(table: StateTable) -> None:
    table.register_counter(KIND_INBOUND, "x")
    table.count_server_event(reloads=1)
    table.count_server_event(refused=1, respawns=2)
    counters = table.server_counters()
    assert (counters.reloads, counters.reloads_refused, counters.respawns) == (1, 1, 2)
    assert table.counter_keys() == [(KIND_INBOUND, "x")]  # the key count survives
    assert not any(table.baselines())
    table.set_baselines([5] * (COUNTER_KEYS * 2))
    assert table.baselines()[:2] == (5, 5)


def test_a_reader_sees_what_the_writer_publishes(table: StateTable, tmp_path: Path) -> None:
    table.register_counter(KIND_INBOUND, "in")
    writer = table.counter_writer(0)
    writer.values[1] = 42
    writer.publish()
    with StateTable.open(table.path, readonly=True) as reader:
        assert reader.counter_keys() == [(KIND_INBOUND, "in")]
        assert reader.totals()[1][1] == 42
