"""``docraft backup`` and ``docraft restore`` on real processes.

A loaded cluster is backed up (``docraft backup`` as its own process) while writers keep writing; the
archive is restored into a fresh directory with a new cluster file on new ports, and that cluster is
started: every document acknowledged before the backup started is there, each replica's slot table is
the manifest's, and each replica recorded the manifest's digest at the backup's index. Restoring with
other app code, or from an altered archive, is refused and writes nothing.
"""

from __future__ import annotations

import asyncio
import gc
import io
import os
import signal
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import ujson

from consensus.slots import SLOT_COUNT
from consensus.state_machine import StateMachine
from models.errors import SlotFrozen, SlotImporting
from node.backup import MANIFEST, slot_map_problem
from node.config import load_config, render_config
from node.private_files import write_secret
from node.shard_backup import json_chunks, take_snapshot
from query.app import load_app
from query.fingerprint import app_fingerprint
from tests.harness import (
    ANONYMOUS_CLIENTS,
    FAST_RAFT,
    Cluster,
    Writers,
    free_ports,
    http,
    running,
    wait_for,
    write_cluster_file,
)
from tests.machines import owning_all
from tests.test_rebalance_cluster import leader_of, move_being_copied, preload, scatter_ids

PRELOADED = 1500


# -- pure parts ---------------------------------------------------------------------------------------


def owned(first: int, last: int) -> dict[str, Any]:
    return {"first": first, "last": last, "state": "owned", "version": 0, "move": None, "owner": None}


def test_json_chunks_encode_what_ujson_reads_back() -> None:
    value: dict[str, Any] = {
        "format": 4,
        "collections": {"User": [{"id": n, "tags": ["a/b"]} for n in range(25)], "Order": []},
    }
    pieces = list(json_chunks({**value, "read_once": iter(range(9)), "none": iter([])}, items=4))
    assert ujson.loads("".join(pieces)) == {**value, "read_once": list(range(9)), "none": []}
    assert max(len(p) for p in pieces) < len(ujson.dumps(value["collections"]["User"][:5]))


def test_a_lent_snapshot_loads_into_the_same_state() -> None:
    app = load_app("examples.people")
    machine = StateMachine(app)
    machine.apply({"type": "init_slots", "ranges": [[0, SLOT_COUNT - 1]]}, 1)
    docs = [{"id": n, "first_name": "A", "last_name": str(n), "country": "X"} for n in (3, 1, 2)]
    machine.apply({"type": "insert_batch", "model": "User", "docs": docs, "request_id": "r1", "time": 1.0}, 2)
    copy = StateMachine(app)
    copy.restore(ujson.loads("".join(json_chunks(machine.snapshot(lend=True), items=2))))
    assert copy.snapshot() == machine.snapshot() and copy.digest() == machine.digest()


def test_lent_documents_are_never_changed_by_the_writes_that_follow() -> None:
    """The lend's premise (``node.shard_backup``): a stored document is replaced, never changed in place, even
    by app code that changes every document it is handed, by updates, deletes and rollbacks."""
    machine = owning_all(load_app("tests.apps.careless_app"))
    for key in (1, 2, 3):
        assert "ok" in machine.apply({"type": "mutation", "endpoint": "add_note", "args": {"id": key}})
    lent = machine.snapshot(lend=True)["collections"]
    encoded = "".join(json_chunks(lent))
    for endpoint, key in [
        ("scribble_on_get", 1),
        ("scribble_on_written", 10),
        ("scribble_on_written", 2),  # inserts 2, which exists: fails and rolls its writes back
        ("delete_scribble_and_fail", 3),
    ]:
        machine.apply({"type": "mutation", "endpoint": endpoint, "args": {"id": key}})
    machine.query("read_and_scribble", {})
    assert "".join(json_chunks(lent)) == encoded


def test_a_lent_snapshot_is_taken_without_an_object_per_remembered_request_and_stays_as_taken() -> None:
    """The replica's lock is held while it is taken: building a list per remembered request there (100,000 of
    them) sets off garbage collections that walk every stored document, for a second with 500,000. What it
    lends is the state as taken, whatever is remembered and forgotten after."""
    app = load_app("examples.people")
    machine = owning_all(app, remembered_requests=10_000)
    docs = [{"id": n, "first_name": "A", "last_name": str(n), "country": "X"} for n in range(20)]
    machine.apply({"type": "insert_batch", "model": "User", "docs": docs, "request_id": "first", "time": 1.0})
    for n in range(10_000):
        machine.remember_result(f"r{n}", None, {"ok": n}, n)
    expected = machine.snapshot()
    gc.collect()
    gc.disable()
    try:
        before = gc.get_count()[0]
        lent = machine.snapshot(lend=True)
        allocated = gc.get_count()[0] - before
    finally:
        gc.enable()
    assert allocated < 100
    for n in range(100):  # each forgets the oldest
        machine.apply({"type": "insert_batch", "model": "User", "docs": [], "request_id": f"later{n}", "time": 2.0})
    copy = StateMachine(app)
    copy.restore(ujson.loads("".join(json_chunks(lent, items=300))))
    assert copy.snapshot() == expected


class FakeReplica:
    """What ``take_snapshot`` uses of a leader's replica, over a state machine, with a barrier that commits."""

    fault = None

    def __init__(self, machine: StateMachine) -> None:
        self.state_machine = machine

    async def submit(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        return self.state_machine.apply(command)

    def status(self) -> dict[str, Any]:
        return {"term": 1}

    def read_locally(self, reader: Callable[[StateMachine], Any]) -> Any:
        return reader(self.state_machine)


def backup_of(machine: StateMachine) -> dict[str, Any]:
    """``take_snapshot`` of a group whose leader holds ``machine``."""
    service = SimpleNamespace(replica=FakeReplica(machine), config=SimpleNamespace(shard="s1", id="s1n0"))
    return asyncio.run(take_snapshot(service, 1.0))  # type: ignore[arg-type]


def test_a_group_with_a_move_in_progress_refuses_the_backup() -> None:
    """A move's record and received documents change under a lent snapshot (each ``import_docs``), so a
    group whose slots are moving refuses, on either side; once the move ended it serves the backup."""
    app = load_app("examples.people")
    target = StateMachine(app)
    target.apply({"type": "init_slots", "ranges": [[0, 99]]})
    begin = {"type": "import_begin", "move": "m1", "source": "s0", "slots": [[100, 199]], "epoch": 1, "time": 1.0}
    assert "ok" in target.apply(begin), target.apply(begin)
    with pytest.raises(SlotImporting, match="moving"):
        backup_of(target)
    assert "ok" in target.apply({"type": "import_abort", "move": "m1"})
    assert backup_of(target)["header"]["slots"]["ranges"][0]["first"] == 0
    source = owning_all(app)
    freeze = {"type": "move_begin", "move": "m2", "target": "s1", "target_replicas": [], "slots": [[0, 9]], "epoch": 1}
    assert "ok" in source.apply({**freeze, "time": 1.0})
    with pytest.raises(SlotFrozen, match="move m2"):
        backup_of(source)


def test_a_consistent_slot_map_passes_and_overlaps_gaps_and_moves_are_named() -> None:
    half = SLOT_COUNT // 2
    good = {"s0": {"ranges": [owned(0, half - 1)], "moves": []}, "s1": {"ranges": [owned(half, SLOT_COUNT - 1)]}}
    assert slot_map_problem(good) is None
    overlap = {**good, "s1": {"ranges": [owned(half - 10, SLOT_COUNT - 1)]}}
    assert "owned by both s0 and s1" in str(slot_map_problem(overlap))
    gap = {**good, "s1": {"ranges": [owned(half + 1, SLOT_COUNT - 1)]}}
    assert f"slot {half} is owned by no shard" in str(slot_map_problem(gap))
    frozen = {**owned(0, half - 1), "state": "frozen", "move": "m1"}
    moving = {**good, "s0": {"ranges": [frozen], "moves": []}}
    assert "frozen by move m1" in str(slot_map_problem(moving))


# -- a backup of a running cluster ----------------------------------------------------------------------


@dataclass
class Backup:
    archive: Path
    manifest: dict[str, Any]
    acked_before: set[int]  # writers' ids acknowledged before docraft backup started
    secret: str  # the backed-up cluster's


@pytest.fixture(scope="module")
def taken(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Backup]:
    root = tmp_path_factory.mktemp("backed-up")
    archive = root / "backup.tar.gz"
    with running(Cluster(root / "cluster", shards=2, replicas=3)) as cluster:
        secret = cluster.processes.config.secret
        preload(cluster, PRELOADED)
        with Writers(cluster.url, count=4, retry=True) as writers:
            writers.wait_for_more(20, timeout=30)
            acked_before = set(writers.acked)  # one C-level copy of a set: atomic under the GIL
            done = cluster.docraft("backup", "-o", str(archive), timeout=300)
            writers.wait_for_more(5, timeout=30)  # the cluster kept serving writes
        assert done.returncode == 0, done.stdout + done.stderr
    with tarfile.open(archive, "r:gz") as opened:
        assert opened.getnames()[0] == MANIFEST
        source = opened.extractfile(MANIFEST)
        assert source is not None
        manifest = ujson.loads(source.read())
    yield Backup(archive, manifest, acked_before, secret)


def restore(archive: Path, data_dir: Path, config: Path | None, *extra: str) -> subprocess.CompletedProcess[str]:
    """``docraft restore`` as an operator runs it."""
    command = [sys.executable, "-m", "node.cli", "restore", str(archive), "--data-dir", str(data_dir)]
    command += ["--config", str(config)] if config is not None else []
    return subprocess.run([*command, *extra], capture_output=True, text=True, timeout=120)


def new_cluster_file(root: Path, shards: list[str], replicas: int, secret: str | None = None) -> Path:
    """A cluster file for the example app on new ports, ``replicas`` replicas per shard, data in ``root``;
    ``shards`` get even slot ranges in the order given, and ``secret`` if given, else a fresh one."""
    ports = iter(free_ports(2 * len(shards) * replicas + 1))
    layout = [
        (shard, [(f"{shard}n{r}", f"127.0.0.1:{next(ports)}", f"127.0.0.1:{next(ports)}", f"{shard}n{r}")
                 for r in range(replicas)])
        for shard in shards
    ]  # fmt: skip
    dispatcher, sections = f"127.0.0.1:{next(ports)}", {"raft": FAST_RAFT, **ANONYMOUS_CLIENTS}
    path = write_cluster_file(root, layout, dispatcher, sections)
    if secret is not None:
        write_secret(path, render_config(secret, "examples.people", layout, [("d0", dispatcher)], sections))
    return path


def rewrite_archive(source: Path, target: Path, edit: Callable[[str, bytes], bytes]) -> Path:
    """A copy of archive ``source`` as ``target``, each member's content replaced by ``edit(name, content)``."""
    with tarfile.open(source, "r:gz") as opened, tarfile.open(target, "w:gz") as out:
        for member in opened.getmembers():
            data = opened.extractfile(member)
            assert data is not None
            content = edit(member.name, data.read())
            member.size = len(content)
            out.addfile(member, io.BytesIO(content))
    return target


def has_checkpoint(url: str, checkpoint: list[Any]) -> bool:
    """Whether the replica at ``url`` lists ``[index, digest]`` among its ``/_admin/digest`` checkpoints."""
    code, report = http("GET", f"{url}/_admin/digest")
    return code == 200 and checkpoint in report["checkpoints"]


class RestoredCluster(Cluster):
    """A ``Cluster`` started once on the cluster file and data directories a restore wrote: a retry would
    empty the data directories, and a new cluster file would have nothing restored."""

    def start(self, attempts: int = 1) -> RestoredCluster:
        super().start(attempts=1)
        return self

    def _write_config(self) -> None:
        assert (self.root / "cluster.toml").exists()


def test_the_manifest_records_each_shard_at_one_index_with_checksums(taken: Backup) -> None:
    manifest = taken.manifest
    assert manifest["format"] == 1 and manifest["app"]["module"] == "examples.people"
    assert manifest["app"]["fingerprint"] == app_fingerprint(load_app("examples.people"))
    assert set(manifest["shards"]) == set(manifest["slot_map"]) == {"s0", "s1"}
    for shard in manifest["shards"].values():
        assert shard["index"] > 0 and shard["term"] >= 1 and len(shard["digest"]) == 32
        assert len(manifest["files"][shard["file"]]) == 64
    documents = sum(sum(shard["documents"].values()) for shard in manifest["shards"].values())
    assert documents >= PRELOADED + len(taken.acked_before)


def test_a_restored_cluster_holds_every_acknowledged_document_and_the_manifests_digests(
    taken: Backup, tmp_path: Path
) -> None:
    config_path = new_cluster_file(tmp_path, ["s0", "s1"], replicas=2)
    done = restore(taken.archive, tmp_path, config_path)
    assert done.returncode == 0, done.stdout + done.stderr
    config = load_config(config_path)
    with running(RestoredCluster(tmp_path)) as cluster:
        assert set(scatter_ids(cluster, "Preload")) == set(range(1, PRELOADED + 1))
        assert set(scatter_ids(cluster, "Writers")) >= taken.acked_before
        for shard in config.shards:
            recorded = taken.manifest["shards"][shard.id]
            for replica in shard.replicas:
                code, slots = http("GET", f"{replica.http_url}/_shard/slots")
                assert code == 200, slots
                table = {k: slots[k] for k in ("initialized", "epoch", "ranges")}
                assert table == taken.manifest["slot_map"][shard.id]
                assert sorted(m["raft"] for m in slots["members"]["voters"]) == sorted(r.raft for r in shard.replicas)
                checkpoint = [recorded["index"], recorded["digest"]]
                wait_for(
                    partial(has_checkpoint, replica.http_url, checkpoint),
                    20,
                    f"{replica.id} to record the manifest's digest at its index",
                )
                status = cluster.shard_status(replica.id)
                assert sorted(status["voters"]) == sorted(r.raft for r in shard.replicas)


def test_restore_without_a_config_writes_the_backups_cluster_file(taken: Backup, tmp_path: Path) -> None:
    done = restore(taken.archive, tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    config = load_config(tmp_path / "cluster.toml")
    summary = taken.manifest["cluster"]
    assert [s.id for s in config.shards] == [s["id"] for s in summary["shards"]]
    assert [r.http for s in config.shards for r in s.replicas] == [
        r["http"] for s in summary["shards"] for r in s["replicas"]
    ]
    for replica in (r for s in config.shards for r in s.replicas):
        assert (replica.data_dir / "snapshot.json").exists() and (replica.data_dir / "raft.members").exists()


def test_restore_says_how_to_start_the_new_cluster_and_let_a_user_in(taken: Backup, tmp_path: Path) -> None:
    done = restore(taken.archive, tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    config = tmp_path / "cluster.toml"
    assert done.stdout.splitlines() == [
        f"restored 2 shards into {tmp_path}",
        f"start it: on each host, `docraft node --config {config} --replica ID` for each replica and "
        f"`docraft dispatcher --config {config}`",
        f"or all on this machine: `docraft up --data-dir {tmp_path} --no-sample`",
        f"no user may call it yet: `docraft user add --config {config} --user NAME --role admin` prints a token",
    ]


def test_restoring_with_other_app_code_is_refused_naming_both(taken: Backup, tmp_path: Path) -> None:
    config_path = new_cluster_file(tmp_path, ["s0", "s1"], replicas=1)
    done = restore(taken.archive, tmp_path, config_path, "--app", "tests.apps.family_app")
    assert done.returncode == 2
    lines = (done.stdout + done.stderr).strip().splitlines()
    assert len(lines) == 1, lines
    other = app_fingerprint(load_app("tests.apps.family_app"))
    assert taken.manifest["app"]["fingerprint"][:12] in lines[0] and other[:12] in lines[0]
    assert "examples.people" in lines[0] and "tests.apps.family_app" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.toml"]


def test_restoring_an_altered_archive_is_refused(taken: Backup, tmp_path: Path) -> None:
    def alter(name: str, content: bytes) -> bytes:
        return content.replace(b'"Preload"', b'"Preloaf"', 1) if name == "shards/s0.json" else content

    altered = rewrite_archive(taken.archive, tmp_path / "altered.tar.gz", alter)
    config_path = new_cluster_file(tmp_path / "new", ["s0", "s1"], replicas=1)
    done = restore(altered, tmp_path / "new", config_path)
    assert done.returncode == 2
    assert "shards/s0.json has SHA-256" in done.stdout and "damaged" in done.stdout
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["cluster.toml"]


def test_restoring_into_a_cluster_file_with_the_backed_up_clusters_secret_is_refused(
    taken: Backup, tmp_path: Path
) -> None:
    """With the old secret (the Raft password), a replica of the old cluster still running at one of the new
    addresses would be a member of a restored group, and win its election with its higher-term log."""
    config_path = new_cluster_file(tmp_path, ["s0", "s1"], replicas=1, secret=taken.secret)
    done = restore(taken.archive, tmp_path, config_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "has the secret of the cluster the backup was taken from" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.toml"]


def test_restoring_into_a_cluster_file_that_gives_slots_to_other_shards_is_refused(
    taken: Backup, tmp_path: Path
) -> None:
    """Each group has owned its slots since the cluster began (version 0), which a router's map from the file,
    also at version 0, would not give way to: requests for them would go to a shard that refuses them."""
    config_path = new_cluster_file(tmp_path, ["s1", "s0"], replicas=1)  # s1 gets slots 0-8191
    done = restore(taken.archive, tmp_path, config_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "gives slot 0 to shard s1, but shard s0 has held slots 0-8191 since the cluster began" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cluster.toml"]


def test_the_cluster_file_restore_writes_gives_each_shard_the_backed_up_files_slots(
    taken: Backup, tmp_path: Path
) -> None:
    """The backed-up file need not split the slots evenly in shard order, as ``render_config`` does: here it
    lists s1 (slots 8192-16383) before s0."""

    def reorder(name: str, content: bytes) -> bytes:
        if name != MANIFEST:
            return content
        manifest = ujson.loads(content)
        manifest["cluster"]["shards"].reverse()
        return ujson.dumps(manifest).encode()

    archive = rewrite_archive(taken.archive, tmp_path / "reordered.tar.gz", reorder)
    done = restore(archive, tmp_path / "new", None)
    assert done.returncode == 0, done.stdout + done.stderr
    config = load_config(tmp_path / "new" / "cluster.toml")
    recorded = {shard["id"]: shard["slots"] for shard in taken.manifest["cluster"]["shards"]}
    assert {shard.id: [list(span) for span in shard.slots] for shard in config.shards} == recorded


def test_a_backup_is_refused_while_a_move_is_in_progress(tmp_path: Path) -> None:
    """``docraft backup`` refuses before copying anything, and the moving groups' leaders refuse to serve one."""
    cluster = Cluster(tmp_path, shards=2, replicas=1, sections={"rebalance": {"stall_after": 600.0}})
    with running(cluster):
        preload(cluster, 2000)
        mover = cluster.docraft_process(
            "rebalance", "--move", "0-8191", "--to", "s1", "--max-docs", "2000", log=tmp_path / "mover.log"
        )
        try:
            wait_for(lambda: move_being_copied(cluster, "s1"), 60, "the move copying documents", every=0.01)
            os.kill(mover.pid, signal.SIGKILL)  # the move stays in progress: frozen on s0, importing on s1
            mover.wait(10)
        finally:
            if mover.poll() is None:
                mover.kill()
                mover.wait()
        archive = tmp_path / "backup.tar.gz"
        done = cluster.docraft("backup", "-o", str(archive), timeout=60)
        assert done.returncode == 2, done.stdout + done.stderr
        assert "not now: a slot move is in progress" in done.stdout
        assert not archive.exists()
        for shard, code in (("s0", "slot_frozen"), ("s1", "slot_importing")):
            status, body = http("GET", f"{cluster.replica_url(leader_of(cluster, shard))}/_shard/backup")
            assert (status, body["error"]["code"]) == (503, code), body
