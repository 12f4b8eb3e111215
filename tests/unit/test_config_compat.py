"""V2Ray 4.34's leniency and the merge of several files: each form V2Ray accepts loads (with
the warning it deserves), what would send traffic elsewhere is one line, and ``-c``/
``-confdir`` merge as ``conf.Config.Override`` does, naming the file each problem is in."""

from __future__ import annotations

import copy
import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from revproxy.config import Config, ConfigError, RoutingRule, load_config, parse_config
from revproxy.config.merge import ConfigSource
from tests.unit.test_config import BRIDGE, PORTAL, UUID, edited

ROOT = Path(__file__).resolve().parents[2]


def load(data: Any) -> Config:
    return parse_config(data, "t.json")


def warnings_of(data: Any) -> list[str]:
    return [line.removeprefix("t.json: ") for line in load(data).warnings]


def problems_of(data: Any) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load(data)
    return [line.removeprefix("t.json: ") for line in info.value.problems]


def write(path: Path, data: Any) -> Path:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return path


# --- the reader --------------------------------------------------------------------------------

def test_v2ray_json_reader_forms(tmp_path: Path) -> None:
    text = ('# hash comment\n{"log": {"loglevel": "info"}, # after a value\n'
            ' "outbounds": [{"protocol": "freedom", "tag": "a#b//c"}]} /* the end\n')
    config = load_config(write(tmp_path / "c.conf", text))  # any name but .yaml is JSON
    assert config.outbounds[0].tag == "a#b//c"
    assert config.warnings == ("c.conf: warning: line 3 column 59: the /* comment is never "
                               "closed (V2Ray ignores the rest of the file too)",)
    config = load_config(write(tmp_path / "d.json", '{"log": {}}\n{"second": "value"}\n'))
    assert config.warnings == ("d.json: warning: line 2 column 1: the text after the "
                               "configuration is ignored (as V2Ray does)",)


def test_repeated_keys_warn_and_the_last_wins(tmp_path: Path) -> None:
    path = write(tmp_path / "r.json", '{"log": {"loglevel": "error", "loglevel": "debug"},'
                                      ' "log": {"loglevel": "info"}}')
    config = load_config(path)
    assert config.log.level == "info"
    assert config.warnings == (
        'r.json: warning: duplicate key "log": the last one is used (as V2Ray does)',)


# --- lenient forms ---------------------------------------------------------------------------

def test_protocol_names_in_any_case() -> None:
    data = edited(PORTAL, "inbounds.0.protocol", "Dokodemo-Door")
    data["inbounds"][1]["protocol"] = "VMess"
    assert load(data) == load(PORTAL)


def test_schema_is_accepted_silently_and_unknown_keys_warn() -> None:
    data = edited(PORTAL, "$schema", "https://example.com/v4-config.schema.json")
    data["inbounds"][0]["settings"]["speed"] = 1
    data["fakedns"] = [{"ipPool": "198.18.0.0/15"}]
    assert warnings_of(data) == [
        "fakedns: warning: V2Ray 4.34 does not know it (it came in a later version) and ignores "
        "it, as revproxy does",
        'inbounds[0].settings: warning: unknown key "speed" is ignored (as V2Ray does)']


def test_string_lists_split_on_commas_as_v2ray_does() -> None:
    data = edited(PORTAL, "routing.rules.0.inboundTag", "external, interconn")
    config = load(data)
    assert config.routing[0].inbound_tags == ("external", " interconn")
    assert warnings_of(data) == [
        'routing.rules[0].inboundTag[1]: warning: no inbound or bridge is tagged " interconn" '
        '(did you mean "interconn"?): this tag never matches (as in V2Ray)']
    assert load(edited(PORTAL, "routing.rules.0.inboundTag", "external,interconn")
                ).routing[0].inbound_tags == ("external", "interconn")


@pytest.mark.parametrize(("port", "ranges"), [
    ("80", ((80, 80),)), (443, ((443, 443),)), ("1000-2000", ((1000, 2000),)),
    ("80,443", ((80, 80), (443, 443))), (" 53 , 1000-1002", ((53, 53), (1000, 1002)))])
def test_rule_port_forms(port: Any, ranges: Any) -> None:
    assert load(edited(PORTAL, "routing.rules.0.port", port)).routing[0].ports == ranges


@pytest.mark.parametrize("port", [0, ""])
def test_a_rule_with_no_port_never_matches(port: Any) -> None:
    data = edited(PORTAL, "routing.rules.0.port", port)
    assert load(data).routing == load(PORTAL).routing[1:]
    assert warnings_of(data) == [
        "routing.rules[0].port: warning: the rule is left out: it never matches, since this "
        "gives no port (as V2Ray reads it)"]


def test_an_empty_inbound_tag_never_matches() -> None:
    data = edited(PORTAL, "routing.rules.0.inboundTag", [""])
    assert load(data).routing == load(PORTAL).routing[1:]


def test_inbound_port_as_text_and_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REVPROXY_PORT", "8443")
    assert load(edited(PORTAL, "inbounds.0.port", "8080")).inbounds[0].port == 8080
    assert load(edited(PORTAL, "inbounds.0.port", "env:REVPROXY_PORT")).inbounds[0].port == 8443
    assert problems_of(edited(PORTAL, "inbounds.0.port", "1000-2000")) == [
        'inbounds[0].port: port ranges are not supported by revproxy, got "1000-2000"']


def test_log_level_v2ray_does_not_know() -> None:
    data = edited(PORTAL, "log", {"loglevel": "verbose"})
    assert load(data).log.level == "warning"
    assert warnings_of(data) == [
        'log.loglevel: warning: unknown level "verbose": "warning" is used (as V2Ray does)']


# --- the deprecated layout -----------------------------------------------------------------

LEGACY: dict[str, Any] = {
    "port": 8080,
    "inbound": {"protocol": "dokodemo-door", "tag": "external",
                "settings": {"address": "127.0.0.1", "port": 80}},
    "inboundDetour": [{"port": 1024, "tag": "interconn", "protocol": "vmess",
                       "settings": {"clients": [{"id": UUID}]}}],
    "outbound": {"protocol": "freedom", "tag": "direct"},
    "outboundDetour": [{"protocol": "blackhole", "tag": "block"}],
    "inbounds": [{"port": 9000, "protocol": "dokodemo-door", "tag": "late",
                  "settings": {"address": "127.0.0.1", "port": 90}}],
    "routing": {"strategy": "rules", "settings": {"domainStrategy": "AsIs", "rules": [
        {"type": "field", "inboundTag": ["external"], "outboundTag": "portal"}]},
                "rules": [{"type": "field", "port": 25, "outboundTag": "block"}]},
    "reverse": {"portals": [{"tag": "portal", "domain": "test.v2fly.org"}]},
}


def test_deprecated_inbounds_and_outbounds_come_first() -> None:
    config = load(LEGACY)
    assert [(i.tag, i.port) for i in config.inbounds] == [
        ("external", 8080), ("interconn", 1024), ("late", 9000)]
    assert [o.tag for o in config.outbounds] == ["direct", "block"]
    assert config.routing == (RoutingRule("block", ports=((25, 25),)),
                              RoutingRule("portal", inbound_tags=("external",)))
    assert warnings_of(LEGACY) == [
        "routing.strategy: warning: ignored (a key of old V2Ray versions; V2Ray 4.34 ignores "
        "it too)"]


def test_deprecated_parts_are_named_by_their_own_paths() -> None:
    data = edited(LEGACY, "inboundDetour.0.tag", "external")
    data["routing"]["settings"]["rules"][0]["outboundTag"] = "nowhere"
    data["outbound"]["tag"] = None
    assert problems_of(data) == [
        'inboundDetour[0].tag: duplicate tag "external" (first used at inbound.tag)',
        'routing.settings.rules[0].outboundTag: no outbound or portal is tagged "nowhere" '
        "(V2Ray would send this traffic to the first outbound, which has no tag: give it one)"]


def test_global_transport_fills_each_stream() -> None:
    data = edited(PORTAL, "transport", {"tcpSettings": {"header": {"type": "bogus"}}})
    problems = problems_of(data)
    assert len(problems) == 1  # copied into two streams, reported once, where it was written
    assert problems[0].startswith("transport.tcpSettings.header.type: ")
    data["inbounds"][1]["streamSettings"] = {"tcpSettings": {}}  # its own settings win
    data["inbounds"][0]["streamSettings"] = {"tcpSettings": {}}
    assert load(data) == load(PORTAL)


# --- sniffing, dns, policy, routing strategies and balancers (honoured) --------------------------

def test_sniffing() -> None:
    assert load(edited(PORTAL, "inbounds.0.sniffing", {"enabled": False,
                                                      "destOverride": ["http", "tls"]}))
    assert load(edited(PORTAL, "inbounds.0.sniffing", {"enabled": True, "destOverride": [
        "HTTP", "ssl"]})).inbounds[0].sniffing == ("http", "tls")
    assert load(edited(PORTAL, "inbounds.0.sniffing", {"enabled": True})).inbounds[0].sniffing \
        == ()
    assert load(PORTAL).inbounds[0].sniffing is None
    assert problems_of(edited(PORTAL, "inbounds.0.sniffing", {"destOverride": ["quic"]})) == [
        'inbounds[0].sniffing.destOverride: unknown protocol "quic" (V2Ray sniffs "http" and '
        '"tls")']
    assert load(edited(PORTAL, "inbounds.0.domainOverride", ["tls"])).inbounds[0].sniffing == (
        "tls",)


def test_protocol_rules() -> None:
    data = edited(PORTAL, "routing.rules.0.protocol", ["bittorrent"])
    assert load(data).routing[0].protocols == ("bittorrent",)
    assert warnings_of(data) == []


@pytest.mark.parametrize(("allocate", "problem"), [
    ({"strategy": "always", "refresh": 5, "concurrency": 3}, None),
    ({"strategy": "Always"}, None),
    ({"strategy": "external"}, 'inbounds[0].allocate.strategy: allocation strategy "external" '
                               'is not supported by revproxy (only "always": it listens on its '
                               "port all the time)"),
    ({"strategy": "always", "refresh": "5"}, "inbounds[0].allocate.refresh: expected an "
                                             'integer, got "5"'),
])
def test_allocate(allocate: Any, problem: str | None) -> None:
    data = edited(PORTAL, "inbounds.0.allocate", allocate)
    if problem is None:
        assert load(data) == load(PORTAL)
    else:
        assert problems_of(data) == [problem]


def test_dns_loads_for_freedom_and_routing() -> None:
    data = edited(BRIDGE, "dns", {"servers": ["8.8.8.8", "localhost"], "hosts": {"a": "1.1.1.1"}})
    data["outbounds"][0]["settings"]["domainStrategy"] = "UseIPv4"
    config = load(data)
    assert warnings_of(data) == []
    assert config.dns is not None and config.dns.hosts == (("full:a", "1.1.1.1"),)
    assert config.outbounds[0].settings.domain_strategy == "UseIPv4"  # type: ignore[union-attr]


def test_policy_api_and_stats_load_with_what_is_not_done() -> None:
    data = copy.deepcopy(PORTAL)
    data["policy"] = {"levels": {"0": {"connIdle": 300, "statsUserUplink": True}},
                      "system": {"statsInboundUplink": True}}
    data["api"] = {"tag": "api", "services": ["HandlerService", "StatsService"]}
    data["stats"] = {}
    data["inbounds"].append({"tag": "api-in", "port": 10085, "listen": "127.0.0.1",
                             "protocol": "dokodemo-door",
                             "settings": {"address": "127.0.0.1", "port": 1}})
    data["routing"]["rules"].append({"type": "field", "inboundTag": ["api-in"],
                                     "outboundTag": "api"})
    assert warnings_of(data) == [
        'api.services[0]: warning: "HandlerService" is not served by revproxy (it serves '
        "StatsService, LoggerService)"]
    config = load(data)
    assert config.routing[-1].outbound_tag == "api"
    assert config.stats and config.api is not None
    assert (config.api.tag, config.api.services) == ("api", ("StatsService",))
    assert config.policy.level(0).stats_user_uplink
    assert not config.policy.level(0).stats_user_downlink
    assert not config.policy.level(7).stats_user_uplink
    assert config.policy.system.stats_inbound_uplink
    assert not config.policy.system.stats_outbound_downlink
    data["api"]["services"] = ["statsservice", "LOGGERSERVICE", "Nonsense"]
    assert load(data).api.services == ("StatsService", "LoggerService")  # type: ignore[union-attr]
    assert warnings_of(data)[-1] == ('api.services[2]: warning: unknown service "Nonsense": '
                                     "ignored, as V2Ray ignores it")
    data["policy"]["levels"]["0"]["connIdle"] = "300"
    assert problems_of(data) == [
        'policy.levels.0.connIdle: expected an integer, got "300"']


@pytest.mark.parametrize(("strategy", "read"), [
    ("IPIfNonMatch", "IPIfNonMatch"), ("IPOnDemand", "IPOnDemand"), ("ip_on_demand", "IPOnDemand"),
    ("AlwaysIP", "AsIs")])
def test_routing_domain_strategy(strategy: str, read: str) -> None:
    data = edited(PORTAL, "routing.domainStrategy", strategy)
    data["routing"]["rules"].insert(0, {"type": "field", "ip": ["10.0.0.0/8"],
                                        "outboundTag": "portal"})
    assert load(data).routing_options.strategy == read
    assert warnings_of(data) == ([] if read != "AsIs" else [
        f'routing.domainStrategy: warning: "{strategy}" routes as "AsIs": V2Ray 4.34 reads it '
        "but resolves nothing for it"])
    assert warnings_of(edited(PORTAL, "routing.domainStrategy", "Fastest")) == [
        'routing.domainStrategy: warning: unknown strategy "Fastest": "AsIs" is used (as V2Ray '
        "does)"]


def test_balancers() -> None:
    data = edited(PORTAL, "routing.balancers", [{"tag": "b", "selector": "portal"}])
    assert warnings_of(data) == []
    assert load(data).routing_options.balancers == (("b", ("portal",)),)
    data["routing"]["rules"][0]["balancerTag"] = "b"
    assert warnings_of(data) == [
        "routing.rules[0].balancerTag: warning: ignored: the rule has an outboundTag, which "
        "V2Ray uses"]
    del data["routing"]["rules"][0]["outboundTag"]
    assert load(data).routing[0].balancer_tag == "b"


def test_a_missing_outbound_tag_goes_to_the_first_outbound_as_in_v2ray() -> None:
    data = edited(BRIDGE, "routing.rules.1.outboundTag", "gone")
    assert load(data).routing[1].outbound_tag == "out"
    assert warnings_of(data) == [
        'routing.rules[1].outboundTag: warning: no outbound or portal is tagged "gone": V2Ray '
        'sends this traffic to the first outbound, outbounds[0] ("out"), and so does revproxy']


# --- several files -----------------------------------------------------------------------------

def portal_files(tmp_path: Path) -> tuple[Path, Path]:
    base = copy.deepcopy(PORTAL)
    base["log"] = {"loglevel": "debug", "access": "/tmp/a.log"}
    return write(tmp_path / "a.json", base), tmp_path / "b.json"


def test_later_files_replace_whole_sections(tmp_path: Path) -> None:
    a, b = portal_files(tmp_path)
    write(b, {"log": {"error": "/tmp/e.log"}, "reverse": {"portals": [
        {"tag": "portal", "domain": "other.example"}]}})
    config = load_config([a, b])
    assert config.log.level == "warning" and config.log.access is None  # not merged by key
    assert config.reverse.portals[0].domain == "other.example"
    assert config.inbounds == load(PORTAL).inbounds
    assert str(config.source) == f"{a} {b}"


def test_a_single_inbound_replaces_its_tag_or_is_appended(tmp_path: Path) -> None:
    a, b = portal_files(tmp_path)
    write(b, {"inbounds": [{"tag": "external", "port": 8080, "protocol": "dokodemo-door",
                            "settings": {"address": "127.0.0.1", "port": 81}}]})
    assert [(i.tag, i.port) for i in load_config([a, b]).inbounds] == [
        ("external", 8080), ("interconn", 1024)]
    write(b, {"inbounds": [{"tag": "more", "port": 8080, "protocol": "dokodemo-door",
                            "settings": {"address": "127.0.0.1", "port": 81}}]})
    assert [i.tag for i in load_config([a, b]).inbounds] == ["external", "interconn", "more"]
    write(b, {"inbounds": [{"tag": "x", "port": 1, "protocol": "dokodemo-door",
                            "settings": {"followRedirect": True}}] * 2})
    assert problems_of_files([a, b]) == [
        'b.json: inbounds[1].tag: duplicate tag "x" (first used at inbounds[0].tag)']
    write(b, {"inbounds": []})  # an empty list changes nothing
    assert load_config([a, b]).inbounds == load(PORTAL).inbounds


def test_a_single_outbound_goes_first_unless_the_file_is_a_tail(tmp_path: Path) -> None:
    a = write(tmp_path / "a.json", BRIDGE)
    extra = {"outbounds": [{"tag": "block", "protocol": "blackhole"}]}
    head = write(tmp_path / "10-block.json", extra)
    tail = write(tmp_path / "90-tail.json", extra)
    assert [o.tag for o in load_config([a, head]).outbounds] == ["block", "out", "interconn"]
    assert [o.tag for o in load_config([a, tail]).outbounds] == ["out", "interconn", "block"]


def problems_of_files(paths: list[Path], confdirs: list[Path] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(paths, confdirs or [])
    return info.value.problems


def test_problems_name_the_file_the_value_came_from(tmp_path: Path) -> None:
    a, b = portal_files(tmp_path)
    write(b, {"inbounds": [{"tag": "interconn", "port": 1024, "protocol": "vmess",
                            "settings": {"clients": [{"id": "abc"}]}}]})
    assert problems_of_files([a, b]) == [
        'b.json: inbounds[0].settings.clients[0].id: "abc" is not a UUID']
    write(b, {"inbounds": [{"tag": "external", "port": 2, "protocol": "dokodemo-door",
                            "settings": {"followRedirect": True}}, {
        "tag": "external", "port": 3, "protocol": "dokodemo-door",
        "settings": {"followRedirect": True}}], "port": 5})
    found = load_config_lines([a, b])
    assert found == [
        'b.json: inbounds[1].tag: duplicate tag "external" (first used at inbounds[0].tag)']
    write(b, {"outbounds": [{"tag": "portal", "protocol": "freedom"}]})
    assert problems_of_files([a, b]) == [
        'a.json: reverse.portals[0].tag: duplicate tag "portal" (first used at '
        "outbounds[0].tag (in b.json))"]


def load_config_lines(paths: list[Path]) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(paths)
    assert info.value.warnings == [
        "b.json: port: warning: ignored: only the first file's port is read (as V2Ray does)"]
    return info.value.problems


def test_confdir_reads_json_files_by_name_after_the_c_files(tmp_path: Path) -> None:
    a, _ = portal_files(tmp_path)
    confdir = tmp_path / "conf.d"
    confdir.mkdir()
    write(confdir / "20-log.json", {"log": {"loglevel": "error"}})
    write(confdir / "10-log.json", {"log": {"loglevel": "info"}})
    write(confdir / "30-log.yaml", "log: {loglevel: none}\n")  # V2Ray reads *.json only
    write(confdir / "README", "not a configuration")
    (confdir / "sub.json").mkdir()
    config = load_config([a], [confdir])
    assert config.log.level == "error"
    source = config.source
    assert isinstance(source, ConfigSource) and str(source) == f"{a} {confdir}"
    write(confdir / "40-log.json", {"log": {"loglevel": "debug"}})
    assert load_config(source).log.level == "debug"  # a reload reads the confdir again
    assert pickle.loads(pickle.dumps(source)).paths() == source.paths()
    assert problems_of_files([], [tmp_path / "none"]) == [
        f"{tmp_path / 'none'}: cannot read the confdir: No such file or directory"]
    assert problems_of_files([], [tmp_path / "conf.d" / "README"]) == [
        f"{tmp_path / 'conf.d' / 'README'}: the confdir is not a directory"]


def test_same_base_names_are_told_apart(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = write(tmp_path / "x" / "c.json", PORTAL)
    b = write(tmp_path / "y" / "c.json", {"log": {"loglevel": 5}})
    assert problems_of_files([a, b]) == [f"{b}: log.loglevel: expected a string, got 5"]


def test_files_that_cannot_be_merged(tmp_path: Path) -> None:
    a, b = portal_files(tmp_path)
    write(b, "[1, 2]")
    assert problems_of_files([a, b]) == ["b.json: the top level must be an object, got a list"]
    assert problems_of_files(["https://example.com/c.json"]) == [
        "c.json: reading the configuration from a URL or standard input is not supported by "
        "revproxy: give a file"]


JUNK = st.recursive(st.none() | st.integers() | st.text(max_size=6) | st.booleans(),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.sampled_from(["inbounds", "outbounds", "log", "tag",
                                                       "routing", "port", "Inbounds"]),
                                      inner, max_size=4), max_leaves=15)


@settings(max_examples=150, deadline=None)
@given(st.lists(JUNK, min_size=2, max_size=3))
def test_merging_anything_gives_a_config_or_config_error(documents: list[Any]) -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        paths = [write(Path(directory) / f"{i}.json", json.dumps(doc))
                 for i, doc in enumerate(documents)]
        try:
            load_config(paths)
        except ConfigError as exc:
            assert all("\n" not in line for line in exc.problems + exc.warnings)


# --- the command line --------------------------------------------------------------------------

def revproxy(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "revproxy", *args], capture_output=True,
                          text=True, cwd=cwd, timeout=60)


def test_check_prints_warnings_and_strict_refuses_them(tmp_path: Path) -> None:
    write(tmp_path / "w.json", edited(PORTAL, "routing.domainStrategy", "Fastest"))
    done = revproxy("check", "-c", "w.json", cwd=tmp_path)
    assert (done.returncode, done.stdout) == (0, "configuration OK (1 warning)\n")
    assert done.stderr == ('w.json: routing.domainStrategy: warning: unknown strategy "Fastest": '
                           '"AsIs" is used (as V2Ray does)\n')
    done = revproxy("check", "--strict", "-c", "w.json", cwd=tmp_path)
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.splitlines()[-1] == ("revproxy: configuration refused: 1 warning "
                                            "(--strict)")


def test_check_takes_several_files_and_a_confdir(tmp_path: Path) -> None:
    write(tmp_path / "portal.json", PORTAL)
    (tmp_path / "d").mkdir()
    write(tmp_path / "d" / "log.json", {"log": {"loglevel": "nonsense"}})
    done = revproxy("check", "-c", "portal.json", "-confdir", "d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stderr.startswith("log.json: log.loglevel: warning: ")
    done = revproxy("check", "-config", "portal.json", "--config", "portal.json",
                    "--confdir", "d", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    write(tmp_path / "bad.json", {"inbounds": {}})
    done = revproxy("check", "-c", "portal.json", "-c", "bad.json", cwd=tmp_path)
    assert (done.returncode, done.stderr) == (2, "bad.json: inbounds: expected a list, got an "
                                                 "object\n")
    assert revproxy("check", cwd=tmp_path).returncode == 2


def test_run_logs_the_warnings_as_it_starts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capfd: pytest.CaptureFixture[str]) -> None:
    from revproxy import cli, log
    from revproxy.server import supervisor

    for logger in (log.log, log.access_log):  # put back as they were afterwards
        for name in ("handlers", "level", "propagate"):
            monkeypatch.setattr(logger, name, copy.copy(getattr(logger, name)))
    started: list[Config] = []

    class FakeSupervisor:
        def __init__(self, config: Config, **kwargs: Any) -> None:
            started.append(config)

        def run(self) -> int:
            return 0

    monkeypatch.setattr(supervisor, "Supervisor", FakeSupervisor)
    write(tmp_path / "w.json", edited(PORTAL, "routing.domainStrategy", "Fastest"))
    assert cli.main(["run", "-c", str(tmp_path / "w.json")]) == 0
    assert started and started[0].warnings
    err = capfd.readouterr().err
    assert ('[Warning] config: w.json: routing.domainStrategy: warning: unknown strategy '
            '"Fastest"') in err
