"""Whether this host can listen on a cluster file's addresses, checked before processes start.

A port another program holds, or an address this host does not own, is then
named with its cluster-file entry in one line, instead of surfacing as a
process's traceback (``Address already in use``, ``Cannot assign requested
address``) in a log nobody reads yet.
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Iterable
from dataclasses import dataclass

from node.config import ClusterConfig, DispatcherConfig, ReplicaConfig


@dataclass(frozen=True)
class Listener:
    """An address a process binds, and the cluster-file entry it comes from (``replica s0r1 (shard s0) http``)."""

    address: str
    entry: str


def replica_listeners(replica: ReplicaConfig) -> list[Listener]:
    """The HTTP and Raft addresses ``replica`` binds."""
    entry = f"replica {replica.id} (shard {replica.shard})"
    return [Listener(replica.http_listen, f"{entry} http"), Listener(replica.raft_listen, f"{entry} raft")]


def dispatcher_listeners(dispatcher: DispatcherConfig) -> list[Listener]:
    """The HTTP address ``dispatcher`` binds."""
    return [Listener(dispatcher.http_listen, f"dispatcher {dispatcher.id} http")]


def cluster_listeners(config: ClusterConfig) -> list[Listener]:
    """Every address the processes of ``config`` bind."""
    replicas = [listener for shard in config.shards for r in shard.replicas for listener in replica_listeners(r)]
    return replicas + [listener for d in config.dispatchers for listener in dispatcher_listeners(d)]


def bind_error(address: str) -> OSError | None:
    """Why ``host:port`` cannot be listened on just now, or ``None`` if it can.

    Binds as the servers do (``SO_REUSEADDR``, so a closed connection's
    ``TIME_WAIT`` does not count) and lets go at once: another process can
    still take the port before ours binds it.
    """
    host, port = address.rsplit(":", 1)
    try:
        family = socket.getaddrinfo(host, int(port), type=socket.SOCK_STREAM)[0][0]
    except OSError as exc:
        return exc
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, int(port)))
            sock.listen()
        except OSError as exc:
            return exc
    return None


def problems(listeners: Iterable[Listener], only: tuple[int, ...] | None = None) -> list[str]:
    """One sentence per listener that cannot listen, naming its address and entry; with ``only``, just
    those failing with one of these ``errno`` values."""
    found = []
    for listener in listeners:
        error = bind_error(listener.address)
        if error is not None and (only is None or error.errno in only):
            found.append(f"cannot listen on {listener.address}, the {listener.entry} address: {_reason(error)}")
    return found


def _reason(error: OSError) -> str:
    if error.errno == errno.EADDRINUSE:
        return "another program holds that port (Address already in use)"
    if error.errno == errno.EADDRNOTAVAIL:
        return "this host does not own that address (Cannot assign requested address); run it on its own host"
    return error.strerror or str(error)
