"""The fault benchmark's cluster and its nemesis: one fault at a time, each healed before the next.

Faults (``NEMESES``), each aimed at the leader or a random replica unless said otherwise (the first
fault of each kind at the leader, later ones at it 60% of the time). With several shards each fault but
``reshard`` first picks its shard at random (``Fault.shard``) and strikes that group:

- ``kill``: SIGKILL a replica, restart it 1.5-3 s later.
- ``pause``: SIGSTOP a replica for 1.5-3 s, then SIGCONT.
- ``partition``: cut a replica (a one-replica minority) off its group for 1.5-3 s (needs root); the
  dispatcher still reaches it.
- ``partition-dispatcher``: the same, and the dispatcher (and the benchmark) cannot reach it either.
- ``restart-all``: SIGKILL every replica of the group, restart them all.
- ``restart``: SIGTERM a replica (it snapshots and stops gracefully), wait for it to exit, start it again.
- ``repair``: ``docraft repair`` (remove, wipe, add) on a follower. A refusal (exit 2) is ``skipped``, a
  timeout ``failed``.
- ``membership``: ``docraft replica remove`` of a replica (the leader hands leadership over first), kept
  from retiring; it is then stopped, its data directory emptied but for its term and vote, started again
  (it joins as a learner) and added back with ``docraft replica add``. A refused removal (no healthy
  majority) is ``skipped``; an add that does not finish is ``failed``.
- ``reshard`` (2 shards or more): move a range of 64-512 slots holding a workload key to another shard
  with ``node.rebalance.move_range``, run in this process; one time in four the mover is cancelled
  mid-copy and ``node.rebalance.resume`` finishes the move. ``failed`` if the move did not end committed.
- ``lag``: SIGSTOP a follower until the others have compacted their logs past it, then stop one of the
  others (SIGTERM or SIGKILL), or half the time both (issue 8: SIGTERM the other follower, SIGTERM or
  SIGKILL the leader); SIGCONT the follower, restart the first one stopped (and once a leader is elected
  without it, the second), and wait until the follower has caught up.

Before each fault the nemesis waits (up to ``SETTLE_LIMIT`` per group) until every replica answers and
has applied what its leader had committed, so one fault's tail does not stack onto the next and take a
majority away for longer than either intends.

After healing a fault (a restart, SIGCONT or a healed partition) the nemesis measures each healed
replica's catch-up: the seconds until its own ``/_shard/status`` shows it has applied the leader's
commit index as of the heal (with no leader then, as of the first leader seen).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from bench.netns import TestNetwork
from bench.placement import owner_of
from consensus.replica import SNAPSHOT_FILE
from consensus.slots import slot_of
from models.errors import DocraftError
from node.config import load_config, render_config
from node.launcher import LocalCluster
from node.membership import add, remove, repair
from node.rebalance import holdings, move_range, reports, resume
from node.router import Router
from node.shard_client import ShardClient
from query.app import load_app

NEMESES = (
    "kill",
    "pause",
    "partition",
    "partition-dispatcher",
    "restart-all",
    "restart",
    "repair",
    "lag",
    "reshard",
    "membership",
)
PARTITIONS = ("partition", "partition-dispatcher")  # the kinds that need the test network
APP = "bench.register_app"
SETTLE_LIMIT = 20.0  # seconds to wait for the group to be whole and caught up before the next fault
STOP_LIMIT = 15.0  # seconds a SIGTERMed replica may take to exit before it counts as failed (and is killed)
REPAIR_LIMIT = 60.0  # seconds ``docraft repair`` may take to make the replica agree again
MEMBERSHIP_LIMIT = 60.0  # seconds ``docraft replica remove`` (and later ``add``) may take
KEPT_ON_WIPE = ("raft.journal.meta",)  # term and vote: a member must never vote twice in a term
CATCH_UP_LIMIT = 30.0  # seconds a healed replica may take to catch up (a lagging follower past this fails)
CATCH_UP_POLL = 0.05  # seconds between status polls of a healed replica
ELECTION_LIMIT = 5.0  # seconds the lag nemesis waits for a leader before restarting the last replica it stopped
LAG_MIN, LAG_MAX = 3.0, 15.0  # seconds a lagging follower stays stopped (at least; at most, waiting for compactions)
RESHARD_SLOTS = (64, 512)  # how many slots one reshard fault moves (at least, at most; fewer at a range's end)
RESHARD_CANCEL = 0.25  # how often the mover is cancelled mid-copy and the move finished by resume
RESHARD_LIMIT = 60.0  # seconds a reshard (with its resume) may take before it counts as failed


async def fetch(
    url: str, timeout: float, headers: dict[str, str] | None = None, post: dict[str, Any] | None = None
) -> tuple[int, bytes]:
    """GET ``url``, or POST ``post`` to it as JSON: (status, body).

    A timeout or lost connection is status 599 with an empty body.
    """
    if post is not None:
        headers = {**(headers or {}), "Content-Type": "application/json"}
    method, body = ("GET", None) if post is None else ("POST", ujson.dumps(post))
    try:
        response = await AsyncHTTPClient().fetch(
            url, method=method, body=body, raise_error=False, request_timeout=timeout, headers=headers
        )
    except (HTTPClientError, OSError):  # raise_error=False still raises for these
        return 599, b""
    return response.code, response.body or b""


def error_code(body: bytes) -> str | None:
    """The ``code`` of a JSON error body (models/errors.py), or ``None`` if the body is not one."""
    try:
        code = ujson.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return code if isinstance(code, str) else None


@dataclass
class Fault:
    """One injected fault; times are seconds since the run started.

    ``start`` is when the fault took effect: the kill, stop or cut done; for
    ``restart`` once the replica has exited, for ``lag`` once the others it
    stops have (the follower was stopped before), for ``repair`` when the
    nemesis began it.
    """

    kind: str
    start: float
    target: str = ""
    shard: str = ""  # the group it struck (``reshard``: the source)
    keys: list[Any] = field(default_factory=list)  # the workload keys that group owned when it struck
    end: float = 0.0
    leader: bool = False  # the fault took the leader away
    failover: float | None = None  # seconds from ``start`` to the next successful write (set by the benchmark)
    elected: float | None = None  # leader faults: seconds from ``start`` until a newer term's leader was seen
    outcome: str = "done"  # "done", "skipped" (a refused repair) or "failed"
    detail: str = ""
    healed: float | None = None  # when the nemesis healed it (restarted, resumed, reconnected everything)
    # Per healed replica: seconds from ``healed`` until it had caught up; None if not within CATCH_UP_LIMIT.
    catch_up: dict[str, float | None] = field(default_factory=dict)


def has_applied(status: dict[str, Any], index: int) -> bool:
    """Whether a replica's ``/_shard/status`` (``{}`` if it did not answer) shows no fault and ``index`` applied."""
    return status.get("fault") is None and status.get("applied_index", -1) >= index


@dataclass(frozen=True)
class GroupStatus:
    """The group's leader and each replica's ``/_shard/status``."""

    leader: str | None
    replicas: dict[str, dict[str, Any]]  # a silent replica has role "unreachable"

    @classmethod
    def of(cls, replicas: dict[str, dict[str, Any]]) -> GroupStatus:
        """The group as its replicas' own answers show it: the leader is the one leading in the newest term."""
        leaders = [(status["term"], name) for name, status in replicas.items() if status.get("role") == "leader"]
        return cls(max(leaders)[1] if leaders else None, replicas)

    def followers(self) -> list[str]:
        return [name for name, status in self.replicas.items() if status.get("role") == "follower"]

    def caught_up(self, name: str, index: int) -> bool:
        """Whether ``name`` answers, reports no fault and has applied ``index``."""
        return has_applied(self.replicas.get(name, {}), index)

    def committed(self) -> int | None:
        """The leader's commit index, or ``None`` without a leader."""
        return None if self.leader is None else int(self.replicas[self.leader]["commit_index"])


def port_offsets(replicas: int) -> list[int]:
    """The ports a ``Harness`` of ``replicas`` replicas takes, as offsets from its dispatcher's port."""
    return [0, *(100 + n for n in range(replicas)), *(200 + n for n in range(replicas))]


class Harness:
    """The cluster under test, its processes and (optionally) its network."""

    def __init__(
        self, root: Path, shards: int, replicas: int, port: int, partitions: bool, compaction_entries: int
    ) -> None:
        self.network: TestNetwork | None = None
        names = [f"s{s}r{r}" for s in range(shards) for r in range(replicas)]
        if partitions:
            self.network = TestNetwork(names)
        layout = []
        for s in range(shards):
            members = []
            for r in range(replicas):
                name = f"s{s}r{r}"
                n = s * replicas + r
                if self.network is not None:
                    host = self.network.address(name)
                    members.append((name, f"{host}:7000", f"{host}:8000", name))
                else:
                    members.append((name, f"127.0.0.1:{port + 200 + n}", f"127.0.0.1:{port + 100 + n}", name))
            layout.append((f"s{s}", members))
        config_path = root / "cluster.toml"
        # The benchmark's clients call the app's endpoints and /_admin/cluster without a token.
        raft: dict[str, dict[str, Any]] = {
            "raft": {"compaction_min_entries": compaction_entries},
            "auth": {"anonymous": ["read", "write", "status"]},
        }
        dispatchers = [("d0", f"127.0.0.1:{port}")]
        secret = secrets.token_hex(24)  # a fresh one per run, as docraft up makes them
        config_path.write_text(render_config(secret, APP, layout, dispatchers, raft))
        self.config = load_config(config_path)
        prefixes = {name: self.network.prefix(name) for name in names} if self.network else {}
        self.cluster = LocalCluster(self.config, APP, root / "logs", prefixes=prefixes)
        self.url = f"http://127.0.0.1:{port}"
        self.paused: set[str] = set()
        self.dead: set[str] = set()
        self._shard_client: ShardClient | None = None
        self._router: Router | None = None

    def shards(self) -> list[str]:
        """The shard ids, in the cluster file's order."""
        return [shard.id for shard in self.config.shards]

    def replicas(self, shard: str) -> list[str]:
        return [r.id for r in self.config.shard(shard).replicas]

    def initial_slots(self) -> dict[str, list[tuple[int, int]]]:
        """Each shard's slot ranges as the cluster file gives them (before any move)."""
        return {shard.id: list(shard.slots) for shard in self.config.shards}

    def all_replicas(self) -> list[str]:
        return [name for shard in self.shards() for name in self.replicas(shard)]

    def snapshot_file(self, name: str) -> Path:
        return self.config.replica(name).data_dir / SNAPSHOT_FILE

    async def status(self, shard: str) -> GroupStatus:
        """The group's status through the dispatcher; no leader and no replicas if it does not answer."""
        code, body = await fetch(self.url + "/_admin/cluster", timeout=3)
        if code != 200:
            return GroupStatus(None, {})
        for entry in ujson.loads(body)["shards"]:
            if entry["id"] == shard:
                return GroupStatus(entry["leader"], {r["id"]: r for r in entry["replicas"]})
        return GroupStatus(None, {})

    async def replica_status(self, name: str, timeout: float = 0.5) -> dict[str, Any]:
        """``name``'s own ``/_shard/status``, asked directly (not through the dispatcher); ``{}`` if silent.

        Asked as a cluster member asks (``shard_client``). Event loop only.
        """
        try:
            return await self.shard_client().status(self.config.replica(name), timeout)
        except DocraftError:
            return {}

    def shard_client(self) -> ShardClient:
        """A client of the replicas' ``/_shard/*`` routes, signing with the cluster secret. Event loop only."""
        if self._shard_client is None:  # made on the event loop, whose HTTP client it uses
            self._shard_client = ShardClient(self.config)
        return self._shard_client

    def router(self) -> Router:
        """A router of this process (for moving slots), made on the event loop on first use."""
        if self._router is None:
            self._router = Router(self.config, load_app(APP), ShardClient(self.config))
        return self._router

    async def replica_statuses(self, shard: str) -> GroupStatus:
        """The group as its replicas answer directly; a silent replica has role ``unreachable``."""
        names = self.replicas(shard)
        answers = await asyncio.gather(*(self.replica_status(name) for name in names))
        return GroupStatus.of(
            {name: answer or {"role": "unreachable"} for name, answer in zip(names, answers, strict=True)}
        )

    def kill(self, name: str) -> None:
        process = self.cluster.processes[name]
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            process.wait()
        self.dead.add(name)

    async def terminate(self, name: str, limit: float = STOP_LIMIT) -> int | None:
        """SIGTERM ``name`` and wait for it to exit: its exit code, or ``None`` if it was SIGKILLed past ``limit``."""
        process = self.cluster.processes[name]
        process.send_signal(signal.SIGTERM)
        self.dead.add(name)
        deadline = time.monotonic() + limit
        while process.poll() is None:
            if time.monotonic() > deadline:
                self.kill(name)
                return None
            await asyncio.sleep(0.05)
        return process.returncode

    def restart(self, name: str) -> None:
        self.cluster.start_replica(name)
        self.dead.discard(name)

    def pause(self, name: str) -> None:
        self.cluster.processes[name].send_signal(signal.SIGSTOP)
        self.paused.add(name)

    def resume(self, name: str) -> None:
        self.cluster.processes[name].send_signal(signal.SIGCONT)
        self.paused.discard(name)

    def heal(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        for name in list(self.dead):
            self.restart(name)
        if self.network is not None and self.network.partitioned:
            self.network.heal()

    def close(self) -> None:
        for name in list(self.paused):
            self.resume(name)
        self.cluster.stop()
        if self.network is not None:
            self.network.close()


class SnapshotWatch:
    """Counts each replica's snapshot writes (compactions, and snapshots installed from the leader).

    It polls ``snapshot.json``'s inode and mtime every ``interval`` seconds, so
    two writes between polls count once: the counts are lower bounds.
    """

    def __init__(self, files: dict[str, Path], interval: float = 0.2) -> None:
        self.files = files
        self.interval = interval
        self.counts = dict.fromkeys(files, 0)
        self._seen: dict[str, tuple[int, int] | None] = {name: self._stamp(path) for name, path in files.items()}

    @staticmethod
    def _stamp(path: Path) -> tuple[int, int] | None:
        try:
            stat = path.stat()
        except FileNotFoundError:
            return None
        return stat.st_ino, stat.st_mtime_ns

    async def run(self) -> None:
        """Poll until cancelled."""
        while True:
            for name, path in self.files.items():
                stamp = self._stamp(path)
                if stamp is not None and stamp != self._seen[name]:
                    self.counts[name] += 1
                self._seen[name] = stamp
            await asyncio.sleep(self.interval)


class LeaderWatch:
    """Records each replica's role and term as they change, polling each one's own status.

    Each replica is polled on its own every ``interval`` seconds, so a silent
    one does not delay the others; a record's time is when the answer
    arrived, at most about ``interval`` after the change. A replica that does
    not answer within ``timeout`` is recorded as ``unreachable`` (term -1).
    """

    def __init__(
        self, harness: Harness, clock: Callable[[], float], interval: float = 0.05, timeout: float = 0.25
    ) -> None:
        self.harness = harness
        self.clock = clock
        self.interval = interval
        self.timeout = timeout
        self.changes: list[tuple[float, str, str, int]] = []  # (time, replica, role, term), in time order
        self._stopped = asyncio.Event()

    @property
    def elections(self) -> list[tuple[float, str, int]]:
        """``(time, replica, term)`` each time a replica was first seen leading in a term."""
        seen: set[tuple[str, int]] = set()
        found = []
        for time_seen, name, role, term in self.changes:
            if role == "leader" and (name, term) not in seen:
                seen.add((name, term))
                found.append((time_seen, name, term))
        return found

    async def run(self) -> None:
        """Poll until ``stop``; returns once the polls in flight have ended (a cancelled fetch would log an error)."""
        await asyncio.gather(*(self._watch(name) for name in self.harness.all_replicas()))

    def stop(self) -> None:
        self._stopped.set()

    async def _watch(self, name: str) -> None:
        last: tuple[str, int] | None = None
        while not self._stopped.is_set():
            status = await self.harness.replica_status(name, self.timeout)
            now = (str(status.get("role", "unreachable")), int(status.get("term", -1)))
            if now != last:
                self.changes.append((self.clock(), name, *now))
                last = now
            await asyncio.sleep(self.interval)


class Nemesis:
    """Injects faults of ``kinds`` into ``harness`` one at a time; records them in ``faults`` and ``notes``.

    Kinds are drawn in shuffled rounds, so a run long enough for ``len(kinds)``
    faults injects every kind. ``placement`` is where each workload key's slot
    is owned, as the groups said before the latest fault (with one shard: there).
    """

    def __init__(
        self,
        harness: Harness,
        kinds: list[str],
        rng: random.Random,
        clock: Callable[[], float],
        snapshots: SnapshotWatch,
        workload_keys: Sequence[Any] = (),
    ) -> None:
        """``workload_keys``: partition keys the workload uses; ``reshard`` moves slots holding them."""
        self.harness = harness
        self.workload_keys = list(workload_keys)
        initial = harness.initial_slots()
        self.placement: dict[Any, str | None] = {key: owner_of(initial, key) for key in self.workload_keys}
        self.kinds = kinds
        self.rng = rng
        self.clock = clock
        self.snapshots = snapshots
        self.faults: list[Fault] = []
        self.notes: list[str] = []
        self._inject: dict[str, Callable[[Fault, GroupStatus], Awaitable[None]]] = {
            "kill": self._kill,
            "pause": self._pause,
            "partition": self._partition,
            "partition-dispatcher": self._partition,
            "restart-all": self._restart_all,
            "restart": self._restart,
            "repair": self._repair,
            "membership": self._membership,
            "lag": self._lag,
            "reshard": self._reshard,
        }

    async def run(self, until: float) -> None:
        """Inject faults until ``until`` (run time); returns once the last one is healed."""
        deck: list[str] = []
        shards = self.harness.shards()
        while True:
            await asyncio.sleep(self.rng.uniform(1.5, 3.0))
            if self.clock() >= until - 1:
                return
            for shard in shards:
                if await self.caught_up(shard, self.harness.replicas(shard), SETTLE_LIMIT) is None:
                    self.notes.append(f"at {self.clock():.1f}s {shard} was not whole and caught up; injecting anyway")
            if len(shards) > 1:
                await self._locate_keys()
            if not deck:
                deck = self.rng.sample(self.kinds, len(self.kinds))
            fault = Fault(deck.pop(), self.clock(), shard=shards[0])
            if len(shards) > 1 and fault.kind != "reshard":  # a reshard picks its source by the key it moves
                fault.shard = self.rng.choice(shards)
            self.faults.append(fault)
            placement = dict(self.placement)
            await self._inject[fault.kind](fault, await self.harness.status(fault.shard))
            fault.end = self.clock()
            fault.keys = [key for key, shard in placement.items() if shard == fault.shard]

    async def _locate_keys(self) -> None:
        """Refresh ``placement`` from the groups' slot tables; keep the last one known if a group does not answer."""
        try:
            owned, _ = holdings(await asyncio.wait_for(reports(self.harness.router()), SETTLE_LIMIT))
        except (DocraftError, TimeoutError) as exc:
            self.notes.append(f"at {self.clock():.1f}s the slot map was not read ({exc}); keys placed as before")
            return
        self.placement = {key: owner_of(owned, key) for key in self.workload_keys}

    async def caught_up(self, shard: str, names: list[str], limit: float) -> float | None:
        """Seconds until each of ``names`` has applied what ``shard``'s leader had committed; ``None`` past ``limit``.

        The target is the leader's commit index when one is first seen; a replica that does not answer has
        applied nothing, and one that reports a fault is not caught up. With no ``names``: seconds until a
        leader exists.
        """
        start = self.clock()
        target: int | None = None
        while self.clock() - start < limit:
            status = await self.harness.status(shard)
            target = status.committed() if target is None else target
            if target is not None and status.leader and all(status.caught_up(name, target) for name in names):
                return self.clock() - start
            await asyncio.sleep(0.25)
        return None

    async def catch_up(self, fault: Fault, names: list[str]) -> None:
        """Mark ``fault`` healed now and record in ``fault.catch_up`` how long each of ``names`` takes to catch up.

        The target is the leader's commit index now, asked of the replicas
        themselves (without a leader now, that of the first leader seen); each
        of ``names`` is polled directly until it has applied it, for at most
        ``CATCH_UP_LIMIT`` seconds (then its time is ``None``).
        """
        fault.healed = healed = self.clock()
        target: int | None = None
        while target is None and self.clock() - healed < CATCH_UP_LIMIT:
            target = (await self.harness.replica_statuses(fault.shard)).committed()
            if target is None:
                await asyncio.sleep(CATCH_UP_POLL)

        async def watch(name: str, index: int) -> float | None:
            while self.clock() - healed < CATCH_UP_LIMIT:
                if has_applied(await self.harness.replica_status(name), index):
                    return self.clock() - healed
                await asyncio.sleep(CATCH_UP_POLL)
            return None

        if target is None:
            fault.catch_up = dict.fromkeys(names)
            return
        times = await asyncio.gather(*(watch(name, target) for name in names))
        fault.catch_up = dict(zip(names, times, strict=True))

    def _pick(self, status: GroupStatus, among: list[str], kind: str) -> str:
        """The leader (if among them) for the first fault of ``kind``, later 60% of the time; else a random one."""
        first = sum(f.kind == kind for f in self.faults) <= 1  # the fault being aimed is already listed
        if status.leader in among and (first or self.rng.random() < 0.6):
            return status.leader
        return self.rng.choice(among)

    def _aim(self, fault: Fault, status: GroupStatus, among: list[str] | None = None) -> str:
        fault.target = self._pick(status, among or self.harness.replicas(fault.shard), fault.kind)
        fault.leader = fault.target == status.leader
        return fault.target

    def _struck(self, fault: Fault) -> None:
        """The fault is in effect from now."""
        fault.start = self.clock()

    async def _hold(self) -> None:
        await asyncio.sleep(self.rng.uniform(1.5, 3.0))

    async def _kill(self, fault: Fault, status: GroupStatus) -> None:
        target = self._aim(fault, status)
        self.harness.kill(target)
        self._struck(fault)
        await self._hold()
        self.harness.restart(target)
        await self.catch_up(fault, [target])

    async def _pause(self, fault: Fault, status: GroupStatus) -> None:
        target = self._aim(fault, status)
        self.harness.pause(target)
        self._struck(fault)
        await self._hold()
        self.harness.resume(target)
        await self.catch_up(fault, [target])

    async def _partition(self, fault: Fault, status: GroupStatus) -> None:
        network = self.harness.network
        if network is None:
            raise RuntimeError("the partition nemeses need the harness built with partitions=True")
        target = self._aim(fault, status)
        network.isolate(target, outside=fault.kind == "partition-dispatcher")
        self._struck(fault)
        await self._hold()
        network.heal()
        await self.catch_up(fault, [target])

    async def _restart_all(self, fault: Fault, status: GroupStatus) -> None:
        fault.target, fault.leader = fault.shard, True
        replicas = self.harness.replicas(fault.shard)
        for name in replicas:
            self.harness.kill(name)
        self._struck(fault)
        await asyncio.sleep(self.rng.uniform(0.3, 1.0))
        for name in replicas:
            self.harness.restart(name)
        await self.catch_up(fault, replicas)

    async def _restart(self, fault: Fault, status: GroupStatus) -> None:
        target = self._aim(fault, status)
        stopped, fault.detail = await self._stop(target, graceful=True)
        self._struck(fault)
        fault.outcome = "done" if stopped else "failed"
        self.harness.restart(target)
        await self.catch_up(fault, [target])

    async def _stop(self, name: str, graceful: bool) -> tuple[bool, str]:
        """SIGTERM ``name`` and wait for it to exit, or SIGKILL it.

        Returns whether it stopped as asked (a SIGTERMed replica must exit 0 in
        time) and a sentence saying what happened.
        """
        if not graceful:
            self.harness.kill(name)
            return True, f"SIGKILLed {name}"
        start = self.clock()
        code = await self.harness.terminate(name)
        if code is None:
            return False, f"{name} did not exit within {STOP_LIMIT:.0f}s of SIGTERM and was SIGKILLed"
        return code == 0, f"SIGTERMed {name}: exit {code} after {self.clock() - start:.2f}s"

    async def _repair(self, fault: Fault, status: GroupStatus) -> None:
        followers = status.followers()
        if not followers:
            fault.outcome, fault.detail = "skipped", "no follower to repair"
            return
        target = self._aim(fault, status, followers)
        said: list[str] = []
        code = await asyncio.to_thread(repair, self.harness.config, target, REPAIR_LIMIT, said.append)
        fault.outcome = {0: "done", 2: "skipped"}.get(code, "failed")
        fault.detail = f"docraft repair exit {code}: " + " / ".join(said)

    async def _membership(self, fault: Fault, status: GroupStatus) -> None:
        target = self._aim(fault, status)
        self._struck(fault)  # from the removal on: a leader hands over to another before it is removed
        config, said = self.harness.config, list[str]()
        code = await asyncio.to_thread(remove, config, target, MEMBERSHIP_LIMIT, said.append, False)
        if code != 0:
            fault.outcome = "skipped" if code == 2 else "failed"
            fault.detail = f"docraft replica remove exit {code}: " + " / ".join(said)
            return
        stopped, how = await self._stop(target, graceful=True)
        data_dir = config.replica(target).data_dir
        for path in data_dir.iterdir():
            if path.is_file() and path.name not in KEPT_ON_WIPE:
                path.unlink()
        self.harness.restart(target)
        code = await asyncio.to_thread(add, config, target, MEMBERSHIP_LIMIT, said.append)
        fault.outcome = "done" if code == 0 and stopped else "failed"
        fault.detail = f"{how}; docraft replica add exit {code}: " + " / ".join(said)
        await self.catch_up(fault, [target])

    async def _lag(self, fault: Fault, status: GroupStatus) -> None:
        replicas = self.harness.replicas(fault.shard)
        slow = self.rng.choice(status.followers() or replicas)
        others = [name for name in replicas if name != slow]
        fault.target = slow
        if self.rng.random() < 0.5:  # one other replica, SIGTERMed or SIGKILLed
            victims = [(self._pick(status, others, fault.kind), self.rng.random() < 0.5)]
        else:  # issue 8: SIGTERM the other follower, then crash or stop the leader
            others.sort(key=lambda name: name == status.leader)
            victims = [(others[0], True), (others[1], self.rng.random() < 0.5)]
        fault.leader = status.leader in [name for name, _ in victims]
        lagged = await self._fall_behind(slow, others)
        outcomes = [await self._stop(name, graceful) for name, graceful in victims]
        self._struck(fault)
        await asyncio.sleep(self.rng.uniform(0.3, 1.0))
        self.harness.resume(slow)
        self.harness.restart(victims[0][0])
        if len(victims) > 1:  # let the slow follower and the restarted one elect a leader without the last
            await self.caught_up(fault.shard, [], ELECTION_LIMIT)  # no leader in time: restart it anyway
            self.harness.restart(victims[1][0])
        await self.catch_up(fault, [slow, *(name for name, _ in victims)])
        caught_up = fault.catch_up[slow]
        fault.outcome = "done" if all(ok for ok, _ in outcomes) and caught_up is not None else "failed"
        late = (
            f"did not catch up within {CATCH_UP_LIMIT:.0f}s" if caught_up is None else f"caught up in {caught_up:.2f}s"
        )
        fault.detail = "; ".join([lagged, *(sentence for _, sentence in outcomes), f"{slow} {late}"])

    async def _fall_behind(self, slow: str, others: list[str]) -> str:
        """SIGSTOP ``slow`` until ``others`` have each written a snapshot (past ``LAG_MIN``, at most ``LAG_MAX``)."""
        before = dict(self.snapshots.counts)
        self.harness.pause(slow)
        start = self.clock()
        hold = self.rng.uniform(LAG_MIN, LAG_MIN + 2)

        def compacted() -> bool:
            return all(self.snapshots.counts[name] > before[name] for name in others)

        while self.clock() - start < LAG_MAX and not (self.clock() - start >= hold and compacted()):
            await asyncio.sleep(0.1)
        return f"{slow} stopped {self.clock() - start:.1f}s" + ("" if compacted() else " (no compaction meanwhile)")

    async def _reshard(self, fault: Fault, status: GroupStatus) -> None:
        router = self.harness.router()
        owned, _ = holdings(await reports(router))
        key = self.rng.choice(self.workload_keys or [0])
        slot = slot_of(key)
        held = [
            (shard, first, last) for shard, ranges in owned.items() for first, last in ranges if first <= slot <= last
        ]
        others = [shard for shard in owned if not held or shard != held[0][0]]
        if not held or not others:
            fault.outcome, fault.detail = "skipped", f"no shard owns slot {slot} (key {key!r}), or no other to take it"
            return
        source, first, last = held[0]
        fault.shard = source
        width = self.rng.randint(*RESHARD_SLOTS)
        start = max(first, slot - self.rng.randrange(width))
        end = min(last, start + width - 1)
        target = self.rng.choice(others)
        fault.target = f"{start}-{end} {source}->{target}"
        self._struck(fault)
        cancel = self.rng.random() < RESHARD_CANCEL
        try:
            moving = self._move(router, source, target, [(start, end)], cancel)
            committed, detail = await asyncio.wait_for(moving, RESHARD_LIMIT)
        except (DocraftError, TimeoutError) as exc:
            fault.outcome, fault.detail = "failed", f"key {key!r} slot {slot}: {type(exc).__name__}: {exc}"
            return
        fault.outcome = "done" if committed else "failed"
        fault.detail = f"key {key!r} slot {slot}: {detail}"

    async def _move(
        self, router: Router, source: str, target: str, slots: list[tuple[int, int]], cancel: bool
    ) -> tuple[bool, str]:
        """Move ``slots``; with ``cancel``, cancel the mover after its first page and resume the move.
        Whether the move ended committed, and what happened."""
        shard, to = router.config.shard(source), router.config.shard(target)
        if not cancel:
            summary = await move_range(router, shard, to, slots)
            return True, f"{summary.docs} docs, freeze {summary.freeze_ms or 0:.0f} ms, epoch {summary.epoch}"
        copying = asyncio.Event()
        mover = asyncio.ensure_future(move_range(router, shard, to, slots, lambda *_: copying.set()))
        waiting = asyncio.ensure_future(copying.wait())
        await asyncio.wait([mover, waiting], return_when=asyncio.FIRST_COMPLETED)
        waiting.cancel()
        mover.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await mover
        if not mover.cancelled():
            return True, f"the mover committed before it could be cancelled ({mover.result().docs} docs)"
        resumed = await resume(router)
        outcomes = ", ".join(f"{s.move} {s.outcome}" for s in resumed)
        return any(s.outcome == "committed" for s in resumed), f"cancelled mid-copy, resumed: {outcomes or 'nothing'}"
