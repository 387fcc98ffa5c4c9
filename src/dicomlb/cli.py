"""The `dicomlb` command: run | check | demo | hash-password."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from dicomlb import __version__, logs
from dicomlb.app import App, run_loop
from dicomlb.config import ConfigError, describe, hash_secret, load_snapshot


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomlb", description="Load balancer and router for DICOM networks."
    )
    parser.add_argument("--version", action="version", version=f"dicomlb {__version__}")
    parser.add_argument(
        "--log-level", default="info", choices=["debug", "info", "warning", "error"]
    )
    parser.add_argument("--log-format", default="plain", choices=["plain", "json"])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve with a configuration file")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    check = commands.add_parser("check", help="validate a configuration file and show it resolved")
    check.add_argument("-c", "--config", required=True, help="YAML configuration file")
    demo = commands.add_parser(
        "demo", help="run the balancer with three embedded storage nodes and sample studies"
    )
    demo.add_argument("--keep-running", action="store_true", help="keep serving after the demo")
    demo.add_argument("--port", type=int, default=0, help="DICOM port (default: a free one)")
    demo.add_argument(
        "--admin-port", type=int, default=0, help="dashboard / admin port (default: a free one)"
    )
    hashing = commands.add_parser(
        "hash-password",
        help="print the SHA-256 digest of a password or bearer token for listeners.admin.auth",
    )
    hashing.add_argument(
        "secret", nargs="?", help="the secret (default: read from the terminal or stdin)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dicomlb` console script."""
    args = _parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "demo":
        from dicomlb.demo import run_demo

        def report(text: str) -> None:
            print(text, flush=True)

        run_loop(
            lambda: run_demo(
                report, keep_running=args.keep_running, port=args.port, admin_port=args.admin_port
            )
        )
        return 0
    if args.command == "hash-password":
        secret = args.secret
        if secret is None:
            secret = (
                getpass.getpass("secret: ") if sys.stdin.isatty() else sys.stdin.readline()
            ).rstrip("\n")
        if not secret:
            print("dicomlb: empty secret", file=sys.stderr)
            return 2
        print(hash_secret(secret))
        return 0
    try:
        snapshot = load_snapshot(args.config)
    except ConfigError as err:
        print(f"dicomlb: invalid configuration\n{err}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(describe(snapshot))
        return 0
    run_loop(lambda: App(snapshot, config_path=args.config).serve())
    return 0
