"""The corpus of real V2Ray configurations (tests/configs/real/, sources in SOURCES.md): each
goes through ``v2ray -test -config`` and ``revproxy check``, both given the same small
geoip.dat/geosite.dat (``V2RAY_LOCATION_ASSET``). Every one V2Ray 4.34 accepts must be
accepted by revproxy (warnings allowed), unless it is listed below as an expected refusal:
a feature revproxy does not have, documented in docs/configuration.md, with the exact lines
``revproxy check`` prints. When a feature lands, its entries fail here until they are
removed, so the list only shrinks. What V2Ray refuses, revproxy refuses too, for the same
reason, except where V2Ray's refusal comes from this machine (a log directory or a
certificate file that is not here)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import pytest

from revproxy.geodata import encode_ips, encode_sites
from tests.integration.conftest import ROOT, V2RAY, needs_v2ray

CORPUS = ROOT / "tests" / "configs" / "real"
DOCS = ROOT / "docs" / "configuration.md"
FILES = sorted(path.name for path in CORPUS.glob("*.json"))


class Feature(NamedTuple):
    """A V2Ray feature revproxy refuses, and the words docs/configuration.md says it with."""
    name: str
    documented: str


TRANSPORT = Feature("mKCP, HTTP/2, QUIC and domain-socket transports",
                    "mKCP, HTTP/2, QUIC and domain sockets are refused")
DNS_OUTBOUND = Feature("the dns outbound", "(`trojan`, `mtproto`, `dns`, `loopback`) are refused")
TROJAN = Feature("the trojan protocol", "(`trojan`, `mtproto`, `dns`, `loopback`) are refused")
PROXY_SETTINGS = Feature("outbound chaining (proxySettings)",
                         "| `proxySettings` | refused | chaining outbounds is not supported |")
SEND_THROUGH = Feature("binding outgoing connections to an address (sendThrough)",
                       "binding outgoing connections to another address is refused")
DYNAMIC_PORT = Feature("dynamic ports (detour, allocate random, port ranges)",
                       "| `detour` | refused | dynamic ports are not supported |")
UDP_REDIRECT = Feature("UDP transparent proxying (followRedirect with udp, no address)",
                       "a missing `address` or `sockopt.tproxy` `tproxy` (V2Ray's UDP redirect) "
                       "is refused")

_DNS = 'outbounds[3].protocol: protocol "dns" is not supported by revproxy'
_UDP = ('inbounds[0].settings.followRedirect: applies to TCP only: "network" has "udp", which '
        'needs "address" (the destination of every datagram; V2Ray\'s UDP redirect needs '
        "TPROXY)")
_DETOUR = ["inbounds[0].settings.detour: not supported by revproxy",
           'inbounds[1].allocate.strategy: allocation strategy "random" is not supported by '
           'revproxy (only "always": it listens on its port all the time)',
           'inbounds[1].port: port ranges are not supported by revproxy, got "10000-20000"']


def _transport(path: str, name: str) -> str:
    return (f'{path}.streamSettings.network: transport "{name}" is not supported by revproxy '
            '(only "tcp" and "ws")')


# file -> {feature: [the error lines revproxy check prints for it, without "file: "]}: the
# configurations V2Ray 4.34 accepts and revproxy refuses.
EXPECTED_REFUSALS: dict[str, dict[Feature, list[str]]] = {
    "233boy-client-h2.json": {UDP_REDIRECT: [_UDP], TRANSPORT: [_transport("outbounds[0]", "h2")],
                              DNS_OUTBOUND: [_DNS]},
    "233boy-client-http.json": {UDP_REDIRECT: [_UDP], DNS_OUTBOUND: [_DNS]},
    "233boy-client-kcp.json": {UDP_REDIRECT: [_UDP],
                               TRANSPORT: [_transport("outbounds[0]", "kcp")],
                               DNS_OUTBOUND: [_DNS]},
    "233boy-client-quic.json": {UDP_REDIRECT: [_UDP],
                                TRANSPORT: [_transport("outbounds[0]", "quic")],
                                DNS_OUTBOUND: [_DNS]},
    "233boy-client-tcp.json": {UDP_REDIRECT: [_UDP], DNS_OUTBOUND: [_DNS]},
    "233boy-client-vless-ws-tls.json": {UDP_REDIRECT: [_UDP], DNS_OUTBOUND: [_DNS]},
    "233boy-client-ws-tls.json": {UDP_REDIRECT: [_UDP], DNS_OUTBOUND: [_DNS]},
    "233boy-client-ws.json": {UDP_REDIRECT: [_UDP], DNS_OUTBOUND: [_DNS]},
    "malnetwork-modem.json": {SEND_THROUGH: [f"outbounds[{i}].sendThrough: not supported by "
                                             "revproxy" for i in (0, 1)]},
    "mtproto-v2raysamples-remote.json": {DYNAMIC_PORT: _DETOUR},
    "pineag-end-to-end-encryption-client.json": {
        PROXY_SETTINGS: ["outbounds[1].proxySettings: not supported by revproxy"]},
    "v2flydocs-fakedns-1.json": {
        DNS_OUTBOUND: ['outbounds[0].protocol: protocol "dns" is not supported by revproxy']},
    "v2ray-examples-shadowsocks-ws-web-tls-server-domainsocket.json": {
        TRANSPORT: [_transport("inbounds[1]", "domainsocket"),
                    _transport("outbounds[2]", "domainsocket")]},
    "v2ray-examples-trojan-tcp-tls-minimal-client.json": {
        TROJAN: ['outbounds[0].protocol: protocol "trojan" is not supported by revproxy']},
    "v2sbs-advanced-dynamicport-1.json": {DYNAMIC_PORT: _DETOUR},
    "v2sbs-advanced-dynamicport-3.json": {
        TRANSPORT: [_transport("inbounds[0]", "kcp"), _transport("inbounds[1]", "kcp")],
        DYNAMIC_PORT: _DETOUR},
    "v2sbs-advanced-dynamicport-4.json": {TRANSPORT: [_transport("outbounds[0]", "kcp")]},
    "v2sbs-advanced-h2-2.json": {TRANSPORT: [_transport("outbounds[0]", "h2")]},
    "v2sbs-advanced-mkcp-1.json": {TRANSPORT: [_transport("inbounds[0]", "mkcp")]},
    "v2sbs-advanced-mkcp-2.json": {TRANSPORT: [_transport("outbounds[0]", "mkcp")]},
    "v2sbs-advanced-tcp-tls-shunt-proxy-3.json": {TRANSPORT: [_transport("inbounds[0]", "ds")]},
    "v2sbs-app-parent-1.json": {
        PROXY_SETTINGS: ["outbounds[0].proxySettings: not supported by revproxy"]},
    "v2sbs-app-parent-2.json": {
        PROXY_SETTINGS: ["outbounds[0].proxySettings: not supported by revproxy"]},
    "v2sbs-basics-dns-1.json": {
        DNS_OUTBOUND: ['outbounds[0].protocol: protocol "dns" is not supported by revproxy']},
    "v2sbs-basics-dns-2.json": {
        PROXY_SETTINGS: ["outbounds[0].proxySettings: not supported by revproxy"],
        DNS_OUTBOUND: ['outbounds[0].protocol: protocol "dns" is not supported by revproxy']},
}


class Refusal(NamedTuple):
    """What V2Ray 4.34's ``-test`` says of a configuration it refuses; what revproxy's errors
    say of it (None: revproxy loads it); ``missing``: the absent path V2Ray's refusal comes
    from (the file is skipped where that path exists)."""
    v2ray: str
    revproxy: str | None
    missing: str | None = None


_LOG = "/var/log/v2ray"
_LOGGER = "failed to initialize access logger"
_UUID = "is not a UUID"
_CERT = "cannot read"
# V2Ray 4.34 opens the log files at -test, and /var/log/v2ray is not there: revproxy opens
# them only when it runs.
_NO_LOG_DIR = Refusal(_LOGGER, None, _LOG)
V2RAY_REFUSES: dict[str, Refusal] = {
    "233boy-server-dynamic-ws.json": Refusal(_LOGGER, "detour: not supported", _LOG),
    "233boy-server-h2.json": Refusal(_LOGGER, 'transport "h2" is not supported', _LOG),
    "233boy-server-http.json": _NO_LOG_DIR,
    "233boy-server-tcp.json": _NO_LOG_DIR,
    "233boy-server-vless-ws.json": _NO_LOG_DIR,
    "233boy-server-ws.json": _NO_LOG_DIR,
    "v2sbs-basics-log-2.json": _NO_LOG_DIR,
    "v2sbs-basics-routing-adblock-2.json": _NO_LOG_DIR,
    "v2sbs-basics-routing-cndirect-2.json": _NO_LOG_DIR,
    "v2sbs-routing-bittorrent-1.json": _NO_LOG_DIR,
    "v2sbs-routing-nginx-upstream-1.json": _NO_LOG_DIR,
    # Certificate files named by absolute paths that are not on this machine.
    "hhk78-readme-5.json": Refusal("open /root/certificate.crt", _CERT, "/root/certificate.crt"),
    "v2ray-examples-trojan-tcp-tls-minimal-server.json": Refusal(
        "open /path/to/fullchain.crt", _CERT, "/path/to/fullchain.crt"),
    "v2ray-examples-vless-tcp-tls-ws-recommended-server.json": Refusal(
        "open /path/to/fullchain.crt", _CERT, "/path/to/fullchain.crt"),
    "v2ray-examples-vmess-http2-server.json": Refusal(
        "open /path/to/certificate.crt", _CERT, "/path/to/certificate.crt"),
    "v2ray-examples-vmess-websocket-tls-server.json": Refusal(
        "open /path/to/certificate.crt", _CERT, "/path/to/certificate.crt"),
    "v2sbs-advanced-h2-1.json": Refusal("open /etc/v2ray/v2ray.crt", _CERT,
                                        "/etc/v2ray/v2ray.crt"),
    "v2sbs-advanced-tls-1.json": Refusal("open /etc/v2ray/v2ray.crt", _CERT,
                                         "/etc/v2ray/v2ray.crt"),
    # Placeholders left for the reader to fill in, and mistakes of the authors.
    "eingsoft-tunnel-bridge.json": Refusal("invalid UUID", _UUID),
    "eingsoft-tunnel-portal.json": Refusal("invalid UUID", _UUID),
    "v2ray-examples-vless-tcp-server.json": Refusal("invalid UUID", _UUID),
    "v2ray-examples-vless-tcp-tls-ws-recommended-client-ws-tls.json": Refusal("invalid UUID",
                                                                             _UUID),
    "v2ray-examples-vmess-websocket-client.json": Refusal("invalid UUID", _UUID),
    "v2ray-examples-vmess-websocket-server.json": Refusal("invalid UUID", _UUID),
    "v2rayplayground-v2ray-configuration-1.json": Refusal("invalid UUID", _UUID),
    "v2rayplayground-v2ray-configuration-2.json": Refusal("invalid UUID", _UUID),
    "v2sbs-basics-routing-adblock-1.json": Refusal("encoding/hex: invalid byte", _UUID),
    "v2ray-examples-vless-tcp-tls-proxy-protocol-client.json": Refusal(
        '"users" is empty', 'missing required key "users"'),
    "v2ray-examples-vmess-mkcpseed-server.json": Refusal(
        'invalid port range: "{{ port }}"', 'expected a port number, got "{{ port }}"'),
    "multiv2ray-server.json": Refusal("invalid port range: 999999999",
                                      "port 999999999 is out of range"),
    "eingsoft-tunnel-local.json": Refusal("cannot unmarshal array into Go struct field "
                                          "Config.outbound", "outbound: expected an object"),
    "v2flydocs-multiple-config-4.json": Refusal("Listen on AnyIP but no Port(s) set",
                                                'missing required key "port"'),
    "v2sbs-basics-sumup-1.json": Refusal("API tag can't be empty", "the API needs a tag"),
    "v2sbs-advanced-outboundproxy-1.json": Refusal("unknown cipher method: aes-256-cfb",
                                                   'stream cipher "aes-256-cfb" is insecure'),
    "v2sbs-advanced-httpfake-2.json": Refusal("unknown router rule type: chinasites",
                                              'rule type "chinasites" is not supported'),
    "v2flydocs-fakedns-2.json": Refusal("unknown protocol: fakedns",
                                        'unknown protocol "fakedns"'),
    # Transports of later V2Ray versions.
    "v2ray-examples-shadowsocks-grpc-web-tls-server.json": Refusal(
        "unknown transport protocol: grpc", 'unknown transport "grpc"'),
    "v2ray-examples-vless-grpc-tls-client.json": Refusal("unknown transport protocol: gun",
                                                         'unknown transport "gun"'),
}


@pytest.fixture(scope="module")
def assets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An environment whose V2RAY_LOCATION_ASSET holds the lists the corpus names."""
    where = tmp_path_factory.mktemp("assets")
    (where / "geoip.dat").write_bytes(encode_ips({
        "PRIVATE": ["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"], "CN": ["1.0.1.0/24"]}))
    (where / "geosite.dat").write_bytes(encode_sites({
        code: [(f"domain:{code.lower().replace('!', 'not-')}.example", ())]
        for code in ("CN", "CATEGORY-ADS", "CATEGORY-ADS-ALL", "GEOLOCATION-!CN", "NETFLIX")}))
    (where / "h2y.dat").write_bytes(encode_sites({"GFW": [("domain:blocked.example", ())]}))
    return {**os.environ, "V2RAY_LOCATION_ASSET": str(where)}


def v2ray_accepts(path: Path, env: dict[str, str], cwd: Path) -> tuple[bool, str]:
    """``v2ray -test``, in a scratch directory: it creates the log files a configuration
    names (relative ones, such as a Windows path, land there)."""
    assert V2RAY is not None
    done = subprocess.run([V2RAY, "-test", "-config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=cwd, env=env)
    return done.returncode == 0, done.stdout + done.stderr


def revproxy_check(path: Path, env: dict[str, str]) -> tuple[int, list[str], list[str]]:
    """The exit status, the error lines and the warning lines of ``revproxy check``."""
    done = subprocess.run([sys.executable, "-m", "revproxy", "check", "-c", path.name],
                          capture_output=True, text=True, timeout=60, cwd=path.parent, env=env)
    lines = done.stderr.splitlines()
    assert "Traceback" not in done.stderr
    warnings = [line for line in lines if ": warning: " in line]
    errors = [line for line in lines if ": warning: " not in line]
    if done.returncode == 0:
        expected_end = (f"configuration OK ({len(warnings)} warning"
                        f"{'s' * (len(warnings) != 1)})" if warnings else "configuration OK")
        assert done.stdout.strip() == expected_end
    return done.returncode, errors, warnings


def test_the_corpus_is_documented() -> None:
    sources = (CORPUS / "SOURCES.md").read_text()
    assert len(FILES) >= 100
    missing = [name for name in FILES if f"`{name}`" not in sources]
    assert missing == [], f"add these to tests/configs/real/SOURCES.md: {missing}"
    assert set(EXPECTED_REFUSALS) <= set(FILES)
    assert set(V2RAY_REFUSES) <= set(FILES)
    assert not set(EXPECTED_REFUSALS) & set(V2RAY_REFUSES)


def test_each_refused_feature_is_documented() -> None:
    docs = " ".join(DOCS.read_text().split())
    features = {feature for refusals in EXPECTED_REFUSALS.values() for feature in refusals}
    assert [feature.name for feature in features if feature.documented not in docs] == []


@needs_v2ray
@pytest.mark.parametrize("name", FILES)
def test_real_config(name: str, assets: dict[str, str], tmp_path: Path) -> None:
    path = CORPUS / name
    refusal = V2RAY_REFUSES.get(name)
    if refusal is not None and refusal.missing is not None and Path(refusal.missing).exists():
        pytest.skip(f"V2Ray's verdict depends on {refusal.missing}, which is here")
    accepted, output = v2ray_accepts(path, assets, tmp_path)
    status, errors, warnings = revproxy_check(path, assets)
    assert all(line.startswith(f"{name}: ") for line in errors + warnings)
    if refusal is not None:
        assert not accepted and refusal.v2ray in output, output[-800:]
        if refusal.revproxy is None:
            assert status == 0, f"{name}: revproxy refuses: {errors}"
        else:
            assert status == 2 and any(refusal.revproxy in line for line in errors), errors
        return
    assert accepted, f"v2ray -test refuses {name}: {output[-800:]}"
    expected = [f"{name}: {line}" for lines in EXPECTED_REFUSALS.get(name, {}).values()
                for line in lines]
    if status == 0:
        assert not expected, f"{name} now loads: remove it from EXPECTED_REFUSALS"
    else:
        assert status == 2
        assert sorted(errors) == sorted(expected), f"{name}: unexpected refusal: {errors}"
