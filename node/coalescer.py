"""Coalescing of calls to one target, Nagle-style: the first goes at once, the ones made meanwhile go together.

A ``Coalescer`` keeps at most one request in flight to its target. A call
made while none is in flight is sent alone (in the next loop turn, with any
other call made in the same turn); calls made while one is in flight wait,
and when it returns they leave in one request, at most ``max_calls`` of them
and ``max_bytes`` of payload (the rest wait for the next). The request is the
caller's ``send``: it gets the payloads and the time each caller has left,
and must answer one outcome per payload, in order: a result, or the
``DocraftError`` that call alone would have raised. An exception ``send``
raises (the target unreachable, a timeout) is raised to every call of that
request, as it would have been to each alone.

A caller waits for its own outcome at most its own timeout, then gets
``timed_out``'s error. A caller cancelled or timed out leaves the request it
is in running; one still waiting is dropped before it is sent. Used on one
event loop.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from models.errors import DocraftError

R = TypeVar("R")

MAX_CALLS = 128
MAX_BYTES = 1024 * 1024

# send(payloads, seconds each caller has left) -> one outcome per payload, in order
Send = Callable[[list[bytes], list[float]], Awaitable[list[R | DocraftError]]]


@dataclass(eq=False)
class _Call(Generic[R]):
    payload: bytes
    deadline: float  # on the loop's clock
    future: asyncio.Future[R]


class Coalescer(Generic[R]):
    """Calls to one target; see the module's docstring. ``timed_out(seconds)`` is the error a caller
    gets when no outcome came within its timeout of ``seconds``."""

    def __init__(
        self,
        send: Send[R],
        timed_out: Callable[[float], Exception],
        max_calls: int = MAX_CALLS,
        max_bytes: int = MAX_BYTES,
    ) -> None:
        if max_calls < 1 or max_bytes < 1:
            raise ValueError("a coalescer sends at least one call of at least one byte per request")
        self.send = send
        self.timed_out = timed_out
        self.max_calls = max_calls
        self.max_bytes = max_bytes
        self._waiting: deque[_Call[R]] = deque()
        self._sender: asyncio.Task[None] | None = None

    async def call(self, payload: bytes, timeout: float) -> R:
        """``payload``'s outcome: its result, or the error ``send`` gave it or raised, or ``timed_out``'s."""
        loop = asyncio.get_running_loop()
        call: _Call[R] = _Call(payload, loop.time() + timeout, loop.create_future())
        self._waiting.append(call)
        if self._sender is None:
            self._sender = loop.create_task(self._drain())
        try:
            return await asyncio.wait_for(call.future, timeout)
        except TimeoutError:
            raise self.timed_out(timeout) from None

    async def _drain(self) -> None:
        """Send what waits, one request at a time, until nothing does."""
        try:
            while self._waiting:
                batch = self._take()
                if batch:
                    await self._send(batch)
        finally:
            self._sender = None

    def _take(self) -> list[_Call[R]]:
        """The next request's calls: the oldest that still wait, up to the caps (at least one)."""
        batch: list[_Call[R]] = []
        size = 0
        while self._waiting and len(batch) < self.max_calls:
            call = self._waiting[0]
            if call.future.done():  # its caller was cancelled or gave up: nobody needs it sent
                self._waiting.popleft()
                continue
            if batch and size + len(call.payload) > self.max_bytes:
                break
            batch.append(self._waiting.popleft())
            size += len(call.payload)
        return batch

    async def _send(self, batch: list[_Call[R]]) -> None:
        now = asyncio.get_running_loop().time()
        try:
            outcomes = await self.send([c.payload for c in batch], [c.deadline - now for c in batch])
        except Exception as exc:  # the request failed as a whole: each call fails as it would have alone
            for call in batch:
                _settle(call.future, _copy(exc))
            return
        for call, outcome in zip(batch, outcomes, strict=True):
            _settle(call.future, _copy(outcome) if isinstance(outcome, DocraftError) else outcome)


def _settle(future: asyncio.Future[Any], outcome: Any) -> None:
    if future.done():
        return
    if isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


def _copy(exc: Exception) -> Exception:
    """An exception of its own for each caller (raising one instance in several tasks tangles tracebacks)."""
    if isinstance(exc, DocraftError):
        return type(exc)(exc.message, **exc.details)
    return exc
