"""The route table: every HTTP route docraft serves, declared once.

A ``Route`` names its path, handler, audience, the permission it needs, its
methods, the servers that serve it and what it does. The servers' Tornado
rules (``rules``), the OpenAPI document's fixed paths (``dispatcher_routes``),
README's HTTP API table (``markdown_table``; ``python -m node.routes`` prints
it) and the permission tests are built from ``ROUTES``. Audiences:

- ``client``: applications, with a token or anonymously; the route needs a
  permission (for ``/{endpoint}``, the one the endpoint declares) or is public.
- ``admin``: operators: a token whose role grants ``admin``, or a cluster member.
- ``internal``: cluster members only (requests signed with the cluster's key,
  ``node.signing``): routers, the integrity monitor, docraft's CLI with the cluster file.

Any route also admits a cluster member's signed request (see ``node.auth.Gate``).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from node.admin_page import AdminPageHandler, AdminScriptHandler, AdminStyleHandler
from node.auth import Gate
from node.handlers import (
    AlertsHandler,
    BulkInsertHandler,
    ClusterHandler,
    CorruptHandler,
    DigestHandler,
    EndpointHandler,
    FingerprintHandler,
    JSONHandler,
    MembershipHandler,
    MigrateHandler,
    OpenAPIHandler,
    PromoteHandler,
    RepairHandler,
    RetireHandler,
    ShardReadHandler,
    ShardSlotsHandler,
    ShardStatusHandler,
    ShardWriteHandler,
    TransferHandler,
)
from node.health import LivezHandler, ReadyzHandler
from node.metrics import MetricsHandler
from node.shard_backup import ShardBackupHandler
from query.permissions import Access, Permission

Audience = Literal["client", "admin", "internal"]
Server = Literal["dispatcher", "replica"]
Rule = tuple[str, type[JSONHandler], dict[str, Any]]

BOTH: tuple[Server, ...] = ("dispatcher", "replica")
_PARAM = re.compile(r"\{[A-Za-z_]+\}")
_NAME = r"([A-Za-z_][A-Za-z0-9_]*)"


@dataclass(frozen=True)
class Route:
    """One route. ``path`` is as documented (``/_bulk/{Model}``); a ``{name}`` part matches one identifier.

    ``unsafe`` routes are served only by replicas started with
    ``--unsafe-fault-injection``. ``page`` routes serve the admin page's files
    (``node.admin_page``) to browsers, not JSON: the OpenAPI document leaves
    them out. Raises ``ValueError`` when the audience and
    the permission disagree: internal routes need ``Access.MEMBERS``, admin
    routes ``Permission.ADMIN``, and client routes anything else.
    """

    path: str
    handler: type[JSONHandler]
    audience: Audience
    permission: Permission | Access
    methods: tuple[str, ...]
    servers: tuple[Server, ...]
    summary: str
    unsafe: bool = False
    page: bool = False

    def __post_init__(self) -> None:
        expected = {"internal": Access.MEMBERS, "admin": Permission.ADMIN}.get(self.audience)
        if expected is not None and self.permission is not expected:
            raise ValueError(f"{self.path}: an {self.audience} route needs {expected.value}, not {self.permission}")
        if expected is None and self.permission is Access.MEMBERS:
            raise ValueError(f"{self.path}: a route for cluster members only is internal, not {self.audience}")

    @property
    def pattern(self) -> str:
        """The Tornado regular expression of ``path``."""
        literals = [re.escape(part) for part in _PARAM.split(self.path)]
        return _NAME.join(literals)

    @property
    def fixed(self) -> bool:
        """Whether ``path`` has no ``{name}`` part."""
        return _PARAM.search(self.path) is None


ROUTES: tuple[Route, ...] = (
    Route(
        "/_admin/cluster",
        ClusterHandler,
        "client",
        Permission.STATUS,
        ("GET",),
        BOTH,
        "the slot map's epoch; each shard's slot ranges, documents, leader, replicas (role, voter or learner, "
        "lag); slot moves in progress",
    ),
    Route(
        "/_admin/alerts",
        AlertsHandler,
        "client",
        Permission.STATUS,
        ("GET",),
        ("dispatcher",),
        "active and recent integrity alerts",
    ),
    Route(
        "/metrics",
        MetricsHandler,
        "client",
        Permission.STATUS,
        ("GET",),
        BOTH,
        "this process's Prometheus metrics, text format (README: Metrics)",
    ),
    Route(
        "/livez",
        LivezHandler,
        "client",
        Access.PUBLIC,
        ("GET",),
        BOTH,
        "200 while the process serves (README: Health checks); it holds no data",
    ),
    Route(
        "/readyz",
        ReadyzHandler,
        "client",
        Access.PUBLIC,
        ("GET",),
        BOTH,
        "200 when the process is ready, else 503 `not_ready`, with its checks and which failed "
        "(README: Health checks); it holds no data",
    ),
    Route(
        "/_schema/openapi.json",
        OpenAPIHandler,
        "client",
        Access.PUBLIC,
        ("GET",),
        ("dispatcher",),
        "the OpenAPI 3.1 document of this API (what `docraft schema --format openapi` prints); it holds no data",
    ),
    Route(
        "/_admin/",
        AdminPageHandler,
        "client",
        Access.PUBLIC,
        ("GET",),
        ("dispatcher",),
        "the admin page (HTML): shards, replicas, alerts and throughput from `/_admin/cluster` and `/_admin/alerts`, "
        "read with the token it asks for; it holds no data",
        page=True,
    ),
    Route(
        "/_admin/page.js",
        AdminScriptHandler,
        "client",
        Access.PUBLIC,
        ("GET",),
        ("dispatcher",),
        "the admin page's script",
        page=True,
    ),
    Route(
        "/_admin/page.css",
        AdminStyleHandler,
        "client",
        Access.PUBLIC,
        ("GET",),
        ("dispatcher",),
        "the admin page's style sheet",
        page=True,
    ),
    Route(
        "/_admin/fingerprint",
        FingerprintHandler,
        "admin",
        Permission.ADMIN,
        ("POST",),
        BOTH,
        '`{"fingerprint": F}` records new app code on every shard (`docraft accept-code`)',
    ),
    Route(
        "/_admin/migrate",
        MigrateHandler,
        "admin",
        Permission.ADMIN,
        ("POST",),
        BOTH,
        '`{"model", "to", "dry_run"}` migrates a model on every shard (`docraft migrate`)',
    ),
    Route(
        "/_admin/repair",
        RepairHandler,
        "admin",
        Permission.ADMIN,
        ("POST",),
        ("replica",),
        '`{"voters": [...]}`: a replica its group removed discards its state and restarts as a learner '
        "(`docraft repair`: remove, this, add)",
    ),
    Route(
        "/_admin/membership",
        MembershipHandler,
        "internal",
        Access.MEMBERS,
        ("POST",),
        ("replica",),
        '`{"op": "add"|"remove", "raft": ADDRESS}`: the leader checks and commits one change of its voters '
        "(`docraft replica add|remove`)",
    ),
    Route(
        "/_admin/transfer",
        TransferHandler,
        "internal",
        Access.MEMBERS,
        ("POST",),
        ("replica",),
        '`{"to": ADDRESS|null}`: give up leadership: a leader hands it to a caught-up voter, then the replica '
        "stays out of elections for a while (`docraft replica remove`)",
    ),
    Route(
        "/_admin/promote",
        PromoteHandler,
        "internal",
        Access.MEMBERS,
        ("POST",),
        ("replica",),
        "a caught-up learner restarts as a member its leader may add (`docraft replica add`)",
    ),
    Route(
        "/_admin/retire",
        RetireHandler,
        "internal",
        Access.MEMBERS,
        ("POST",),
        ("replica",),
        '`{"voters": [...]}`: a replica its group removed stops for good (`docraft replica remove`)',
    ),
    Route(
        "/_admin/fault/corrupt",
        CorruptHandler,
        "admin",
        Permission.ADMIN,
        ("POST",),
        ("replica",),
        "change local state outside Raft: replicas started with `--unsafe-fault-injection` only (404 otherwise)",
        unsafe=True,
    ),
    Route(
        "/_admin/digest",
        DigestHandler,
        "internal",
        Access.MEMBERS,
        ("GET",),
        ("replica",),
        "digest, recent checkpoints `[index, digest]`, code fingerprints (the integrity monitor)",
    ),
    Route(
        "/_shard/write",
        ShardWriteHandler,
        "internal",
        Access.MEMBERS,
        ("POST",),
        ("replica",),
        "propose a command on this replica (routers)",
    ),
    Route(
        "/_shard/read",
        ShardReadHandler,
        "internal",
        Access.MEMBERS,
        ("POST",),
        ("replica",),
        "run a read on this replica (routers)",
    ),
    Route(
        "/_shard/status",
        ShardStatusHandler,
        "internal",
        Access.MEMBERS,
        ("GET",),
        ("replica",),
        "this replica's role, term and indexes (routers, the integrity monitor)",
    ),
    Route(
        "/_shard/slots",
        ShardSlotsHandler,
        "internal",
        Access.MEMBERS,
        ("GET",),
        ("replica",),
        "this replica's copy of its group's slot table, moves and members; `?counts=1` adds documents per slot "
        "(routers, `docraft status`, `docraft rebalance`)",
    ),
    Route(
        "/_shard/backup",
        ShardBackupHandler,
        "internal",
        Access.MEMBERS,
        ("GET",),
        ("replica",),
        "the leader's state of its group at one Raft index, after a linearizable barrier: a header line, then "
        "the snapshot, streamed (`docraft backup`)",
    ),
    Route(
        "/_bulk/{Model}",
        BulkInsertHandler,
        "client",
        Permission.BULK,
        ("POST",),
        BOTH,
        '`{"docs": [...]}` → `{"results": [{"ok": key} | {"error": …}]}` (`docraft load`)',
    ),
    # Last: it matches any name, so every fixed route must come before it.
    Route(
        "/{endpoint}",
        EndpointHandler,
        "client",
        Access.ENDPOINT,
        ("GET", "POST"),
        BOTH,
        "an app endpoint; `consistency=stale|leader|linearizable` on reads, `explain=1`",
    ),
)


def rules(server: Server, deps: Mapping[str, Any], gate: Gate, unsafe: bool = False) -> list[Rule]:
    """Tornado rules for ``server``'s routes, in table order; ``unsafe`` adds the fault hook.

    Each handler gets its route and ``gate``, and from ``deps`` the arguments
    its ``initialize`` names. Raises ``KeyError`` naming a dependency ``deps`` lacks.
    """
    served = [r for r in ROUTES if server in r.servers and (unsafe or not r.unsafe)]
    return [(r.pattern, r.handler, {"route": r, "gate": gate, **_dependencies(r.handler, deps)}) for r in served]


def _dependencies(handler: type[JSONHandler], deps: Mapping[str, Any]) -> dict[str, Any]:
    names = [name for name in inspect.signature(handler.initialize).parameters if name != "self"]
    missing = [name for name in names if name not in deps]
    if missing:
        raise KeyError(f"{handler.__name__} needs {', '.join(missing)}")
    return {name: deps[name] for name in names}


def dispatcher_routes() -> list[Route]:
    """The routes a dispatcher serves, as the OpenAPI document describes them (the admin page's are not API)."""
    return [r for r in ROUTES if "dispatcher" in r.servers and not r.page]


_SERVERS = {("dispatcher",): "dispatcher", ("replica",): "replicas", BOTH: "dispatcher, replicas"}
_PERMISSIONS = {
    Access.ENDPOINT: "the endpoint's: `read` for a query, `write` for a mutation, unless it declares another",
    Access.MEMBERS: "cluster members (signed requests)",
    Access.PUBLIC: "none (public)",
    Permission.ADMIN: "`admin`, or a cluster member",
}


def markdown_table() -> str:
    """README's HTTP API table: one row per route of ``ROUTES``, in table order."""
    lines = ["| route | served by | audience | permission | what |", "|---|---|---|---|---|"]
    for route in ROUTES:
        permission = _PERMISSIONS.get(route.permission, f"`{route.permission.value}`")
        lines.append(
            f"| `{'/'.join(route.methods)} {route.path}` | {_SERVERS[route.servers]} | {route.audience} "
            f"| {permission} | {route.summary.replace('|', chr(92) + '|')} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown_table(), end="")
