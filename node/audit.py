"""The audit log: every admin action and every refused request, one JSON object per line.

A line says when, which process, who (a user, ``anonymous`` or ``cluster
member``), what (method and path, or a CLI command), from where (the peer's
address, or ``cli@host``) and the result (the HTTP status, or ``ok``), with
details such as the refusal's reason or an admin request's body. A replica
writes to ``<data_dir>/audit.log``; a dispatcher and the CLI to ``audit.log``
next to the cluster file. Each line also goes to the process log (logger
``docraft.audit``): refusals as warnings, admin actions as info.
"""

from __future__ import annotations

import datetime
import logging
import os
from pathlib import Path
from typing import Any

import ujson

log = logging.getLogger("docraft.audit")

AUDIT_NAME = "audit.log"


class AuditLog:
    """Appends entries to one file, created 0600; any thread may call ``record``.

    Each entry is one ``write`` to a file opened with ``O_APPEND``, so
    processes sharing the file (dispatchers next to one cluster file) do not
    interleave within a line. A failed write is logged, never raised: the
    request it describes has been answered already or is about to be.
    """

    def __init__(self, path: Path, process: str) -> None:
        self.path = path
        self.process = process

    def record(self, now: float, who: str, what: str, origin: str, result: int | str, **details: Any) -> None:
        """Write one entry dated ``now`` (Unix seconds); a 4xx ``result`` is logged as a warning."""
        entry = {
            "time": datetime.datetime.fromtimestamp(now, datetime.UTC).isoformat(timespec="milliseconds"),
            "process": self.process,
            "who": who,
            "what": what,
            "from": origin,
            "result": result,
            **details,
        }
        line = ujson.dumps(entry, escape_forward_slashes=False, ensure_ascii=False)
        refused = isinstance(result, int) and 400 <= result < 500
        log.log(logging.WARNING if refused else logging.INFO, "audit %s", line)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:
                os.write(fd, (line + "\n").encode())
            finally:
                os.close(fd)
        except OSError as exc:
            log.error("cannot write the audit log %s: %s", self.path, exc)
