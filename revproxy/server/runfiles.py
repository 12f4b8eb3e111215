"""The master's runtime files: its pid file (written so that root never writes through a
planted link), the default pid path named after the configuration, and the removal of state
tables left by dead masters."""

from __future__ import annotations

import hashlib
import os
import re

from revproxy.server.statetable import default_state_path


def write_pid_file(path: str, pid: int) -> None:
    """Write ``pid`` to ``path`` atomically. The temporary file has an unpredictable name and
    is created with O_EXCL | O_NOFOLLOW, and the rename replaces whatever ``path`` is (a
    link included) instead of writing through it: the master (root) never writes into a
    file someone else planted in a directory the service user may own."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, 0o755, exist_ok=True)
    # not tempfile.mkstemp: tempfile pulls in shutil, random and the compressors, and every
    # worker would inherit that memory; this is what mkstemp does
    temp = os.path.join(directory, f".{os.path.basename(path)}.{os.urandom(8).hex()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o644)
    try:
        try:
            os.fchmod(fd, 0o644)  # whatever the umask: `revproxy reload` reads it
            os.write(fd, f"{pid}\n".encode())
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        try:
            os.unlink(temp)
        except OSError:
            pass
        raise


def default_pid_path(source: str) -> str:
    """The pid file of a master started without ``server.pidFile``: in the runtime directory
    (that of ``default_state_path``), named after the configuration it was given (the files
    and confdirs, as absolute paths), so ``revproxy status -c FILE`` finds it."""
    files = getattr(source, "files", None) or (source,)
    dirs = getattr(source, "confdirs", ())
    key = "\0".join([*(os.path.abspath(f) for f in files), "", *(os.path.abspath(d)
                                                                   for d in dirs)])
    digest = hashlib.sha256(key.encode("utf-8", "surrogateescape")).hexdigest()[:16]
    directory = os.path.dirname(default_state_path(os.getpid()))
    return os.path.join(directory, f"revproxy-{digest}.pid")


def own_default_pid_path(source: str) -> str:
    """default_pid_path, in a directory that is ours (or root's): under a shared /tmp a
    directory someone else made is refused, not written into."""
    path = default_pid_path(source)
    directory = os.path.dirname(path)
    if os.path.isdir(directory) and os.lstat(directory).st_uid not in (0, os.geteuid()):
        raise OSError(f"{directory} belongs to uid {os.lstat(directory).st_uid}, not to us")
    return path


def remove_pid_file(path: str, pid: int) -> None:
    """Remove the pid file at ``path`` if it still names ``pid`` (a newer master may have
    replaced it); never follows a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd) as f:
            if f.read().strip() == str(pid):
                os.unlink(path)
    except OSError:
        pass


def remove_stale_state_files(directory: str) -> None:
    """Default state tables are named after their master; those of dead masters (killed
    before they could clean up) are removed."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        match = re.fullmatch(r"revproxy-(\d+)\.state", name)
        if match is None:
            continue
        try:
            os.kill(int(match.group(1)), 0)
        except ProcessLookupError:
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass
        except PermissionError:
            pass  # alive, someone else's
