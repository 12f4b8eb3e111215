"""V2Ray's stats API: the hand-written protobuf codec against bytes the Go protobuf library
writes, the counter names a configuration asks for (as V2Ray 4.34 names them), and the
answers of GetStats/QueryStats with ``reset`` over a state table."""

from __future__ import annotations

import copy
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config import parse_config
from revproxy.server import statsproto as proto
from revproxy.server.api import NoStats, NotFound, StatsBook, counter_names
from revproxy.server.spec import counter_keys_of
from revproxy.server.statetable import (
    KIND_INBOUND,
    KIND_OUTBOUND,
    KIND_USER,
    StateTable,
    WorkerRow,
)
from tests.unit.test_config import PORTAL

POLICY = {"levels": {"0": {"statsUserUplink": True, "statsUserDownlink": True}},
          "system": {"statsInboundUplink": True, "statsInboundDownlink": True,
                     "statsOutboundUplink": True, "statsOutboundDownlink": False}}


def config_with(stats: bool = True, policy: dict | None = None):  # noqa: ANN201
    data = copy.deepcopy(PORTAL)
    data["inbounds"][1]["settings"]["clients"][0]["email"] = "a@b"
    data["inbounds"][1]["settings"]["clients"][0]["id"] = "b831381d-6324-4d53-ad4f-8cda48b30811"
    data["outbounds"] = [{"tag": "direct", "protocol": "freedom"}, {"protocol": "freedom"}]
    data["api"] = {"tag": "api", "services": ["StatsService"]}
    if stats:
        data["stats"] = {}
    data["policy"] = POLICY if policy is None else policy
    return parse_config(data, "x.json")


def test_the_codec_reads_and_writes_what_go_protobuf_does() -> None:
    # GetStatsRequest{name: "inbound>>>x>>>traffic>>>uplink", reset: true}, as Go marshals it
    name = "inbound>>>x>>>traffic>>>uplink"
    wire = b"\x0a" + bytes([len(name)]) + name.encode() + b"\x10\x01"
    assert proto.decode_name_and_reset(wire) == (name, True)
    assert proto.encode_name_and_reset(name, True) == wire
    assert proto.decode_name_and_reset(b"") == ("", False)
    # GetStatsResponse{stat: {name: "n", value: 300}}
    assert proto.encode_get_stats_response("n", 300) == b"\x0a\x06\x0a\x01n\x10\xac\x02"
    assert proto.encode_get_stats_response("n", 0) == b"\x0a\x03\x0a\x01n"
    assert proto.decode_stats(proto.encode_query_stats_response([("a", 1), ("b", 2**40)])) \
        == [("a", 1), ("b", 2**40)]
    assert proto.decode_stats(proto.encode_get_stats_response("neg", -5)) == [("neg", -5)]
    values = [7, 0, 1 << 40, 3, 2, 0, 0, 0, 0, 2**32 + 5]
    assert proto.decode_sys_stats(proto.encode_sys_stats(values)) == dict(
        zip(proto.SYS_STATS_FIELDS, [7, 0, 1 << 40, 3, 2, 0, 0, 0, 0, 5], strict=True))
    assert proto.decode_empty(b"\x08\x01") == ()  # unknown fields are skipped


def test_unknown_fields_are_skipped_and_bad_bytes_refused() -> None:
    extra = b"\x19" + bytes(8) + b"\x25" + bytes(4) + b"\x2a\x01z"  # fixed64, fixed32, bytes
    assert proto.decode_name_and_reset(extra + b"\x0a\x01n") == ("n", False)
    for bad in (b"\x0a\x05ab", b"\x10", b"\x0b", b"\x00\x00", b"\x0a\x01\xff",
                b"\x10" + b"\xff" * 11, bytes(proto.MAX_MESSAGE + 1)):
        with pytest.raises(proto.ProtoError):
            proto.decode_name_and_reset(bad)


@given(st.binary(max_size=200))
def test_the_decoder_never_fails_otherwise(data: bytes) -> None:
    try:
        proto.decode_name_and_reset(data)
        proto.decode_stats(data)
    except proto.ProtoError:
        pass
    except UnicodeDecodeError:
        pass


@given(st.text(max_size=80), st.booleans())
def test_requests_round_trip(name: str, reset: bool) -> None:
    assert proto.decode_name_and_reset(proto.encode_name_and_reset(name, reset)) == (name,
                                                                                     reset)


def test_counter_names_follow_the_policy() -> None:
    names = counter_names(config_with())
    assert sorted(names) == [
        "inbound>>>external>>>traffic>>>downlink", "inbound>>>external>>>traffic>>>uplink",
        "inbound>>>interconn>>>traffic>>>downlink", "inbound>>>interconn>>>traffic>>>uplink",
        "outbound>>>direct>>>traffic>>>uplink",  # Downlink is off; the untagged one has none
        "user>>>a@b>>>traffic>>>downlink", "user>>>a@b>>>traffic>>>uplink"]
    assert counter_names(config_with(stats=False)) == {}  # V2Ray counts nothing without it
    assert counter_names(config_with(policy={})) == {}


@pytest.fixture
def table(tmp_path: Path) -> Iterator[StateTable]:
    with StateTable.create(str(tmp_path / "t.state"), os.getpid()) as table:
        yield table


def book_over(table: StateTable, config=None) -> StatsBook:  # noqa: ANN001
    config = config or config_with()
    for key in counter_keys_of(config):
        table.register_counter(*key)
    return StatsBook(table, config)


def test_get_query_and_reset(table: StateTable) -> None:
    book = book_over(table)
    keys = {key: index for index, key in enumerate(table.counter_keys())}
    table.worker_writer(0, WorkerRow(pid=os.getpid()))  # the worker whose block it is
    writer = table.counter_writer(0)
    at = 3 * keys[KIND_INBOUND, "external"]
    writer.values[at:at + 3] = [100, 2000, 4]
    writer.publish()
    assert book.get("inbound>>>external>>>traffic>>>downlink", False) == 2000
    assert book.get("inbound>>>interconn>>>traffic>>>uplink", False) == 0
    with pytest.raises(NotFound):
        book.get("user>>>a@b>>>traffic>>>uplink", False)  # no connection of that user yet
    with pytest.raises(NotFound):
        book.get("inbound>>>nope>>>traffic>>>uplink", False)
    assert ("user>>>a@b>>>traffic>>>uplink", 0) not in book.query("", False)
    user = 3 * keys[KIND_USER, "a@b"]
    writer.values[user:user + 3] = [5, 6, 1]
    out = 3 * keys[KIND_OUTBOUND, "direct"]
    writer.values[out:out + 3] = [50, 60, 1]
    writer.publish()
    assert book.query("a@b", False) == [("user>>>a@b>>>traffic>>>downlink", 6),
                                        ("user>>>a@b>>>traffic>>>uplink", 5)]
    assert book.query("external", True) == [("inbound>>>external>>>traffic>>>downlink", 2000),
                                             ("inbound>>>external>>>traffic>>>uplink", 100)]
    assert book.get("inbound>>>external>>>traffic>>>downlink", False) == 0
    writer.values[at + 1] += 7
    writer.publish()
    assert book.get("inbound>>>external>>>traffic>>>downlink", True) == 7
    assert book.get("inbound>>>external>>>traffic>>>downlink", False) == 0
    assert book.get("outbound>>>direct>>>traffic>>>uplink", False) == 50
    # a reset survives a new API process (the baselines are in the table)
    assert StatsBook(table, config_with()).get("inbound>>>external>>>traffic>>>uplink",
                                               False) == 0


def test_query_without_stats_is_refused_as_v2ray_does(table: StateTable) -> None:
    book = book_over(table, config_with(stats=False))
    with pytest.raises(NoStats):
        book.query("", False)
    with pytest.raises(NotFound):
        book.get("inbound>>>external>>>traffic>>>uplink", False)


def test_sys_stats(table: StateTable) -> None:
    values = book_over(table).sys_stats()
    assert len(values) == len(proto.SYS_STATS_FIELDS)
    assert values[2] > 0  # the memory of the master (here: this process's parent)
