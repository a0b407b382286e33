"""The ``docraft`` command line: up, node, dispatcher, load, schema, user, token, ..."""

from __future__ import annotations

import argparse
import errno
import getpass
import socket
import sys
import time
from pathlib import Path

from models.errors import DocraftError
from node import logs
from node.certs import VALID_DAYS, make_certificates
from node.config import ClusterConfig, ConfigError, load_config
from node.listen_check import Listener, dispatcher_listeners, problems, replica_listeners
from node.rebalance_plan import DEFAULT_MAX_DOCS
from node.signing import internal_key
from node.tls import TlsUnusable
from query.app import App, load_app
from query.schema import FORMATS, export_text

DEFAULT_APP = "examples.people"
DEFAULT_URL = "http://127.0.0.1:8000"


def _app(module: str | None, fallback: str = DEFAULT_APP) -> App:
    name = module or fallback
    try:
        return load_app(name)
    except (ImportError, ValueError) as exc:
        raise SystemExit(f"docraft: cannot load app module {name!r}: {exc}") from None


def _logging(name: str, log_format: str, shard: str | None = None) -> None:
    """Log to standard error as process ``name`` (a replica's id is also its ``replica`` field)."""
    logs.configure(name, log_format, shard=shard, replica=name if shard is not None else None)


def _can_listen(process: str, listeners: list[Listener]) -> None:
    """Exit with one line naming the cluster-file entry whose address this host does not own."""
    for problem in problems(listeners, only=(errno.EADDRNOTAVAIL,)):
        raise SystemExit(f"docraft {process}: {problem}")


def cmd_up(args: argparse.Namespace) -> int:
    from node.launcher import Layout, up

    layout = Layout(shards=args.shards, replicas=args.replicas, port=args.port, raft_port=args.raft_port)
    extra = ("--unsafe-fault-injection",) if args.unsafe_fault_injection else ()
    app = _app(args.app)
    return up(Path(args.data_dir), app, layout, not args.no_sample, extra, tls=args.tls, log_format=args.log_format)


def cmd_node(args: argparse.Namespace) -> int:
    from node.servers import run_replica

    config = load_config(Path(args.config))
    replica = config.replica(args.replica)
    _can_listen(f"node {replica.id}", replica_listeners(replica))
    _logging(replica.id, args.log_format, replica.shard)
    run_replica(
        config,
        args.replica,
        _app(args.app, config.app),
        fault_injection=args.unsafe_fault_injection,
        bootstrap=args.bootstrap,
    )
    return 0


def cmd_dispatcher(args: argparse.Namespace) -> int:
    from node.servers import run_dispatcher

    config = load_config(Path(args.config))
    me = config.dispatcher(args.id)
    _can_listen(f"dispatcher {me.id}", dispatcher_listeners(me))
    _logging(me.id, args.log_format)
    run_dispatcher(config, args.id, _app(args.app, config.app))
    return 0


def cmd_load(args: argparse.Namespace) -> int:
    from node.loader import LoadStopped, load_csv

    app = _app(args.app)
    try:
        model = app.model(args.model)
    except DocraftError as exc:
        print(f"docraft load: {exc.message}", file=sys.stderr)
        return 2
    try:
        token = Path(args.token_file).read_text(encoding="utf-8").strip() if args.token_file else None
        ca = Path(args.ca) if args.ca else None
        report = load_csv(Path(args.file), model, args.url, args.batch_size, token=token, ca=ca)
    except (OSError, LoadStopped) as exc:
        print(f"docraft load: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0 if not report.rejected else 1


def cmd_schema(args: argparse.Namespace) -> int:
    from node.routes import dispatcher_routes

    try:
        text = export_text(_app(args.app), args.format, dispatcher_routes())
    except ValueError as exc:
        print(f"docraft schema: {exc}", file=sys.stderr)
        return 1
    if args.output is None:
        sys.stdout.write(text)
        return 0
    try:
        Path(args.output).write_text(text, encoding="utf-8")
    except OSError as exc:
        print(f"docraft schema: {exc}", file=sys.stderr)
        return 2
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from node.membership import repair

    return repair(load_config(Path(args.config)), args.replica, args.timeout)


def cmd_replica(args: argparse.Namespace) -> int:
    from node.membership import add, remove

    flow = add if args.action == "add" else remove
    config = load_config(Path(args.config))
    code = flow(config, args.replica, args.timeout)
    if code == 0:
        _audit_cli(config.path, f"replica {args.action} {args.replica}")
    return code


def cmd_accept_code(args: argparse.Namespace) -> int:
    from node.admin import accept_code

    config = load_config(Path(args.config))
    url = _dispatcher_url(args.url, config)
    return accept_code(_app(args.app, config.app), url, internal_key(config.secret), config.ca)


def cmd_migrate(args: argparse.Namespace) -> int:
    from node.admin import migrate

    config = load_config(Path(args.config)) if args.config else None
    key, ca = (internal_key(config.secret), config.ca) if config is not None else (None, None)
    return migrate(_app(args.app), args.to, args.model, args.dry_run, _dispatcher_url(args.url, config), key, ca)


def cmd_status(args: argparse.Namespace) -> int:
    from node.admin import status

    return status(load_config(Path(args.config)), args.json)


def cmd_backup(args: argparse.Namespace) -> int:
    from node.backup import backup

    config = load_config(Path(args.config))
    return backup(config, _app(args.app, config.app), Path(args.output), args.timeout)


def cmd_restore(args: argparse.Namespace) -> int:
    from node.restore import restore

    config = Path(args.config) if args.config else None
    return restore(Path(args.archive), Path(args.data_dir), config, _app, args.app)


def cmd_certs(args: argparse.Namespace) -> int:
    config = load_config(Path(args.config))
    out = Path(args.out) if args.out else config.tls.dir if config.tls is not None else None
    if out is None:
        print("docraft certs: give --out DIR (the cluster file has no [tls] dir)", file=sys.stderr)
        return 2
    try:
        written = make_certificates(config, out, args.days)
    except (OSError, ValueError) as exc:
        print(f"docraft certs: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {len(written)} files to {out}: the CA (ca.pem; ca.key certifies anything, keep it offline)")
    print("and a certificate and key (ID.pem, ID.key; keys 0600) for each replica and dispatcher")
    if config.tls is None or config.tls.dir.resolve() != out.resolve():
        print(f'serve HTTPS with them: add to {config.path}\n[tls]\ndir = "{out.resolve()}"')
    return 0


def cmd_user(args: argparse.Namespace) -> int:
    from node.users import UserError, add_user, list_users, remove_user, rotate_token

    path = Path(args.config)
    try:
        if args.action == "list":
            for user in list_users(path):
                print(f"{user.name}\t{user.role}")
            return 0
        if args.action == "add":
            token = add_user(path, args.user, args.role)
            print(token)
            done = f"user {args.user} (role {args.role}) added"
        elif args.action == "remove":
            removed = remove_user(path, args.user)
            done = f"user {removed.name} (role {removed.role}) removed; its token no longer works"
        else:
            token = rotate_token(path, args.user)
            print(token)
            done = f"user {args.user} has a new token; the old one no longer works"
    except UserError as exc:
        print(f"docraft {args.command}: {exc}", file=sys.stderr)
        return 1
    if args.action in ("add", "rotate"):
        done += " (the token above is shown only now: docraft keeps only its SHA-256)"
    print(done, file=sys.stderr)
    _audit_cli(path, f"{args.command} {args.action} {args.user}")
    return 0


def cmd_rebalance(args: argparse.Namespace) -> int:
    from node.rebalance_cli import Request, rebalance

    config = load_config(Path(args.config))
    drain = getattr(args, "shard", None)
    if drain is None and (args.move is None) != (args.to is None):
        print("docraft rebalance: --move SLOTS and --to SHARD go together", file=sys.stderr)
        return 2
    if args.max_docs < 1:
        print("docraft rebalance: --max-docs must be at least 1", file=sys.stderr)
        return 2
    request = Request(
        dry_run=args.dry_run,
        abort=getattr(args, "abort", False),
        slots=getattr(args, "move", None),
        to=getattr(args, "to", None),
        drain=drain,
        max_docs=args.max_docs,
    )
    code = rebalance(config, _app(args.app, config.app), request)
    if drain is not None and code == 0 and not args.dry_run:
        print(f"shard {drain} holds no slots now: stop its replicas, then remove it from {config.path}")
    return code


def _audit_cli(config_path: Path, what: str) -> None:
    """Record an admin action of the CLI in the audit log next to the cluster file."""
    from node.audit import AUDIT_NAME, AuditLog

    audit = AuditLog(config_path.parent / AUDIT_NAME, "cli")
    audit.record(time.time(), getpass.getuser(), what, f"cli@{socket.gethostname()}", "ok")


def _dispatcher_url(url: str | None, config: ClusterConfig | None) -> str:
    """``--url`` if given, else the cluster file's first dispatcher, else the local default."""
    if url:
        return url
    return config.dispatcher(None).http_url if config is not None else DEFAULT_URL


def _log_format(command: argparse.ArgumentParser, whose: str = "") -> None:
    command.add_argument(
        "--log-format",
        choices=logs.FORMATS,
        default="text",
        help=f"log lines{whose}: text, or one JSON object per line with request id, shard and replica",
    )


def parser() -> argparse.ArgumentParser:

    top = argparse.ArgumentParser(prog="docraft", description="A sharded, Raft-replicated document database.")
    commands = top.add_subparsers(dest="command", required=True)

    up = commands.add_parser("up", help="run a local cluster with sample data until Ctrl-C")
    up.add_argument("--data-dir", default="./docraft-data", help="cluster file and replica data (reused)")
    up.add_argument("--app", help=f"app module (default {DEFAULT_APP})")
    up.add_argument("--shards", type=int, default=2, help="replica groups of a new cluster (default 2)")
    up.add_argument("--replicas", type=int, default=3, help="replicas per group of a new cluster (default 3)")
    up.add_argument("--port", type=int, default=8000, help="dispatcher port; replicas use port+100 upward")
    up.add_argument("--raft-port", type=int, default=7100, help="first Raft port")
    up.add_argument("--no-sample", action="store_true", help="do not load the app's sample data")
    up.add_argument("--unsafe-fault-injection", action="store_true", help="replicas accept /_admin/fault/*")
    up.add_argument("--tls", action="store_true", help="serve HTTPS, with a CA and certificates in DATA_DIR/tls")
    _log_format(up, " (and its processes')")
    up.set_defaults(run=cmd_up)

    node = commands.add_parser("node", help="run one replica process from a cluster file")
    node.add_argument("--config", required=True, help="the cluster file")
    node.add_argument("--replica", required=True, help="replica id in the cluster file")
    _log_format(node)
    node.add_argument("--app", help="app module (default: the cluster file's)")
    node.add_argument(
        "--unsafe-fault-injection", action="store_true", help="accept POST /_admin/fault/corrupt (tests only)"
    )
    node.add_argument(
        "--bootstrap",
        action="store_true",
        help="the first start of a new group (a new cluster, a new shard): with an empty data directory, "
        "start as a voter of the cluster file's list; without it, an empty replica joins as a learner",
    )
    node.set_defaults(run=cmd_node)

    repair = commands.add_parser(
        "repair", help="take a replica out of its group, discard its state, add it back once it has copied the group's"
    )
    repair.add_argument("--config", required=True, help="the cluster file")
    repair.add_argument("--replica", required=True, help="replica id in the cluster file")
    repair.add_argument("--timeout", type=float, default=120.0, help="seconds to wait until its digest agrees")
    repair.set_defaults(run=cmd_repair)

    replica = commands.add_parser("replica", help="add a replica to its group, or remove one")
    replica_actions = replica.add_subparsers(dest="action", required=True)
    replica_add = replica_actions.add_parser(
        "add", help="make a running replica (started with docraft node) a voter of its group, once it caught up"
    )
    replica_remove = replica_actions.add_parser(
        "remove", help="take a replica out of its group (handing leadership over first) and stop it for good"
    )
    for action in (replica_add, replica_remove):
        action.add_argument("--config", required=True, help="the cluster file")
        action.add_argument("--replica", required=True, help="replica id in the cluster file")
        action.add_argument("--timeout", type=float, default=120.0, help="seconds the whole change may take")
    replica.set_defaults(run=cmd_replica)

    accept = commands.add_parser("accept-code", help="record the app code of --app as the cluster's (an upgrade)")
    accept.add_argument("--config", required=True, help="the cluster file")
    accept.add_argument("--app", help="app module (default: the cluster file's)")
    accept.add_argument("--url", help="dispatcher URL (default: the cluster file's first dispatcher)")
    accept.set_defaults(run=cmd_accept_code)

    migrate = commands.add_parser("migrate", help="migrate stored documents to the app's model version")
    migrate.add_argument("--app", help=f"app module with the new model versions (default {DEFAULT_APP})")
    migrate.add_argument("--to", type=int, required=True, help="target version")
    migrate.add_argument("--model", help="only this model (default: every model of version --to)")
    migrate.add_argument("--dry-run", action="store_true", help="report what would change; change nothing")
    migrate.add_argument("--config", help="cluster file (its first dispatcher is used)")
    migrate.add_argument("--url", help="dispatcher URL (default http://127.0.0.1:8000)")
    migrate.set_defaults(run=cmd_migrate)

    status = commands.add_parser("status", help="the slot map, each shard's ranges and replicas, moves in progress")
    status.add_argument("--config", required=True, help="the cluster file")
    status.add_argument("--json", action="store_true", help="print GET /_admin/cluster's JSON instead of tables")
    status.set_defaults(run=cmd_status)

    backup = commands.add_parser(
        "backup", help="copy every shard of a running cluster, each at one Raft index, into a .tar.gz"
    )
    backup.add_argument("--config", required=True, help="the cluster file")
    backup.add_argument("-o", "--output", required=True, metavar="FILE", help="the archive to write (0600)")
    backup.add_argument("--app", help="the cluster's app module (default: the cluster file's)")
    backup.add_argument("--timeout", type=float, default=600.0, help="seconds the whole backup may take")
    backup.set_defaults(run=cmd_backup)

    restore = commands.add_parser("restore", help="make a new cluster's data directories from a backup")
    restore.add_argument("archive", help="the archive docraft backup wrote")
    restore.add_argument(
        "--data-dir",
        required=True,
        help="the new cluster's directory: every replica's data directory must lie in it, empty",
    )
    restore.add_argument(
        "--config",
        help="the new cluster's file, listing the backup's shards (default: write DATA_DIR/cluster.toml with "
        "the backup's shards and addresses, and a new secret)",
    )
    restore.add_argument(
        "--app", help="app module (default: the cluster file's); it must be the code the backup was taken with"
    )
    restore.set_defaults(run=cmd_restore)

    dispatcher = commands.add_parser("dispatcher", help="run one dispatcher process from a cluster file")
    dispatcher.add_argument("--config", required=True, help="the cluster file")
    _log_format(dispatcher)
    dispatcher.add_argument("--id", help="dispatcher id in the cluster file (default: the first)")
    dispatcher.add_argument("--app", help="app module (default: the cluster file's)")
    dispatcher.set_defaults(run=cmd_dispatcher)

    load = commands.add_parser("load", help="stream a CSV file into a running cluster")
    load.add_argument("file")
    load.add_argument("--model", required=True, help="the app's model the rows are documents of")
    load.add_argument("--url", default=DEFAULT_URL, help=f"a dispatcher or replica URL (default {DEFAULT_URL})")
    load.add_argument("--app", help=f"app module (default {DEFAULT_APP})")
    load.add_argument(
        "--batch-size",
        type=int,
        default=1000,
        help="rows per bulk request (default 1000; at most the cluster's [limits] bulk_documents)",
    )
    load.add_argument("--token-file", help="send the token in this file (docraft-data/admin.token, say)")
    load.add_argument("--ca", help="with an https URL: the cluster's CA certificate (docraft-data/tls/ca.pem, say)")
    load.set_defaults(run=cmd_load)

    schema = commands.add_parser(
        "schema", help="export the app's types: TypeScript, JSDoc, JSON Schema, OpenAPI or a Python client"
    )
    schema.add_argument("--app", help=f"app module (default {DEFAULT_APP})")
    schema.add_argument("--format", required=True, choices=list(FORMATS))
    schema.add_argument("-o", "--output", metavar="FILE", help="write to FILE instead of standard output")
    schema.set_defaults(run=cmd_schema)

    certs = commands.add_parser("certs", help="make a CA and a TLS certificate for each replica and dispatcher")
    certs.add_argument("--config", required=True, help="the cluster file")
    certs.add_argument("--out", help="directory to write them to (default: the cluster file's [tls] dir)")
    certs.add_argument("--days", type=int, default=VALID_DAYS, help="how long members' certificates are valid")
    certs.set_defaults(run=cmd_certs)

    user = commands.add_parser("user", help="add, remove or list the users of a cluster file")
    user_actions = user.add_subparsers(dest="action", required=True)
    add = user_actions.add_parser("add", help="add a user with a role; prints its new token once")
    add.add_argument("--user", required=True, help="the user's name")
    add.add_argument("--role", required=True, help="admin, reader, writer or a role of [auth.roles]")
    remove = user_actions.add_parser("remove", help="remove a user; its token stops working")
    remove.add_argument("--user", required=True)
    listing = user_actions.add_parser("list", help="print each user's name and role")
    for action in (add, remove, listing):
        action.add_argument("--config", required=True, help="the cluster file")
    user.set_defaults(run=cmd_user)

    token = commands.add_parser("token", help="give a user a new token")
    token_actions = token.add_subparsers(dest="action", required=True)
    rotate = token_actions.add_parser("rotate", help="replace a user's token; prints the new one once")
    rotate.add_argument("--config", required=True, help="the cluster file")
    rotate.add_argument("--user", required=True)
    token.set_defaults(run=cmd_user)

    rebalance = commands.add_parser(
        "rebalance", help="resume unfinished slot moves, then move slots until every shard holds an even share"
    )
    rebalance.add_argument("--move", metavar="SLOTS", help="move only these slots (100-299,4000) ...")
    rebalance.add_argument("--to", metavar="SHARD", help="... to this shard")
    rebalance.add_argument("--abort", action="store_true", help="roll unfinished moves back instead, and stop")
    shard = commands.add_parser("shard", help="act on a replica group")
    shard_actions = shard.add_subparsers(dest="action", required=True)
    drain = shard_actions.add_parser("drain", help="move every slot off a shard (then stop and remove it)")
    drain.add_argument("--shard", required=True, help="the shard to empty")
    for moving in (rebalance, drain):
        moving.add_argument("--config", required=True, help="the cluster file")
        moving.add_argument("--app", help="app module (default: the cluster file's)")
        moving.add_argument("--dry-run", action="store_true", help="print unfinished moves and the plan; move nothing")
        moving.add_argument(
            "--max-docs",
            type=int,
            default=DEFAULT_MAX_DOCS,
            help="documents per move at most (writes to a moving range wait)",
        )
        moving.set_defaults(run=cmd_rebalance)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        code: int = args.run(args)
    except (ConfigError, TlsUnusable) as exc:
        print(f"docraft: {exc}", file=sys.stderr)
        return 2
    return code


if __name__ == "__main__":
    sys.exit(main())
