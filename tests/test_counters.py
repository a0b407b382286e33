"""The counter workload: retries under one Idempotency-Key, and the check of final values against increments."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import ujson
from tornado.testing import AsyncHTTPTestCase, gen_test
from tornado.web import Application, RequestHandler

from bench.counters import Increment, check_counters, send


def inc(counter: int, by: int, outcome: str) -> Increment:
    return Increment(0, counter, by, f"k{counter}-{by}-{outcome}", 0.0, outcome=outcome)


def test_exactly_the_acknowledged_increments_is_clean() -> None:
    (verdict,) = check_counters([inc(0, 3, "ok"), inc(0, 4, "ok"), inc(0, 9, "fail")], {0: 7})
    assert (verdict.acknowledged, verdict.unknown, verdict.double_applied, verdict.lost) == (7, 0, 0, 0)


def test_an_unknown_increment_may_or_may_not_have_applied() -> None:
    history = [inc(0, 3, "ok"), inc(0, 5, "unknown")]
    assert [(v.double_applied, v.lost) for v in check_counters(history, {0: 3})] == [(0, 0)]
    assert [(v.double_applied, v.lost) for v in check_counters(history, {0: 8})] == [(0, 0)]


def test_more_than_every_increment_that_may_have_applied_is_a_double_apply() -> None:
    (verdict,) = check_counters([inc(0, 3, "ok"), inc(0, 5, "unknown"), inc(0, 2, "fail")], {0: 11})
    assert verdict.double_applied == 3 and verdict.lost == 0


def test_less_than_the_acknowledged_increments_is_a_loss() -> None:
    (verdict,) = check_counters([inc(0, 3, "ok"), inc(0, 5, "ok"), inc(0, 4, "unknown")], {0: 5})
    assert verdict.lost == 3 and verdict.double_applied == 0


def test_counters_are_checked_apart_and_an_unread_counter_is_not_judged() -> None:
    verdicts = check_counters([inc(0, 3, "ok"), inc(1, 4, "ok"), inc(2, 1, "ok")], {0: 3, 1: 8})
    assert [(v.counter, v.double_applied, v.lost) for v in verdicts] == [(0, 0, 0), (1, 4, 0), (2, 0, 0)]
    assert verdicts[2].final is None and verdicts[2].to_json()["final"] is None


class Scripted(RequestHandler):
    """Answers ``POST /incr`` from a script of (delay, status, body), recording each request's body and key."""

    def initialize(self, script: list[tuple[float, int, bytes]], seen: list[tuple[Any, str | None]]) -> None:
        self.script, self.seen = script, seen

    async def post(self) -> None:
        self.seen.append((ujson.loads(self.request.body), self.request.headers.get("Idempotency-Key")))
        delay, status, body = self.script.pop(0) if self.script else (0.0, 503, NO_LEADER)
        await asyncio.sleep(delay)
        self.set_status(status)
        self.finish(body)


NO_LEADER = b'{"error": {"code": "no_leader", "message": "retry shortly"}}'
UNKNOWN = b'{"error": {"code": "outcome_unknown", "message": "retry with the same key"}}'
BAD = b'{"error": {"code": "bad_request", "message": "no"}}'


class SendTest(AsyncHTTPTestCase):
    def get_app(self) -> Application:
        self.script: list[tuple[float, int, bytes]] = []
        self.seen: list[tuple[Any, str | None]] = []
        deps = {"script": self.script, "seen": self.seen}
        return Application([("/incr", Scripted, deps)], log_function=lambda _: None)

    async def send(self, patience: float = 5.0) -> tuple[Increment, list[str]]:
        increment = Increment(0, 2, 7, "incr-0-1", 0.0)
        unexpected = await send(self.get_url(""), increment, time.monotonic, patience, attempt_timeout=0.3)
        return increment, unexpected

    @gen_test(timeout=10)
    async def test_unknown_outcomes_and_timeouts_are_retried_under_the_same_key_until_answered(self) -> None:
        self.script += [
            (0.0, 504, UNKNOWN),
            (0.0, 503, NO_LEADER),
            (1.0, 200, b'{"result": 1}'),
            (0, 200, b'{"result": 9}'),
        ]
        increment, unexpected = await self.send()
        assert (increment.outcome, increment.value, increment.attempts, unexpected) == ("ok", 9, 4, [])
        assert self.seen == [({"key": 2, "by": 7}, "incr-0-1")] * 4

    @gen_test(timeout=10)
    async def test_an_increment_only_ever_refused_for_no_leader_certainly_did_not_apply(self) -> None:
        increment, _ = await self.send(patience=0.3)
        assert (increment.outcome, increment.maybe_applied) == ("fail", False)
        assert increment.attempts >= 2

    @gen_test(timeout=10)
    async def test_a_client_error_ends_the_retries_and_is_reported(self) -> None:
        self.script += [(0.0, 504, UNKNOWN), (0.0, 400, BAD), (0.0, 200, b'{"result": 7}')]
        increment, unexpected = await self.send()
        assert (increment.outcome, increment.attempts) == ("unknown", 2)
        assert unexpected == [f"incr 400: {BAD.decode()}"]


def test_answers_above_the_final_value_or_twice_the_same_are_evidence_of_a_loss() -> None:
    first, second, third = inc(0, 3, "ok"), inc(0, 4, "ok"), inc(0, 5, "ok")
    first.value, second.value, third.value = 3, 7, 12
    (clean,) = check_counters([first, second, third], {0: 12})
    assert clean.evidence == ()
    third.value = 7  # applied to the state before ``second``: second's effect was lost
    (forked,) = check_counters([first, second, third], {0: 8})
    assert forked.lost == 4
    assert [(e["key"], e["why"]) for e in forked.evidence] == [
        (second.key, "same value as another"),
        (third.key, "same value as another"),
    ]
    (rolled_back,) = check_counters([first, second], {0: 3})
    assert [(e["key"], e["why"], e["value"]) for e in rolled_back.evidence] == [
        (second.key, "above the final value", 7)
    ]
