"""The `dicomlb` command: run | check | demo | spool | hash-password."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Sequence

from dicomlb import __version__, logs
from dicomlb.app import App, run_loop
from dicomlb.config import ConfigError, describe, hash_secret, load_snapshot
from dicomlb.demo import run_demo
from dicomlb.snapshot import Snapshot
from dicomlb.spool import ops
from dicomlb.spool.state import ItemState


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
    demo.add_argument(
        "--once",
        action="store_true",
        help="stop after the sample studies and the summary (default: keep serving, a new "
        "study every few seconds, until Ctrl-C)",
    )
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
    _spool_parser(commands)
    return parser


def _spool_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spool = commands.add_parser("spool", help="see and act on the spool's queued and dead items")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", required=True, help="YAML configuration file")
    actions = spool.add_subparsers(dest="action", required=True)
    ls = actions.add_parser("ls", parents=[config], help="list items (oldest first), a summary")
    ls.add_argument(
        "--state",
        action="append",
        choices=[s.value for s in ItemState],
        help="only items in this state (repeatable)",
    )
    ls.add_argument("--backend", help="only items for this backend")
    ls.add_argument("--study", help="only items of this StudyInstanceUID")
    ls.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    show = actions.add_parser("show", parents=[config], help="every field of one item")
    show.add_argument("id", type=int)
    retry = actions.add_parser("retry", parents=[config], help="queue dead items again")
    retry.add_argument("ids", type=int, nargs="*", help="item ids")
    retry.add_argument("--dead", action="store_true", help="every dead item")
    purge = actions.add_parser("purge", parents=[config], help="delete items and their files")
    purge.add_argument("ids", type=int, nargs="*", help="item ids")
    purge.add_argument("--dead", action="store_true", help="every dead item")
    purge.add_argument("--delivered", action="store_true", help="every delivered item")


def _spool_command(args: argparse.Namespace, snapshot: Snapshot) -> int:
    if snapshot.spool is None:
        print(f"dicomlb: {snapshot.source} has no spool section", file=sys.stderr)
        return 2
    try:
        with ops.opened(snapshot.spool.directory) as store:
            if args.action == "ls":
                states = [ItemState(s) for s in args.state or ()]
                items = ops.list_items(
                    store, states=states, backend=args.backend, study=args.study, limit=args.limit
                )
                total = ops.summary(store)
                counts = ", ".join(f"{n} {state}" for state, n in sorted(total.by_state.items()))
                print(f"spool {snapshot.spool.directory}: {counts or 'empty'}; {total.bytes} bytes")
                if items:
                    print(ops.HEADER)
                    for item in items:
                        print(ops.row(item))
            elif args.action == "show":
                print(ops.describe_item(ops.show(store, args.id)))
            elif args.action == "retry":
                n = ops.retry(store, args.ids, all_dead=args.dead)
                print(f"{n} item(s) queued again")
            elif args.action == "purge":
                states = [ItemState.DEAD] * args.dead + [ItemState.DELIVERED] * args.delivered
                n = ops.purge(store, args.ids, states=states)
                print(f"{n} item(s) purged")
    except ops.OperationError as err:
        print(f"dicomlb: {err}", file=sys.stderr)
        return 2
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dicomlb` console script."""
    args = _parser().parse_args(argv)
    logs.setup(args.log_level, args.log_format)
    if args.command == "demo":

        def report(text: str) -> None:
            print(text, flush=True)

        run_loop(
            lambda: run_demo(
                report, keep_running=not args.once, port=args.port, admin_port=args.admin_port
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
    if args.command == "spool":
        return _spool_command(args, snapshot)
    run_loop(lambda: App(snapshot, config_path=args.config).serve())
    return 0
