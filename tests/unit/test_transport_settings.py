"""``streamSettings`` parsing (config/transport.py): what V2Ray 4.34 reads, what revproxy
refuses, one line per problem with its path; the parser never raises on junk."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.config.errors import Node, Report
from revproxy.config.model import (
    CertificateConfig,
    HTTPRequestConfig,
    SockoptConfig,
    StreamConfig,
    TLSConfig,
    WebSocketConfig,
)
from revproxy.config.transport import DEFAULT_REQUEST, DEFAULT_RESPONSE, stream_settings
from tests.unit.test_transport_tls import issue

HERE = "inbounds[1].streamSettings"


def parse(raw: Any, server: bool = True) -> tuple[StreamConfig, list[str], list[str]]:
    report = Report(lambda path: ("p.json", path))
    config = stream_settings(Node(report, HERE), raw, server=server)
    return config, report.problem_lines(), report.warning_lines()


def ok(raw: Any, server: bool = True) -> StreamConfig:
    config, problems, _ = parse(raw, server)
    assert problems == []
    return config


def problems(raw: Any, server: bool = True) -> list[str]:
    return parse(raw, server)[1]


@pytest.fixture(scope="module")
def pem(tmp_path_factory) -> dict[str, str]:
    directory = tmp_path_factory.mktemp("pem")
    cert, key, _ = issue(directory, ["a.test"])
    other_cert, other_key, _ = issue(directory / "other", ["b.test"])
    return {"cert": str(cert), "key": str(key), "ca": str(directory / "ca.pem"),
            "other_key": str(other_key)}


def test_empty_is_plain_tcp():
    assert ok({}) == StreamConfig()
    assert ok({"network": "TCP", "security": "none", "tcpSettings": {"header": {"type": "none"}},
               "wsSettings": {"path": "unused"}, "kcpSettings": {"mtu": "junk"}}) == StreamConfig()


def test_websocket():
    config = ok({"network": "websocket", "wsSettings": {
        "path": "tunnel?ed=2048", "headers": {"Host": "cdn.example"},
        "acceptProxyProtocol": True}, "tcpSettings": {"acceptProxyProtocol": False}})
    assert config.network == "ws" and config.accept_proxy_protocol
    assert config.websocket == WebSocketConfig("/tunnel?ed=2048", (("Host", "cdn.example"),))
    assert ok({"network": "ws"}).websocket == WebSocketConfig("/", ())


def test_the_http_header_takes_v2rays_defaults_and_string_lists():
    config = ok({"tcpSettings": {"header": {"type": "http", "request": {
        "path": "/a,/b", "headers": {"X-B": "1, 2", "X-A": ["z"]}}}}})
    assert config.http_header is not None
    assert config.http_header.request == HTTPRequestConfig(
        "1.1", "GET", ("/a", "/b"), (("X-A", ("z",)), ("X-B", ("1", " 2"))))
    assert config.http_header.response == DEFAULT_RESPONSE
    assert ok({"tcpSettings": {"header": {"type": "http"}}}).http_header.request == \
        DEFAULT_REQUEST


def test_tls_with_certificate_files(pem):
    config = ok({"security": "TLS", "tlsSettings": {
        "serverName": "a.test", "alpn": "h2,http/1.1", "enableSessionResumption": True,
        "certificates": [{"certificateFile": pem["cert"], "keyFile": pem["key"]}]}})
    assert config.tls == TLSConfig(server_name="a.test", alpn=("h2", "http/1.1"),
                                   session_resumption=True, certificates=(
        CertificateConfig(certificate_file=pem["cert"], key_file=pem["key"]),))


def test_tls_with_inline_lines(pem):
    lines = Path(pem["cert"]).read_text().splitlines()
    key = Path(pem["key"]).read_text().splitlines()
    config = ok({"security": "tls", "tlsSettings": {"certificates": [
        {"certificate": lines, "key": key}]}})
    assert config.tls.certificates[0].certificate == "\n".join(lines)


def test_tls_settings_without_security_tls_are_ignored():
    assert ok({"tlsSettings": {"certificates": [{"certificateFile": "/nonexistent"}]}}) == \
        StreamConfig()


def test_a_client_may_trust_without_a_key(pem):
    config = ok({"security": "tls", "tlsSettings": {"certificates": [
        {"certificateFile": pem["ca"], "usage": "verify"}]}}, server=False)
    assert config.tls.certificates[0].usage == "verify"
    assert ok({"security": "tls"}, server=False).tls == TLSConfig()


def test_sockopt():
    assert ok({"sockopt": {"mark": 255, "tcpFastOpen": True, "tproxy": "TProxy"}}).sockopt == \
        SockoptConfig(255, True, "tproxy")
    assert ok({"sockopt": {"mark": -1}}).sockopt.mark == 0xFFFFFFFF
    _, problems_, warnings = parse({"sockopt": {"acceptProxyProtocol": True}})
    assert problems_ == [] and "acceptProxyProtocol" in warnings[0]


@pytest.mark.parametrize("raw,message", [
    ({"network": "kcp"}, f'{HERE}.network: transport "kcp" is not supported by revproxy '
                         '(only "tcp" and "ws")'),
    ({"network": "quic", "quicSettings": {}}, f'{HERE}.network: transport "quic" is not '
                                              'supported by revproxy (only "tcp" and "ws")'),
    ({"network": "wss"}, f'{HERE}.network: unknown transport "wss" (did you mean "ws"?)'),
    ({"security": "xtls"}, f'{HERE}.security: security "xtls" is not supported by revproxy '
                           '(only "none" and "tls")'),
    ({"network": "ws", "wsSettings": {"headers": {"Upgrade": "h2c"}}},
     f'{HERE}.wsSettings.headers.Upgrade: header "Upgrade" is written by the WebSocket '
     "handshake itself (V2Ray refuses to dial with it)"),
    ({"network": "ws", "wsSettings": {"path": "/a b"}},
     f'{HERE}.wsSettings.path: "/a b" is not a URL path (it has a space or line break)'),
    ({"tcpSettings": {"header": {"type": "http", "request": {"headers": {"X": None}}}}},
     f"{HERE}.tcpSettings.header.request.headers.X: empty HTTP header value"),
    ({"tcpSettings": {"header": {"type": "http", "request": {"headers": {"X": "a\nb"}}}}},
     f'{HERE}.tcpSettings.header.request.headers.X: "a\\nb" has a line break (it would break '
     "the HTTP head)"),
    ({"tcpSettings": {"header": {"type": "srtp"}}},
     f'{HERE}.tcpSettings.header.type: "srtp" is not one of "none", "http"'),
    ({"security": "tls", "tlsSettings": {"alpn": ["h2", ""]}},
     f'{HERE}.tlsSettings.alpn: "" is not an ALPN protocol name (1 to 255 bytes)'),
    ({"security": "tls", "tlsSettings": {"certificates": [{"usage": "issue",
                                                           "certificateFile": "x"}]}},
     f'{HERE}.tlsSettings.certificates[0].usage: usage "issue" (certificates issued on the '
     "fly) is not supported by revproxy"),
    ({"security": "tls", "tlsSettings": {"pinnedPeerCertificateChainSha256": ["x"]}},
     f"{HERE}.tlsSettings.pinnedPeerCertificateChainSha256: not supported by revproxy (a V2Ray "
     "4.38 key): the server's certificate would go unpinned"),
    ({"sockopt": {"tproxy": "transparent"}},
     f'{HERE}.sockopt.tproxy: "transparent" is not one of "off", "redirect", "tproxy"'),
])
def test_refusals(raw, message):
    assert problems(raw, server=False) == [f"p.json: {message}"]


def test_a_tls_server_needs_a_key(pem):
    message = ("a TLS server needs a certificate with its key (certificateFile and keyFile, or "
               "certificate and key)")
    assert problems({"security": "tls"}) == [f"p.json: {HERE}.tlsSettings: {message}"]
    assert problems({"security": "tls", "tlsSettings": {"certificates": [
        {"certificateFile": pem["cert"]}]}}) == [
        f"p.json: {HERE}.tlsSettings.certificates: {message}"]


def test_certificate_problems_name_the_file(pem, tmp_path):
    def tls(**certificate: Any) -> list[str]:
        return problems({"security": "tls", "tlsSettings": {"certificates": [certificate]}})

    where = f"p.json: {HERE}.tlsSettings.certificates[0]"
    missing = tmp_path / "missing.pem"
    assert tls(certificateFile=str(missing), keyFile=pem["key"]) == [
        f'{where}.certificateFile: cannot read "{missing}": No such file or directory']
    assert tls(certificateFile=str(tmp_path), keyFile=pem["key"]) == [
        f'{where}.certificateFile: cannot read "{tmp_path}": not a regular file']
    assert tls(certificateFile=pem["key"], keyFile=pem["key"]) == [
        f"{where}.certificateFile: no PEM certificate (-----BEGIN CERTIFICATE-----) in it"]
    assert tls(certificateFile=pem["cert"], keyFile=pem["cert"]) == [
        f"{where}.keyFile: no PEM private key (-----BEGIN ... PRIVATE KEY-----) in it"]
    assert tls(certificateFile=pem["cert"], keyFile=pem["other_key"]) == [
        f"{where}.keyFile: this key is not the certificate's (key values mismatch)"]
    assert tls(keyFile=pem["key"]) == [
        f'{where}: no certificate: give "certificateFile" or "certificate"']


JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.text(max_size=12)
    | st.sampled_from(["tls", "ws", "http", "tcp", "/", "h2", "verify", "none", "tproxy"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
        st.sampled_from(["network", "security", "tlsSettings", "tcpSettings", "wsSettings",
                         "sockopt", "header", "type", "request", "response", "path", "headers",
                         "certificates", "certificateFile", "certificate", "key", "keyFile",
                         "usage", "alpn", "serverName", "mark", "tproxy", "tcpFastOpen",
                         "version", "status", "acceptProxyProtocol"]) | st.text(max_size=5),
        inner, max_size=5),
    max_leaves=25)


@settings(max_examples=300)
@given(JSON, st.booleans())
def test_junk_gives_problems_never_an_exception(raw, server):
    config, _, _ = parse(raw, server)
    assert isinstance(config, StreamConfig)
