"""The sans-IO sniffers (revproxy/sniff.py): HTTP Host, TLS SNI, BitTorrent, as V2Ray 4.34
reads them; fuzzed with hypothesis (no input makes them raise), and a real ClientHello made
by Python's ssl."""

from __future__ import annotations

import ssl
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from revproxy.sniff import MORE, Sniffed, overrides, sniff


def client_hello(server_name: str | None) -> bytes:
    """The first flight of a real TLS client (OpenSSL through Python's ssl)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=server_name)
    try:
        tls.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def test_http_host() -> None:
    request = b"GET / HTTP/1.1\r\nHost: Example.COM:8080\r\nAccept: */*\r\n\r\n"
    assert sniff(request) == Sniffed("http1", "example.com")


def test_http_host_forms() -> None:
    def host(value: str) -> object:
        return sniff(f"POST /x HTTP/1.1\r\nhost: {value}\r\n\r\n".encode())

    assert host("a.test") == Sniffed("http1", "a.test")
    assert host("[::1]:80") == Sniffed("http1", "::1")
    assert host("[::ffff:1.2.3.4]") == Sniffed("http1", "1.2.3.4")
    assert host("10.0.0.1:0x50") == Sniffed("http1", "10.0.0.1")
    assert host("a.test:99999") is None  # V2Ray's ParseHost refuses the port
    assert host("::1") is None  # Go: too many colons


def test_http_waits_for_the_host() -> None:
    assert sniff(b"GE") is MORE
    assert sniff(b"GET / HTTP/1.1\r\nAccept: x\r\n") is MORE
    assert sniff(b"XYZW") is MORE  # V2Ray waits until "delete" could be told apart
    assert sniff(b"XYZWXYZWXYZWXYZWXYZWXYZW") is None


def test_tls_server_name() -> None:
    assert sniff(client_hello("a.example")) == Sniffed("tls", "a.example")


def test_tls_without_server_name() -> None:
    assert sniff(client_hello(None)) is None


def test_tls_prefixes_wait() -> None:
    hello = client_hello("b.example")
    for cut in (1, 5, 40, len(hello) // 2, len(hello) - 1):
        assert sniff(hello[:cut]) is MORE, cut


def test_bittorrent() -> None:
    assert sniff(b"\x13BitTorrent protocol" + bytes(8)) == Sniffed("bittorrent", "")


def test_overrides_by_prefix() -> None:
    assert overrides("http1", ("http",))
    assert overrides("tls", ("http", "tls"))
    assert not overrides("bittorrent", ("http", "tls"))
    assert not overrides("tls", ())


@given(st.binary(max_size=600))
def test_sniff_never_raises(data: bytes) -> None:
    assert sniff(data) is None or sniff(data) is MORE or isinstance(sniff(data), Sniffed)


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=600))
def test_tls_garbage_after_a_real_start(tail: bytes, cut: int) -> None:
    hello = client_hello("c.example")
    data = hello[:cut] + tail
    result = sniff(data)
    assert result is None or result is MORE or isinstance(result, Sniffed)


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40))
def test_http_any_host_value(value: str) -> None:
    result = sniff(f"GET / HTTP/1.1\r\nHost: {value}\r\n\r\n".encode())
    assert result is None or result is MORE or result.protocol == "http1"  # type: ignore[union-attr]


# -- the dispatcher's side: waiting for the first bytes, and giving them on

def _session(port: int = 80) -> Any:
    from revproxy.net.session import Session, Target
    return Session(Target("tcp", "10.255.255.1", port), "in")


def test_a_socket_is_peeked_at_and_its_destination_overridden() -> None:
    import socket

    from revproxy.dispatcher import Sniffing, sniff_stream
    from revproxy.net.stream import SocketStream

    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    stream = SocketStream(ours)
    request = b"GET / HTTP/1.1\r\nHost: a.test:8080\r\n\r\n"
    theirs.sendall(request)
    session = _session()
    assert sniff_stream(session, stream, Sniffing(("http",))) is stream
    assert (session.protocol, session.target.address, session.target.port) == (
        "http1", "a.test", 80)
    assert stream.recv() == request  # still there for whoever reads next
    ours.close()
    theirs.close()


def test_a_split_client_hello_is_awaited_and_a_silent_client_is_not() -> None:
    import socket
    import time

    import gevent

    from revproxy.dispatcher import SNIFF_WAIT, Sniffing, sniff_stream
    from revproxy.net.stream import SocketStream

    hello = client_hello("b.example")
    ours, theirs = socket.socketpair()
    ours.setblocking(False)
    theirs.sendall(hello[:30])
    gevent.spawn_later(0.03, theirs.sendall, hello[30:])
    session = _session(443)
    sniff_stream(session, SocketStream(ours), Sniffing(("tls",)))
    assert (session.protocol, session.target.address) == ("tls", "b.example")
    silent = _session()
    start = time.monotonic()
    quiet_ours, quiet_theirs = socket.socketpair()
    quiet_ours.setblocking(False)
    sniff_stream(silent, SocketStream(quiet_ours), Sniffing(("http", "tls")))
    assert silent.protocol == "" and silent.target.address == "10.255.255.1"
    assert time.monotonic() - start < SNIFF_WAIT * 2 + 1
    for sock in (ours, theirs, quiet_ours, quiet_theirs):
        sock.close()


def test_a_wrapped_stream_is_read_and_replayed() -> None:
    from revproxy.dispatcher import Sniffing, sniff_stream
    from revproxy.proxy.streams import pipe

    near, far = pipe()
    near.send(b"\x13BitTorrent protocol" + bytes(8))
    session = _session()
    stream = sniff_stream(session, far, Sniffing(("http", "tls")))
    assert session.protocol == "bittorrent" and session.target.address == "10.255.255.1"
    assert stream.recv() == b"\x13BitTorrent protocol" + bytes(8)
    near.send(b"more")
    assert stream.recv() == b"more"
