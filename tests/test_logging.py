"""``--log-format json`` (``node.logs``): one JSON object per line, carrying the request id of the task that
logs it. Following a request across real processes is ``test_launcher_up``'s."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import pytest
import ujson

from node import logs


@pytest.fixture
def json_lines(capsys: pytest.CaptureFixture[str]) -> Iterator[pytest.CaptureFixture[str]]:
    """Logging configured as ``docraft node --log-format json`` for replica s1r2 of shard s1 (on the first
    log call: the test's standard error is pytest's then); restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield capsys
    root.handlers[:] = handlers
    root.setLevel(level)
    access = logging.getLogger(logs.ACCESS_LOGGER)
    access.setLevel(logging.NOTSET)
    access.removeFilter(logs.quiet_polls)


def as_replica() -> None:
    logs.configure("s1r2", "json", shard="s1", replica="s1r2")


def records(capsys: pytest.CaptureFixture[str]) -> list[dict[str, object]]:
    return [ujson.loads(line) for line in capsys.readouterr().err.splitlines()]


def test_a_json_line_has_time_level_logger_message_process_shard_and_replica(
    json_lines: pytest.CaptureFixture[str],
) -> None:
    as_replica()
    logging.getLogger("docraft.test").warning("disk %s is %d%% full", "/data", 91)
    [line] = records(json_lines)
    assert line["level"] == "WARNING" and line["logger"] == "docraft.test"
    assert line["message"] == "disk /data is 91% full"
    assert (line["process"], line["shard"], line["replica"]) == ("s1r2", "s1", "s1r2")
    assert str(line["time"]).endswith("+00:00") and "request_id" not in line


def test_each_task_logs_with_its_own_request_id(json_lines: pytest.CaptureFixture[str]) -> None:
    as_replica()
    log = logging.getLogger("docraft.test")

    async def handle(request_id: str) -> None:
        logs.bind_request(request_id)
        await asyncio.sleep(0)  # the other request runs meanwhile
        log.info("handled")

    async def main() -> None:
        await asyncio.gather(handle("key:a"), handle("key:b"))
        log.info("outside any request")

    asyncio.run(main())
    lines = records(json_lines)
    assert sorted(str(line.get("request_id")) for line in lines[:2]) == ["key:a", "key:b"]
    assert "request_id" not in lines[2]


def test_an_exception_is_one_line_with_its_traceback(json_lines: pytest.CaptureFixture[str]) -> None:
    as_replica()
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("docraft.test").exception("failed")
    [line] = records(json_lines)
    assert line["message"] == "failed" and "RuntimeError: boom" in str(line["exception"])


def test_json_logs_every_request_and_text_logs_only_failed_ones(json_lines: pytest.CaptureFixture[str]) -> None:
    as_replica()
    assert logging.getLogger(logs.ACCESS_LOGGER).isEnabledFor(logging.INFO)
    logs.configure("d0", "text")
    assert not logging.getLogger(logs.ACCESS_LOGGER).isEnabledFor(logging.INFO)
    logging.getLogger("docraft.test").warning("plain")
    assert " d0 WARNING docraft.test: plain" in json_lines.readouterr().err


def test_answered_polls_are_not_logged_but_failed_polls_and_other_requests_are(
    json_lines: pytest.CaptureFixture[str],
) -> None:
    as_replica()
    access = logging.getLogger(logs.ACCESS_LOGGER)
    access.info("%d %s %.2fms", 200, "GET /_shard/slots?counts=0 (127.0.0.1)", 0.4)
    access.info("%d %s %.2fms", 200, "GET /_shard/status (127.0.0.1)", 0.3)
    access.info("%d %s %.2fms", 503, "GET /readyz (127.0.0.1)", 0.2)
    access.info("%d %s %.2fms", 200, "POST /insert_user (127.0.0.1)", 2.5)
    messages = [str(line["message"]) for line in records(json_lines)]
    assert messages == ["503 GET /readyz (127.0.0.1) 0.20ms", "200 POST /insert_user (127.0.0.1) 2.50ms"]


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format must be one of text, json"):
        logs.configure("d0", "xml")
