"""The two Tornado processes: a shard replica server and a dispatcher.

Both embed the same ``Router``, so any of them accepts any endpoint request.
A replica server also serves the internal ``/_shard/*`` routes and drives
its own ``Replica``. Both stop cleanly on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from tornado.httpserver import HTTPServer
from tornado.web import Application

from consensus.replica import RaftTimings, Replica
from consensus.state_machine import StateMachine
from node.config import ClusterConfig, ReplicaConfig
from node.handlers import NotFoundHandler, router_routes, shard_routes
from node.router import Router
from node.shard_client import ShardClient
from node.shard_service import ShardService
from query.app import App

log = logging.getLogger("docraft.server")


def dispatcher_application(config: ClusterConfig, app: App, client: ShardClient | None = None) -> Application:
    """The dispatcher's Tornado application: routing only, no local state."""
    router = Router(config, app, client or ShardClient())
    return Application(router_routes(router), default_handler_class=NotFoundHandler)


def replica_application(config: ClusterConfig, app: App, service: ShardService) -> Application:
    """A replica's Tornado application: internal shard routes plus the embedded router."""
    router = Router(config, app, ShardClient(local=service))
    return Application(shard_routes(service) + router_routes(router), default_handler_class=NotFoundHandler)


def start_replica(
    config: ClusterConfig, replica: ReplicaConfig, app: App, timings: RaftTimings
) -> ShardService:
    """Start the Raft member for ``replica``; its thread runs until ``destroy()``."""
    shard = config.shard(replica.shard)
    peers = [r.raft for r in shard.replicas if r.id != replica.id]
    member = Replica(replica.raft, peers, StateMachine(app), replica.data_dir, config.secret, timings)
    return ShardService(member, replica)


async def serve(application: Application, address: str) -> None:
    """Serve ``application`` on ``host:port`` until SIGTERM or SIGINT."""
    host, port = address.rsplit(":", 1)
    server = HTTPServer(application, xheaders=False)
    server.listen(int(port), address=host)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    log.info("serving on http://%s", address)
    await stop.wait()
    server.stop()


def run_replica(config: ClusterConfig, replica_id: str, app: App) -> None:
    """Run one replica process: Raft member, internal routes and router, until signalled."""
    replica = config.replica(replica_id)
    Path(replica.data_dir).mkdir(parents=True, exist_ok=True)

    async def main() -> None:
        service = start_replica(config, replica, app, config.timings)
        try:
            await serve(replica_application(config, app, service), replica.http)
        finally:
            service.replica.destroy()

    asyncio.run(main())


def run_dispatcher(config: ClusterConfig, dispatcher_id: str | None, app: App) -> None:
    """Run one dispatcher process until signalled."""
    dispatcher = config.dispatcher(dispatcher_id)

    async def main() -> None:
        await serve(dispatcher_application(config, app), dispatcher.http)

    asyncio.run(main())
