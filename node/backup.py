"""``docraft backup``: a consistent backup of every shard of a running cluster, as one ``.tar.gz``.

Each shard's leader streams its group's state at one Raft index (``GET /_shard/backup``,
``node.shard_backup``: a linearizable barrier first, so every write acknowledged before the backup asked
is in it). The shards are taken one after another while the cluster serves, so the archive is a
consistent copy of each shard, each at its own index; what ties them together is the slot map.

**Slot moves.** A move carries documents from one group to another in several commits, so shards copied
at different moments could hold a moving range twice or not at all. The backup refuses to start while a
move is in progress, and checks again what it copied: every slot owned by exactly one shard, and no range
frozen or importing (``slot_map_problem``). A move that began and ended between two shards' copies fails
that check too (both, or neither, own its range), and the backup is refused: run it again.

The archive holds ``manifest.json`` (first) and ``shards/<shard>.json``, each shard's snapshot as
``snapshot.json`` holds it. The manifest (``FORMAT``) records when and from which cluster file it was
taken (its shards, replicas, dispatchers, ``[raft]`` and ``[integrity]``; of its secret only the key id
its members' signatures carry, so ``docraft restore`` can refuse a new cluster that shares it), the app
module, the cluster's code fingerprint (``query.fingerprint``) and the app's model versions, the slot map
(each shard's slot table), per shard the index, the term of the leader that served it, the replica, the
digest (``consensus.digests``), document counts and stored model versions, and the SHA-256 of every
other file. ``docraft restore`` (``node.restore``) checks all of it.

The archive is written next to ``--output`` under a temporary name, mode 0600 (it holds every
document), and renamed into place once complete. Blocking CLI code.
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import shutil
import tarfile
import tempfile
import time
import urllib.error
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import ujson

from consensus.slots import FROZEN, IMPORTING, OWNED, SLOT_COUNT
from node.admin import http_json, open_request, signed_request
from node.config import ClusterConfig, ReplicaConfig
from node.rebalance import pending_moves
from node.shard_client import TIMEOUT_HEADER
from node.signing import internal_key, key_id
from query.app import App
from query.fingerprint import app_fingerprint, docraft_version

FORMAT = 1
MANIFEST = "manifest.json"
BARRIER_TIMEOUT = 10.0  # seconds a leader may take to commit the backup's barrier
RETRY_EVERY = 0.2  # seconds between rounds over a shard's replicas while none serves the backup
_BLOCK = 1 << 20
# Answers after which another replica, or the same one a little later, may serve the backup.
_RETRIED = {"not_leader", "no_leader", "outcome_unknown", "replica_faulted"}


class BackupFailed(Exception):
    """The backup was refused or could not be taken; ``code`` is the CLI's exit code (2 refused, 1 failed)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


def shard_file(shard_id: str) -> str:
    """The archive member holding shard ``shard_id``'s snapshot."""
    return f"shards/{shard_id}.json"


def model_versions(app: App) -> dict[str, int]:
    """Each model of ``app`` with the version its code declares."""
    return {name: model.version for name, model in sorted(app.models.items())}


def slot_map_problem(reports: dict[str, dict[str, Any]]) -> str | None:
    """Why the groups' slot tables are no consistent map of the cluster, or ``None``.

    ``reports`` are, by shard, ``{"ranges": [...], "moves": [...]}`` as ``StateMachine.slots_report``
    gives them (or a snapshot's ``slots`` and ``moves``). A problem is a move in progress, a range frozen
    or importing, or a slot owned by two shards or by none.
    """
    for move in pending_moves(reports):
        return f"a slot move is in progress ({move.describe()}): back up once it is done"
    owners: list[str | None] = [None] * SLOT_COUNT
    for shard_id, report in sorted(reports.items()):
        for held in report.get("ranges", []):
            state, first, last = held["state"], held["first"], held["last"]
            if state in (FROZEN, IMPORTING):
                return f"shard {shard_id} holds slots {first}-{last} {state} by move {held.get('move')}"
            if state != OWNED:
                continue
            for slot in range(first, last + 1):
                if owners[slot] is not None:
                    return f"slot {slot} is owned by both {owners[slot]} and {shard_id}: a move ended mid-backup"
                owners[slot] = shard_id
    if None in owners:
        return f"slot {owners.index(None)} is owned by no shard: a move ended mid-backup, or a group has no table"
    return None


def secret_id(secret: str) -> str:
    """The key id naming the cluster secret ``secret`` in signatures (``node.signing``), which reveals nothing of it."""
    return key_id(internal_key(secret))


def cluster_summary(config: ClusterConfig) -> dict[str, Any]:
    """What the manifest records of the cluster file: its path, app, shards, replicas, dispatchers and
    ``[raft]``/``[integrity]`` settings, and ``secret_id``, the key id of its internal signing key
    (``node.signing.key_id``: every signed request carries it; it reveals nothing of the secret). Never the
    secret, users or certificates."""
    return {
        "file": str(config.path),
        "app": config.app,
        "secret_id": secret_id(config.secret),
        "shards": [
            {
                "id": shard.id,
                "slots": [list(span) for span in shard.slots],
                "replicas": [{"id": r.id, "raft": r.raft, "http": r.http} for r in shard.replicas],
            }
            for shard in config.shards
        ],
        "dispatchers": [{"id": d.id, "http": d.http} for d in config.dispatchers],
        "raft": dataclasses.asdict(config.timings),
        "integrity": dataclasses.asdict(config.integrity),
    }


def backup(
    config: ClusterConfig, app: App, output: Path, timeout: float = 600.0, say: Callable[[str], None] = print
) -> int:
    """``docraft backup``: write every shard of ``config``'s running cluster to ``output``. Exit code.

    ``app`` is the cluster's app: its fingerprint must be the one the cluster records. 0 when written,
    2 when refused (a move in progress, other app code, no shard leader answering), 1 when it failed
    (unreachable, timed out, the file could not be written).
    """
    deadline = time.monotonic() + timeout
    fingerprint = app_fingerprint(app)
    try:
        problem = slot_map_problem({s.id: _slots_report(config, s.replicas) for s in config.shards})
        if problem is not None:
            raise BackupFailed(f"not now: {problem}")
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", dir=output.parent))
        try:
            headers: dict[str, dict[str, Any]] = {}
            files: dict[str, str] = {}
            for shard in config.shards:
                name = shard_file(shard.id)
                headers[shard.id], files[name] = _fetch_shard(config, shard.replicas, staging / name, deadline)
                header = headers[shard.id]
                say(f"shard {shard.id}: index {header['index']} (term {header['term']}, {header['replica']}), "
                    f"{sum(header['documents'].values())} documents")  # fmt: skip
            _check_copies(headers, fingerprint, app)
            manifest = {
                "format": FORMAT,
                "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
                "docraft_version": docraft_version(),
                "cluster": cluster_summary(config),
                "app": {"module": app.module, "fingerprint": fingerprint, "model_versions": model_versions(app)},
                "slot_map": {shard_id: h["slots"] for shard_id, h in headers.items()},
                "shards": {
                    shard_id: {
                        "file": shard_file(shard_id),
                        **{k: h[k] for k in ("replica", "index", "term", "digest", "documents", "versions")},
                    }
                    for shard_id, h in headers.items()
                },
                "files": files,
            }
            _write_archive(output, manifest, staging)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    except BackupFailed as exc:
        say(f"docraft backup: {exc}")
        return exc.code
    except OSError as exc:
        say(f"docraft backup: {exc}")
        return 1
    say(f"wrote {output}: {len(config.shards)} shards, app code {fingerprint[:12]}… ({app.module})")
    return 0


def _slots_report(config: ClusterConfig, replicas: tuple[ReplicaConfig, ...]) -> dict[str, Any]:
    """The slot table and moves of a group, from the first of ``replicas`` that answers."""
    key = internal_key(config.secret)
    for replica in replicas:
        try:
            code, body = http_json("GET", f"{replica.http_url}/_shard/slots", timeout=5.0, key=key, ca=config.ca)
        except (OSError, ValueError):
            continue
        if code == 200:
            report: dict[str, Any] = body
            return report
    raise BackupFailed(f"no replica of shard {replicas[0].shard} answers", code=1)


def _fetch_shard(
    config: ClusterConfig, replicas: tuple[ReplicaConfig, ...], path: Path, deadline: float
) -> tuple[dict[str, Any], str]:
    """Stream the group's snapshot from its leader to ``path``; its header and the file's SHA-256.

    Asks each replica in turn (a follower answers ``not_leader`` at once) until one serves it.
    """
    shard = replicas[0].shard
    heard: list[str] = []
    while True:
        for replica in replicas:
            try:
                return _stream(config, replica, path)
            except urllib.error.HTTPError as exc:
                error = _error_of(exc)
                if error.get("code") not in _RETRIED:
                    raise BackupFailed(f"{replica.id} refused the backup: {error.get('message', exc)}") from None
                heard.append(f"{replica.id}: {error.get('message')}")
            except (OSError, http.client.HTTPException, ValueError) as exc:
                heard.append(f"{replica.id}: {exc}")
        if time.monotonic() >= deadline:
            raise BackupFailed(f"no leader of shard {shard} served the backup ({'; '.join(heard[-3:])})", code=1)
        time.sleep(RETRY_EVERY)


def _stream(config: ClusterConfig, replica: ReplicaConfig, path: Path) -> tuple[dict[str, Any], str]:
    """One ``GET /_shard/backup`` of ``replica`` into ``path``. Raises ``HTTPError`` for an error answer,
    ``OSError``/``HTTPException`` for a broken stream and ``ValueError`` for one that is not a backup."""
    key, headers = internal_key(config.secret), {TIMEOUT_HEADER: str(BARRIER_TIMEOUT)}
    request = signed_request("GET", f"{replica.http_url}/_shard/backup", None, key, headers)
    digest = hashlib.sha256()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_request(request, BARRIER_TIMEOUT + 20, config.ca) as response:
        header = ujson.loads(response.readline())
        with open(path, "wb") as out:
            last = b""
            while block := response.read(_BLOCK):
                out.write(block)
                digest.update(block)
                last = block
    if not isinstance(header, dict) or header.get("shard") != replica.shard or not last.endswith(b"}\n"):
        raise ValueError(f"{replica.id} sent no whole backup of shard {replica.shard}")
    return header, digest.hexdigest()


def _error_of(exc: urllib.error.HTTPError) -> dict[str, Any]:
    """The ``error`` object of an error answer (empty when the body is not the error shape)."""
    try:
        body = ujson.loads(exc.read() or b"null")
    except ValueError:
        return {}
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else {}


def _check_copies(headers: dict[str, dict[str, Any]], fingerprint: str, app: App) -> None:
    """Refuse copies that run other app code than ``app``, or whose slot tables are no consistent map."""
    for shard_id, header in headers.items():
        if header["fingerprint"] not in (None, fingerprint):
            raise BackupFailed(
                f"shard {shard_id} runs app code {header['fingerprint'][:12]}…, not {app.module}'s "
                f"{fingerprint[:12]}…: back up with the cluster's app (--app)"
            )
    problem = slot_map_problem({s: {**h["slots"], "moves": h["moves"]} for s, h in headers.items()})
    if problem is not None:
        raise BackupFailed(f"the shards' copies disagree on the slot map ({problem}); run the backup again")


def _write_archive(output: Path, manifest: dict[str, Any], staging: Path) -> None:
    """``manifest.json``, then each file it lists from ``staging``, as ``output`` (0600), replaced whole."""
    partial = staging / "archive.tar.gz"
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as raw:
        with tarfile.open(fileobj=raw, mode="w:gz", compresslevel=6) as archive:
            text = ujson.dumps(manifest, indent=2, escape_forward_slashes=False).encode()
            info = tarfile.TarInfo(MANIFEST)
            info.size, info.mtime, info.mode = len(text), int(time.time()), 0o600
            archive.addfile(info, io.BytesIO(text))
            for name in manifest["files"]:
                archive.add(staging / name, arcname=name, recursive=False)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(partial, output)
