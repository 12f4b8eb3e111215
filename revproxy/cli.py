"""Command line: ``revproxy run | check | demo | uuid``."""

from __future__ import annotations

import argparse
import sys
import uuid

from revproxy import __version__


def _load(path: str):
    from revproxy.config import ConfigError, load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check(args: argparse.Namespace) -> int:
    _load(args.config)
    print("configuration OK")
    return 0


def cmd_uuid(args: argparse.Namespace) -> int:
    print(uuid.uuid4())
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _load(args.config)
    from revproxy.runner import run_single

    return run_single(config)


def cmd_demo(args: argparse.Namespace) -> int:
    from revproxy.demo import run_demo

    return run_demo(once=args.once)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="revproxy",
                                     description="V2Ray-compatible reverse tunnel")
    parser.add_argument("--version", action="version", version=f"revproxy {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a portal and/or bridge from a config file")
    run.add_argument("-c", "--config", required=True, help="V2Ray JSON or YAML config")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a config file and exit")
    check.add_argument("-c", "--config", required=True)
    check.set_defaults(func=cmd_check)

    demo = sub.add_parser("demo", help="portal + bridge + backend on loopback")
    demo.add_argument("--once", action="store_true", help="exit after the first round trip")
    demo.set_defaults(func=cmd_demo)

    new_id = sub.add_parser("uuid", help="print a new user id")
    new_id.set_defaults(func=cmd_uuid)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
