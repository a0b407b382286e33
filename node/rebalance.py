"""Moving slot ranges between replica groups while they serve: one move, resuming, and whole plans.

One move of ``slots`` from group S to group T (``move_range``), every step a
command through the router (which follows leaders), each idempotent by move id:

    e = 1 + the highest epoch any group committed
    T import_begin     T will take the slots (refused if it holds any, or has seen an epoch >= e)
    S move_begin       S freezes them: reads go on, writes wait
    export pages       a linearizable read of S's frozen documents and remembered request ids ...
    T import_docs      ... each page replicated into T's side area (not its collections)
    verify             T's received count and hash must equal S's, else both abort
    S move_commit      the decision: S gives the slots (and their documents) away at epoch e
    T import_commit    T serves them from its verified copy

All the state of a move lives in the two groups' move records, so a
rebalancer that dies anywhere leaves nothing ``resume`` cannot finish: S
``committed`` -> T ``import_commit`` (roll forward); S ``frozen`` -> copy,
verify and commit again (or, asked to, abort both); T importing a move S never
froze -> T ``import_abort``. A refusal or a mismatch aborts both groups
before the decision; after it, only rolling forward is possible.

A group forgets all but its last 16 finished moves, so one side's record may
be gone; the slot tables then decide. T importing a move S forgot: S's slots
``moved`` to T at the move's epoch -> roll forward; S owning them -> T
``import_abort``; anything else is left to an operator. S committed a move T
forgot: T holding the slots at that epoch or a later one means it is finished.

Every function here runs on the router's event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from consensus.slots import IMPORTING, MOVED, OWNED, Ranges, ranges_json
from models.errors import DocraftError, MoveRefused, NoLeader, OutcomeUnknown, error_from_json
from node.config import ConfigError, ShardConfig
from node.consistency import Consistency
from node.rebalance_plan import Chunk, merged, size
from node.router import Router

# Documents per export page (one import_docs entry on T). Pages are numbered in the order S exports them, and T
# ignores a page number it already has, so a resumed copy must cut the same pages: the size is fixed here.
EXPORT_PAGE = 500
# How long one step may keep failing with "no leader" or "outcome unknown" before the move is left to resume.
STEP_DEADLINE = 60.0
STEP_PAUSE = 0.1

# (move id, documents copied so far, documents the move holds): called after each page.
PageCallback = Callable[[str, int, int], None]

# The outcome of a move ``resume`` could not finish: refused (a copy that did not verify is rolled back, as
# ``move_range`` does) or left as it was for an operator; ``MoveSummary.detail`` says which.
FAILED = "failed"


@dataclass(frozen=True)
class MoveSummary:
    """How one move ended: ``outcome`` is ``committed``, ``aborted``, or ``failed`` (``resume`` could not finish
    it; ``detail`` says why); ``freeze_ms`` the time the slots did not take writes (from S's freeze to T's
    commit), ``None`` for a move resumed from another process's start."""

    move: str
    source: str
    target: str
    slots: Ranges
    docs: int
    epoch: int
    outcome: str
    freeze_ms: float | None = None
    detail: str | None = None

    def row(self) -> str:
        """One line of the summary table (``TABLE_HEADER`` names its columns)."""
        spans = ",".join(f"{f}-{last}" if f != last else str(f) for f, last in self.slots)
        freeze = "-" if self.freeze_ms is None else f"{self.freeze_ms:.0f}"
        return _ROW.format(spans, self.source, self.target, self.docs, freeze, self.epoch, self.outcome)


_ROW = "{:<24} {:>6} {:>6} {:>8} {:>10} {:>6}  {}"
TABLE_HEADER = _ROW.format("slots", "from", "to", "docs", "freeze ms", "epoch", "outcome")


@dataclass(frozen=True)
class _Move:
    """A move both groups know: its id, groups, slots and epoch."""

    id: str
    source: ShardConfig
    target: ShardConfig
    slots: Ranges
    epoch: int


# -- reading the groups ------------------------------------------------------------------------------------


async def slots_report(router: Router, shard: ShardConfig, counts: bool = False) -> dict[str, Any]:
    """``shard``'s ``StateMachine.slots_report`` from its leader, after a barrier (so nothing committed is missed)."""
    request = {"slots": {"counts": counts}, "consistency": Consistency.LINEARIZABLE.value}
    return await router.groups.read(shard, request, Consistency.LINEARIZABLE)


async def reports(router: Router, counts: bool = False) -> dict[str, dict[str, Any]]:
    """Every shard's slots report (see ``slots_report``), by shard id, in the cluster file's order."""
    shards = router.config.shards
    answers = await asyncio.gather(*(slots_report(router, shard, counts) for shard in shards))
    return {shard.id: answer for shard, answer in zip(shards, answers, strict=True)}


def holdings(by_shard: dict[str, dict[str, Any]]) -> tuple[dict[str, Ranges], dict[int, int]]:
    """The owned ranges of each shard and the documents per slot, from ``reports(counts=True)``: the planner's input."""
    owned = {
        shard: merged((r["first"], r["last"]) for r in report["ranges"] if r["state"] == "owned")
        for shard, report in by_shard.items()
    }
    counts = {int(slot): n for report in by_shard.values() for slot, n in (report.get("counts") or {}).items()}
    return owned, counts


# -- one move ---------------------------------------------------------------------------------------------


async def move_range(
    router: Router,
    source: ShardConfig,
    target: ShardConfig,
    slots: Ranges,
    on_page: PageCallback | None = None,
) -> MoveSummary:
    """Move ``slots`` (sorted, disjoint, all owned by ``source``) to ``target``; returns the committed summary.

    Raises ``MoveRefused`` when a group refuses a step or the copy does not
    verify: both groups are then back as they were. Any other error (a group
    without a leader for ``STEP_DEADLINE``, this task cancelled) leaves the
    move in the groups' records for ``resume`` to finish or abort.
    """
    epoch = 1 + max(int(report["epoch"]) for report in (await reports(router)).values())
    move = _Move(f"m{epoch}-{source.id}-{target.id}-{slots[0][0]}", source, target, slots, epoch)
    await _propose(
        router,
        target,
        {"type": "import_begin", "move": move.id, "source": source.id, "slots": ranges_json(slots), "epoch": epoch},
    )
    replicas = [{"id": r.id, "raft": r.raft, "http": r.http} for r in target.replicas]
    frozen_at = time.monotonic()
    try:
        await _propose(
            router,
            source,
            {
                "type": "move_begin",
                "move": move.id,
                "target": target.id,
                "target_replicas": replicas,
                "slots": ranges_json(slots),
                "epoch": epoch,
            },
        )
    except MoveRefused:
        await _propose(router, target, {"type": "import_abort", "move": move.id})
        raise
    return await _copy_and_commit(router, move, on_page, frozen_at)


async def _copy_and_commit(
    router: Router, move: _Move, on_page: PageCallback | None, frozen_at: float | None
) -> MoveSummary:
    """From a frozen source: copy every page, verify, commit on S then on T. ``MoveRefused`` after aborting both."""
    try:
        count, digest = await _copy(router, move, on_page)
        received = _record(await slots_report(router, move.target), move.id, "target")
        if received is None or (received.get("count"), received.get("hash")) != (count, digest):
            got = None if received is None else (received.get("count"), received.get("hash"))
            raise MoveRefused(
                f"move {move.id}: {move.target.id} received {got}, {move.source.id} exported {(count, digest)}",
                move=move.id,
                reason="copy_mismatch",
            )
        await _propose(router, move.source, {"type": "move_commit", "move": move.id, "epoch": move.epoch})
    except MoveRefused:
        await _abort(router, move)
        raise
    await _import_commit(router, move, count, digest)
    freeze = None if frozen_at is None else (time.monotonic() - frozen_at) * 1000
    return MoveSummary(move.id, move.source.id, move.target.id, move.slots, count, move.epoch, "committed", freeze)


async def _copy(router: Router, move: _Move, on_page: PageCallback | None) -> tuple[int, str]:
    """Export S's frozen documents page by page into T; S's count and hash of all of them."""
    after: str | None = None
    batch = copied = 0
    while True:
        request = {
            "export": {"move": move.id, "after": after, "limit": EXPORT_PAGE},
            "consistency": Consistency.LINEARIZABLE.value,
        }
        page = await router.groups.read(move.source, request, Consistency.LINEARIZABLE)
        docs = page["docs"]
        await _propose(
            router,
            move.target,
            {"type": "import_docs", "move": move.id, "batch": batch, "docs": docs, "requests": page["requests"]},
        )
        batch += 1
        copied += sum(len(d) for d in docs.values())
        if on_page is not None:
            on_page(move.id, copied, int(page["count"]))
        after = page["next"]
        if after is None:
            return int(page["count"]), str(page["hash"])


async def _import_commit(router: Router, move: _Move, count: int, digest: str) -> None:
    await _propose(
        router,
        move.target,
        {"type": "import_commit", "move": move.id, "epoch": move.epoch, "count": count, "hash": digest},
    )


async def _abort(router: Router, move: _Move) -> None:
    """Roll both groups back (S first: it is S's refusal of ``move_commit`` that makes T's abort safe)."""
    await _propose(router, move.source, {"type": "move_abort", "move": move.id})
    await _propose(router, move.target, {"type": "import_abort", "move": move.id})


async def _propose(router: Router, shard: ShardConfig, command: dict[str, Any]) -> Any:
    """Commit a move command on ``shard``; its ``ok`` value. Retried (it is idempotent) while the group has no
    leader or the outcome is unknown, for ``STEP_DEADLINE``; the group's refusal (``MoveRefused``...) is raised."""
    request_id = f"move:{command['move']}:{command['type']}:{command.get('batch', '')}"
    deadline = time.monotonic() + STEP_DEADLINE
    while True:
        try:
            result = await router.groups.write(shard, {**command, "request_id": request_id})
        except (NoLeader, OutcomeUnknown):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(STEP_PAUSE)
            continue
        if "error" in result:
            raise error_from_json(result)
        return result.get("ok")


def _record(report: dict[str, Any], move_id: str, role: str) -> dict[str, Any] | None:
    """The move record ``move_id`` of ``role`` in a slots report, if listed."""
    return next((m for m in report.get("moves", []) if m["id"] == move_id and m["role"] == role), None)


# -- resuming ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PendingMove:
    """A move the groups' records show unfinished: each side's record (``None`` if that group has none), and
    each side's slot table over the move's slots (``None`` if that group holds some of them in no state, or
    sent no report: it is not in the cluster file). A group keeps only its last 16 finished moves
    (``consensus.moves.FINISHED_KEPT``), so the tables decide what a forgotten record cannot."""

    id: str
    source: str
    target: str
    slots: Ranges
    epoch: int
    source_record: dict[str, Any] | None
    target_record: dict[str, Any] | None
    source_ranges: list[dict[str, Any]] | None
    target_ranges: list[dict[str, Any]] | None

    @property
    def states(self) -> tuple[str | None, str | None]:
        """(S's state, T's state): ``importing``, ``frozen``, ``committed``, ``aborted`` or ``None``."""
        return (
            None if self.source_record is None else self.source_record["state"],
            None if self.target_record is None else self.target_record["state"],
        )

    def given_to_target(self) -> bool:
        """S's table shows the slots ``moved`` to T at the move's epoch: S committed this move."""
        return self.source_ranges is not None and all(
            r["state"] == MOVED and r["owner"] == self.target and r["version"] == self.epoch for r in self.source_ranges
        )

    def owned_by_source(self) -> bool:
        """S's table shows the slots ``owned`` (not frozen): S never gave them away for this move."""
        return self.source_ranges is not None and all(r["state"] == OWNED for r in self.source_ranges)

    def installed_on_target(self) -> bool:
        """T's table shows T took the slots: held at the move's epoch other than ``importing``, or at a later
        one (T passed them on, or is getting them back: both need this move finished first)."""
        return self.target_ranges is not None and all(
            r["version"] > self.epoch or (r["version"] == self.epoch and r["state"] != IMPORTING)
            for r in self.target_ranges
        )

    def describe(self) -> str:
        s_state, t_state = self.states
        spans = ",".join(f"{f}-{last}" for f, last in self.slots)
        return (
            f"move {self.id}: slots {spans} {self.source} ({s_state}) -> {self.target} ({t_state}), epoch {self.epoch}"
        )


def pending_moves(by_shard: dict[str, dict[str, Any]]) -> list[PendingMove]:
    """The unfinished moves in every group's slots report (``reports``), by id: S ``frozen``, T ``importing``,
    or S ``committed`` while T has not installed the slots (which no rebalancer leaves). Finished and
    rolled-back ones are left out, also when a group has forgotten its record of them."""
    sides: dict[str, dict[str, dict[str, Any]]] = {}
    for shard_id, report in by_shard.items():
        for record in report.get("moves", []):
            sides.setdefault(record["id"], {})[record["role"]] = {**record, "shard": shard_id}
    pending = []
    for move_id, records in sorted(sides.items()):
        source, target = records.get("source"), records.get("target")
        known = source or target
        assert known is not None, "a listed move has at least one side"
        source_id = source["shard"] if source is not None else known["peer"]
        target_id = target["shard"] if target is not None else known["peer"]
        slots = [(f, last) for f, last in known["slots"]]
        move = PendingMove(
            move_id,
            source_id,
            target_id,
            slots,
            int(known["epoch"]),
            source,
            target,
            _held(by_shard.get(source_id), slots),
            _held(by_shard.get(target_id), slots),
        )
        s_state, t_state = move.states
        undelivered = s_state == "committed" and t_state != "committed" and not move.installed_on_target()
        if s_state == "frozen" or t_state == "importing" or undelivered:
            pending.append(move)
    return pending


def _held(report: dict[str, Any] | None, slots: Ranges) -> list[dict[str, Any]] | None:
    """``report``'s ranges over ``slots``, cut to them; ``None`` without a report or if any of them is absent."""
    if report is None:
        return None
    held = [
        {**r, "first": max(r["first"], first), "last": min(r["last"], last)}
        for first, last in slots
        for r in report["ranges"]
        if r["first"] <= last and r["last"] >= first
    ]
    return held if size((r["first"], r["last"]) for r in held) == size(slots) else None


async def resume(
    router: Router,
    abort: bool = False,
    on_page: PageCallback | None = None,
    pending: list[PendingMove] | None = None,
) -> list[MoveSummary]:
    """Finish every move a rebalancer left unfinished (``pending``, by default ``pending_moves`` now), or with
    ``abort`` roll back those not yet decided (a move S committed can only roll forward); a summary of each.

    A move that cannot be finished (``resume_move`` raised a ``DocraftError``) does not stop the others: its
    summary's outcome is ``failed`` and its ``detail`` says why. Other errors propagate.
    """
    if pending is None:
        pending = pending_moves(await reports(router))
    summaries = []
    for move in pending:
        try:
            summaries.append(await resume_move(router, move, abort, on_page))
        except DocraftError as exc:
            reason = exc.details.get("reason")
            detail = f"{move.describe()}: {exc.message} ({exc.code}{'' if reason is None else ', ' + str(reason)})"
            summaries.append(
                MoveSummary(move.id, move.source, move.target, move.slots, 0, move.epoch, FAILED, detail=detail)
            )
    return summaries


async def resume_move(
    router: Router, pending: PendingMove, abort: bool = False, on_page: PageCallback | None = None
) -> MoveSummary:
    """Finish or roll back one of ``pending_moves`` (see ``resume``).

    Raises ``MoveRefused`` (details ``move``, ``reason``) when the move cannot be ended safely, the groups left
    as they are: ``unknown_shard`` (a group of the move is not in the cluster file), ``lost`` (S committed, T
    holds no copy), ``needs_operator`` (T imports, S has no record and its table shows neither outcome);
    other errors as ``move_range``.
    """
    move = _Move(
        pending.id,
        _shard_of(router, pending, pending.source),
        _shard_of(router, pending, pending.target),
        pending.slots,
        pending.epoch,
    )
    s_state, t_state = pending.states

    def summary(outcome: str, docs: int) -> MoveSummary:
        return MoveSummary(move.id, pending.source, pending.target, move.slots, docs, move.epoch, outcome)

    if s_state == "committed" or (s_state is None and t_state == IMPORTING and pending.given_to_target()):
        received = pending.target_record
        if t_state != IMPORTING or received is None:
            raise MoveRefused(
                "the source gave the slots away but the target holds no copy",
                move=move.id,
                reason="lost",
            )
        await _import_commit(router, move, int(received["count"]), str(received["hash"]))
        return summary("committed", int(received["count"]))
    if s_state == "frozen" and t_state == IMPORTING and not abort:
        return await _copy_and_commit(router, move, on_page, None)
    if s_state == "frozen":
        await _abort(router, move)
    elif s_state is None and not pending.owned_by_source():
        raise MoveRefused(
            "the source has no record of the move and neither owns the slots nor gave them to the target: "
            "compare both groups' /_shard/slots and end the move by hand",
            move=move.id,
            reason="needs_operator",
        )
    else:  # S never froze, or already rolled back: nothing reached T's collections
        await _propose(router, move.target, {"type": "import_abort", "move": move.id})
    return summary("aborted", 0)


def _shard_of(router: Router, pending: PendingMove, shard_id: str) -> ShardConfig:
    """``shard_id``'s configuration; ``MoveRefused`` (``unknown_shard``) naming the move if the file lacks it."""
    try:
        return router.config.shard(shard_id)
    except ConfigError as exc:
        raise MoveRefused(
            f"{exc}: put shard {shard_id!r} back in the cluster file to end this move",
            move=pending.id,
            reason="unknown_shard",
        ) from exc


# -- plans -------------------------------------------------------------------------------------------------


async def run_plan(
    router: Router,
    plan: Iterable[Chunk],
    on_page: PageCallback | None = None,
    on_move: Callable[[MoveSummary], None] | None = None,
) -> list[MoveSummary]:
    """Run ``plan``'s chunks one after another (``move_range``); stops at the first that raises."""
    done = []
    for chunk in plan:
        source, target = router.config.shard(chunk.source), router.config.shard(chunk.target)
        summary = await move_range(router, source, target, [(chunk.first, chunk.last)], on_page)
        done.append(summary)
        if on_move is not None:
            on_move(summary)
    return done
