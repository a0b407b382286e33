"""Process logging: plain text lines, or one JSON object per line (``--log-format json``).

A JSON line has ``time`` (ISO 8601, UTC), ``level``, ``logger``, ``message``
and ``process`` (the replica or dispatcher id), then ``request_id``,
``shard`` and ``replica`` where known, and ``exception`` with a traceback.
The request id is the one a mutation is committed under (``node.request_ids``):
the handler that admits a request sets it (``bind_request``) and asyncio
copies it into every task the request starts, so the dispatcher's lines and
the leader's (whose handler sets it from the routed command) carry the same
id. A replica's lines carry its shard and replica id; a dispatcher's, none.

With JSON lines every request is logged (``tornado.access`` at INFO, one line
each, which costs some throughput), except answered polls (``POLLS``: status,
slot map, digests, metrics and health, asked several times a second by every
router and monitor); text logs keep only failed requests.
"""

from __future__ import annotations

import datetime
import logging
import sys
from contextvars import ContextVar
from typing import Any

import ujson

FORMATS = ("text", "json")
ACCESS_LOGGER = "tornado.access"

# Routes polled by routers, the integrity monitor, scrapers and probes: logged only when they fail.
POLLS = ("/_shard/status", "/_shard/slots", "/_admin/digest", "/metrics", "/livez", "/readyz")

_request_id: ContextVar[str | None] = ContextVar("docraft_request_id", default=None)


def bind_request(request_id: Any) -> None:
    """Mark what the current task (and the tasks it starts) logs with ``request_id``; a non-string clears it."""
    _request_id.set(request_id if isinstance(request_id, str) else None)


def current_request() -> str | None:
    """The request id the current task logs with, if any."""
    return _request_id.get()


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object (no newline inside): see the module docstring for its fields."""

    def __init__(self, process: str, shard: str | None = None, replica: str | None = None) -> None:
        super().__init__()
        self.fixed = {"process": process, "shard": shard, "replica": replica}

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "process": self.fixed["process"],
        }
        request_id = current_request()
        if request_id is not None:
            line["request_id"] = request_id
        line.update({k: v for k, v in self.fixed.items() if k != "process" and v is not None})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return ujson.dumps(line, ensure_ascii=False, escape_forward_slashes=False)


def quiet_polls(record: logging.LogRecord) -> bool:
    """A ``tornado.access`` filter: drop the line of a poll (``POLLS``) answered below 400.

    Tornado logs ``"%d %s %.2fms"`` with the status and ``"METHOD URI (REMOTE)"``.
    """
    args = record.args
    if not isinstance(args, tuple) or len(args) < 2 or not isinstance(args[0], int) or args[0] >= 400:
        return True
    uri = str(args[1]).split(" ")[1] if " " in str(args[1]) else ""
    return uri.split("?")[0] not in POLLS


def configure(process: str, log_format: str = "text", shard: str | None = None, replica: str | None = None) -> None:
    """Send this process's INFO and above to standard error in ``log_format`` (one of ``FORMATS``).

    ``process`` names the process in every line; ``shard`` and ``replica`` are
    added to JSON lines. Raises ``ValueError`` for an unknown format.
    """
    if log_format not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter(process, shard, replica))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {process} %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler], force=True)
    # Text logs skip the line per request (it costs throughput); searchable logs are there to follow requests.
    access = logging.getLogger(ACCESS_LOGGER)
    access.setLevel(logging.INFO if log_format == "json" else logging.WARNING)
    if quiet_polls not in access.filters:
        access.addFilter(quiet_polls)
