"""The DNS client (revproxy/dns.py) against a real dnsmasq on loopback: hosts, UDP servers
with ``domains`` and ``expectIPs``, the order V2Ray asks them in, the cache, timeouts that
leave the gevent hub free; and the ``dns`` section's loader."""

from __future__ import annotations

import ipaddress
import socket
import time
from pathlib import Path

import gevent
import pytest
from gevent import socket as gsocket

from revproxy.config import ConfigError, parse_config
from revproxy.dns import (
    LOCAL_DOMAINS,
    DNSClient,
    DNSError,
    Hosts,
    LocalServer,
    Server,
    UDPServer,
)
from revproxy.net.session import Target
from revproxy.net.stream import DatagramStream
from revproxy.routing import DomainMatcher, IPMatcher
from tests.dnsmasq import dnsmasq, queries


def udp(target: Target) -> DatagramStream:
    sock = gsocket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect((target.address, target.port))
    return DatagramStream(sock)


def ips(*texts: str) -> list[ipaddress.IPv4Address | ipaddress.IPv6Address]:
    return [ipaddress.ip_address(text) for text in texts]


def test_hosts_forms() -> None:
    hosts = Hosts([("full:a.test", "10.0.0.1"), ("domain:b.test", "10.0.0.2"),
                   ("keyword:kw", "10.0.0.3"), ("full:alias.test", "a.test"),
                   ("full:loop.test", "127.0.0.1"), ("full:far.test", "elsewhere.test")])
    assert hosts.lookup("a.test", True, True) == ips("10.0.0.1")
    assert hosts.lookup("x.b.test", True, True) == ips("10.0.0.2")
    assert hosts.lookup("the-kw.test", True, True) == ips("10.0.0.3")
    assert hosts.lookup("alias.test", True, True) == ips("10.0.0.1")
    assert hosts.lookup("loop.test", True, True) == ips("127.0.0.1", "::1")
    assert hosts.lookup("loop.test", False, True) == ips("::1")
    assert hosts.lookup("a.test", False, True) == []
    assert hosts.lookup("far.test", True, True) == "elsewhere.test"
    assert hosts.lookup("none.test", True, True) is None


def test_udp_server_answers_and_caches(tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    names = [("a.test", "10.1.1.1"), ("a.test", "fd00::1"), ("invalid", ""),
             ("four.test", "10.4.4.4")]
    with dnsmasq(names, log) as port:
        server = UDPServer("127.0.0.1", port, None, udp)
        client = DNSClient([Server(server)])
        assert sorted(client.lookup("www.a.test"), key=str) == ips("10.1.1.1", "fd00::1")
        assert client.lookup("www.a.test", v6=False) == ips("10.1.1.1")
        assert client.lookup("www.a.test.", v4=False) == ips("fd00::1")
        assert queries(log).count("www.a.test") == 2  # A and AAAA once: then the cache
        with pytest.raises(DNSError, match="NXDOMAIN"):
            client.lookup("nothing.invalid")
        # dnsmasq refuses AAAA for a name it knows only IPv4 of: the A answer still counts
        assert client.lookup("four.test") == ips("10.4.4.4")


def test_domains_expect_ips_and_order(tmp_path: Path) -> None:
    with dnsmasq([("x.test", "10.9.9.9")], tmp_path / "one.log") as one, \
            dnsmasq([("x.test", "192.0.2.7"), ("only.two", "192.0.2.8")],
                    tmp_path / "two.log") as two:
        first = Server(UDPServer("127.0.0.1", one, None, udp))
        second = Server(UDPServer("127.0.0.1", two, None, udp),
                        domains=DomainMatcher(["domain:two"]))
        client = DNSClient([first, second])
        assert client.lookup("x.test", v6=False) == ips("10.9.9.9")  # in order
        assert client.lookup("only.two", v6=False) == ips("192.0.2.8")  # preferred first
        assert "only.two" not in queries(tmp_path / "one.log")
        picky = Server(UDPServer("127.0.0.1", one, None, udp),
                       expect=IPMatcher(["192.0.2.0/24"]))
        client = DNSClient([picky, Server(UDPServer("127.0.0.1", two, None, udp))])
        assert client.lookup("x.test", v6=False) == ips("192.0.2.7")  # expectIPs: next one


def test_a_silent_server_times_out_without_blocking_the_hub() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        client = DNSClient([Server(UDPServer("127.0.0.1", port, None, udp))],
                           query_timeout=0.5)
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.05)) for _ in range(100)])
        start = time.monotonic()
        with pytest.raises(DNSError, match="timed out"):
            client.lookup("slow.test")
        assert 0.4 < time.monotonic() - start < 3
        assert len(ticks) >= 5  # the hub ran other greenlets meanwhile
        ticker.kill()


def test_local_server_and_default() -> None:
    assert ipaddress.ip_address("127.0.0.1") in LocalServer().query(
        "localhost", True, False, time.monotonic() + 5)
    client = DNSClient([])
    assert client.servers[0].server.name == "localhost"
    assert client.servers[0].domains is not None and client.servers[0].domains.match("printer")
    assert "domain:lan" in LOCAL_DOMAINS


BASE = {"inbounds": [{"tag": "in", "port": 1, "listen": "127.0.0.1", "protocol": "dokodemo-door",
                      "settings": {"address": "127.0.0.1"}}],
        "outbounds": [{"protocol": "freedom", "settings": {"domainStrategy": "UseIPv4"}}]}


def test_the_section_loads() -> None:
    config = parse_config({**BASE, "dns": {
        "hosts": {"a.test": "10.0.0.1", "domain:b.test": "b.example", "keyword:kw": "::1"},
        "servers": ["1.1.1.1", "localhost", "https://dns.example/dns-query",
                    {"address": "10.0.0.53", "port": 5353, "domains": ["domain:corp"],
                     "expectIps": ["10.0.0.0/8"], "clientIp": "192.0.2.1"}],
        "clientIp": "198.51.100.1", "tag": "dns-in"}}, "c.json")
    assert config.warnings == ()
    dns = config.dns
    assert dns is not None
    assert dns.hosts == (("full:a.test", "10.0.0.1"), ("domain:b.test", "b.example"),
                         ("keyword:kw", "::1"))
    assert [(s.address, s.port) for s in dns.servers] == [
        ("1.1.1.1", 53), ("localhost", 53), ("https://dns.example/dns-query", 53),
        ("10.0.0.53", 5353)]
    assert dns.servers[3].domains == ("domain:corp",)
    assert dns.servers[3].expect_ips == ("10.0.0.0/8",)
    assert dns.client_ip == "198.51.100.1" and dns.tag == "dns-in"
    assert config.outbounds[0].settings.domain_strategy == "UseIPv4"


def test_the_section_refuses_what_cannot_work() -> None:
    with pytest.raises(ConfigError) as info:
        parse_config({**BASE, "dns": {"servers": ["quic+local://dns.example", "tcp://1.1.1.1",
                                                  {"port": 53}],
                                      "clientIp": "nope"}}, "c.json")
    problems = info.value.problems
    assert any("DNS over QUIC" in p for p in problems)
    assert any('unknown DNS server scheme "tcp"' in p for p in problems)
    assert any('missing required key "address"' in p for p in problems)
    assert any("clientIp" in p and "not an IP address" in p for p in problems)


def test_client_ip_is_sent_as_v2ray_sends_it() -> None:
    from revproxy.dns import _queries

    (query,) = _queries("x.test", True, False, "192.0.2.55")
    (option,) = query.options
    assert option.to_wire() == b"\x00\x01\x18\x00\xc0\x00\x02"  # IPv4, /24, 192.0.2
    (query,) = _queries("x.test", False, True, "2001:db8::1")
    assert query.options[0].srclen == 96  # type: ignore[attr-defined]
    assert all(not q.options for q in _queries("x.test", True, True, None))


def test_hosts_take_geosite_lists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from revproxy.geodata import encode_sites

    monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(tmp_path))
    (tmp_path / "geosite.dat").write_bytes(encode_sites({"lan": [("domain:lan", ()),
                                                                 ("full:router", ())]}))
    config = parse_config({**BASE, "dns": {"hosts": {"geosite:lan": "10.0.0.1"}}}, "c.json")
    assert config.dns is not None
    hosts = Hosts(config.dns.hosts)
    assert hosts.lookup("nas.lan", True, True) == ips("10.0.0.1")
    assert hosts.lookup("router", True, True) == ips("10.0.0.1")
    assert hosts.lookup("other", True, True) is None


def test_concurrent_lookups_ask_once(tmp_path: Path) -> None:
    log = tmp_path / "dnsmasq.log"
    with dnsmasq([("same.test", "10.7.7.7"), ("same.test", "fd00::7")], log) as port:
        client = DNSClient([Server(UDPServer("127.0.0.1", port, None, udp))])
        jobs = [gevent.spawn(client.lookup, "same.test") for _ in range(8)]
        gevent.joinall(jobs, timeout=10)
        assert all(sorted(job.get(), key=str) == ips("10.7.7.7", "fd00::7") for job in jobs)
        assert queries(log).count("same.test") == 2  # one A and one AAAA for all eight
