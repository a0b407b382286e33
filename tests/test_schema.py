"""Typed schema export, checked by the tools its readers use.

JSON Schema with ``jsonschema``, OpenAPI with ``openapi-spec-validator``, the
TypeScript and JSDoc exports with the real TypeScript compiler (installed
once with npm into ``.cache/tsc``), and the dispatcher's answers against the
OpenAPI document it serves. The generated TypeScript client is run with node
against a dispatcher whose shards are in-process state machines.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ujson
from openapi_spec_validator import validate
from tornado.testing import AsyncHTTPTestCase, gen_test

from models import Model, field
from models.errors import ERROR_CLASSES
from node.cli import main
from node.config import ReplicaConfig
from node.routes import dispatcher_routes
from node.servers import dispatcher
from query.app import App, load_app
from query.schema import export_text, jsdoc, json_schemas, openapi_document, typescript
from tests.harness import JSONReplyHandler
from tests.test_handlers import FakeShards, two_shard_config

PEOPLE = load_app("examples.people")
SCHEMA_APP = load_app("tests.apps.schema_app")
TSC_DIR = Path(__file__).resolve().parent.parent / ".cache" / "tsc"
TSC_FLAGS = ("--strict", "--target", "es2020", "--lib", "es2020,dom")


# -- JSON Schema -------------------------------------------------------------------------------

MARY = {"id": 1, "first_name": "Mary", "last_name": "Smith", "country": "Australia"}
ORDER = {"id": 7, "user_id": 1, "item": "book", "amount": 9.5}
BOOK = {"id": 1, "title": "Dune", "author": "frank", "year": 1965, "rating": None}

DOCUMENTS = [
    # (app, model, document, valid)
    (PEOPLE, "User", MARY, True),
    (PEOPLE, "User", {**MARY, "address": "78 Leaf St.", "city": "Sydney"}, True),
    (PEOPLE, "User", {k: v for k, v in MARY.items() if k != "last_name"}, False),
    (PEOPLE, "User", {**MARY, "id": "1"}, False),
    (PEOPLE, "User", {**MARY, "id": True}, False),
    (PEOPLE, "User", {**MARY, "nickname": "M"}, False),
    (PEOPLE, "User", {**MARY, "city": None}, False),
    (PEOPLE, "Order", ORDER, True),
    (PEOPLE, "Order", {**ORDER, "amount": 9, "created_at": 1.5}, True),
    (PEOPLE, "Order", {**ORDER, "user_id": "1"}, False),
    (PEOPLE, "Order", {**ORDER, "amount": "9.5"}, False),
    (PEOPLE, "Order", {k: v for k, v in ORDER.items() if k != "item"}, False),
    (SCHEMA_APP, "Book", BOOK, True),
    (SCHEMA_APP, "Book", {**BOOK, "co_authors": ["ann", "bob"], "rating": 4.5, "notes": ["signed"]}, True),
    (SCHEMA_APP, "Book", {**BOOK, "co_authors": ["ann", 2]}, False),
    (SCHEMA_APP, "Book", {**BOOK, "notes": "signed"}, False),
    (SCHEMA_APP, "Author", {"id": "frank", "name": "Frank Herbert", "active": False}, True),
]


@pytest.mark.parametrize(("app", "model", "doc", "valid"), DOCUMENTS)
def test_json_schema_accepts_what_the_model_accepts(app: App, model: str, doc: dict[str, Any], valid: bool) -> None:
    schema = json_schemas(app)[model]
    jsonschema.Draft202012Validator.check_schema(schema)
    errors = list(jsonschema.Draft202012Validator(schema).iter_errors(doc))
    assert (not errors) == valid, errors
    try:
        app.models[model].validate(doc)
        model_valid = True
    except Exception:
        model_valid = False
    assert model_valid == valid, "the schema and Model.validate disagree"


def test_json_schema_carries_keys_version_and_references() -> None:
    user, order = json_schemas(PEOPLE)["User"], json_schemas(PEOPLE)["Order"]
    assert user["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert (user["title"], user["additionalProperties"], user["x-docraft-version"]) == ("User", False, 1)
    assert user["required"] == ["id", "first_name", "last_name", "country"]
    assert user["x-docraft-relations"] == {"orders": {"model": "Order", "field": "user_id"}}
    assert (order["x-docraft-primary-key"], order["x-docraft-partition-key"]) == ("id", "user_id")
    assert order["properties"]["user_id"] == {
        "type": "integer",
        "description": "references User",
        "x-docraft-ref": "User",
    }
    book = json_schemas(SCHEMA_APP)["Book"]
    assert book["x-docraft-version"] == 2
    assert book["properties"]["rating"] == {"type": ["number", "null"], "default": None}
    assert book["properties"]["co_authors"]["items"]["x-docraft-ref"] == "Author"


# -- OpenAPI -------------------------------------------------------------------------------------


@pytest.mark.parametrize("app", [PEOPLE, SCHEMA_APP], ids=lambda a: a.module)
def test_openapi_document_is_valid_and_has_every_route(app: App) -> None:
    document = openapi_document(app, dispatcher_routes())
    validate(document)  # type: ignore[arg-type]
    assert document["info"]["title"] == f"docraft — {app.module}"
    for endpoint in app.endpoints.values():
        assert set(document["paths"][f"/{endpoint.name}"]) == {m.lower() for m in endpoint.methods}
    for model in app.models:
        assert "post" in document["paths"][f"/_bulk/{model}"]
    for route, method in [
        ("/_admin/cluster", "get"),
        ("/_admin/alerts", "get"),
        ("/_admin/fingerprint", "post"),
        ("/_schema/openapi.json", "get"),
    ]:
        assert method in document["paths"][route], route


def test_openapi_operations_describe_parameters_and_errors() -> None:
    paths = openapi_document(PEOPLE, dispatcher_routes())["paths"]
    error = {"$ref": "#/components/schemas/docraft.Error"}
    insert = paths["/insert_user"]["post"]
    assert insert["responses"]["422"]["content"]["application/json"]["schema"] == error
    assert {"400", "404", "409", "422", "503", "504"} <= set(insert["responses"])
    body = insert["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["id", "first_name", "last_name", "country"]
    assert body["properties"]["city"] == {"type": "string", "default": ""}

    get_user = paths["/get_user"]["get"]
    params = {p["name"]: p for p in get_user["parameters"]}
    assert params["id"]["schema"]["type"] == ["integer", "null"] and not params["id"]["required"]
    assert params["consistency"]["schema"]["enum"] == ["stale", "leader", "linearizable"]
    assert params["include"]["schema"]["items"]["enum"] == ["orders"]
    assert "409" not in get_user["responses"], "a read cannot collide"
    page = get_user["responses"]["200"]["content"]["application/json"]["schema"]
    assert page == {"$ref": "#/components/schemas/User.Page"}
    assert paths["/get_user_orders"]["get"]["parameters"][0] == {
        "name": "user_id",
        "in": "query",
        "required": True,
        "schema": {"type": "integer", "format": "int64", "description": "shard key: picks the shard"},
    }


def test_openapi_list_parameters_are_comma_separated() -> None:
    paths = openapi_document(SCHEMA_APP, dispatcher_routes())["paths"]
    tags = next(p for p in paths["/search_books"]["get"]["parameters"] if p["name"] == "tags")
    assert (tags["style"], tags["explode"]) == ("form", False)
    assert set(paths["/search_books"]) == {"get", "post"}


def test_a_model_named_like_a_generated_type_is_refused_by_typescript_only() -> None:
    class Page(Model):
        id: int = field(primary_key=True)

    app = App("clash", {**SCHEMA_APP.models, "Page": Page}, dict(SCHEMA_APP.endpoints))
    with pytest.raises(ValueError, match="Page"):
        typescript(app)
    validate(openapi_document(app, dispatcher_routes()))  # type: ignore[arg-type]  # generated component names hold a dot


# -- the CLI ---------------------------------------------------------------------------------------


def test_cli_prints_or_writes_each_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("typescript", "jsdoc", "jsonschema", "openapi"):
        assert main(["schema", "--app", "examples.people", "--format", name]) == 0
        assert capsys.readouterr().out == export_text(PEOPLE, name, dispatcher_routes())
        target = tmp_path / f"out.{name}"
        assert main(["schema", "--format", name, "-o", str(target)]) == 0
        assert target.read_text(encoding="utf-8") == export_text(PEOPLE, name, dispatcher_routes())
    assert json.loads(export_text(PEOPLE, "jsonschema", dispatcher_routes())) == json_schemas(PEOPLE)


# -- TypeScript and JSDoc with the real compiler ------------------------------------------------------


def typescript_compiler() -> Path:
    """The TypeScript compiler, installed with npm into .cache/tsc the first time; skips without npm."""
    binary = TSC_DIR / "node_modules" / ".bin" / "tsc"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            pytest.skip("npm is not on PATH, so the TypeScript compiler cannot be installed")
        command = [npm, "install", "--no-save", "--no-audit", "--no-fund", "--prefix", str(TSC_DIR), "typescript@5"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, f"npm install typescript failed:\n{done.stdout}\n{done.stderr}"
    return binary


@pytest.fixture(scope="session")
def tsc() -> Path:
    return typescript_compiler()


def compile_program(tsc: Path, directory: Path, files: dict[str, str], *flags: str) -> tuple[int, str]:
    """Write ``files`` into ``directory`` and type-check them; tsc's exit status and output."""
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    command = [str(tsc), *TSC_FLAGS, "--noEmit", "--pretty", "false", *flags, *files]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    return done.returncode, done.stdout + done.stderr


GOOD_TS = """
import { DocraftClient, DocraftRequestError } from "./docraft.js";
import type { ErrorCode, GetUserResult, InsertOrderParams, Order, ServedBy, User } from "./docraft.js";

export async function run(client: DocraftClient): Promise<string> {
  const page: GetUserResult = await client.get_user({ country: "Australia", limit: 3 }, { include: ["orders"] });
  const first: User | undefined = page.items[0];
  const orders: Order[] | undefined = page.items[0]?.orders;
  const next: string | null = page.next;
  const served: ServedBy[] = (await client.get_user()).served_by;
  const mary = await client.insert_user({ id: 321, first_name: "Mary", last_name: "Smith", country: "Australia" });
  const params: InsertOrderParams = { id: 1, user_id: mary.result.id, item: "book", amount: 9.5 };
  const amount: number = (await client.insert_order(params)).result.amount;
  const again: Order = (await client.insert_order(params, { idempotencyKey: "order-1" })).result;
  try {
    await client.get_user_orders({ user_id: 1, cursor: null }, { consistency: "linearizable", explain: true });
  } catch (error) {
    if (error instanceof DocraftRequestError) {
      const code: ErrorCode | "timeout" | "network_error" | null = error.code;
      const key: string | null = error.idempotencyKey;
      return `${error.status} ${error.body?.error.code ?? "?"} ${code ?? "?"} ${key ?? ""}`;
    }
  }
  return JSON.stringify({ first, orders, next, served, amount, again });
}

new DocraftClient("http://127.0.0.1:8000", (input, init) => fetch(input, init));
new DocraftClient("http://127.0.0.1:8000", { timeoutMs: 2000, retries: 5, retryDelayMs: 50, maxRetryDelayMs: 500 });
new DocraftClient("http://127.0.0.1:8000", { fetch: (input, init) => fetch(input, init) });
"""

BAD_TS = """
import { DocraftClient } from "./docraft.js";

const client = new DocraftClient("http://127.0.0.1:8000");
const wrong = { id: "x" };
void client.get_user(wrong);
void client.insert_order({ id: 1, user_id: 2, item: "book" });
new DocraftClient("http://127.0.0.1:8000", { timeout: 5 });
void client.insert_user({ id: 1, first_name: "M", last_name: "S", country: "AU" }, { idempotencyKey: 7 });
void client.get_user({}, { idempotencyKey: "k" });
"""

GOOD_JS = """
/** @typedef {import("./docraft.js").DocraftApi} DocraftApi */

/** @param {DocraftApi} api */
export async function run(api) {
  const page = await api.get_user({ country: "Australia" }, { include: ["orders"], consistency: "stale" });
  /** @type {string | undefined} */
  const name = page.items[0]?.first_name;
  /** @type {import("./docraft.js").Order[] | undefined} */
  const orders = page.items[0]?.orders;
  const order = await api.insert_order({ id: 1, user_id: 2, item: "book", amount: 3 }, { idempotencyKey: "k" });
  /** @type {number} */
  const amount = order.result.amount;
  /** @type {import("./docraft.js").DocraftError} */
  const error = { error: { code: "duplicate_key", message: "taken", details: { id: 1 } } };
  return { name, orders, amount, error };
}
"""

BAD_JS = """
/** @param {import("./docraft.js").DocraftApi} api */
export async function run(api) {
  const wrong = { id: "x" };
  await api.get_user(wrong);
  await api.insert_order({ id: 1, user_id: 2, item: "book" });
}
"""


def test_typescript_client_compiles_and_rejects_wrong_calls(tsc: Path, tmp_path: Path) -> None:
    client = {"docraft.ts": typescript(PEOPLE)}
    code, output = compile_program(tsc, tmp_path, {**client, "good.ts": GOOD_TS})
    assert code == 0, output
    code, output = compile_program(tsc, tmp_path, {**client, "bad.ts": BAD_TS})
    assert code != 0
    assert "bad.ts(6," in output and "property 'id'" in output, output
    assert "bad.ts(7," in output and "Property 'amount' is missing" in output, output
    assert "bad.ts(8," in output and "'timeout' does not exist in type 'DocraftClientOptions" in output, output
    assert "bad.ts(9," in output and "Type 'number' is not assignable to type 'string'" in output, output
    assert "bad.ts(10," in output and "'idempotencyKey' does not exist in type 'ReadOptions" in output, output
    assert "docraft.ts(" not in output, "the generated module itself must stay clean"


def test_the_readme_example_compiles(tsc: Path, tmp_path: Path) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    examples = re.findall(r"```ts\n(.*?)```", readme, re.DOTALL)
    assert examples, "the README shows the TypeScript client"
    files = {"docraft.ts": typescript(PEOPLE), **{f"readme{i}.ts": text for i, text in enumerate(examples)}}
    code, output = compile_program(tsc, tmp_path, files, "--module", "es2022")  # top-level await
    assert code == 0, output


def test_jsdoc_typedefs_check_and_reject_wrong_calls(tsc: Path, tmp_path: Path) -> None:
    types = {"docraft.js": jsdoc(PEOPLE)}
    flags = ("--allowJs", "--checkJs")
    code, output = compile_program(tsc, tmp_path, {**types, "good.js": GOOD_JS}, *flags)
    assert code == 0, output
    code, output = compile_program(tsc, tmp_path, {**types, "bad.js": BAD_JS}, *flags)
    assert code != 0
    assert "bad.js(5," in output and "property 'id'" in output, output
    assert "bad.js(6," in output and "Property 'amount' is missing" in output, output
    assert "docraft.js(" not in output


def test_every_kind_of_type_compiles(tsc: Path, tmp_path: Path) -> None:
    program = """
import { DocraftClient } from "./docraft.js";
import type { Author, Book } from "./docraft.js";

export async function run(client: DocraftClient): Promise<void> {
  const books: Book[] = (await client.search_books({ tags: ["sf", "classic"], year: null })).items;
  const rating: number | null | undefined = books[0]?.rating;
  const co_authors: string[] | undefined = (await client.search_books()).items[0]?.co_authors;
  const count: number = (await client.count_books()).result;
  const titles: Record<string, string> = (await client.book_titles({ id: 1 })).result;
  const anything: Record<string, unknown> | undefined = (await client.authors({ cursor: "abc" })).items[0];
  const added: Book = (await client.add_book({ id: 2, title: "Dune", author: "frank", year: 1965 })).result;
  const author: Author = { id: "frank", name: "Frank Herbert", active: true };
  console.log(rating, co_authors, count, titles, anything, added, author);
}
"""
    bad = """
import { DocraftClient } from "./docraft.js";
const client = new DocraftClient("http://127.0.0.1:8000");
void client.search_books({ tags: "sf" });
"""
    code, output = compile_program(tsc, tmp_path, {"docraft.ts": typescript(SCHEMA_APP), "good.ts": program})
    assert code == 0, output
    code, output = compile_program(tsc, tmp_path, {"docraft.ts": typescript(SCHEMA_APP), "bad.ts": bad})
    assert code != 0 and "bad.ts(4," in output, output
    (tmp_path / "js").mkdir()
    code, output = compile_program(tsc, tmp_path / "js", {"docraft.js": jsdoc(SCHEMA_APP)}, "--allowJs", "--checkJs")
    assert code == 0, output


# -- the dispatcher serves the document, and answers as it says ---------------------------------------


class ServingShards(FakeShards):
    """Fake shards whose answers name the replica as real ones do, and which serve include lookups."""

    @staticmethod
    def served_by(replica: ReplicaConfig, consistency: str | None) -> dict[str, Any]:
        entry = {"shard": replica.shard, "replica": replica.id, "role": "leader", "term": 1, "applied_index": 0}
        return entry if consistency is None else {**entry, "consistency": consistency}

    async def write(self, replica: ReplicaConfig, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        result = await super().write(replica, command, timeout)
        return {**result, "served_by": self.served_by(replica, None)}

    async def read(self, replica: ReplicaConfig, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        lookup = request.get("lookup")
        if lookup is not None:
            result = self.machines[replica.shard].lookup(lookup["model"], lookup["field"], lookup["values"])
        else:
            result = await super().read(replica, request, timeout)
        return {**result, "served_by": self.served_by(replica, request.get("consistency"))}


class SchemaRouteTest(AsyncHTTPTestCase):
    """A dispatcher over in-process shards: its schema route, its answers, and the generated client calling it."""

    def get_app(self) -> Any:
        config = two_shard_config()
        self.document = openapi_document(PEOPLE, dispatcher_routes())
        return dispatcher(config, PEOPLE, ServingShards(config, PEOPLE)).application  # type: ignore[arg-type]

    def response_validator(self, path: str, method: str, status: int) -> jsonschema.Draft202012Validator:
        """A validator of the JSON body the document promises for ``method path`` answering ``status``."""
        response = self.document["paths"][path][method]["responses"][str(status)]
        schema = response["content"]["application/json"]["schema"]
        return jsonschema.Draft202012Validator({**schema, "components": self.document["components"]})

    def test_serves_the_document_docraft_schema_prints(self) -> None:
        response = self.fetch("/_schema/openapi.json")
        assert response.code == 200
        assert response.headers["Content-Type"].startswith("application/json")
        assert ujson.loads(response.body) == json.loads(export_text(PEOPLE, "openapi", dispatcher_routes()))

    def test_answers_match_the_document(self) -> None:
        def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            data = None if body is None else json.dumps(body).encode()
            headers = {"Content-Type": "application/json"} if method == "POST" else None
            response = self.fetch(path, method=method, body=data, headers=headers, raise_error=False)
            return response.code, json.loads(response.body)

        mary = {"id": 321, "first_name": "Mary", "last_name": "Smith", "country": "Australia"}
        cases = [
            ("post", "/insert_user", mary, 200),
            ("post", "/insert_user", mary, 409),
            ("post", "/insert_order", {"id": 1, "user_id": 321, "item": "book", "amount": 9.5}, 200),
            ("post", "/insert_order", {"id": 2, "user_id": 999, "item": "book", "amount": 1}, 422),
            ("get", "/get_user?id=321", None, 200),
            ("get", "/get_user?country=Australia&explain=1&consistency=stale", None, 200),
            ("get", "/get_user?id=321&include=orders", None, 200),
            ("get", "/get_user_orders?user_id=321", None, 200),
            ("get", "/get_user?id=abc", None, 400),
            ("post", "/_bulk/User", {"docs": [mary, {**mary, "id": 5}]}, 200),
        ]
        for method, target, body, expected in cases:
            status, answer = call(method.upper(), target, body)
            assert status == expected, (target, answer)
            path = target.split("?")[0]
            errors = list(self.response_validator(path, method, status).iter_errors(answer))
            assert not errors, (target, answer, errors[0].message)
        status, answer = call("GET", "/get_user?id=321&include=orders")
        assert [o["id"] for o in answer["items"][0]["orders"]] == [1]

    @gen_test(timeout=120)
    async def test_generated_client_runs_against_the_dispatcher(self) -> None:
        binary = typescript_compiler()
        with tempfile.TemporaryDirectory() as tmp:
            directory = Path(tmp)
            (directory / "docraft.ts").write_text(typescript(PEOPLE), encoding="utf-8")
            (directory / "main.ts").write_text(CLIENT_RUN.replace("BASE_URL", self.get_url("/")), encoding="utf-8")
            (directory / "package.json").write_text('{"type": "module"}', encoding="utf-8")
            compile_run = await asyncio.create_subprocess_exec(
                str(binary), *TSC_FLAGS, "--module", "es2020", "docraft.ts", "main.ts", cwd=directory,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            )  # fmt: skip
            output, _ = await compile_run.communicate()
            assert compile_run.returncode == 0, output.decode()
            node = await asyncio.create_subprocess_exec(
                "node", "main.js", cwd=directory, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
            )
            out, err = await node.communicate()
        assert node.returncode == 0, err.decode()
        report = json.loads(out)
        assert report["inserted"]["result"]["city"] == ""
        assert report["by_id"]["items"][0]["orders"] == [report["order"]["result"]]
        assert report["by_country"]["plan"] and report["by_country"]["served_by"][0]["consistency"] == "stale"
        assert report["duplicate"] == {"status": 409, "code": "duplicate_key"}
        assert report["bad_param"] == {"status": 400, "code": "bad_request"}
        assert report["unknown"] == {"status": 404, "code": "not_found"}


CLIENT_RUN = """
import { DocraftClient, DocraftRequestError } from "./docraft.js";
import type { GetUserParams } from "./docraft.js";

const client = new DocraftClient("BASE_URL");

async function failure(call: () => Promise<unknown>): Promise<unknown> {
  try {
    await call();
    return "no error";
  } catch (error) {
    if (!(error instanceof DocraftRequestError)) {
      throw error;
    }
    return { status: error.status, code: error.body?.error.code ?? null };
  }
}

async function main(): Promise<void> {
  const inserted = await client.insert_user({ id: 321, first_name: "Mary", last_name: "Smith", country: "Australia" });
  const order = await client.insert_order({ id: 7, user_id: 321, item: "book", amount: 9.5 });
  const by_id = await client.get_user({ id: 321 }, { include: ["orders"] });
  const by_country = await client.get_user({ country: "Australia", limit: 5 }, { consistency: "stale", explain: true });
  const duplicate = await failure(() => client.insert_user({ id: 321, first_name: "M", last_name: "S", country: "X" }));
  const bad_param = await failure(() => client.get_user({ id: "abc" } as unknown as GetUserParams));
  const unknown = await failure(() => new DocraftClient("BASE_URL_no/such").get_user());
  console.log(JSON.stringify({ inserted, order, by_id, by_country, duplicate, bad_param, unknown }));
}

void main();
"""


def test_error_codes_in_the_typescript_match_the_error_table() -> None:
    union = re.search(r"export type ErrorCode = (.*);", typescript(PEOPLE))
    assert union is not None
    assert union.group(1).split(" | ") == [json.dumps(code) for code in ERROR_CLASSES]


# -- the generated client's timeouts, retries and idempotency keys, against a scripted server ------------

HANG = "hang"  # hold the request unanswered until the server closes
DROP = "drop"  # close the connection without an answer


@dataclass(frozen=True)
class Answer:
    status: int
    body: Any
    headers: dict[str, str] = dataclass_field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    idempotency_key: str | None
    at: float  # time.monotonic() on arrival
    authorization: str | None = None


def refusal(status: int, code: str, headers: dict[str, str] | None = None) -> Answer:
    return Answer(status, {"error": {"code": code, "message": code.replace("_", " ")}}, headers or {})


MARY_INSERTED = Answer(200, {"result": MARY, "served_by": []})
MARY_PAGE = Answer(200, {"items": [MARY], "next": None, "served_by": []})
KEY_SYNTAX = re.compile(r"[A-Za-z0-9._:-]{1,128}")


class ScriptedServer(ThreadingHTTPServer):
    """Answers each request with the next of ``script`` (an ``Answer``, ``HANG`` or ``DROP``) and records it.

    Bound to a loopback port it keeps until ``close``; a request past the script gets a 500.
    """

    daemon_threads = True

    def __init__(self, script: list[Answer | str]) -> None:
        super().__init__(("127.0.0.1", 0), _ScriptedHandler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.received: list[Received] = []
        self._script = list(script)
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()

    def next_answer(self, request: Received) -> Answer | str:
        with self._lock:
            self.received.append(request)
            return self._script.pop(0) if self._script else refusal(500, "internal")

    def hold(self) -> None:
        """Keep a request unanswered until the server closes."""
        self._closing.wait(timeout=60)

    def close(self) -> None:
        self._closing.set()
        self.shutdown()
        self.server_close()
        self._thread.join(timeout=10)


class _ScriptedHandler(JSONReplyHandler):
    server: ScriptedServer

    def do_GET(self) -> None:
        self.answer()

    def do_POST(self) -> None:
        self.answer()

    def answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        key, authorization = self.headers.get("Idempotency-Key"), self.headers.get("Authorization")
        request = Received(self.command, self.path, key, time.monotonic(), authorization)
        answer = self.server.next_answer(request)
        if answer == HANG:
            self.server.hold()
        if isinstance(answer, str):
            self.close_connection = True
            return
        self.reply(answer.status, answer.body, answer.headers)


@pytest.fixture
def scripted() -> Iterator[Callable[[list[Answer | str]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(script: list[Answer | str]) -> ScriptedServer:
        servers.append(ScriptedServer(script))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


CLIENT_CALLS = """
import { DocraftClient, DocraftRequestError } from "./docraft.js";
import type { DocraftClientOptions, MutationOptions } from "./docraft.js";

declare const process: { argv: string[] };

interface Call {
  method: "insert_user" | "get_user";
  options?: MutationOptions;
}

// argv: base URL, client options, calls (all JSON but the URL); prints one outcome per call.
const client = new DocraftClient(process.argv[2], JSON.parse(process.argv[3]) as DocraftClientOptions);
const mary = { id: 1, first_name: "Mary", last_name: "Smith", country: "Australia" };

async function outcome(call: Call): Promise<object> {
  const started = Date.now();
  try {
    const answer =
      call.method === "insert_user" ? await client.insert_user(mary, call.options) : await client.get_user({ id: 1 });
    return { ok: answer, ms: Date.now() - started };
  } catch (error) {
    if (!(error instanceof DocraftRequestError)) {
      throw error;
    }
    const failure = { status: error.status, code: error.code, idempotencyKey: error.idempotencyKey };
    return { error: failure, ms: Date.now() - started };
  }
}

async function main(): Promise<void> {
  const outcomes: object[] = [];
  for (const call of JSON.parse(process.argv[4]) as Call[]) {
    outcomes.push(await outcome(call));
  }
  console.log(JSON.stringify(outcomes));
}

void main();
"""


@pytest.fixture(scope="module")
def client_program(tsc: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory holding the generated client and ``calls.js``, compiled with ``--strict`` to run with node."""
    directory = tmp_path_factory.mktemp("client")
    files = {"docraft.ts": typescript(PEOPLE), "calls.ts": CLIENT_CALLS, "package.json": '{"type": "module"}'}
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    command = [str(tsc), *TSC_FLAGS, "--module", "es2020", "--pretty", "false", "docraft.ts", "calls.ts"]
    done = subprocess.run(command, cwd=directory, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return directory


def run_calls(program: Path, server: ScriptedServer, options: dict[str, Any], *calls: dict[str, Any]) -> list[Any]:
    """Run ``calls`` one after another with a client of ``options`` against ``server``; each call's outcome."""
    command = ["node", "calls.js", server.url, json.dumps(options), json.dumps(calls)]
    done = subprocess.run(command, cwd=program, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    outcomes: list[Any] = json.loads(done.stdout)
    return outcomes


INSERT = {"method": "insert_user"}
QUICK = {"timeoutMs": 5000, "retries": 3, "retryDelayMs": 10}


def test_client_retries_outcome_unknown_with_the_same_idempotency_key(client_program: Path, scripted: Any) -> None:
    server = scripted([refusal(504, "outcome_unknown"), MARY_INSERTED])
    [outcome] = run_calls(client_program, server, QUICK, INSERT)
    assert outcome["ok"] == MARY_INSERTED.body
    first, second = server.received
    assert (first.method, first.path) == (second.method, second.path) == ("POST", "/insert_user")
    assert first.idempotency_key is not None and KEY_SYNTAX.fullmatch(first.idempotency_key)
    assert second.idempotency_key == first.idempotency_key


def test_client_retries_a_lost_connection_and_keys_each_call_anew(client_program: Path, scripted: Any) -> None:
    server = scripted([DROP, MARY_INSERTED, MARY_INSERTED, MARY_INSERTED])
    keyed = {**INSERT, "options": {"idempotencyKey": "order-7"}}
    outcomes = run_calls(client_program, server, QUICK, INSERT, keyed, INSERT)
    assert [outcome.get("ok") for outcome in outcomes] == [MARY_INSERTED.body] * 3
    dropped, retried, given, fresh = (request.idempotency_key for request in server.received)
    assert dropped is not None and retried == dropped, "a retry carries the key of its call"
    assert given == "order-7", "the caller's key is sent as it is"
    assert fresh is not None and fresh != dropped, "each call has a key of its own"


def test_client_does_not_retry_a_refusal(client_program: Path, scripted: Any) -> None:
    server = scripted([refusal(422, "idempotency_key_reused"), MARY_INSERTED])
    [outcome] = run_calls(client_program, server, QUICK, INSERT)
    [request] = server.received
    key = request.idempotency_key
    assert key is not None, "a mutation always carries a key"
    assert outcome["error"] == {"status": 422, "code": "idempotency_key_reused", "idempotencyKey": key}


def test_client_waits_retry_after_on_no_leader_up_to_its_cap(client_program: Path, scripted: Any) -> None:
    server = scripted([refusal(503, "no_leader", {"Retry-After": "1"}), MARY_INSERTED])
    [outcome] = run_calls(client_program, server, QUICK, INSERT)
    assert outcome["ok"] == MARY_INSERTED.body
    first, second = server.received
    assert second.idempotency_key == first.idempotency_key
    assert second.at - first.at >= 0.95, "Retry-After: 1 is waited, not retryDelayMs"
    capped = scripted([refusal(503, "no_leader", {"Retry-After": "30"}), MARY_INSERTED])
    [outcome] = run_calls(client_program, capped, {**QUICK, "maxRetryDelayMs": 200}, INSERT)
    assert outcome["ok"] == MARY_INSERTED.body
    first, second = capped.received
    assert second.at - first.at < 5, "the wait is capped by maxRetryDelayMs"


def test_client_retries_a_query_without_a_key(client_program: Path, scripted: Any) -> None:
    server = scripted([refusal(503, "no_leader"), DROP, MARY_PAGE])
    [outcome] = run_calls(client_program, server, QUICK, {"method": "get_user"})
    assert outcome["ok"] == MARY_PAGE.body
    assert [(r.method, r.path, r.idempotency_key) for r in server.received] == [("GET", "/get_user?id=1", None)] * 3


def test_client_times_out_each_attempt_and_fails_after_its_retries(client_program: Path, scripted: Any) -> None:
    server = scripted([HANG, HANG, HANG, MARY_INSERTED])
    options = {"timeoutMs": 300, "retries": 2, "retryDelayMs": 10}
    [outcome] = run_calls(client_program, server, options, INSERT)
    keys = {request.idempotency_key for request in server.received}
    assert len(server.received) == 3 and len(keys) == 1, server.received
    assert outcome["error"] == {"status": 0, "code": "timeout", "idempotencyKey": keys.pop()}
    assert 880 <= outcome["ms"] < 2000, "three attempts of 300 ms, and two short waits"


def test_client_with_a_token_sends_it_on_every_attempt_and_without_one_sends_none(
    client_program: Path, scripted: Any
) -> None:
    server = scripted([refusal(503, "no_leader"), MARY_INSERTED, MARY_PAGE])
    run_calls(client_program, server, {**QUICK, "token": "t0k-EN_1"}, INSERT, {"method": "get_user"})
    assert [r.authorization for r in server.received] == ["Bearer t0k-EN_1"] * 3
    anonymous = scripted([MARY_INSERTED])
    run_calls(client_program, anonymous, QUICK, INSERT)
    assert [r.authorization for r in anonymous.received] == [None]
