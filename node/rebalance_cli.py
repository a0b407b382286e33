"""``docraft rebalance`` and ``docraft shard drain``: resume, plan, move, and say what happened.

Holding the cluster file, the command is a cluster member: it runs a
``Router`` of its own (signed calls, leader following) and drives
``node.rebalance`` with it. In order:

1. unfinished moves found in the groups' records are finished, or with
   ``--abort`` rolled back (then nothing else is done); one that cannot be
   finished is reported, the others still are, and nothing else is done;
2. the plan: even shares (``node.rebalance_plan.even_plan``; a drained shard's
   share is 0) or the ``--move SLOTS --to SHARD`` chosen ranges, in chunks of
   at most ``--max-docs`` documents; ``--dry-run`` prints it and stops;
3. each chunk is moved in turn, with a progress bar (documents copied of the
   plan's total, move i/n) on standard error, and a summary line per move:
   range, from, to, documents, freeze time, epoch.

Exit codes: 0 done, 1 a move was refused or failed, resumed or planned (the
groups are consistent; rerun to resume, or do what the message says),
2 nothing could be planned (bad arguments, a group unreachable).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

from tqdm import tqdm

from models.errors import DocraftError
from node.config import ClusterConfig, ConfigError
from node.rebalance import FAILED, TABLE_HEADER, MoveSummary, holdings, pending_moves, reports, resume, run_plan
from node.rebalance_plan import DEFAULT_MAX_DOCS, Chunk, PlanError, chosen_plan, even_plan, parse_slots
from node.router import Router
from node.shard_client import ShardClient
from query.app import App


@dataclass(frozen=True)
class Request:
    """What the operator asked for; ``slots``/``to`` for ``--move``, ``drain`` for ``shard drain``."""

    dry_run: bool = False
    abort: bool = False
    slots: str | None = None
    to: str | None = None
    drain: str | None = None
    max_docs: int = DEFAULT_MAX_DOCS


def rebalance(config: ClusterConfig, app: App, request: Request) -> int:
    """Run the command (see the module docstring); its exit code. Prints to standard output and error."""
    return asyncio.run(_rebalance(config, app, request))


async def _rebalance(config: ClusterConfig, app: App, request: Request) -> int:
    # The router is made on the loop that runs it: its HTTP client binds to the running loop.
    return await run(Router(config, app, ShardClient(config)), request)


async def run(router: Router, request: Request) -> int:
    """The command with ``router`` (see ``rebalance``); its exit code. Runs on the router's event loop."""
    try:
        pending = pending_moves(await reports(router))
        if pending:
            print(f"{len(pending)} unfinished move(s):")
            for move in pending:
                print(f"  {move.describe()}")
        if request.dry_run and pending:
            print("(dry run: they would be " + ("rolled back" if request.abort else "finished") + " first)")
        elif pending:
            resumed = await resume(router, request.abort, pending=pending)
            _table(resumed)
            failed = [summary for summary in resumed if summary.outcome == FAILED]
            for summary in failed:
                print(f"not finished: {summary.detail}")
            if failed:
                print(f"docraft rebalance: {len(failed)} unfinished move(s) failed; nothing else was done")
                return 1
        if request.abort:
            return 0
        owned, counts = holdings(await reports(router, counts=True))
        plan = _plan(request, owned, counts)
    except (PlanError, ConfigError) as exc:
        print(f"docraft rebalance: {exc}", file=sys.stderr)
        return 2
    except DocraftError as exc:
        print(f"docraft rebalance: {exc.code}: {exc.message}", file=sys.stderr)
        return 1
    if not plan:
        print("nothing to move: every shard holds its share" if request.slots is None else "nothing to move")
        return 0
    print(f"plan: {len(plan)} move(s), {sum(c.docs for c in plan)} documents")
    for i, chunk in enumerate(plan, 1):
        print(f"  {i:>3}. {chunk.describe()}")
    if request.dry_run:
        return 0
    return await _execute(router, plan)


def _plan(request: Request, owned: dict[str, list[tuple[int, int]]], counts: dict[int, int]) -> list[Chunk]:
    if request.slots is not None:
        if request.to is None:
            raise PlanError("--move needs --to SHARD")
        return chosen_plan(owned, parse_slots(request.slots), request.to, counts, request.max_docs)
    drained = [request.drain] if request.drain is not None else []
    return even_plan(owned, counts, request.max_docs, drained)


async def _execute(router: Router, plan: list[Chunk]) -> int:
    """Move ``plan``'s chunks with a progress bar; the summary table; exit code."""
    bar = tqdm(total=sum(c.docs for c in plan), unit="doc", desc=f"move 1/{len(plan)}", disable=None)
    copied_before: dict[str, int] = {}
    done: list[MoveSummary] = []

    def on_page(move: str, copied: int, total: int) -> None:
        bar.update(copied - copied_before.get(move, 0))
        copied_before[move] = copied

    def on_move(summary: MoveSummary) -> None:
        done.append(summary)
        bar.set_description(f"move {min(len(done) + 1, len(plan))}/{len(plan)}")

    try:
        await run_plan(router, plan, on_page, on_move)
    except DocraftError as exc:
        bar.close()
        _table(done)
        print(f"docraft rebalance: move {len(done) + 1}/{len(plan)} failed: {exc.code}: {exc.message}")
        print("the groups are consistent; run docraft rebalance again to resume")
        return 1
    bar.close()
    _table(done)
    return 0


def _table(summaries: list[MoveSummary]) -> None:
    if summaries:
        print(TABLE_HEADER)
        for summary in summaries:
            print(summary.row())
