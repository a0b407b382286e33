"""The two Tornado processes: a shard replica server and a dispatcher.

Both embed the same ``Router``, so any of them accepts any endpoint request.
A replica server also serves the internal ``/_shard/*`` routes, its digest
and repair routes, and drives its own ``Replica``. A dispatcher also runs the
integrity monitor and the stall guard of moves (``node.move_janitor``), and
serves its alerts. Both stop cleanly on SIGTERM or SIGINT.
Their routes come from ``node.routes``'s table, each admitted by the process's
``Gate`` (``node.auth``), which audits to ``audit.log`` in the replica's data
directory or, for a dispatcher, next to the cluster file. Each binds its
``http_listen`` address (a replica's Raft member its ``raft_listen``), and with
``[tls]`` serves HTTPS only, with its own certificate (``node.tls``).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import ssl
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from tornado.web import Application

from consensus.members import Membership, retired_message
from consensus.replica import Replica
from consensus.state_machine import StateMachine
from node.alerts import AlertBook
from node.audit import AUDIT_NAME, AuditLog
from node.auth import Authenticator, Gate
from node.browsers import HostCheck
from node.collectors import watch_dispatcher, watch_replica
from node.config import ClusterConfig, ReplicaConfig
from node.handlers import NotFoundHandler, request_settings
from node.health import DispatcherReadiness, ReplicaReadiness
from node.limits import Limits, http_server
from node.membership import BootstrapRefused, starting_membership
from node.metrics import ProcessMetrics
from node.monitor import IntegrityMonitor
from node.move_janitor import MoveJanitor
from node.private_files import private_dir
from node.router import Router
from node.routes import dispatcher_routes, rules
from node.shard_client import ShardClient
from node.shard_map import ShardMap
from node.shard_service import ShardService
from node.signing import Verifier, internal_key
from node.tls import server_context
from query.app import App
from query.fingerprint import app_fingerprint
from query.schema import openapi_document

log = logging.getLogger("docraft.server")


@dataclass
class Dispatcher:
    application: Application
    router: Router
    monitor: IntegrityMonitor
    alerts: AlertBook
    gate: Gate
    metrics: ProcessMetrics


def gate(config: ClusterConfig, audit: AuditLog) -> Gate:
    """A process's gate: ``config``'s users and roles, its internal key, and ``audit``."""
    return Gate(Authenticator(config.auth), Verifier(internal_key(config.secret)), audit)


def dispatcher(
    config: ClusterConfig, app: App, client: ShardClient | None = None, dispatcher_id: str | None = None
) -> Dispatcher:
    """The dispatcher's application, router, alert book, gate, metrics and (not yet started) monitor.

    The app's OpenAPI document is built here, once, and served at ``/_schema/openapi.json``.
    """
    me = config.dispatcher(dispatcher_id)
    metrics = ProcessMetrics({"dispatcher": me.id})
    client = client or ShardClient(config, observe=metrics.record_call)
    router = Router(config, app, client)
    alerts = AlertBook(config.webhooks)
    monitor = IntegrityMonitor(config, client, alerts, router.groups.flagged)
    guard = gate(config, AuditLog(config.path.parent / AUDIT_NAME, me.id))
    watch_dispatcher(metrics, alerts, router.view, guard)
    document = openapi_document(app, dispatcher_routes(), mutations_by_get=config.http.mutations_by_get)
    deps = {
        "router": router,
        "alerts": alerts,
        "document": document,
        "metrics": metrics,
        "readiness": DispatcherReadiness(router),
    }
    settings = request_settings(config.limits, HostCheck((me.http, me.http_listen), config.http.hosts), metrics)
    application = Application(rules("dispatcher", deps, guard), default_handler_class=NotFoundHandler, **settings)
    return Dispatcher(application, router, monitor, alerts, guard, metrics)


def replica_application(
    config: ClusterConfig, service: ShardService, router: Router, metrics: ProcessMetrics, fault_injection: bool
) -> Application:
    """A replica's Tornado application: shard and admin routes plus the embedded ``router`` (whose client
    calls ``service`` in process); ``metrics`` get its requests and its collectors."""
    replica = service.config
    guard = gate(config, AuditLog(replica.data_dir / AUDIT_NAME, replica.id))
    watch_replica(metrics, service, config, router.view, guard)
    deps = {"service": service, "router": router, "metrics": metrics, "readiness": ReplicaReadiness(service)}
    hosts = HostCheck((replica.http, replica.http_listen), config.http.hosts)
    settings = request_settings(config.limits, hosts, metrics)
    return Application(
        rules("replica", deps, guard, fault_injection), default_handler_class=NotFoundHandler, **settings
    )


def start_replica(config: ClusterConfig, replica: ReplicaConfig, app: App, membership: Membership) -> ShardService:
    """Start the Raft member for ``replica`` in ``membership``'s mode; its thread runs until ``destroy()``."""
    shard = config.shard(replica.shard)
    peers = [voter for voter in membership.voters if voter != replica.raft]
    state = StateMachine(
        app,
        local_fingerprint=app_fingerprint(app),
        checkpoint_interval=config.integrity.checkpoint_interval,
        digests=config.integrity.digests,
    )
    member = Replica(
        replica.raft,
        peers,
        state,
        replica.data_dir,
        config.secret,
        config.timings,
        bind_address=replica.raft_listen,
        mode=membership.mode,
        initial_slots=[[first, last] for first, last in shard.slots],
    )
    return ShardService(member, replica, ShardMap(config))


async def serve(
    application: Application, address: str, limits: Limits, ssl_options: ssl.SSLContext | None = None
) -> None:
    """Serve ``application`` on ``host:port``, refusing bodies over ``limits``, until SIGTERM or SIGINT.

    With ``ssl_options`` it serves HTTPS only: a plain HTTP request fails the TLS handshake.
    """
    host, port = address.rsplit(":", 1)
    server = http_server(application, limits, xheaders=False, ssl_options=ssl_options)
    server.listen(int(port), address=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving on %s://%s", "https" if ssl_options else "http", address)
    await stop.wait()
    server.stop()


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` to its end on uvloop when it is installed (Tornado runs on any asyncio loop; uvloop's
    costs less per turn), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    uvloop.run(main)


def run_replica(
    config: ClusterConfig, replica_id: str, app: App, fault_injection: bool = False, bootstrap: bool = False
) -> None:
    """Run one replica process: Raft member, routes and router, until signalled.

    ``bootstrap``: this is the first start of a new group (``docraft node --bootstrap``), so an empty data
    directory makes a voter of the cluster file's list (``node.membership.starting_membership``).
    Raises ``SystemExit`` on a data directory whose replica its group removed (``consensus.members``),
    or when ``bootstrap`` finds the group running without this replica.
    """
    replica = config.replica(replica_id)
    private_dir(replica.data_dir)
    retired = retired_message(replica.data_dir)
    if retired is not None:
        raise SystemExit(f"docraft node {replica_id}: {retired}")
    tls = server_context(config.tls, replica.id) if config.tls else None

    async def main() -> None:
        try:
            membership = await starting_membership(config, replica, bootstrap)
        except BootstrapRefused as exc:
            raise SystemExit(f"docraft node {replica_id}: {exc}") from None
        log.info("replica %s starts as a %s of voters %s", replica.id, membership.mode, ", ".join(membership.voters))
        service = start_replica(config, replica, app, membership)
        if fault_injection:
            log.warning("UNSAFE: fault injection routes are enabled on this replica")
        metrics = ProcessMetrics({"shard": replica.shard, "replica": replica.id})
        router = Router(config, app, ShardClient(config, local=service, observe=metrics.record_call))
        watching = asyncio.get_running_loop().create_task(router.view.run())
        try:
            application = replica_application(config, service, router, metrics, fault_injection)
            await serve(application, replica.http_listen, config.limits, tls)
            await service.replica.drain(grace=1.0)
            await asyncio.sleep(0.05)  # one more turn of the loop for handlers to send those answers
        finally:
            watching.cancel()
            if not service.replica.snapshot_now():
                log.warning("no snapshot before stopping: the restart will replay the log")
            service.replica.destroy()

    run_loop(main())


def run_dispatcher(config: ClusterConfig, dispatcher_id: str | None, app: App) -> None:
    """Run one dispatcher process, with its integrity monitor and move janitor, until signalled."""
    me = config.dispatcher(dispatcher_id)
    tls = server_context(config.tls, me.id) if config.tls else None

    async def main() -> None:
        parts = dispatcher(config, app, dispatcher_id=dispatcher_id)
        loop = asyncio.get_running_loop()
        janitor = MoveJanitor(parts.router, stall_after=config.rebalance.stall_after)
        tasks = [
            loop.create_task(parts.monitor.run()),
            loop.create_task(janitor.run()),
            loop.create_task(parts.router.view.run()),
        ]
        try:
            await serve(parts.application, me.http_listen, config.limits, tls)
        finally:
            for task in tasks:
                task.cancel()

    run_loop(main())
