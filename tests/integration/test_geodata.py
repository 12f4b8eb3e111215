"""V2Ray 4.34 reads the .dat files revproxy's encoder writes, and both accept the corpus's
configurations that need them once they are there (``V2RAY_LOCATION_ASSET``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from revproxy.geodata import encode_ips, encode_sites
from tests.integration.conftest import ROOT, V2RAY, needs_v2ray

CORPUS = ROOT / "tests" / "configs" / "real"
NEEDING = ("debian-config.json", "debian-vpoint_vmess_freedom.json",
           "v2ray-examples-tcp-server.json")


@needs_v2ray
def test_v2ray_and_revproxy_load_the_lists(tmp_path: Path) -> None:
    assert V2RAY is not None
    (tmp_path / "geoip.dat").write_bytes(encode_ips({
        "PRIVATE": ["10.0.0.0/8", "192.168.0.0/16", "fc00::/7"], "CN": ["1.0.1.0/24"]}))
    (tmp_path / "geosite.dat").write_bytes(encode_sites({
        "CATEGORY-ADS": [("domain:ads.example", ()), ("full:x.example", ("ads",))],
        "CN": [("domain:example.cn", ())]}))
    env = {**os.environ, "V2RAY_LOCATION_ASSET": str(tmp_path)}
    for name in NEEDING:
        v2ray = subprocess.run([V2RAY, "-test", "-config", str(CORPUS / name)], env=env,
                               capture_output=True, text=True, timeout=60)
        assert v2ray.returncode == 0, v2ray.stdout + v2ray.stderr
        check = subprocess.run([sys.executable, "-m", "revproxy", "check", "-c", name], env=env,
                               cwd=CORPUS, capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr
    (tmp_path / "geoip.dat").write_bytes(encode_ips({"CN": ["1.0.1.0/24"]}))
    v2ray = subprocess.run([V2RAY, "-test", "-config", str(CORPUS / NEEDING[1])], env=env,
                           capture_output=True, text=True, timeout=60)
    check = subprocess.run([sys.executable, "-m", "revproxy", "check", "-c", NEEDING[1]],
                           env=env, cwd=CORPUS, capture_output=True, text=True, timeout=60)
    assert v2ray.returncode != 0 and "country not found" in v2ray.stdout + v2ray.stderr
    assert check.returncode == 2
    assert "list not found in geoip.dat: private" in check.stderr
