"""Which event loop a docraft server runs on (``node.servers.run_loop``)."""

from __future__ import annotations

import asyncio
import sys

import pytest
import uvloop

from node.servers import run_loop


def loop_type() -> type:
    found: list[type] = []

    async def main() -> None:
        found.append(type(asyncio.get_running_loop()))

    run_loop(main())
    return found[0]


def test_a_server_runs_on_uvloop_when_it_is_installed() -> None:
    assert issubclass(loop_type(), uvloop.Loop)


def test_a_server_falls_back_to_asyncios_loop_without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    loop = loop_type()
    assert not issubclass(loop, uvloop.Loop)
    assert issubclass(loop, asyncio.BaseEventLoop)
