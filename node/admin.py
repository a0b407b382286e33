"""Admin commands that act on a running cluster: ``docraft repair``, ``accept-code``, ``migrate``, ``status``.

Holding the cluster file, the CLI is a cluster member: it signs its calls
with the cluster's internal key (``node.signing``) like a dispatcher does,
and with ``[tls]`` it trusts the servers the cluster's CA certified.
"""

from __future__ import annotations

import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ujson

from node.config import ClusterConfig
from node.monitor import judge
from node.signing import internal_key, sign
from node.tls import client_context
from query.app import App
from query.fingerprint import app_fingerprint


def http_json(
    method: str,
    url: str,
    body: Any = None,
    timeout: float = 5.0,
    key: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    ca: Path | None = None,
) -> tuple[int, Any]:
    """One blocking HTTP call with a JSON body; (status, decoded JSON) for any status. Raises ``OSError``.

    With ``key`` (``node.signing.internal_key``) the request is signed as a
    cluster member's; ``headers`` are sent as well (an ``Authorization`` header, say).
    An ``https`` URL's server must have a certificate from ``ca`` (a CA file;
    default: the system's CAs), for the host in ``url``: an ``ssl.SSLCertVerificationError``
    (in a ``URLError``, an ``OSError``) if not. ``TlsUnusable`` when ``ca`` is no CA file.
    """
    data = None if body is None else ujson.dumps(body).encode()
    request = signed_request(method, url, data, key, {"Content-Type": "application/json", **(headers or {})})
    try:
        with open_request(request, timeout, ca) as response:
            return response.status, ujson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, ujson.loads(exc.read() or b"null")


def signed_request(
    method: str, url: str, data: bytes | None, key: bytes | None, headers: Mapping[str, str]
) -> urllib.request.Request:
    """A request of ``method`` to ``url`` with body ``data`` and ``headers``; signed as a cluster member's
    with ``key`` (``node.signing.internal_key``) unless it is ``None``."""
    request = urllib.request.Request(url, data=data, method=method, headers=dict(headers))
    if key is not None:
        for name, value in sign(key, method, request.selector, data or b"", time.time()).items():
            request.add_header(name, value)
    return request


def open_request(request: urllib.request.Request, timeout: float, ca: Path | None) -> Any:
    """``urlopen`` of ``request``; an ``https`` server must have a certificate from ``ca`` (default: the
    system's CAs). Raises as ``urlopen`` does (``HTTPError`` for an error answer), ``TlsUnusable`` when
    ``ca`` is no CA file."""
    context = client_context(ca) if ca is not None else None
    return urllib.request.urlopen(request, timeout=timeout, context=context)


def agrees(config: ClusterConfig, replica_id: str) -> bool:
    """Whether ``replica_id``'s digest matches its group's majority right now."""
    shard = config.shard(config.replica(replica_id).shard)
    key = internal_key(config.secret)
    reports = {}
    for replica in shard.replicas:
        try:
            status, report = http_json("GET", f"{replica.http_url}/_admin/digest", timeout=2.0, key=key, ca=config.ca)
        except OSError:
            continue
        if status == 200:
            reports[replica.id] = report
    return replica_id in judge(reports, len(shard.replicas)).agreeing


def repair(config: ClusterConfig, replica_id: str, timeout: float) -> int:
    """Make a replica discard its state and resync; wait until it has caught up and its digest agrees.

    Exit code 0 when repaired, 2 when unreachable or refused (the replica
    checks the repair is safe: see ``node.repair``), 1 when it did not agree in time.
    """
    replica = config.replica(replica_id)
    key = internal_key(config.secret)
    try:
        status, body = http_json("POST", f"{replica.http_url}/_admin/repair", key=key, ca=config.ca)
    except OSError as exc:
        print(f"docraft repair: {replica_id} at {replica.http} is unreachable: {exc}")
        return 2
    if status != 202:
        print(f"docraft repair: {(body.get('error') or {}).get('message', body)}")
        return 2
    print(f"{replica_id} is discarding its state and resynchronising from shard {replica.shard}...", flush=True)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        time.sleep(0.5)  # the replica restarts; poll until it is back, caught up and agreeing
        try:
            code, own = http_json("GET", f"{replica.http_url}/_shard/status", timeout=2.0, key=key, ca=config.ca)
            if code == 200 and own.get("fault") is None and agrees(config, replica_id):
                print(f"{replica_id} agrees with its group again")
                return 0
        except OSError:
            continue
    print(f"docraft repair: {replica_id} did not agree with its group within {timeout:.0f}s")
    return 1


def accept_code(app: App, url: str, key: bytes, ca: Path | None = None) -> int:
    """Record ``app``'s fingerprint as the cluster's on every shard, through the dispatcher at ``url``. Exit code.

    The call is signed with ``key``, the cluster's internal key; ``ca`` as for ``http_json``.
    """
    fingerprint = app_fingerprint(app)
    payload = {"fingerprint": fingerprint}
    status, body = http_json("POST", f"{url}/_admin/fingerprint", payload, timeout=30, key=key, ca=ca)
    if status != 200:
        print(f"docraft accept-code: {body}")
        return 1
    shards = ", ".join(body["shards"])
    print(f"the cluster now runs app code {fingerprint[:12]}… ({app.module}) on shards {shards}")
    return 0


def migrate(
    app: App, target: int, only: str | None, dry_run: bool, url: str, key: bytes | None, ca: Path | None = None
) -> int:
    """Migrate (or plan migrating) every model of ``app`` at version ``target``. Exit code.

    Calls are signed with ``key`` (the cluster's internal key) when there is one; ``ca`` as for ``http_json``.
    """
    models = [m for m in app.models.values() if m.version == target and only in (None, m.name)]
    if not models:
        print(f"docraft migrate: {app.module} has no model{' ' + only if only else ''} at version {target}")
        return 2
    code = 0
    for model in models:
        body = {"model": model.name, "to": target, "dry_run": dry_run}
        status, answer = http_json("POST", f"{url}/_admin/migrate", body, timeout=120, key=key, ca=ca)
        if status != 200:
            error = answer.get("error", {})
            print(f"{model.name}: {error.get('message', answer)}")
            for shard, plan in (error.get("details", {}).get("shards") or {}).items():
                for failure in plan["failures"]:
                    print(f"  shard {shard}: {model.name} {failure['key']!r}: {failure['error']}")
            code = 1
            continue
        verb = "would migrate" if dry_run else "migrated"
        for shard, result in answer["shards"].items():
            print(f"{model.name} shard {shard}: {verb} {result['documents']} documents, v{result['from']} -> v{target}")
    return code


def status(config: ClusterConfig, as_json: bool) -> int:
    """Print ``GET /_admin/cluster`` of the first dispatcher or replica that answers. Exit code (2: none did).

    As tables (``render_status``), or with ``as_json`` the JSON itself.
    """
    key = internal_key(config.secret)
    servers = [d.http_url for d in config.dispatchers] + [r.http_url for s in config.shards for r in s.replicas]
    for url in servers:
        try:
            code, body = http_json("GET", f"{url}/_admin/cluster", timeout=5.0, key=key, ca=config.ca)
        except OSError:
            continue
        if code == 200:
            print(ujson.dumps(body, indent=2, escape_forward_slashes=False) if as_json else render_status(body))
            return 0
    print(f"docraft status: no dispatcher or replica of {config.path} answered")
    return 2


def render_status(cluster: dict[str, Any]) -> str:
    """``/_admin/cluster`` for a person: the epoch, a table per shard, the moves with their progress."""
    lines = [f"slot map epoch {cluster['epoch']}"]
    for shard in cluster["shards"]:
        ranges = ", ".join(str(f) if f == last else f"{f}-{last}" for f, last in shard["slots"]) or "none"
        lines += [
            "",
            f"shard {shard['id']}: {shard['slot_count']} slots ({ranges}), {_shown(shard.get('documents'))} "
            f"documents, epoch {_shown(shard.get('epoch'))}, leader {_shown(shard.get('leader'))}",
        ]
        rows = [("replica", "role", "mode", "applied", "commit", "lag", "fault")]
        for replica in shard["replicas"]:
            fault = replica.get("fault")
            rows.append(
                (
                    replica["id"],
                    replica.get("role", "?"),
                    _shown(replica.get("mode")),
                    _shown(replica.get("applied_index")),
                    _shown(replica.get("commit_index")),
                    _shown(replica.get("lag_entries")),
                    (fault.get("kind", "yes") if isinstance(fault, dict) else _shown(fault)),
                )
            )
        lines += _table(rows)
    moves = cluster.get("moves") or []
    if moves:
        lines += ["", "moves:"]
        rows = [("move", "slots", "from", "to", "state", "copied", "epoch")]
        for move in moves:
            slots = ", ".join(f"{f}-{last}" for f, last in move.get("slots") or [])
            copied = f"{_shown(move.get('docs_copied'))}/{_shown(move.get('docs_total'))}"
            rows.append((move["id"], slots, move["from"], move["to"], move["state"], copied, _shown(move["epoch"])))
        lines += _table(rows)
    return "\n".join(lines)


def _shown(value: Any) -> str:
    return "-" if value is None else str(value)


def _table(rows: list[tuple[Any, ...]]) -> list[str]:
    """``rows`` (the first one the header) as lines of left-aligned columns, indented by two spaces."""
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    return ["  " + "  ".join(str(cell).ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
            for row in rows]  # fmt: skip
