"""``docraft restore``: build a new cluster's data directories from a ``docraft backup`` archive.

Nothing is written until everything is checked: the manifest's format; the app (``--app``, else the
cluster file's) must have the fingerprint and model versions the backup was taken with; the new cluster
file must list exactly the backup's shards, with data directories inside ``--data-dir`` that hold nothing
yet, give each shard the slots it has held since the cluster began (version 0: a router starts from the
file's map at that version and takes a group's claim over it only at a higher one, so a file giving such
a slot to another shard would send its requests, again and again, to a shard that refuses them), and
have a secret other than the backed-up cluster's; every file must have the SHA-256 the manifest gives;
and each shard's snapshot, loaded into a state machine, must have the manifest's digest, document
counts and slot table.

**A new cluster, never a member of the old one.** The secret is the Raft password and the root of the
signing key, so with a secret of its own the restored cluster and the old one cannot exchange a Raft
message or a signed request, even at the same addresses. With the old secret, a replica of the old
cluster still running at one of the new file's addresses would be a member of a restored group, and its
log, of a higher term than the restored anchors (term 0), would win the group's first election and
replace the restored state.

Each replica of a shard then gets the same data directory:

- ``snapshot.json``: the shard's state, with its Raft anchors at the backup's index in term 0 and the new
  cluster's voters. Term 0, not the old group's term: the new group elects its first leader in term 1,
  and every entry it appends has a term above the anchors', as Raft needs (a restored member whose last
  entry had the old, higher term would otherwise look more up to date than one holding the new
  group's entries). The state's ``members`` name the new replicas (routers take a group's replicas
  from it), and its next digest checkpoint is the backup's index: the first entry the new group
  applies records ``[index, digest]`` with the digest the manifest gives, so ``/_admin/digest`` shows
  that every replica loaded the backup.
- ``raft.members``: a voter of the new cluster file's replicas of that shard (``consensus.members``).
  ``docraft node`` starts a replica that has it from that record, as a voter, whether or not it is given
  ``--bootstrap``, so the restored replicas form a new group of their own: they never ask the old
  group's members anything, and hold no address of theirs.

Without ``--config`` the new cluster file is written as ``DATA_DIR/cluster.toml``: the backup's shards
with their slots, replicas, addresses, dispatchers and ``[raft]``/``[integrity]`` settings, a fresh
secret, no users (add them with ``docraft user add``) and each replica's data in ``DATA_DIR/<replica id>``.
Blocking CLI code.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from functools import partial
from pathlib import Path
from typing import IO, Any

import ujson

from consensus.members import Membership, write_membership
from consensus.replica import SNAPSHOT_FILE
from consensus.slots import OWNED
from consensus.state_machine import StateMachine
from node.backup import FORMAT, MANIFEST, model_versions, secret_id
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ConfigError, load_config, parse_config, render_config
from node.private_files import private_dir, write_secret
from node.shard_backup import json_chunks
from query.app import App
from query.fingerprint import app_fingerprint

CONFIG_NAME = "cluster.toml"
_NO_OP = b"\x01"  # PySyncObj's no-op entry (_COMMAND_TYPE.NO_OP): what the restored log's anchors hold
_BLOCK = 1 << 20


class RestoreRefused(Exception):
    """The archive, the app or the new cluster's file does not allow restoring; nothing was written."""


def restore(
    archive_path: Path,
    data_dir: Path,
    config_path: Path | None,
    load: Callable[[str], App],
    app_module: str | None = None,
    say: Callable[[str], None] = print,
) -> int:
    """``docraft restore``: the data directories of a new cluster from ``archive_path``. Exit code.

    ``load`` loads an app module: ``app_module``, else the new cluster file's app. 0 when restored,
    2 when refused (one line saying why; nothing written), 1 when reading or writing failed.
    """
    try:
        with tarfile.open(archive_path, mode="r:gz") as archive:
            manifest = _manifest(archive)
            config, config_text = _new_config(manifest, data_dir, config_path)
            app = load(app_module or config.app)
            _check_app(manifest, app)
            _check_shards(manifest, config, data_dir)
            _check_slots(manifest, config)
            _check_secret(manifest, config)
            staging = Path(tempfile.mkdtemp(prefix=".restoring.", dir=private_dir(data_dir)))
            try:
                files = _verified_files(archive, manifest, staging)
                snapshots = {s.id: _new_snapshot(manifest, s.id, files, app, config, staging) for s in config.shards}
                if config_text is not None:
                    write_secret(config.path, config_text)
                for shard in config.shards:
                    _write_replicas(config, shard.id, snapshots[shard.id])
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except RestoreRefused as exc:
        say(f"docraft restore: {exc}")
        return 2
    except (OSError, tarfile.TarError, EOFError) as exc:
        say(f"docraft restore: {archive_path}: {exc}")
        return 1
    say(f"restored {len(config.shards)} shards into {data_dir}")
    say(next_steps(config, data_dir))
    return 0


def next_steps(config: ClusterConfig, data_dir: Path) -> str:
    """How to start the restored cluster of ``config`` (restored into ``data_dir``), and how to let someone
    in when its file lets no one in."""
    steps = [
        f"start it: on each host, `docraft node --config {config.path} --replica ID` for each replica and "
        f"`docraft dispatcher --config {config.path}`"
    ]
    if config.path.resolve() == (data_dir / CONFIG_NAME).resolve():
        steps.append(f"or all on this machine: `docraft up --data-dir {data_dir} --no-sample`")
    if not config.auth.users and not config.auth.anonymous:
        steps.append(
            f"no user may call it yet: `docraft user add --config {config.path} --user NAME --role admin` "
            "prints a token"
        )
    return "\n".join(steps)


def _manifest(archive: tarfile.TarFile) -> dict[str, Any]:
    """The archive's manifest; ``RestoreRefused`` for an archive that is not a backup of this format."""
    try:
        member = archive.getmember(MANIFEST)
        source = archive.extractfile(member)
        manifest = ujson.loads(source.read()) if source is not None else None
    except (KeyError, ValueError):
        manifest = None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise RestoreRefused(f"{archive.name!s} is not a docraft backup (no readable {MANIFEST})")
    if manifest.get("format") != FORMAT:
        raise RestoreRefused(f"the backup's format is {manifest.get('format')!r}; this docraft reads format {FORMAT}")
    return manifest


def _new_config(manifest: dict[str, Any], data_dir: Path, path: Path | None) -> tuple[ClusterConfig, str | None]:
    """The new cluster's configuration, and the text to write as its file when restore makes it."""
    if path is not None:
        return load_config(path), None
    summary = manifest["cluster"]
    shards = [
        (shard["id"], [(r["id"], r["raft"], r["http"], r["id"]) for r in shard["replicas"]])
        for shard in summary["shards"]
    ]
    dispatchers = [(d["id"], d["http"]) for d in summary["dispatchers"]]
    sections = {"raft": summary["raft"], "integrity": summary["integrity"]}
    slots = [shard["slots"] for shard in summary["shards"]]
    text = render_config(new_secret(), summary["app"], shards, dispatchers, sections, slots)
    target = data_dir / CONFIG_NAME
    if target.exists():
        raise RestoreRefused(f"{target} exists: restore into an empty directory, or name it with --config")
    try:
        return parse_config(tomllib.loads(text), target), text
    except (tomllib.TOMLDecodeError, ConfigError) as exc:
        raise RestoreRefused(f"the backup's cluster summary makes no valid cluster file: {exc}") from None


def _check_app(manifest: dict[str, Any], app: App) -> None:
    """Refuse an app whose code fingerprint or model versions are not the backup's, naming both."""
    taken = manifest["app"]
    fingerprint, versions = app_fingerprint(app), model_versions(app)
    if fingerprint != taken["fingerprint"] or versions != taken["model_versions"]:
        raise RestoreRefused(
            f"the backup was taken with app code {taken['fingerprint'][:12]}… ({taken['module']}, "
            f"{_versions(taken['model_versions'])}), this is {fingerprint[:12]}… ({app.module}, "
            f"{_versions(versions)}): restore with the backup's app"
        )


def _versions(versions: dict[str, int]) -> str:
    return ", ".join(f"{name} v{version}" for name, version in sorted(versions.items())) or "no models"


def _check_shards(manifest: dict[str, Any], config: ClusterConfig, data_dir: Path) -> None:
    """The new cluster lists the backup's shards, each replica's data directory in ``data_dir`` and empty."""
    backed_up, listed = set(manifest["shards"]), {s.id for s in config.shards}
    if backed_up != listed:
        raise RestoreRefused(
            f"{config.path} lists shards {', '.join(sorted(listed))}; the backup holds {', '.join(sorted(backed_up))}"
        )
    inside = data_dir.resolve()
    for shard in config.shards:
        for replica in shard.replicas:
            where = replica.data_dir.resolve()
            if not where.is_relative_to(inside):
                raise RestoreRefused(f"replica {replica.id}'s data directory {where} is not inside {inside}")
            if where.exists() and any(where.iterdir()):
                raise RestoreRefused(f"replica {replica.id}'s data directory {where} is not empty")


def _check_slots(manifest: dict[str, Any], config: ClusterConfig) -> None:
    """The new cluster file gives each shard every slot it has owned since the cluster began (at version 0;
    see the module docstring)."""
    given: dict[int, str] = {}
    for shard in config.shards:
        for first, last in shard.slots:
            given.update(dict.fromkeys(range(first, last + 1), shard.id))
    for shard_id, table in sorted(manifest["slot_map"].items()):
        for held in table["ranges"]:
            if held["state"] != OWNED or held["version"] != 0:
                continue
            for slot in range(held["first"], held["last"] + 1):
                if given.get(slot) != shard_id:
                    first_slots = ", ".join(f"{s['id']} {s['slots']}" for s in manifest["cluster"]["shards"])
                    raise RestoreRefused(
                        f"{config.path} gives slot {slot} to shard {given.get(slot)}, but shard {shard_id} has held "
                        f"slots {held['first']}-{held['last']} since the cluster began: give each shard the slots "
                        f"the backed-up cluster's file did ({first_slots})"
                    )


def _check_secret(manifest: dict[str, Any], config: ClusterConfig) -> None:
    """The new cluster file's secret is not the backed-up cluster's (see the module docstring)."""
    if secret_id(config.secret) == manifest["cluster"]["secret_id"]:
        raise RestoreRefused(
            f"{config.path} has the secret of the cluster the backup was taken from: its replicas could join the "
            "restored groups and replace what is restored; give the new cluster a secret of its own "
            "(openssl rand -hex 24)"
        )


def _verified_files(archive: tarfile.TarFile, manifest: dict[str, Any], staging: Path) -> dict[str, Path]:
    """Copy every file the manifest lists into ``staging``, each checked against its SHA-256; by name.

    Files are read from the archive by the manifest's names, never extracted by their own, so a member
    cannot write outside ``staging``. A member the manifest does not list is refused too.
    """
    expected: dict[str, str] = manifest["files"]
    unlisted = [m.name for m in archive.getmembers() if m.name != MANIFEST and m.name not in expected]
    if unlisted:
        raise RestoreRefused(f"the archive holds {unlisted[0]}, which its manifest does not list: it was altered")
    copies = {}
    for n, (name, checksum) in enumerate(sorted(expected.items())):
        try:
            source = archive.extractfile(name)
        except KeyError:
            source = None
        if source is None:
            raise RestoreRefused(f"the archive lacks {name}, which its manifest lists")
        copies[name] = staging / f"{n}.json"
        actual = _copy(source, copies[name])
        if actual != checksum:
            raise RestoreRefused(
                f"{name} has SHA-256 {actual[:16]}…, the manifest says {checksum[:16]}…: the archive is damaged"
            )
    return copies


def _copy(source: IO[bytes], path: Path) -> str:
    """Copy ``source`` to ``path``; its SHA-256."""
    digest = hashlib.sha256()
    with open(path, "wb") as out:
        while block := source.read(_BLOCK):
            digest.update(block)
            out.write(block)
    return digest.hexdigest()


def _checked_state(
    manifest: dict[str, Any], shard_id: str, files: dict[str, Path], app: App, config: ClusterConfig
) -> StateMachine:
    """Shard ``shard_id``'s snapshot loaded into a state machine, whose digest, counts and slot table must be
    the manifest's."""
    recorded = manifest["shards"][shard_id]
    machine = StateMachine(
        app,
        checkpoint_interval=config.integrity.checkpoint_interval,
        digests=config.integrity.digests,
    )
    try:
        with open(files[recorded["file"]], encoding="utf-8") as source:
            machine.restore(ujson.load(source))
    except (ValueError, KeyError, TypeError) as exc:
        raise RestoreRefused(f"shard {shard_id}'s snapshot does not load ({type(exc).__name__}: {exc})") from None
    found = {
        "digest": machine.digest(),
        "documents": machine.document_count(),
        "slot table": machine.slots.to_json(),
    }
    wanted = {
        "digest": recorded["digest"],
        "documents": recorded["documents"],
        "slot table": manifest["slot_map"][shard_id],
    }
    for what, value in found.items():
        if value != wanted[what]:
            raise RestoreRefused(f"shard {shard_id}'s snapshot has another {what} than the manifest's")
    return machine


def _new_snapshot(
    manifest: dict[str, Any], shard_id: str, files: dict[str, Path], app: App, config: ClusterConfig, staging: Path
) -> Path:
    """Shard ``shard_id``'s ``snapshot.json`` for the new cluster (see the module docstring), written in
    ``staging`` once its state is checked (``_checked_state``); its path. One shard's state is in memory at
    a time, and its encoding is streamed to the file."""
    machine = _checked_state(manifest, shard_id, files, app, config)
    index = manifest["shards"][shard_id]["index"]
    replicas = config.shard(shard_id).replicas
    machine.members = {"voters": [{"id": r.id, "raft": r.raft, "http": r.http} for r in replicas], "learners": []}
    machine.integrity_log.next_checkpoint = index
    anchor = base64.b64encode(_NO_OP).decode()
    document = {
        "state": machine.snapshot(lend=True),
        "raft": {"last": [anchor, index, 0], "previous": [anchor, index - 1, 0], "cluster": _voters(config, shard_id)},
    }
    path = staging / f"{shard_id}.snapshot.json"
    _write_private(path, (piece.encode() for piece in json_chunks(document)))
    return path


def _write_replicas(config: ClusterConfig, shard_id: str, snapshot: Path) -> None:
    """Give each replica of ``shard_id`` a data directory holding ``snapshot`` as its ``snapshot.json`` and a
    ``raft.members`` naming it a voter of the new group."""
    for replica in config.shard(shard_id).replicas:
        private_dir(replica.data_dir)
        with open(snapshot, "rb") as source:
            _write_private(replica.data_dir / SNAPSHOT_FILE, iter(partial(source.read, _BLOCK), b""))
        write_membership(replica.data_dir, Membership("voter", tuple(_voters(config, shard_id))), fsync=True)


def _voters(config: ClusterConfig, shard_id: str) -> list[str]:
    """The Raft addresses of the new cluster's replicas of ``shard_id``, sorted."""
    return sorted(r.raft for r in config.shard(shard_id).replicas)


def _write_private(path: Path, blocks: Iterable[bytes]) -> None:
    """Write ``blocks`` to ``path``, readable by its owner only (0600), flushed to disk."""
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        for block in blocks:
            out.write(block)
        out.flush()
        os.fsync(out.fileno())
