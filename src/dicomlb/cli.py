"""The `dicomlb` command: run | check | schema | demo | spool | route | hash-password."""

from __future__ import annotations

import argparse
import getpass
import json
import sys
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from importlib.machinery import EXTENSION_SUFFIXES
from typing import Any, cast

from dicomlb import __version__, dryrun, logs
from dicomlb.app import App, run_loop
from dicomlb.config import (
    ConfigError,
    config_schema,
    describe,
    hash_secret,
    load_snapshot,
    markdown_reference,
)
from dicomlb.demo import run_demo
from dicomlb.providers.api import ApiStateError
from dicomlb.snapshot import MessageFacts, Snapshot
from dicomlb.spool import ops
from dicomlb.spool.state import ItemState
from dicomlb.spool.store import SpoolBusy
from dicomlb.supervisor import Supervisor, ports_in_use, worker_command
from dicomlb.workers import parse_worker, stranded, stranded_message, worker_directory

# `dicomlb run` exit statuses beyond 0 (stopped) and 2 (invalid configuration).
SPOOL_BUSY = 3  # the spool directory is owned by another running dicomlb


def version_line(version: str, module_files: Iterable[str]) -> str:
    """What `dicomlb --version` says: the version and which build runs. A module mypyc
    compiled (setup.py, DICOMLB_COMPILE=1) was loaded from an extension module."""
    compiled = sum(1 for file in module_files if file.endswith(tuple(EXTENSION_SUFFIXES)))
    if compiled == 0:
        return f"dicomlb {version} (pure Python)"
    return f"dicomlb {version} (compiled with mypyc: {compiled} module{'s' * (compiled > 1)})"


def loaded_module_files() -> list[str]:
    """The files dicomlb's loaded modules came from (this module imports all of them)."""
    return [
        getattr(module, "__file__", None) or ""
        for name, module in list(sys.modules.items())
        if name.split(".", 1)[0] == "dicomlb"
    ]


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicomlb", description="Load balancer and router for DICOM networks."
    )
    parser.add_argument(
        "--version", action="version", version=version_line(__version__, loaded_module_files())
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="the least severe level logged",
    )
    parser.add_argument(
        "--log-format",
        default="plain",
        choices=["plain", "json"],
        help="`event key=value` lines, or one JSON object per line",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="serve with a configuration file")
    run.add_argument("-c", "--config", required=True, help="YAML configuration file")
    run.add_argument(
        "--worker",
        metavar="K/N",
        help="run as worker K of N (with `workers: N` the supervisor starts each so)",
    )
    check = commands.add_parser("check", help="validate a configuration file and show it resolved")
    check.add_argument("-c", "--config", required=True, help="YAML configuration file")
    schema = commands.add_parser(
        "schema", help="print the JSON Schema of the configuration file (for editors)"
    )
    schema.add_argument(
        "--markdown", action="store_true", help="print the configuration reference instead"
    )
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
    _route_parser(commands)
    return parser


def _spool_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    spool = commands.add_parser("spool", help="see and act on the spool's queued and dead items")
    config = argparse.ArgumentParser(add_help=False)
    config.add_argument("-c", "--config", required=True, help="YAML configuration file")
    config.add_argument(
        "--worker",
        type=int,
        metavar="K",
        help="worker K's spool (`<directory>/worker-K`): needed with `workers` above 1",
    )
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
    show.add_argument("id", type=int, help="item id")
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
    directory = snapshot.spool.directory
    if args.worker is not None and args.worker < 0:
        print(f"dicomlb: --worker {args.worker}: give a worker number from 0", file=sys.stderr)
        return 2
    if snapshot.workers > 1 and args.worker is None:
        print(
            f"dicomlb: with workers: {snapshot.workers} each worker has its own spool "
            f"directory; give --worker K (0 to {snapshot.workers - 1})",
            file=sys.stderr,
        )
        return 2
    if args.worker is not None:  # also a directory left by an earlier count of workers
        directory = worker_directory(directory, args.worker)
    try:
        with ops.opened(directory) as store:
            if args.action == "ls":
                states = [ItemState(s) for s in args.state or ()]
                items = ops.list_items(
                    store, states=states, backend=args.backend, study=args.study, limit=args.limit
                )
                total = ops.summary(store)
                counts = ", ".join(f"{n} {state}" for state, n in sorted(total.by_state.items()))
                print(f"spool {directory}: {counts or 'empty'}; {total.bytes} bytes")
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


def _route_parser(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    route = commands.add_parser(
        "route",
        help="show where DICOM files or HTTP requests would go, without sending anything",
        description="Dry-run routing: the facts read, the route, pool and backend (and the "
        "order backends would be tried in) for each DICOM Part-10 file sent as a C-STORE, or "
        "for each --http request. Every backend counts as up unless --admin is given. Exit "
        "status 1 when something would be refused, 2 on an error.",
    )
    route.add_argument("-c", "--config", required=True, help="YAML configuration file")
    route.add_argument("files", nargs="*", metavar="FILE", help="DICOM Part-10 files")
    route.add_argument(
        "--http",
        action="append",
        default=[],
        metavar="'METHOD URL'",
        help="an HTTP request, e.g. 'GET https://pacs.example.org/dicom-web/studies' "
        "(repeatable; the method defaults to GET)",
    )
    route.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'Name: value'",
        help="a header field of the --http requests (repeatable)",
    )
    route.add_argument("--calling-aet", default="", help="the client's AE title")
    route.add_argument(
        "--called-aet", help="the AE title the client calls (default: the DICOM listener's)"
    )
    route.add_argument("--peer", default="", help="the client's IP address")
    route.add_argument(
        "--admin",
        metavar="URL",
        help="take backend states from this running instance's admin API, e.g. "
        "http://127.0.0.1:8404",
    )
    route.add_argument("--token", help="bearer token for --admin")
    route.add_argument("--json", action="store_true", help="one JSON document, for scripts")


def _admin_states(url: str, token: str | None) -> dict[str, dryrun.BackendStatus]:
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/backends")
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    with urllib.request.urlopen(request, timeout=10) as answer:
        return dryrun.states_from_admin(json.load(answer))


def _chunks(path: str) -> Iterator[bytes]:
    with open(path, "rb") as file:
        while chunk := file.read(64 * 1024):
            yield chunk


def _route_command(args: argparse.Namespace, snapshot: Snapshot) -> int:
    if not args.files and not args.http:
        print("dicomlb: give DICOM files or --http 'METHOD URL'", file=sys.stderr)
        return 2
    states = None
    if args.admin:
        try:
            states = _admin_states(args.admin, args.token)
        except (OSError, ValueError) as err:  # URLError, HTTPError, bad JSON, DryRunError
            print(f"dicomlb: admin API at {args.admin}: {err}", file=sys.stderr)
            return 2
    headers = []
    for field in args.header:
        name, colon, value = field.partition(":")
        if not colon or not name.strip():
            print(f"dicomlb: header {field!r} is not 'Name: value'", file=sys.stderr)
            return 2
        headers.append((name.strip(), value.strip()))
    called = args.called_aet
    if called is None:
        called = snapshot.dicom.ae_title if snapshot.dicom is not None else ""
    errors = refused = 0
    files: list[dict[str, Any]] = []
    texts: list[str] = []
    for path in args.files:
        try:
            scanned = dryrun.scan_part10(_chunks(path), snapshot.wanted_tags)
        except (OSError, dryrun.DryRunError) as err:
            errors += 1
            print(f"dicomlb: {path}: {err}", file=sys.stderr)
            files.append({"file": path, "error": str(err)})
            continue
        facts = MessageFacts(
            calling_aet=args.calling_aet,
            called_aet=called,
            peer_ip=args.peer,
            command="C-STORE",
            sop_class_uid=scanned.sop_class_uid,
            tags=scanned.tags,
        )
        decision = dryrun.route_dicom(snapshot, facts, limited=scanned.limited, states=states)
        refused += decision.status is not None
        files.append(dryrun.dicom_json(path, scanned, decision))
        texts.append(dryrun.describe_dicom(path, scanned, decision))
    requests: list[dict[str, Any]] = []
    for line in args.http:
        method, _, url = line.strip().partition(" ")
        if not url.strip():
            method, url = "GET", method
        try:
            answer = dryrun.route_http(
                snapshot, method, url.strip(), headers, client_ip=args.peer, states=states
            )
        except dryrun.DryRunError as err:
            errors += 1
            print(f"dicomlb: {line}: {err}", file=sys.stderr)
            requests.append({"request": line, "error": str(err)})
            continue
        refused += answer.status is not None
        requests.append(dryrun.http_json(answer))
        texts.append(dryrun.describe_http(answer))
    if args.json:
        states_from = args.admin or "assumed: every backend up"
        print(json.dumps({"states": states_from, "files": files, "requests": requests}, indent=2))
    else:
        print(f"backend states: {args.admin or 'assumed: every backend up'}")
        for text in texts:
            print(f"\n{text}")
    return 2 if errors else 1 if refused else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `dicomlb` console script."""
    args = parser().parse_args(argv)
    worker = None
    if args.command == "run" and args.worker is not None:
        try:
            worker = parse_worker(args.worker)
        except ValueError as err:
            print(f"dicomlb: {err}", file=sys.stderr)
            return 2
    logs.setup(args.log_level, args.log_format, str(worker) if worker else None)
    if args.command == "demo":

        def report(text: str) -> None:
            print(text, flush=True)

        run_loop(
            lambda: run_demo(
                report, keep_running=not args.once, port=args.port, admin_port=args.admin_port
            )
        )
        return 0
    if args.command == "schema":
        if args.markdown:
            print(markdown_reference(), end="")
        else:
            print(json.dumps(config_schema(), indent=2))
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
        snapshot = load_snapshot(args.config, workers=worker.count if worker else None)
    except ConfigError as err:
        print(f"dicomlb: invalid configuration\n{err}", file=sys.stderr)
        return 2
    if args.command == "check":
        print(describe(snapshot))
        for warning in snapshot.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return 0
    if args.command == "spool":
        return _spool_command(args, snapshot)
    if args.command == "route":
        return _route_command(args, snapshot)
    if worker is None:
        if snapshot.spool is not None:
            parts = stranded(ops.holding(snapshot.spool.directory), snapshot.workers)
            if parts:
                message = stranded_message(snapshot.spool.directory, parts, snapshot.workers)
                print(f"dicomlb: {message}", file=sys.stderr)
                return 2
        if snapshot.workers > 1:
            binds = [(c.host, c.port) for c in (snapshot.dicom, snapshot.http) if c is not None]
            taken = ports_in_use(binds)
            if taken:
                print(
                    f"dicomlb: cannot listen on {', '.join(taken)}; is another dicomlb running?",
                    file=sys.stderr,
                )
                return 2
            command = worker_command(args.config, args.log_level, args.log_format)
            supervisor = Supervisor(command, snapshot.workers, snapshot.graceful_timeout)
            return cast(int, run_loop(supervisor.run))
    try:
        app = App(snapshot, config_path=args.config, worker=worker)
    except ApiStateError as err:
        print(f"dicomlb: {err}", file=sys.stderr)
        return 2
    try:
        run_loop(app.serve)
    except SpoolBusy as err:
        print(f"dicomlb: {err}", file=sys.stderr)
        return SPOOL_BUSY
    return 0
