"""The service account named by ``server.user``/``server.group``: looking it up (master) and
becoming it after the fork (worker). Gevent-free."""

from __future__ import annotations

import grp
import os
import pwd


def resolve_user(user: str, group: str | None) -> tuple[int, int]:
    """uid and gid for ``server.user``/``server.group``; ValueError with a clear message."""
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ValueError(f"server.user: no such user {user!r}") from None
    if not group:
        return entry.pw_uid, entry.pw_gid
    try:
        return entry.pw_uid, grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"server.group: no such group {group!r}") from None


def drop_privileges(user: str | None, group: str | None) -> None:
    """Become ``user``/``group`` when started as root (the sockets are already bound)."""
    if os.geteuid() != 0 or not user:
        return
    uid, gid = resolve_user(user, group)
    os.setgroups([])
    os.initgroups(user, gid)
    os.setgid(gid)
    os.setuid(uid)
