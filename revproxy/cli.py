"""Command line: ``revproxy run | check | status | reload | stop | uuid | demo``."""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from revproxy import __version__

if TYPE_CHECKING:
    from revproxy.config import Config
    from revproxy.server.spec import WorkerSpec


class CliError(Exception):
    """A one-line error for the user; exit status 1."""


def _load(args: argparse.Namespace) -> Config:
    """The configuration the -c files and confdirs give; its problems end the command with
    status 2 (the warnings found on the way are printed first)."""
    from revproxy.config import ConfigError, load_config

    try:
        return load_config(args.config or [], args.confdir or [])
    except ConfigError as exc:
        for line in (*exc.warnings, *exc.problems):
            print(line, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check(args: argparse.Namespace) -> int:
    config = _load(args)
    for line in config.warnings:
        print(line, file=sys.stderr)
    count = len(config.warnings)
    if count and args.strict:
        print(f"revproxy: configuration refused: {count} warning{'s' * (count != 1)} "
              "(--strict)", file=sys.stderr)
        return 2
    print(f"configuration OK ({count} warning{'s' * (count != 1)})" if count
          else "configuration OK")
    return 0


def cmd_uuid(args: argparse.Namespace) -> int:
    import uuid  # only this command needs it

    print(uuid.uuid4())
    return 0


def _run_worker(spec: WorkerSpec) -> int:
    """The worker's entry point, imported only in the forked child: the master never
    imports gevent."""
    from revproxy.server.worker import run_worker

    return run_worker(spec)


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args)
    if config.warnings:
        from revproxy import log

        log.configure(config.log)  # the supervisor configures it again as it starts
        for line in config.warnings:
            log.log.warning("config: %s", line)
    from revproxy.server.supervisor import Supervisor

    return Supervisor(config, workers=args.workers, worker_main=_run_worker).run()


def cmd_demo(args: argparse.Namespace) -> int:
    from revproxy.demo import run_demo

    return run_demo(once=args.once)


def master_pid(args: argparse.Namespace) -> int:
    """The master's pid from --pid, --pidfile, the config's server.pidFile, or else the pid
    file a master started with the same -c/-confdir writes in the runtime directory."""
    if args.pid:
        return args.pid
    path = args.pidfile
    if path is None and (args.config or args.confdir):
        config = _load(args)
        path = config.server.pid_file
        if path is None:
            from revproxy.server.runfiles import default_pid_path

            path = default_pid_path(config.source)
            if not os.path.exists(path):
                raise CliError(f"no revproxy runs with {config.source} (no {path}; a server "
                               "started by another user: use --pid or server.pidFile)")
            for trusted in (path, os.path.dirname(path)):
                # a shared /tmp: only a file of ours (or root's) names the pid to signal
                if os.lstat(trusted).st_uid not in (0, os.geteuid()):
                    raise CliError(f"{trusted} belongs to another user: not trusted")
    if path is None:
        raise CliError("say which server: --pidfile FILE, --pid PID or -c CONFIG")
    try:
        # O_NOFOLLOW: run as root, the command must not read through a planted link
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with open(fd) as f:
            return int(f.read(32).strip())
    except (OSError, ValueError) as exc:
        raise CliError(f"{path}: cannot read a pid: {exc}") from None


def _send(args: argparse.Namespace, signum: int, what: str) -> int:
    pid = master_pid(args)
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        raise CliError(f"no process {pid}: is revproxy running?") from None
    except PermissionError:
        raise CliError(f"not allowed to signal process {pid}") from None
    print(f"{what} requested (pid {pid})")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    return _send(args, signal.SIGHUP, "reload")


def cmd_stop(args: argparse.Namespace) -> int:
    return _send(args, signal.SIGINT if args.fast else signal.SIGTERM, "stop")


def cmd_status(args: argparse.Namespace) -> int:
    from revproxy.server.status import StatusError, collect, render, to_json

    state = args.state
    if state is None and (args.config or args.confdir) and not args.pid and not args.pidfile:
        state = _load(args).server.state_file
    try:
        report = collect(master_pid(args), state)
    except StatusError as exc:
        raise CliError(str(exc)) from None
    print(to_json(report) if args.json else render(report))
    return 0


def _config_options(parser: argparse.ArgumentParser, what: str) -> None:
    """-c FILE (repeatable) and -confdir DIR, spelled as V2Ray spells them too."""
    parser.add_argument("-c", "-config", "--config", action="append", metavar="FILE",
                        help=f"{what}: V2Ray JSON (comments allowed) or YAML; give it more "
                        "than once to merge several files as V2Ray does")
    parser.add_argument("-confdir", "--confdir", action="append", metavar="DIR",
                        help="merge every *.json in DIR (by name), after the -c files")


def _config_given(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if not (args.config or args.confdir):
        parser.error("give the configuration: -c FILE or -confdir DIR")


def _which_server(parser: argparse.ArgumentParser) -> None:
    _config_options(parser, "the server's config (to find its master: server.pidFile, or "
                    "the pid file named after the config in the runtime directory)")
    parser.add_argument("--pidfile", help="the master's pid file")
    parser.add_argument("--pid", type=int, help="the master's pid")


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, sized without shutil: argparse builds one for every argument
    added, and shutil imports the compression modules, which every worker would inherit."""

    def __init__(self, prog: str) -> None:
        columns = os.environ.get("COLUMNS", "")
        if columns.isdigit() and int(columns) > 0:
            width = int(columns)
        else:
            try:
                width = os.get_terminal_size(sys.stdout.fileno()).columns
            except (OSError, ValueError):
                width = 80
        super().__init__(prog, width=width - 2)


class _Parser(argparse.ArgumentParser):
    """Every (sub)command's parser, with the help formatter above."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(**kwargs)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="revproxy", description="V2Ray-compatible reverse tunnel")
    parser.add_argument("--version", action="version", version=f"revproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = sub.add_parser("run", help="run a portal and/or bridge from a config file")
    _config_options(run, "the configuration")
    run.add_argument("-w", "--workers", type=int, help="worker processes (default: "
                     "server.workers, else the CPU count)")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file and exit")
    _config_options(check, "the configuration")
    check.add_argument("--strict", action="store_true",
                       help="refuse a configuration that loads with warnings")
    check.set_defaults(func=cmd_check)

    status = sub.add_parser("status", help="show the master, workers and tunnels")
    _which_server(status)
    status.add_argument("--state", help="the state table file (default: found via the master)")
    status.add_argument("--json", action="store_true", help="one JSON object")
    status.set_defaults(func=cmd_status)

    reload = sub.add_parser("reload", help="re-read the config without dropping connections")
    _which_server(reload)
    reload.set_defaults(func=cmd_reload)

    stop = sub.add_parser("stop", help="stop gracefully (--fast: at once)")
    _which_server(stop)
    stop.add_argument("--fast", action="store_true")
    stop.set_defaults(func=cmd_stop)

    demo = sub.add_parser("demo", help="portal + bridge + backend on loopback")
    demo.add_argument("--once", action="store_true", help="exit after the first round trip")
    demo.set_defaults(func=cmd_demo)

    new_id = sub.add_parser("uuid", help="print a new user id")
    new_id.set_defaults(func=cmd_uuid)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("run", "check"):
        _config_given(parser, args)
    if getattr(args, "workers", None) is not None:
        from revproxy.config.sections import MAX_WORKERS

        if not 1 <= args.workers <= MAX_WORKERS:  # the bound of server.workers
            print(f"revproxy: --workers must be between 1 and {MAX_WORKERS}, got "
                  f"{args.workers}", file=sys.stderr)
            return 2
    try:
        return args.func(args)
    except CliError as exc:
        print(f"revproxy: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
