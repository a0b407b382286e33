"""The fault benchmark's counter workload: increments under an Idempotency-Key each, and their check.

Each logical increment (``incr`` of ``bench.register_app``) gets its own
``Idempotency-Key``. An attempt answered ``504 outcome_unknown`` or
``503``, or that timed out or lost its connection, is sent again, unchanged
and under the same key, until one is answered (for at most ``patience``
seconds): the cluster must apply it at most once however many attempts
reached it, including attempts still in flight when the next one is sent.

The check (``check_counters``): a counter's final value must be at least the
sum of its acknowledged increments (else increments were lost) and at most
that plus the increments whose outcome stayed unknown (else some increment
was applied twice).
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ujson

from bench.nemesis import error_code, fetch

# Seconds a client waits for one attempt: shorter than a failover on purpose, so attempts time out and are
# sent again under the same key while the first is still in flight in the dispatcher.
ATTEMPT_TIMEOUT = 1.0
RETRY_PAUSE = 0.1


@dataclass
class Increment:
    """One logical increment of counter ``counter`` by ``by``; times are seconds since the run started."""

    process: int
    counter: int
    by: int
    key: str  # its Idempotency-Key
    invoke: float
    outcome: str = "fail"  # "ok" (acknowledged), "unknown" (may have applied) or "fail" (certainly not applied)
    value: int | None = None  # the counter's value just after it applied, as acknowledged
    attempts: int = 0
    maybe_applied: bool = False  # some attempt may have reached a leader (504, 5xx, timeout, lost connection)
    answered: tuple[float, float] | None = None  # invocation and completion of the attempt that was acknowledged
    served_by: dict[str, Any] | None = None  # the acknowledging answer's ``served_by``: replica, role, term, index
    late: bool = False  # acknowledged only by a retry after the cluster was healed


async def send(
    base_url: str,
    increment: Increment,
    clock: Callable[[], float],
    patience: float,
    attempt_timeout: float = ATTEMPT_TIMEOUT,
) -> list[str]:
    """Send ``increment`` until it is acknowledged or ``patience`` seconds have passed; unexpected answers.

    Updates ``increment`` (attempts, outcome, value, answered, served_by). Retries every
    answer but a 2xx and a 4xx, always under the increment's key. An unexpected
    answer (anything but 200, ``503 no_leader``, 504 or no answer) is returned
    as a sentence; a 4xx ends the retries.
    """
    url, args = f"{base_url}/incr", {"key": increment.counter, "by": increment.by}
    headers = {"Idempotency-Key": increment.key}
    unexpected: list[str] = []
    start = clock()
    while True:
        invoke = clock()
        status, body = await fetch(url, attempt_timeout, headers, post=args)
        increment.attempts += 1
        if status == 200:
            answer = ujson.loads(body)
            increment.outcome, increment.value = "ok", int(answer["result"])
            increment.answered = (invoke, clock())
            increment.served_by = (answer.get("served_by") or [None])[0]
            return unexpected
        if not (status == 503 and error_code(body) == "no_leader"):
            increment.maybe_applied = increment.maybe_applied or status >= 500
            if status not in (504, 599):
                unexpected.append(f"incr {status}: {body[:300].decode(errors='replace')}")
        if 400 <= status < 500 or clock() - start >= patience:
            increment.outcome = "unknown" if increment.maybe_applied else "fail"
            return unexpected
        await asyncio.sleep(RETRY_PAUSE)


@dataclass(frozen=True)
class CounterVerdict:
    """One counter: its final value against the sums of its increments."""

    counter: int
    final: int | None  # None: the final read failed
    acknowledged: int  # sum of acknowledged increments
    unknown: int  # sum of increments whose outcome stayed unknown
    increments: int  # logical increments sent
    # Acknowledged increments that alone prove a loss (see ``evidence``), at most ``EVIDENCE`` of them.
    evidence: tuple[dict[str, Any], ...] = ()

    @property
    def double_applied(self) -> int:
        """How much the final value exceeds every increment that may have applied (0 when it does not)."""
        return 0 if self.final is None else max(0, self.final - self.acknowledged - self.unknown)

    @property
    def lost(self) -> int:
        """How much the final value falls short of the acknowledged increments (0 when it does not)."""
        return 0 if self.final is None else max(0, self.acknowledged - self.final)

    def to_json(self) -> dict[str, Any]:
        return {
            "counter": self.counter,
            "final": self.final,
            "acknowledged": self.acknowledged,
            "unknown": self.unknown,
            "increments": self.increments,
            "double_applied": self.double_applied,
            "lost": self.lost,
            "evidence": list(self.evidence),
        }


EVIDENCE = 10


def evidence(increments: list[Increment], final: int | None) -> tuple[dict[str, Any], ...]:
    """Acknowledged increments of one counter whose answers alone prove that an increment was lost.

    Increments are positive, so the values a counter passes through only grow:
    an increment answered with a value above the final one saw a state that
    was later lost, and two increments answered with the same value were each
    applied to the same state, so the effect of one of them, or of what came
    before it, was lost. Their keys and times say when to look in the logs.
    """
    acknowledged = [i for i in increments if i.outcome == "ok" and i.value is not None]
    above = [i for i in acknowledged if final is not None and i.value is not None and i.value > final]
    by_value: dict[int | None, list[Increment]] = defaultdict(list)
    for increment in acknowledged:
        by_value[increment.value].append(increment)
    twins = [i for group in by_value.values() if len(group) > 1 for i in group]
    return tuple(
        {
            "why": "above the final value" if i in above else "same value as another",
            "key": i.key,
            "by": i.by,
            "value": i.value,
            "acknowledged_at": None if i.answered is None else i.answered[1],
            "attempts": i.attempts,
            "served_by": i.served_by,
        }
        for i in (above + twins)[:EVIDENCE]
    )


def check_counters(increments: list[Increment], finals: dict[int, int]) -> list[CounterVerdict]:
    """A verdict for every counter that was incremented or read at the end, in counter order.

    A failed increment (certainly not applied) counts in neither sum.
    """
    counters = sorted({i.counter for i in increments} | set(finals))
    verdicts = []
    for counter in counters:
        mine = [i for i in increments if i.counter == counter]
        final = finals.get(counter)
        verdicts.append(
            CounterVerdict(
                counter,
                final,
                sum(i.by for i in mine if i.outcome == "ok"),
                sum(i.by for i in mine if i.outcome == "unknown"),
                len(mine),
                evidence(mine, final),
            )
        )
    return verdicts
