"""What one replica's state machine spends applying bulk loads: CPU microseconds per document.

    python -m bench.apply_cost                               # 100 insert_parts entries of 1,000 users
    python -m bench.apply_cost --docs 200000 --per-entry 500 --rounds 5
    python -m bench.apply_cost --form batch                  # routers before insert_parts: a batch of insert_batch

In one process, with no cluster: a ``StateMachine`` of ``examples.people``
owning every slot applies the log entries a router's bulk inserts become.
Each entry holds ``--per-entry`` users of ``bench.scale_data.user_rows``
(validated as the router does, grouped by slot into parts named as
``Router.insert_batch`` names them), encoded as the replica encodes a command,
and is applied with ``apply_entry`` as the Raft thread does: decoding,
validation, fencing, storage with its indexes and hashes, the remembered
request ids, the result's encoding and the integrity digest. Encoding the
entries is done before the clock starts.

Prints the CPU time (``time.process_time``) per document of each round (a
fresh machine each round, so every round stores the same ``--docs``
documents) and the best round: the figure to compare between two versions of
the code on a busy machine (set ``PYTHONPATH`` to the other checkout first).
Raft itself (the journal, the network) is not in it.
"""

from __future__ import annotations

import argparse
import gc
import time
from collections.abc import Iterator
from typing import Any

import ujson

from bench.scale_data import FIRST_ID, HEADER, user_rows
from consensus.slots import SLOT_COUNT, slot_of
from consensus.state_machine import StateMachine
from query.app import load_app

APP = "examples.people"
MODEL = "User"


def entries(docs: int, per_entry: int, form: str) -> Iterator[tuple[bytes, int]]:
    """The log entries loading ``docs`` users, ``per_entry`` at a time, and how many documents each holds."""
    model = load_app(APP).model(MODEL)
    rows = user_rows(FIRST_ID, docs)
    for number, start in enumerate(range(0, docs, per_entry)):
        count = min(per_entry, docs - start)
        clean = [model.validate(dict(zip(HEADER, next(rows), strict=True))) for _ in range(count)]
        by_slot: dict[int, list[dict[str, Any]]] = {}
        for doc in clean:
            by_slot.setdefault(slot_of(doc[model.partition_key]), []).append(doc)
        base = f"bulk-{number}"
        parts = [{"slot": s, "request_id": f"{base}:slot:{s}", "docs": d} for s, d in sorted(by_slot.items())]
        command: dict[str, Any]
        if form == "parts":
            command = {"type": "insert_parts", "model": MODEL, "parts": parts, "request_id": f"{base}:batch"}
        else:
            batches = [{"type": "insert_batch", "model": MODEL, **p, "time": 1.0e9 + number} for p in parts]
            command = {"type": "batch", "commands": batches}
        yield ujson.dumps({**command, "time": 1.0e9 + number}).encode(), count


def fresh_machine() -> StateMachine:
    """A state machine of ``APP`` owning every slot, as a one-group cluster's replicas hold it."""
    machine = StateMachine(load_app(APP))
    machine.apply({"type": "init_slots", "ranges": [[0, SLOT_COUNT - 1]]}, index=1)
    return machine


def apply_round(log: list[tuple[bytes, int]]) -> float:
    """CPU seconds a fresh state machine spends applying ``log``; raises if an entry was refused."""
    machine = fresh_machine()
    gc.collect()
    started = time.process_time()
    for index, (raw, _) in enumerate(log, start=2):
        result = machine.apply_entry(raw, index)
        if "ok" not in result:
            raise RuntimeError(f"entry {index} was refused: {result}")
    return time.process_time() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.apply_cost", description=__doc__.split("\n\n")[0])
    parser.add_argument("--docs", type=int, default=100_000, help="users stored per round (default 100000)")
    parser.add_argument("--per-entry", type=int, default=1000, help="users per log entry (default 1000)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each on a fresh machine (default 3)")
    parser.add_argument(
        "--form",
        choices=("parts", "batch"),
        default="parts",
        help="one insert_parts per entry (default), or a batch of per-slot insert_batch commands",
    )
    args = parser.parse_args(argv)
    log = list(entries(args.docs, args.per_entry, args.form))
    stored = sum(count for _, count in log)
    print(f"{len(log)} {args.form} entries, {stored} documents, {args.rounds} rounds")
    best = float("inf")
    for number in range(1, args.rounds + 1):
        per_doc = apply_round(log) / stored * 1e6
        best = min(best, per_doc)
        print(f"round {number}: {per_doc:.1f} µs/doc")
    print(f"best: {best:.1f} µs/doc")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
