"""The generated Python client (``docraft schema --format python``), checked by the tools its readers use.

The module is generated for ``examples.people`` and ``tests.apps.schema_app``
and must pass ``ruff`` (with the project's rules) and ``mypy --strict``; so
must a sample program using it, while a sample with wrong calls must fail
``mypy`` with the errors a reader would expect. The calling rules (retries,
``Idempotency-Key``, errors) are checked in process through httpx's
``MockTransport``; and the sample program, blocking and asyncio, runs against
a live cluster, losing the answer to a write on the way to test the retry.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import json
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
import pytest

from models import Model, field
from node.cli import main
from node.routes import dispatcher_routes
from query import WriteView, mutation
from query.app import App, load_app
from query.schema import export_text, python_client
from tests.harness import Cluster, http, running

PEOPLE = load_app("examples.people")
SCHEMA_APP = load_app("tests.apps.schema_app")
PROJECT = Path(__file__).resolve().parent.parent
KEY_SYNTAX = re.compile(r"[A-Za-z0-9._-]{1,128}")


def generate(app: App, directory: Path, name: str = "docraft_client.py") -> Path:
    """``docraft schema --app <app> --format python -o directory/name``, as a user runs it."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    assert main(["schema", "--app", app.module, "--format", "python", "-o", str(target)]) == 0
    return target


def mypy(directory: Path, *files: str) -> tuple[int, str]:
    """``mypy --strict`` on ``files`` of ``directory`` (which holds the client); its exit status and report."""
    command = [sys.executable, "-m", "mypy", "--strict", "--cache-dir", ".mypy_cache", "--no-pretty", *files]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


def ruff(*args: str) -> tuple[int, str]:
    command = [sys.executable, "-m", "ruff", *args, "--config", str(PROJECT / "pyproject.toml")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    return done.returncode, done.stdout + done.stderr


# -- the generated module ---------------------------------------------------------------------------------


def test_cli_writes_the_module_whose_one_dependency_is_httpx(tmp_path: Path) -> None:
    target = generate(PEOPLE, tmp_path)
    text = target.read_text(encoding="utf-8")
    assert text == python_client(PEOPLE) == export_text(PEOPLE, "python", dispatcher_routes())
    assert "class DocraftClient:" in text and "class AsyncDocraftClient:" in text
    imported = {line.split()[1].split(".")[0] for line in text.splitlines() if line.startswith(("import ", "from "))}
    third_party = imported - set(sys.stdlib_module_names)
    assert third_party == {"httpx"}, "httpx is the generated module's one dependency"


@pytest.mark.parametrize("app", [PEOPLE, SCHEMA_APP], ids=lambda app: app.module)
def test_generated_module_passes_ruff_and_mypy_strict(app: App, tmp_path: Path) -> None:
    target = generate(app, tmp_path)
    code, output = ruff("check", str(target))
    assert code == 0, output
    code, output = ruff("format", "--check", "--diff", str(target))
    assert code == 0, output
    code, output = mypy(tmp_path, target.name)
    assert code == 0, output


class Page(Model):
    id: int = field(primary_key=True)


@mutation(shard_key="id")
def keyed(db: WriteView, id: int, idempotency_key: str) -> None:
    """A mutation with a parameter named like the client's option."""


def renamed(name: str) -> App:
    """The people app with ``get_user`` called ``name``."""
    return App("renamed", dict(PEOPLE.models), {name: dataclasses.replace(PEOPLE.endpoints["get_user"], name=name)})


@pytest.mark.parametrize(
    ("app", "message"),
    [
        (
            App("clash", {**SCHEMA_APP.models, "Page": Page}, dict(SCHEMA_APP.endpoints)),
            "more than one name would be Page",
        ),
        (renamed("pages"), "an endpoint named 'pages' cannot be a client method"),
        (renamed("list"), "an endpoint named 'list' cannot be a client method"),
        (renamed("_send"), "an endpoint named '_send' cannot be a client method"),
        (App("keyed", {}, {"keyed": keyed}), "keyed: parameter 'idempotency_key' is a name the method takes"),
    ],
    ids=["model", "method", "builtin", "private", "option"],
)
def test_a_name_the_module_could_not_bind_is_refused(app: App, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        python_client(app)


# -- mypy --strict on programs using it -------------------------------------------------------------------

SAMPLE = '''\
"""Calls a live cluster with the generated client, blocking and with asyncio; prints what it saw as JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import httpx

from docraft_client import (
    AsyncDocraftClient,
    Consistency,
    DocraftClient,
    DocraftError,
    GetUserResult,
    Order,
    User,
    UserWithRelations,
)

LEVELS: tuple[Consistency, ...] = ("stale", "leader", "linearizable")
STALE_WAIT = 10.0  # a stale read may be served by a replica that has not applied the write yet
POLL = 0.05  # between two stale reads waiting for it


class LoseFirstWriteAnswer(httpx.BaseTransport):
    """Sends every request to the cluster, but loses the answer to the first POST: its outcome is unknown."""

    def __init__(self) -> None:
        self.inner = httpx.HTTPTransport()
        self.keys: list[str | None] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = self.inner.handle_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                response.read()
                raise httpx.ReadError("the answer was lost", request=request)
        return response


class AsyncLoseFirstWriteAnswer(httpx.AsyncBaseTransport):
    """`LoseFirstWriteAnswer` for the asyncio client."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.keys: list[str | None] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self.inner.handle_async_request(request)
        if request.method == "POST":
            self.keys.append(request.headers.get("Idempotency-Key"))
            if len(self.keys) == 1:
                await response.aread()
                raise httpx.ReadError("the answer was lost", request=request)
        return response


def user(uid: int, country: str) -> User:
    return {"id": uid, "first_name": "Ann", "last_name": "Lee", "country": country, "address": "", "city": ""}


def seen(page: GetUserResult) -> dict[str, Any]:
    """What a read of one user saw: the ids, the ids of the orders embedded, the level the shard used."""
    found: list[UserWithRelations] = page["items"]
    orders = [o["id"] for u in found for o in u.get("orders", [])]
    return {"ids": [u["id"] for u in found], "orders": orders, "used": page["served_by"][0].get("consistency")}


def settled(level: Consistency, report: dict[str, Any], deadline: float) -> bool:
    """Whether a read saw the user and its order, or need not be tried again: only a stale read may lag."""
    return bool(report["orders"]) or level != "stale" or time.monotonic() > deadline


def run_blocking(url: str, base: int, country: str) -> dict[str, Any]:
    report: dict[str, Any] = {"reads": {}}
    with DocraftClient(url, timeout=5.0) as db:
        inserted: list[int] = []
        for uid in range(base, base + 7):
            stored: User = db.insert_user(**user(uid, country))["result"]
            inserted.append(stored["id"])
        report["inserted"] = inserted
        order: Order = db.insert_order(id=base, user_id=base, item="book", amount=9.5)["result"]
        report["order"] = order["id"]
        for level in LEVELS:
            deadline = time.monotonic() + STALE_WAIT
            read = seen(db.get_user(id=base, consistency=level, include=["orders"]))
            while not settled(level, read, deadline):
                time.sleep(POLL)
                read = seen(db.get_user(id=base, consistency=level, include=["orders"]))
            report["reads"][level] = read
        pages = list(db.pages(db.get_user, country=country, limit=3))
        report["pages"] = [[u["id"] for u in page["items"]] for page in pages]
        try:
            db.get_user(country=country, cursor="not-a-cursor-docraft-made")
        except DocraftError as error:
            report["error"] = {"status": error.status, "code": error.code, "details": error.details}
    lossy = LoseFirstWriteAnswer()
    with DocraftClient(url, timeout=5.0, retry_delay=0.05, transport=lossy) as db:
        retried = db.insert_order(id=base + 1, user_id=base, item="pen", amount=1.5)
        orders = db.get_user_orders(user_id=base)["items"]
    report["retry"] = {"keys": lossy.keys, "result": retried["result"]["id"], "orders": [o["id"] for o in orders]}
    return report


async def run_asyncio(url: str, base: int, country: str) -> dict[str, Any]:
    report: dict[str, Any] = {"reads": {}}
    async with AsyncDocraftClient(url, timeout=5.0) as db:
        inserted = await asyncio.gather(*(db.insert_user(**user(uid, country)) for uid in range(base, base + 7)))
        report["inserted"] = [answer["result"]["id"] for answer in inserted]
        order = await db.insert_order(id=base, user_id=base, item="book", amount=9.5)
        report["order"] = order["result"]["id"]
        for level in LEVELS:
            deadline = time.monotonic() + STALE_WAIT
            read = seen(await db.get_user(id=base, consistency=level, include=["orders"]))
            while not settled(level, read, deadline):
                await asyncio.sleep(POLL)
                read = seen(await db.get_user(id=base, consistency=level, include=["orders"]))
            report["reads"][level] = read
        pages = db.pages(db.get_user, country=country, limit=3)
        report["pages"] = [[u["id"] for u in page["items"]] async for page in pages]
        try:
            await db.get_user(country=country, cursor="not-a-cursor-docraft-made")
        except DocraftError as error:
            report["error"] = {"status": error.status, "code": error.code, "details": error.details}
    lossy = AsyncLoseFirstWriteAnswer()
    async with AsyncDocraftClient(url, timeout=5.0, retry_delay=0.05, transport=lossy) as db:
        retried = await db.insert_order(id=base + 1, user_id=base, item="pen", amount=1.5)
        orders = (await db.get_user_orders(user_id=base))["items"]
    report["retry"] = {"keys": lossy.keys, "result": retried["result"]["id"], "orders": [o["id"] for o in orders]}
    return report


if __name__ == "__main__":
    url = sys.argv[1]
    blocking = run_blocking(url, 7_000_000, "Blockland")
    concurrent = asyncio.run(run_asyncio(url, 8_000_000, "Asyncland"))
    print(json.dumps({"blocking": blocking, "asyncio": concurrent}))
'''

BAD_SAMPLE = """\
from docraft_client import AsyncDocraftClient, DocraftClient, InsertUserResult

db = DocraftClient("http://127.0.0.1:8000")
answer: InsertUserResult = db.insert_user(id="7", first_name="Ann", last_name="Lee", country="France")
db.insert_user(id=7, first_name="Ann", last_name="Lee")
db.get_user(idd=7)
db.get_user(id=7, consistency="eventual")
db.get_user(id=7, include=["friends"])
db.pages(db.insert_user, id=7, first_name="Ann", last_name="Lee", country="France")
name: int = db.get_user(id=7)["items"][0]["first_name"]
aio = AsyncDocraftClient("http://127.0.0.1:8000")
aio.get_user_orders(user_id=None)
"""

# Each wrong line of BAD_SAMPLE, and the error mypy must report for it.
BAD_CALLS = {
    4: 'Argument "id" to "insert_user" of "DocraftClient" has incompatible type "str"; expected "int"',
    5: 'Missing named argument "country" for "insert_user" of "DocraftClient"',
    6: 'Unexpected keyword argument "idd" for "get_user" of "DocraftClient"',
    7: 'Argument "consistency" to "get_user" of "DocraftClient" has incompatible type',
    8: "List item 0 has incompatible type \"Literal['friends']\"; expected \"Literal['orders']\"",
    9: 'Argument 1 to "pages" of "DocraftClient" has incompatible type',
    10: 'Incompatible types in assignment (expression has type "str", variable has type "int")',
    12: 'Argument "user_id" to "get_user_orders" of "AsyncDocraftClient" has incompatible type "None"; expected "int"',
}

SCHEMA_SAMPLE = '''\
"""Every kind of type the export walks, used as a program would."""

from __future__ import annotations

from typing import Any

from schema_client import Author, Book, DocraftClient, Page

db = DocraftClient("http://127.0.0.1:8000")
books: Page[Book] = db.search_books(tags=["sf"], year=None, limit=5, consistency="stale", explain=True)
first: Book = books["items"][0]
co_authors: list[str] = first["co_authors"]
rating: float | None = first["rating"]
notes: list[str] | None = first["notes"]
count: int = db.count_books()["result"]
titles: dict[str, str] = db.book_titles(id=1)["result"]
anyone: Page[dict[str, Any]] = db.authors(cursor=None)
every_author = [a for page in db.pages(db.authors) for a in page["items"]]
added: Book = db.add_book(id=2, title="Dune", author="frank", year=1965, co_authors=["ann"])["result"]
author: Author = {"id": "frank", "name": "Frank Herbert", "active": True}
'''


@pytest.fixture(scope="module")
def people_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the client generated for ``examples.people`` as ``docraft_client.py``."""
    directory = tmp_path_factory.mktemp("python-client")
    generate(PEOPLE, directory)
    return directory


def test_sample_program_passes_mypy_strict(people_client: Path) -> None:
    (people_client / "sample.py").write_text(SAMPLE, encoding="utf-8")
    code, output = mypy(people_client, "docraft_client.py", "sample.py")
    assert code == 0, output


def test_wrong_calls_fail_mypy_with_the_expected_errors(people_client: Path) -> None:
    (people_client / "bad.py").write_text(BAD_SAMPLE, encoding="utf-8")
    code, output = mypy(people_client, "bad.py")
    assert code == 1, output
    for line, error in BAD_CALLS.items():
        reported = [text for text in output.splitlines() if text.startswith(f"bad.py:{line}: error:")]
        assert any(error in text for text in reported), f"line {line}: expected {error!r}, mypy said:\n{output}"
    flagged = {int(m) for m in re.findall(r"^bad\.py:(\d+): error:", output, re.MULTILINE)}
    assert flagged == set(BAD_CALLS), output


def readme_example() -> str:
    """The README's Python client example, as written (it talks to ``http://127.0.0.1:8000``)."""
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("### Python client") :]
    return section[section.index("```python\n") + len("```python\n") : section.index("```\n\n")]


def test_the_readme_example_passes_mypy_strict(people_client: Path) -> None:
    example = readme_example()
    (people_client / "readme_example.py").write_text(example, encoding="utf-8")
    code, output = mypy(people_client, "readme_example.py")
    assert code == 0, output
    wrong = re.sub(r"db\.insert_user\(id=(\d+),", r'db.insert_user(id="\1",', example)
    (people_client / "readme_example.py").write_text(wrong, encoding="utf-8")
    code, output = mypy(people_client, "readme_example.py")
    assert code == 1 and 'Argument "id" to "insert_user"' in output, output


def test_every_kind_of_type_checks(tmp_path: Path) -> None:
    generate(SCHEMA_APP, tmp_path, "schema_client.py")
    (tmp_path / "uses.py").write_text(SCHEMA_SAMPLE, encoding="utf-8")
    code, output = mypy(tmp_path, "uses.py")
    assert code == 0, output
    wrong = SCHEMA_SAMPLE.replace('tags=["sf"]', 'tags="sf"')
    (tmp_path / "uses.py").write_text(wrong, encoding="utf-8")
    code, output = mypy(tmp_path, "uses.py")
    assert code == 1 and 'Argument "tags" to "search_books"' in output, output


# -- the calling rules, through httpx's MockTransport -----------------------------------------------------


@pytest.fixture(scope="module")
def client_module(people_client: Path) -> Iterator[ModuleType]:
    """The generated ``docraft_client`` module, imported in this process."""
    spec = importlib.util.spec_from_file_location("docraft_client", people_client / "docraft_client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


Reply = httpx.Response | Exception
FLAVOURS = ("blocking", "asyncio")


class Script:
    """Answers requests with ``replies`` in turn (an exception is raised, as a lost connection is); keeps each
    request and when it came."""

    def __init__(self, *replies: Reply) -> None:
        self.replies = list(replies)
        self.requests: list[tuple[httpx.Request, float]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        request.read()
        self.requests.append((request, time.monotonic()))
        reply = self.replies.pop(0)
        if isinstance(reply, Exception):
            raise reply
        return reply

    @property
    def keys(self) -> list[str | None]:
        return [request.headers.get("Idempotency-Key") for request, _ in self.requests]

    def waited(self) -> float:
        """Seconds between the first two requests."""
        (_, first), (_, second) = self.requests[:2]
        return second - first


def refusal(status: int, code: str, headers: dict[str, str] | None = None, **details: Any) -> httpx.Response:
    error: dict[str, Any] = {"code": code, "message": f"refused: {code}"}
    if details:
        error["details"] = details
    return httpx.Response(status, json={"error": error}, headers=headers)


MARY: dict[str, Any] = {
    "id": 1,
    "first_name": "Mary",
    "last_name": "Smith",
    "country": "Australia",
    "address": "",
    "city": "",
}
SERVED = [{"shard": "s0", "replica": "s0r0", "role": "leader", "term": 2, "applied_index": 9}]
INSERTED = {"result": MARY, "served_by": SERVED}
QUICK = {"timeout": 5.0, "retries": 3, "retry_delay": 0.01}


def inserted() -> httpx.Response:
    return httpx.Response(200, json=INSERTED)


def page(next_cursor: str | None = None) -> httpx.Response:
    return httpx.Response(200, json={"items": [MARY], "next": next_cursor, "served_by": SERVED})


def call(
    module: ModuleType, flavour: str, script: Script, method: str, settings: dict[str, Any] | None = None, **kwargs: Any
) -> Any:
    """``method(**kwargs)`` of a client (``flavour``: blocking or asyncio) whose requests ``script`` answers;
    the method's answer, or the ``DocraftError`` it raised."""
    options = {**QUICK, **(settings or {}), "transport": httpx.MockTransport(script)}
    try:
        if flavour == "blocking":
            with module.DocraftClient("http://db.test", **options) as db:
                return getattr(db, method)(**kwargs)

        async def through_asyncio() -> Any:
            async with module.AsyncDocraftClient("http://db.test", **options) as db:
                return await getattr(db, method)(**kwargs)

        return asyncio.run(through_asyncio())
    except module.DocraftError as error:
        return error


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_outcome_unknown_is_retried_with_the_same_idempotency_key(client_module: ModuleType, flavour: str) -> None:
    script = Script(refusal(504, "outcome_unknown"), inserted())
    assert call(client_module, flavour, script, "insert_user", **MARY) == INSERTED
    first, second = script.keys
    assert first is not None and KEY_SYNTAX.fullmatch(first)
    assert second == first


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_lost_connection_on_a_write_is_retried_under_its_key(client_module: ModuleType, flavour: str) -> None:
    script = Script(httpx.ConnectError("refused"), httpx.ReadError("lost"), httpx.ReadTimeout("slow"), inserted())
    assert call(client_module, flavour, script, "insert_user", **MARY) == INSERTED
    assert len(set(script.keys)) == 1 and None not in script.keys, script.keys
    given = Script(httpx.ReadError("lost"), inserted())
    call(client_module, flavour, given, "insert_user", idempotency_key="order-7", **MARY)
    assert given.keys == ["order-7", "order-7"], "the caller's key is sent as it is, on each attempt"
    again = Script(inserted())
    call(client_module, flavour, again, "insert_user", **MARY)
    assert again.keys[0] not in script.keys, "each call has a key of its own"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_no_leader_waits_retry_after_up_to_the_cap(client_module: ModuleType, flavour: str) -> None:
    script = Script(refusal(503, "no_leader", {"Retry-After": "1"}), inserted())
    assert call(client_module, flavour, script, "insert_user", **MARY) == INSERTED
    assert script.keys[0] == script.keys[1]
    assert script.waited() >= 0.95, "Retry-After: 1 is waited, not retry_delay"
    frozen = Script(refusal(503, "slot_frozen", slot=7, retry_after=0.5), inserted())
    assert call(client_module, flavour, frozen, "insert_user", **MARY) == INSERTED
    assert frozen.waited() >= 0.45, "without the header, the error's details.retry_after is waited"
    capped = Script(refusal(503, "no_leader", {"Retry-After": "30"}), inserted())
    assert call(client_module, flavour, capped, "insert_user", {"max_retry_delay": 0.2}, **MARY) == INSERTED
    assert capped.waited() < 5, "the wait is capped by max_retry_delay"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_a_refusal_is_not_retried_and_raises_docraft_error(client_module: ModuleType, flavour: str) -> None:
    script = Script(refusal(422, "validation_failed", field="country"), inserted())
    error = call(client_module, flavour, script, "insert_user", **MARY)
    assert isinstance(error, client_module.DocraftError)
    [key] = script.keys
    expected = (422, "validation_failed", "refused: validation_failed", {"field": "country"}, key)
    assert (error.status, error.code, error.message, error.details, error.idempotency_key) == expected
    assert str(error) == "HTTP 422 validation_failed: refused: validation_failed"


@pytest.mark.parametrize("flavour", FLAVOURS)
def test_no_answer_after_the_last_retry_raises_with_the_key_to_retry_under(
    client_module: ModuleType, flavour: str
) -> None:
    script = Script(*(httpx.ConnectError("refused") for _ in range(3)))
    error = call(client_module, flavour, script, "insert_user", {"retries": 2}, **MARY)
    assert (error.status, error.code) == (0, "network_error")
    assert len(script.requests) == 3 and set(script.keys) == {error.idempotency_key}
    timed_out = Script(httpx.ReadTimeout("slow"), refusal(503, "no_leader"))
    error = call(client_module, flavour, timed_out, "get_user", {"retries": 1}, id=1)
    assert (error.status, error.code, error.idempotency_key) == (503, "no_leader", None), "a read carries no key"
    not_docraft = Script(httpx.Response(502, text="<html>bad gateway</html>"))
    error = call(client_module, flavour, not_docraft, "get_user", id=1)
    assert (error.status, error.code) == (502, None)


def test_reads_send_a_query_string_or_a_json_body_and_options_in_the_query(client_module: ModuleType) -> None:
    script = Script(page(), inserted(), page())
    db = client_module.DocraftClient("http://db.test", token="t0k-EN_1", transport=httpx.MockTransport(script))
    db.get_user(country="Australia", limit=2, consistency="stale", include=["orders"], explain=True)
    db.insert_user(**MARY)
    db.get_user_orders(user_id=1)
    (read, _), (write, _), (plain, _) = script.requests
    assert (read.method, read.url.path, dict(read.url.params)) == (
        "GET",
        "/get_user",
        {"country": "Australia", "limit": "2", "consistency": "stale", "include": "orders", "explain": "1"},
    )
    assert read.headers.get("Idempotency-Key") is None, "a read carries no key"
    assert (write.method, str(write.url), json.loads(write.content)) == ("POST", "http://db.test/insert_user", MARY)
    assert write.headers["Content-Type"] == "application/json"
    assert dict(plain.url.params) == {"user_id": "1"}, "a parameter left out is the server's default"
    assert [r.headers["Authorization"] for r, _ in script.requests] == ["Bearer t0k-EN_1"] * 3


def test_pages_follows_next_to_the_last_page_and_refuses_an_endpoint_without_cursor(
    client_module: ModuleType,
) -> None:
    script = Script(page("c1"), page("c2"), page(None))
    db = client_module.DocraftClient("http://db.test", transport=httpx.MockTransport(script))
    assert len(list(db.pages(db.get_user, country="Australia"))) == 3
    cursors = [request.url.params.get("cursor") for request, _ in script.requests]
    assert cursors == [None, "c1", "c2"]
    with pytest.raises(TypeError, match="insert_user takes no cursor"):
        next(db.pages(db.insert_user, **MARY))


@pytest.mark.parametrize(
    ("settings", "message"),
    [({"timeout": -1}, "timeout"), ({"retries": -1}, "retries"), ({"token": "a b"}, "token")],
)
def test_bad_settings_are_refused(client_module: ModuleType, settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        client_module.DocraftClient("http://db.test", **settings)


# -- a live cluster ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with running(Cluster(tmp_path_factory.mktemp("python-client-cluster"), shards=2, replicas=3)) as started:
        yield started


@pytest.mark.cluster
def test_the_readme_example_runs_on_a_cluster_where_the_quick_start_was_tried(
    cluster: Cluster, people_client: Path
) -> None:
    readme = (PROJECT / "README.md").read_text(encoding="utf-8")
    quick_start = readme[readme.index("## Quick start") : readme.index("## Defining models")]
    for url in re.findall(r"curl '(http://127\.0\.0\.1:8000/[a-z_]+\?[^']*)'", quick_start):
        status, body = http("GET", url.replace("http://127.0.0.1:8000", cluster.url))
        assert status == 200, (url, body)
    example = readme_example().replace("http://127.0.0.1:8000", cluster.url)
    (people_client / "readme_run.py").write_text(example, encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "readme_run.py"], cwd=people_client, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.cluster
def test_sample_program_runs_against_a_live_cluster(cluster: Cluster, people_client: Path) -> None:
    (people_client / "sample.py").write_text(SAMPLE, encoding="utf-8")
    command = [sys.executable, "sample.py", cluster.url]
    done = subprocess.run(command, cwd=people_client, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr
    reports = json.loads(done.stdout)
    for flavour, base in (("blocking", 7_000_000), ("asyncio", 8_000_000)):
        report = reports[flavour]
        users = list(range(base, base + 7))
        assert report["inserted"] == users and report["order"] == base, flavour
        for level in ("stale", "leader", "linearizable"):
            assert report["reads"][level] == {"ids": [base], "orders": [base], "used": level}, (flavour, level)
        assert report["pages"][:3] == [users[:3], users[3:6], users[6:]], flavour
        assert all(not page for page in report["pages"][3:]), flavour
        assert report["error"]["status"] == 400 and report["error"]["code"] == "bad_request", flavour
        assert report["error"]["details"] == {"param": "cursor"}, flavour
        lost, retried = report["retry"]["keys"]
        assert lost is not None and retried == lost, f"{flavour}: the retry reuses the Idempotency-Key"
        assert report["retry"]["result"] == base + 1, flavour
        assert report["retry"]["orders"] == [base, base + 1], f"{flavour}: the lost write was applied once"
