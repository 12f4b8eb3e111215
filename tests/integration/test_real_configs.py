"""The corpus of real V2Ray configurations (tests/configs/real/, sources in SOURCES.md): each
goes through ``v2ray -test -config`` and ``revproxy check``. Every one V2Ray 4.34 accepts
must be accepted by revproxy (warnings allowed), unless it is listed below as an expected
refusal: a feature revproxy does not have yet, with the exact lines ``revproxy check``
prints. When a feature lands, its entries fail here until they are removed, so the list
only shrinks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, V2RAY, needs_v2ray

CORPUS = ROOT / "tests" / "configs" / "real"
FILES = sorted(path.name for path in CORPUS.glob("*.json"))

GEO = "geoip:/geosite: rules without the .dat files (V2Ray 4.34 refuses them too)"

# file -> {feature: [the error lines revproxy check prints for it]}. SOCKS and VLESS have
# landed: their configurations load now.
_GEOIP = ('"geoip:private": failed to load geoip: failed to open file: geoip.dat (put it next to '
          "the configuration, in /usr/share/v2ray, or where V2RAY_LOCATION_ASSET names)")
_GEOSITE = ("failed to load geosite: failed to open file: geosite.dat (put it next to the "
            "configuration, in /usr/share/v2ray, or where V2RAY_LOCATION_ASSET names)")

EXPECTED_REFUSALS: dict[str, dict[str, list[str]]] = {
    "debian-config.json": {
        GEO: [f"debian-config.json: routing.rules[0].ip[0]: {_GEOIP}",
              'debian-config.json: routing.rules[1].domain[0]: "geosite:category-ads": '
              + _GEOSITE,
              f'debian-config.json: dns.servers[1].domains[0]: "geosite:cn": {_GEOSITE}'],
    },
    "debian-vpoint_vmess_freedom.json": {
        GEO: [f"debian-vpoint_vmess_freedom.json: routing.rules[0].ip[0]: {_GEOIP}"],
    },
    "v2ray-examples-tcp-server.json": {
        GEO: [f"v2ray-examples-tcp-server.json: routing.rules[0].ip[0]: {_GEOIP}"],
    },
}

# What V2Ray 4.34 itself refuses here (these are still loaded by revproxy, for the record).
V2RAY_REFUSES = {
    "debian-config.json": "geoip.dat",  # Debian's package ships no geoip.dat
    "debian-vpoint_vmess_freedom.json": "geoip.dat",
    "v2ray-examples-tcp-server.json": "geoip.dat",
}


def v2ray_accepts(path: Path) -> tuple[bool, str]:
    assert V2RAY is not None
    done = subprocess.run([V2RAY, "-test", "-config", str(path)], capture_output=True,
                          text=True, timeout=60, cwd=path.parent)
    return done.returncode == 0, done.stdout + done.stderr


def revproxy_check(path: Path) -> tuple[int, list[str], list[str]]:
    """The exit status, the error lines and the warning lines of ``revproxy check``."""
    done = subprocess.run([sys.executable, "-m", "revproxy", "check", "-c", path.name],
                          capture_output=True, text=True, timeout=60, cwd=path.parent)
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
    assert len(FILES) >= 10
    missing = [name for name in FILES if f"`{name}`" not in sources]
    assert missing == [], f"add these to tests/configs/real/SOURCES.md: {missing}"
    assert set(EXPECTED_REFUSALS) <= set(FILES)


@needs_v2ray
@pytest.mark.parametrize("name", FILES)
def test_real_config(name: str) -> None:
    path = CORPUS / name
    accepted, output = v2ray_accepts(path)
    if name in V2RAY_REFUSES:
        assert not accepted and V2RAY_REFUSES[name] in output, output
    else:
        assert accepted, f"v2ray -test refuses {name}: {output[-500:]}"
    status, errors, warnings = revproxy_check(path)
    assert all(line.startswith(f"{name}: ") for line in errors + warnings)
    expected = [line for lines in EXPECTED_REFUSALS.get(name, {}).values() for line in lines]
    if status == 0:
        assert not expected, (f"{name} now loads: remove it from EXPECTED_REFUSALS "
                              f"({', '.join(EXPECTED_REFUSALS[name])})")
    else:
        assert status == 2
        assert errors == expected, f"{name}: unexpected refusal: {errors}"
