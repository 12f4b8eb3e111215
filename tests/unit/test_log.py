"""Logging: V2Ray's line format, and log files the master (root) opens safely."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

import pytest

from revproxy import log as logging_setup
from revproxy.log import log


@dataclass(frozen=True)
class Settings:
    level: str = "warning"
    error: str | None = None
    access: str | None = None


@pytest.fixture(autouse=True)
def restore_logging():
    yield
    logging_setup.setup()


def test_lines_are_in_v2rays_format(tmp_path):
    path = tmp_path / "error.log"
    logging_setup.configure(Settings(error=str(path)))
    log.warning("tunnel %s up", "t1")
    log.info("not at warning level")
    line = path.read_text()
    assert line.endswith(" [Warning] tunnel t1 up\n") and line.count("\n") == 1


def test_a_new_log_file_is_not_world_readable(tmp_path):
    path = tmp_path / "error.log"
    old = os.umask(0)
    try:
        logging_setup.configure(Settings(error=str(path)))
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o640


def test_a_symbolic_link_in_place_of_the_log_is_refused(tmp_path, capsys):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    link = tmp_path / "error.log"
    link.symlink_to(victim)
    logging_setup.configure(Settings(error=str(link)))  # no exception: the server goes on
    log.warning("after the refusal")
    assert victim.read_text() == "precious\n"
    err = capsys.readouterr().err
    assert f"cannot open log file {link}" in err and "logging to stderr" in err
    assert "[Warning] after the refusal" in err
