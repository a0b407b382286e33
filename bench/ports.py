"""Blocks of loopback ports that are free right now, for clusters whose ports follow a pattern.

A port found free can still be taken by another process before our child
binds it (the machine is shared); callers start their processes and retry
with a new block when one fails to bind.
"""

from __future__ import annotations

import contextlib
import random
import socket
from collections.abc import Sequence

# Below Linux's ephemeral range (32768-60999), where the kernel does not hand out ports on its own.
LOW, HIGH = 20000, 32000


def all_free(ports: Sequence[int], host: str = "127.0.0.1") -> bool:
    """Whether every one of ``ports`` could be bound on ``host`` at once, just now."""
    with contextlib.ExitStack() as stack:
        for port in ports:
            sock = stack.enter_context(socket.socket())
            try:
                sock.bind((host, port))
            except OSError:
                return False
    return True


def free_block(offsets: Sequence[int], tries: int = 200) -> int:
    """A base port such that ``base + offset`` is free for every offset in ``offsets``.

    Raises ``OSError`` when ``tries`` random bases in [LOW, HIGH) all collide with ports in use.
    """
    span = max(offsets)
    for _ in range(tries):
        base = random.randrange(LOW, HIGH - span)
        if all_free([base + offset for offset in offsets]):
            return base
    raise OSError(f"no block of free ports with offsets {list(offsets)} between {LOW} and {HIGH}")


def free_ports(count: int, tries: int = 10_000) -> list[int]:
    """``count`` distinct ports, each free just now, between ``LOW`` and ``HIGH``: below the kernel's
    ephemeral range, so no outgoing connection takes one while the process that owns it restarts.

    Raises ``OSError`` when ``tries`` random ports did not give ``count`` free ones.
    """
    ports: list[int] = []
    for _ in range(tries):
        if len(ports) == count:
            return ports
        port = random.randrange(LOW, HIGH)
        if port not in ports and all_free([port]):
            ports.append(port)
    if len(ports) == count:
        return ports
    raise OSError(f"fewer than {count} free ports between {LOW} and {HIGH}")
