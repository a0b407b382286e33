"""``docraft load``: stream a CSV file into a running cluster in batches.

Rows are parsed against the model locally (so a bad row is reported with its
line number without a round trip), sent in batches to the dispatcher's
``POST /_bulk/{model}``, and every row's outcome is counted. A bad row never
stops the load or hides the good rows around it.
"""

from __future__ import annotations

import csv
import http.client
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tqdm import tqdm

from models.errors import DocraftError
from models.model import Model


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
    """One kept-alive HTTP connection to a dispatcher, sending ``token`` (if any) as a bearer token."""

    def __init__(self, url: str, timeout: float, token: str | None) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"--url must look like http://host:port, got {url!r}")
        self.connection = http.client.HTTPConnection(parts.hostname, parts.port or 80, timeout=timeout)
        self.headers = {"Content-Type": "application/json"}
        if token is not None:
            self.headers["Authorization"] = f"Bearer {token}"

    def insert(self, model: str, docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """One result per document; raises ``OSError`` or ``ValueError`` if the batch failed whole."""
        self.connection.request("POST", f"/_bulk/{model}", ujson.dumps({"docs": docs}), self.headers)
        response = self.connection.getresponse()
        body = ujson.loads(response.read())
        if response.status != 200:
            raise ValueError(body.get("error", {}).get("message", f"HTTP {response.status}"))
        results: list[dict[str, Any]] = body["results"]
        return results


def load_csv(
    path: Path,
    model: type[Model],
    url: str,
    batch_size: int = 200,
    progress: bool = True,
    timeout: float = 30.0,
    token: str | None = None,
) -> LoadReport:
    """Store every valid row of ``path`` as a ``model`` document; report the others.

    ``token`` is sent as ``Authorization: Bearer``: its user needs the ``bulk``
    permission, unless the cluster grants it to anonymous clients. Raises
    ``OSError`` when the file cannot be read or the cluster is unreachable.
    """
    report = LoadReport()
    cluster = _Cluster(url, timeout, token)
    with open(path, encoding="utf-8") as counting:
        total = max(sum(1 for _ in counting) - 1, 0)
    bar = tqdm(total=total, unit="row", disable=not progress, desc=f"loading {model.name}")
    batch: list[tuple[int, dict[str, Any]]] = []

    def flush() -> None:
        try:
            results = cluster.insert(model.name, [doc for _, doc in batch])
        except (OSError, ValueError, http.client.HTTPException) as exc:
            report.rejected += [(line, f"batch failed: {exc}") for line, _ in batch]
        else:
            for (line, _), result in zip(batch, results, strict=True):
                if "error" in result:
                    report.rejected.append((line, result["error"]["message"]))
                else:
                    report.stored += 1
        batch.clear()

    with open(path, newline="", encoding="utf-8") as source:
        reader = csv.DictReader(source)
        for row in reader:
            bar.update(1)
            if None in row or any(v is None for v in row.values()):
                report.rejected.append((reader.line_num, "wrong number of cells for the header"))
                continue
            try:
                batch.append((reader.line_num, model.from_text(row)))
            except DocraftError as exc:
                report.rejected.append((reader.line_num, exc.message))
            if len(batch) >= batch_size:
                flush()
    if batch:
        flush()
    bar.close()
    report.rejected.sort()
    return report
