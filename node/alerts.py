"""Admin alerts: raised and cleared by the integrity monitor, delivered three ways.

An alert is active from ``raise_alert`` until ``clear`` (for example when the
replica agrees again after ``docraft repair``); its kind is one of ``KINDS``,
and its replica is ``None`` for a shard-wide alert (``no_majority``,
``no_leader``). Raising logs one ERROR line and POSTs the alert as JSON to
every webhook of the cluster file, in the background with retries and
backoff: delivery never blocks a request.
``GET /_admin/alerts`` shows the active alerts and the most recent ones.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient

log = logging.getLogger("docraft.alerts")

# Every kind the monitor raises; README.md's alerts table describes each.
KINDS = (
    "divergence",
    "code_mismatch",
    "replica_unreachable",
    "no_majority",
    "apply_stalled",
    "no_leader",
    "entries_lost",
    "snapshot_unloadable",
)


@dataclass
class Alert:
    kind: str
    shard: str
    replica: str | None
    index: int | None
    digests: dict[str, str]
    message: str
    raised_at: float = field(default_factory=time.time)
    cleared_at: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown alert kind {self.kind!r} (known: {', '.join(KINDS)})")

    @property
    def key(self) -> tuple[str, str, str | None]:
        return (self.kind, self.shard, self.replica)

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "active": self.cleared_at is None}


class AlertBook:
    """Active and recent alerts of one dispatcher; used on its event loop only."""

    def __init__(self, webhooks: tuple[str, ...] = (), recent: int = 200, attempts: int = 5) -> None:
        self.webhooks = webhooks
        self.attempts = attempts
        self.active: dict[tuple[str, str, str | None], Alert] = {}
        self.recent: deque[Alert] = deque(maxlen=recent)
        self._deliveries: set[asyncio.Task[None]] = set()

    def raise_alert(self, alert: Alert) -> None:
        """Record ``alert`` unless the same kind is already active for that replica."""
        if alert.key in self.active:
            return
        self.active[alert.key] = alert
        self.recent.append(alert)
        log.error(
            "ALERT %s shard=%s replica=%s index=%s: %s",
            alert.kind,
            alert.shard,
            alert.replica,
            alert.index,
            alert.message,
        )
        self._deliver(alert)

    def clear(self, kind: str, shard: str, replica: str | None) -> None:
        alert = self.active.pop((kind, shard, replica), None)
        if alert is not None:
            alert.cleared_at = time.time()
            log.warning("alert cleared: %s shard=%s replica=%s", kind, shard, replica)
            self._deliver(alert)

    def is_active(self, kind: str, shard: str, replica: str | None) -> bool:
        return (kind, shard, replica) in self.active

    def to_json(self) -> dict[str, Any]:
        return {
            "active": [a.to_json() for a in self.active.values()],
            "recent": [a.to_json() for a in reversed(self.recent)],
        }

    def _deliver(self, alert: Alert) -> None:
        for url in self.webhooks:
            task = asyncio.get_running_loop().create_task(self._post(url, alert.to_json()))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def _post(self, url: str, body: dict[str, Any]) -> None:
        http = AsyncHTTPClient()
        delay = 0.5
        for attempt in range(1, self.attempts + 1):
            try:
                response = await http.fetch(
                    url,
                    method="POST",
                    body=ujson.dumps(body),
                    headers={"Content-Type": "application/json"},
                    request_timeout=5,
                    raise_error=False,
                )
                delivered = 200 <= response.code < 300
            except Exception:  # refused, reset, timed out: Tornado raises these even with raise_error=False
                delivered = False
            if delivered:
                return

            if attempt < self.attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.error("webhook %s did not take alert %s after %d attempts", url, body["kind"], self.attempts)
