"""A VMess inbound that listens beyond this host never accepts a published example id."""

from __future__ import annotations

import copy

import pytest

from revproxy.config import ConfigError, parse_config
from revproxy.demo import portal_config

PUBLISHED = "11111111-2222-4333-8444-555555555555"  # revproxy's examples' placeholder


def portal(listen: str, user_id: str = PUBLISHED) -> dict:
    config = copy.deepcopy(portal_config(user_id, 8080, 8443))
    config["inbounds"][1]["listen"] = listen
    return config


@pytest.mark.parametrize("listen", ["127.0.0.1", "::1", "localhost", "127.0.0.2"])
def test_on_loopback_it_is_harmless(listen):
    parse_config(portal(listen), "portal.json")


@pytest.mark.parametrize("listen", ["0.0.0.0", "::", "192.0.2.7"])
def test_beyond_this_host_it_is_refused_with_one_line(listen):
    with pytest.raises(ConfigError) as caught:
        parse_config(portal(listen), "portal.json")
    assert caught.value.problems == [
        f"portal.json: inbounds[1].settings.clients[0].id: {PUBLISHED} is a published example "
        f"id, and this inbound listens on {listen}: anyone could use it (make a new one with "
        "\"revproxy uuid\")"]


@pytest.mark.parametrize("guide_id", ["27848739-7e62-4138-9fd3-098a63964b6b",  # reverse doc
                                      "b831381d-6324-4d53-ad4f-8cda48b30811"])  # config doc
def test_other_published_ids_get_a_warning(guide_id):
    """V2Ray's documents and configs copied from guides (V2Ray runs them) load, warned."""
    config = parse_config(portal("0.0.0.0", guide_id), "portal.json")
    assert any("published example id" in line and "anyone could use it" in line
               for line in config.warnings)


def test_a_fresh_id_may_listen_anywhere():
    parse_config(portal("0.0.0.0", "5f1c0a52-9a77-4a0e-9d7b-3c1f5e0d2a11"), "portal.json")


def test_the_packaged_config_is_refused_once_made_public(tmp_path):
    """packaging/config.yaml ships the placeholder on 127.0.0.1: safe as shipped; an operator
    who opens it to the world without a new id is stopped."""
    from pathlib import Path

    from revproxy.config import load_config

    shipped = Path(__file__).parents[2] / "packaging" / "config.yaml"
    load_config(shipped)
    public = tmp_path / "config.yaml"
    public.write_text(shipped.read_text().replace("listen: 127.0.0.1", "listen: 0.0.0.0"))
    with pytest.raises(ConfigError, match="published example id"):
        load_config(public)
