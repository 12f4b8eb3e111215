"""V2Ray's .dat lists (revproxy/geodata.py): the protobuf decoding, files built here, where
they are looked for, and the loader's use of them (geosite:, geoip:, ext:)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from revproxy.config import ConfigError, load_config
from revproxy.geodata import (
    Assets,
    GeoDataError,
    asset_dirs,
    decode_ips,
    decode_sites,
    encode_ips,
    encode_sites,
    site_codes,
)
from revproxy.net.session import Target
from revproxy.routing import Router

SITES = encode_sites({
    "CN": [("domain:example.cn", ()), ("full:www.qq.test", ("ads",)),
           ("keyword:baidu", ()), ("regexp:^cdn[0-9]+\\.test$", ("ads", "cdn"))],
    "private": [("domain:lan", ())],
})
IPS = encode_ips({"CN": ["1.0.1.0/24", "2001:db8::/32"], "private": ["10.0.0.0/8"]})


def test_decode_sites_any_case() -> None:
    assert decode_sites(SITES, "cn") == ["domain:example.cn", "full:www.qq.test",
                                         "keyword:baidu", "regexp:^cdn[0-9]+\\.test$"]
    assert decode_sites(SITES, "PRIVATE") == ["domain:lan"]
    assert decode_sites(SITES, "us") is None
    assert site_codes(SITES) == ["CN", "private"]


def test_decode_sites_by_attribute() -> None:
    assert decode_sites(SITES, "cn", ["ADS"]) == ["full:www.qq.test", "regexp:^cdn[0-9]+\\.test$"]
    assert decode_sites(SITES, "cn", ["ads", "cdn"]) == ["regexp:^cdn[0-9]+\\.test$"]


def test_decode_ips() -> None:
    assert decode_ips(IPS, "cn") == ["1.0.1.0/24", "2001:db8::/32"]
    assert decode_ips(IPS, "jp") is None


def test_a_broken_file_is_an_error() -> None:
    with pytest.raises(GeoDataError):
        decode_sites(SITES[:-3], "private")


@given(st.binary(max_size=200))
def test_garbage_never_crashes(data: bytes) -> None:
    try:
        decode_sites(data, "cn")
        decode_ips(data, "cn")
    except GeoDataError:
        pass


@given(st.dictionaries(st.text("abcxyz", min_size=1, max_size=5),
                       st.lists(st.ip_addresses(v=4).map(lambda ip: f"{ip}/32"), max_size=4),
                       max_size=4))
def test_ips_round_trip(lists: dict[str, list[str]]) -> None:
    data = encode_ips(lists)
    for code, networks in lists.items():
        # the first list of a name (any case) wins, as V2Ray's lookup does
        first = next(v for k, v in lists.items() if k.lower() == code.lower())
        assert decode_ips(data, code) == first
        del networks


def test_asset_dirs(tmp_path: Path) -> None:
    assert asset_dirs(["/etc/x"], {"V2RAY_LOCATION_ASSET": "/opt/a"}) == (
        "/opt/a", "/usr/local/share/v2ray", "/usr/share/v2ray")
    assert asset_dirs(["/etc/x"], {"v2ray.location.asset": "/opt/b"})[0] == "/opt/b"
    found = asset_dirs([str(tmp_path)], {})
    assert found[0] == str(tmp_path) and found[-1] == "/usr/share/v2ray"


def test_assets_read_once_and_refuse_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "geosite.dat").write_bytes(SITES)
    assets = Assets([str(tmp_path)])
    assert assets.sites("geosite.dat", "cn@cdn") == ["regexp:^cdn[0-9]+\\.test$"]
    with pytest.raises(GeoDataError, match="list not found in geosite.dat: jp"):
        assets.sites("geosite.dat", "jp")
    with pytest.raises(GeoDataError, match="failed to open file: geoip.dat"):
        assets.ips("geoip.dat", "cn")


def _config(rules: list[dict]) -> dict:
    return {"inbounds": [{"tag": "in", "port": 1, "protocol": "dokodemo-door",
                          "listen": "127.0.0.1", "settings": {"address": "127.0.0.1"}}],
            "outbounds": [{"tag": "direct", "protocol": "freedom"},
                          {"tag": "block", "protocol": "blackhole"}],
            "routing": {"rules": rules}}


def test_the_loader_expands_lists_next_to_the_config(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.delenv("V2RAY_LOCATION_ASSET", raising=False)
    (tmp_path / "geosite.dat").write_bytes(SITES)
    (tmp_path / "geoip.dat").write_bytes(IPS)
    (tmp_path / "mine.dat").write_bytes(encode_sites({"ads": [("full:ads.test", ())]}))
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config([
        {"type": "field", "domain": ["geosite:cn", "ext:mine.dat:ads"], "outboundTag": "block"},
        {"type": "field", "ip": ["geoip:private"], "outboundTag": "block"},
        {"type": "field", "source": ["geoip:cn"], "outboundTag": "block"}])))
    config = load_config(path)
    assert config.routing[0].domains[0] == "domain:example.cn"
    assert config.routing[0].domains[-1] == "full:ads.test"
    assert config.routing[1].ips == ("10.0.0.0/8",)
    router = Router(config.routing, "direct")
    assert router.pick("in", Target("tcp", "www.example.cn", 80)) == "block"
    assert router.pick("in", Target("tcp", "ads.test", 80)) == "block"
    assert router.pick("in", Target("tcp", "10.1.2.3", 80)) == "block"
    assert router.pick("in", Target("tcp", "example.org", 80)) == "direct"


def test_a_missing_file_or_list_is_one_line(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("V2RAY_LOCATION_ASSET", str(tmp_path))
    (tmp_path / "geosite.dat").write_bytes(SITES)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(_config([
        {"type": "field", "domain": ["geosite:jp"], "outboundTag": "block"},
        {"type": "field", "ip": ["geoip:cn"], "outboundTag": "block"}])))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert info.value.problems[0] == (
        'config.json: routing.rules[0].domain[0]: "geosite:jp": failed to load geosite: '
        "list not found in geosite.dat: jp")
    assert info.value.problems[1].startswith(
        'config.json: routing.rules[1].ip[0]: "geoip:cn": failed to load geoip: failed to '
        "open file: geoip.dat")
    assert len(info.value.problems) == 2
