"""The PROXY header a portal writes (revproxy/transport/proxyheader.py), read back by the
reader that acceptProxyProtocol uses, and against HAProxy's documented examples."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.transport.proxyheader import encode, split_address
from revproxy.transport.proxyprotocol import parse


def test_version_1_as_haproxy_documents_it() -> None:
    assert encode(1, ("192.168.0.1", 56324), ("192.168.0.11", 443)) == \
        b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n"
    assert encode(1, ("::1", 5), ("2001:db8::1", 80)) == b"PROXY TCP6 ::1 2001:db8::1 5 80\r\n"
    assert encode(1, ("1.2.3.4", 5), ("::1", 80)) == b"PROXY UNKNOWN\r\n"
    assert encode(1, None, ("::1", 80)) == b"PROXY UNKNOWN\r\n"


def test_version_2_layout() -> None:
    header = encode(2, ("127.0.0.1", 1), ("10.0.0.2", 443))
    assert header == (b"\r\n\r\n\x00\r\nQUIT\n\x21\x11\x00\x0c" + bytes([127, 0, 0, 1])
                      + bytes([10, 0, 0, 2]) + b"\x00\x01\x01\xbb")
    assert encode(2, ("x", 1), ("10.0.0.2", 443)) == b"\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"
    # an IPv4 visitor on an IPv6 listener is written as IPv4
    assert encode(2, ("::ffff:1.2.3.4", 9), ("::ffff:5.6.7.8", 80))[13] == 0x11
    with pytest.raises(ValueError):
        encode(3, None, None)


def test_split_address() -> None:
    assert split_address("1.2.3.4:5") == ("1.2.3.4", 5)
    assert split_address("[::1]:80") == ("::1", 80)
    assert split_address("::1:80") == ("::1", 80)
    for bad in ("bridge", "host.example:80", "1.2.3.4:x", "1.2.3.4:70000", ""):
        assert split_address(bad) is None


addresses = st.one_of(
    st.tuples(st.ip_addresses(v=4), st.ip_addresses(v=4)),
    st.tuples(st.ip_addresses(v=6), st.ip_addresses(v=6)).filter(
        lambda pair: pair[0].ipv4_mapped is None and pair[1].ipv4_mapped is None))


@given(addresses, st.integers(0, 65535), st.integers(0, 65535), st.sampled_from([1, 2]),
       st.binary(max_size=20))
def test_what_is_written_reads_back(pair, sport, dport, version, rest) -> None:  # noqa: ANN001
    header = encode(version, (str(pair[0]), sport), (str(pair[1]), dport))
    length, address = parse(header + rest)
    assert length == len(header)
    assert address == (str(pair[0]), sport)
