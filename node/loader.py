"""``docraft load``: stream a CSV file into a running cluster in batches.

Rows are parsed against the model locally (so a bad row is reported with its
line number without a round trip), sent in batches to the dispatcher's
``POST /_bulk/{model}``, and every row's outcome is counted. A bad row never
stops the load or hides the good rows around it: neither a row the model
refuses, nor one with a field over ``CSV_FIELD_LIMIT`` characters, nor one too
large for the cluster's ``[limits] body_bytes`` (a batch the cluster answers
413 is sent again in halves, down to single rows). Each batch carries an
``Idempotency-Key`` of its own and is sent again under it, for up to
``RETRY_FOR`` seconds, when its outcome is unknown (``504``, a lost
connection) or the cluster is briefly unable (``503``): the cluster stores it
once, and every row is counted as what it became.
"""

from __future__ import annotations

import csv
import http.client
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tqdm import tqdm

from models.errors import DocraftError, PayloadTooLarge
from models.model import Model
from node.tls import client_context

# The longest CSV field a row may have, in characters (Python's csv default); a longer one rejects its row.
CSV_FIELD_LIMIT = 128 * 1024
# How long a batch is sent again (same Idempotency-Key) while its outcome is unknown or the cluster unable.
RETRY_FOR = 60.0
RETRY_STATUSES = (503, 504)


class _Retryable(Exception):
    """A batch whose outcome is unknown, or that the cluster could not take just now."""


class LoadStopped(Exception):
    """The load cannot start or go on: every batch would fail alike (a URL that is no http(s) URL, a file
    that is not UTF-8, a refused token, an answer that is not docraft's). The message names the culprit."""


@dataclass
class LoadReport:
    stored: int = 0
    rejected: list[tuple[int, str]] = field(default_factory=list)

    def summary(self, most: int = 20) -> str:
        """Counts, then the first ``most`` rejected rows with their line numbers and reasons."""
        lines = [f"{self.stored} rows stored, {len(self.rejected)} rows rejected"]
        lines += [f"  line {line}: {reason}" for line, reason in self.rejected[:most]]
        if len(self.rejected) > most:
            lines.append(f"  ... and {len(self.rejected) - most} more")
        return "\n".join(lines)


class _Cluster:
    """One kept-alive HTTP(S) connection to a dispatcher, sending ``token`` (if any) as a bearer token.

    An ``https`` dispatcher must have a certificate from ``ca`` (default: the system's CAs).
    """

    def __init__(self, url: str, timeout: float, token: str | None, ca: Path | None) -> None:
        self.url = url
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise LoadStopped(f"--url must look like http(s)://host:port, got {url!r}")
        self.connection: http.client.HTTPConnection
        if parts.scheme == "https":
            context = client_context(ca) if ca is not None else None  # None: the system's CAs
            self.connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=timeout, context=context)
        else:
            self.connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
        self.headers = {"Content-Type": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def connect(self) -> None:
        """Open the connection now; raises ``OSError`` naming the URL when nothing answers there."""
        try:
            self.connection.connect()
        except OSError as exc:
            self.connection.close()
            raise OSError(f"cannot reach the cluster at {self.url}: {exc.strerror or exc}") from None

    def insert(self, model: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per document; raises ``OSError`` or ``ValueError`` if the batch failed whole,
        ``PayloadTooLarge`` if it was too large for the cluster to take.

        Sent under a new ``Idempotency-Key``, and again under the same key (pausing 0.1 s, doubling to
        2 s) while the outcome is unknown or the cluster answers 503, for up to ``RETRY_FOR`` seconds."""
        key = uuid.uuid4().hex
        deadline = time.monotonic() + RETRY_FOR
        pause = 0.1
        while True:
            try:
                return self._send(model, docs, key)
            except _Retryable as exc:
                if time.monotonic() + pause > deadline:
                    raise ValueError(f"{exc} (still so after {RETRY_FOR:.0f}s of retries)") from None
                time.sleep(pause)
                pause = min(pause * 2, 2.0)

    def _send(self, model: str, docs: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
        try:
            self.connection.request(
                "POST", f"/_bulk/{model}", ujson.dumps({"docs": docs}), {**self.headers, "Idempotency-Key": key}
            )
            response = self.connection.getresponse()
            data = response.read()
        except (OSError, http.client.HTTPException) as exc:
            self.connection.close()  # the next request opens a new connection
            raise _Retryable(f"the connection to {self.url} failed: {exc}") from None
        try:
            body = ujson.loads(data)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise LoadStopped(f"{self.url} answered HTTP {response.status} without docraft's JSON: is it a dispatcher?")
        if response.status in (401, 403):
            message = body.get("error", {}).get("message", f"HTTP {response.status}")
            raise LoadStopped(f"{self.url} refused the load: {message} (--token-file FILE sends one)")
        if response.status in RETRY_STATUSES:
            raise _Retryable(body.get("error", {}).get("message", f"HTTP {response.status}"))
        if response.status != 200:
            message = body.get("error", {}).get("message", f"HTTP {response.status}")
            raise PayloadTooLarge(message) if response.status == PayloadTooLarge.status else ValueError(message)
        results: list[dict[str, Any]] = body["results"]
        return results


def load_csv(
    path: Path,
    model: type[Model],
    url: str,
    batch_size: int = 1000,
    progress: bool = True,
    timeout: float = 30.0,
    token: str | None = None,
    ca: Path | None = None,
) -> LoadReport:
    """Store every valid row of ``path`` as a ``model`` document; report the others.

    ``token`` is sent as ``Authorization: Bearer``: its user needs the ``bulk``
    permission, unless the cluster grants it to anonymous clients. An ``https``
    ``url`` is trusted if ``ca`` (a CA file) certified it. Raises ``OSError``
    when the file cannot be read or nothing answers at ``url`` when the load
    begins (a connection lost later is retried, and then its batch's rows
    rejected), ``LoadStopped`` when no row could be stored (see there),
    ``TlsUnusable`` when ``ca`` is no CA file.
    """
    report = LoadReport()
    cluster = _Cluster(url, timeout, token, ca)
    try:
        with open(path, encoding="utf-8") as counting:
            total = max(sum(1 for _ in counting) - 1, 0)
    except UnicodeDecodeError as exc:
        raise LoadStopped(f"{path} is not UTF-8 text ({exc.reason} on line {_undecodable_line(path)})") from None
    cluster.connect()
    bar = tqdm(total=total, unit="row", disable=not progress, desc=f"loading {model.name}")
    batch: list[tuple[int, dict[str, Any]]] = []

    def flush(rows: list[tuple[int, dict[str, Any]]]) -> None:
        try:
            results = cluster.insert(model.name, [doc for _, doc in rows])
        except PayloadTooLarge as exc:
            if len(rows) == 1:
                report.rejected.append((rows[0][0], f"too large for the cluster: {exc.message}"))
            else:
                flush(rows[: len(rows) // 2])
                flush(rows[len(rows) // 2 :])
        except (OSError, ValueError, http.client.HTTPException) as exc:
            report.rejected += [(line, f"batch failed: {exc}") for line, _ in rows]
        else:
            for (line, _), result in zip(rows, results, strict=True):
                if "error" in result:
                    report.rejected.append((line, result["error"]["message"]))
                else:
                    report.stored += 1

    with bar, open(path, newline="", encoding="utf-8") as source:  # the bar ends its line even on LoadStopped
        for line, row in _rows(csv.DictReader(source), bar):
            if isinstance(row, str):
                report.rejected.append((line, row))
                continue
            try:
                batch.append((line, model.from_text(row)))
            except DocraftError as exc:
                report.rejected.append((line, exc.message))
            if len(batch) >= batch_size:
                flush(batch)
                batch.clear()
        if batch:
            flush(batch)
    report.rejected.sort()
    return report


def _undecodable_line(path: Path) -> int:
    """The number of the first line of ``path`` that is not UTF-8 (0 when every line is)."""
    with open(path, "rb") as raw:
        for number, line in enumerate(raw, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def _rows(reader: csv.DictReader[str], bar: tqdm[Any]) -> Iterator[tuple[int, dict[str, str] | str]]:
    """Each row with its line number, or for a row that cannot be read, the reason (a string) instead.

    Fields longer than ``CSV_FIELD_LIMIT`` characters are refused while this
    runs (the csv module's limit is process-wide; the previous one is restored).
    """
    previous = csv.field_size_limit(CSV_FIELD_LIMIT)
    try:
        while True:
            try:
                row = next(reader)
            except StopIteration:
                return
            except csv.Error as exc:  # the reader resumes at the next line
                bar.update(1)
                yield reader.reader.line_num, f"unreadable: {exc}"
                continue
            bar.update(1)
            if None in row or any(v is None for v in row.values()):
                yield reader.line_num, "wrong number of cells for the header"
            else:
                yield reader.line_num, row
    finally:
        csv.field_size_limit(previous)
