"""Who may do what (``node.auth``): tokens, roles, anonymous access, the permission matrix of every
route of the route table, the audit log, ``docraft user`` / ``docraft token``, and ``docraft up``'s demo."""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
import ujson
from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application

from consensus.members import Membership
from models.errors import NotLeader, Unauthorized
from node.admin import http_json
from node.audit import AUDIT_NAME, AuditLog
from node.auth import Authenticator, Grant, hash_token
from node.cli import main
from node.cluster_secret import new_secret
from node.config import ClusterConfig, ConfigError, load_config, parse_config, render_config
from node.handlers import NotFoundHandler
from node.health import Check
from node.launcher import ADMIN_TOKEN_NAME, DEMO_AUTH
from node.metrics import ProcessMetrics
from node.router import Router
from node.routes import ROUTES, rules
from node.servers import dispatcher, gate
from node.signing import internal_key, sign
from node.users import add_user, remove_user, rotate_token
from query.app import App, load_app
from query.endpoints import mutation, query
from query.fingerprint import app_fingerprint
from query.permissions import Permission
from tests.harness import free_ports, wait_for
from tests.test_handlers import FakeShards

PEOPLE = load_app("examples.people")
GUARDED = load_app("tests.apps.guarded_app")
ANALYST = ["read", "status", "write:insert_order"]
SECRET = new_secret()


def write_cluster_file(directory: Path, auth: dict[str, Any] | None) -> Path:
    """A two-shard cluster file in ``directory`` with ``[auth]`` as given (``None``: no such table)
    and the custom role ``analyst``."""
    shards = [
        (
            f"s{s}",
            [(f"s{s}r{r}", f"127.0.0.1:{7000 + 3 * s + r}", f"127.0.0.1:{9000 + 3 * s + r}", ".") for r in range(3)],
        )
        for s in range(2)
    ]
    sections: dict[str, dict[str, Any]] = {} if auth is None else {"auth": auth}
    sections["auth.roles.analyst"] = {"permissions": ANALYST}
    sections["http"] = {"hosts": ["127.0.0.1"]}  # the test server's port is not the file's
    path = directory / "cluster.toml"
    path.write_text(render_config(SECRET, "examples.people", shards, [("d0", "127.0.0.1:8999")], sections))
    return path


# -- permissions, grants and [auth] -------------------------------------------------------------


def test_endpoints_need_read_or_write_unless_they_declare_another_permission() -> None:
    assert PEOPLE.endpoints["get_user"].permission is Permission.READ
    assert PEOPLE.endpoints["insert_user"].permission is Permission.WRITE
    assert GUARDED.endpoints["erase_note"].permission is Permission.ADMIN
    assert GUARDED.endpoints["count_notes"].permission is Permission.STATUS


def test_an_endpoint_naming_no_permission_is_refused() -> None:
    def stub(db: Any, id: int) -> None: ...

    with pytest.raises(TypeError, match="no permission 'root'"):
        query(permission="root")(stub)
    with pytest.raises(TypeError, match="no permission 'all'"):
        mutation(shard_key="id", permission="all")(stub)


def test_grants_name_a_permission_for_every_endpoint_or_one() -> None:
    assert Grant.parse("read") == Grant(Permission.READ)
    assert Grant.parse("write:insert_order") == Grant(Permission.WRITE, "insert_order")
    for text, error in [
        ("delete", "no permission 'delete'"),
        ("bulk:User", "only read and write"),
        ("write:", "does not name an endpoint"),
        ("read:a-b", "does not name an endpoint"),
        (5, "is a string"),
    ]:
        with pytest.raises(ValueError, match=error):
            Grant.parse(text)


def auth_error(auth: Any) -> str:
    """The ``ConfigError`` a cluster file with ``auth`` as its ``[auth]`` table gets."""
    text = render_config(SECRET, "examples.people", [("s0", [("r0", "127.0.0.1:1", "127.0.0.1:2", ".")])], [])
    data = tomllib.loads(text)
    data["auth"] = auth
    with pytest.raises(ConfigError) as error:
        parse_config(data, Path("/nonexistent/cluster.toml"))
    return str(error.value)


USER = {"name": "alice", "role": "reader", "token_sha256": "a" * 64}


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        ("read", r"\[auth\] must be a table"),
        ({"anonymus": ["read"]}, r"no setting 'anonymus'"),
        ({"anonymous": "read"}, r"anonymous must be a list"),
        ({"anonymous": ["read", "sudo"]}, r"anonymous: no permission 'sudo'"),
        ({"roles": {"admin": {"permissions": ["read"]}}}, r"admin is a built-in role"),
        ({"roles": {"x": {"permissions": ["read"], "extra": 1}}}, r"exactly: permissions"),
        ({"users": [{**USER, "role": "root"}]}, r"alice\): no role 'root'"),
        ({"users": [{**USER, "token_sha256": "abc"}]}, r"64 lowercase hex"),
        ({"users": [{**USER, "token": "plain"}]}, r"exactly name, role and token_sha256"),
        ({"users": [USER, {**USER, "token_sha256": "b" * 64}]}, r"'alice' is listed twice"),
        ({"users": [USER, {**USER, "name": "bob"}]}, r"'bob' has the token of another user"),
        ({"users": [{**USER, "name": "a b"}]}, r"name must be 1 to 64"),
        ({"users": [USER], "users_file": "users.toml"}, r"keep them in one place"),
    ],
)
def test_invalid_auth_tables_are_refused_naming_the_entry(auth: Any, message: str) -> None:
    assert re.search(message, auth_error(auth))


def test_without_auth_anonymous_clients_may_do_nothing(tmp_path: Path) -> None:
    config = load_config(write_cluster_file(tmp_path, None))
    assert config.auth.anonymous == frozenset()
    assert config.auth.users == ()
    assert set(config.auth.roles) == {"admin", "reader", "writer", "analyst"}


# -- tokens ---------------------------------------------------------------------------------------


@pytest.fixture
def cluster_file(tmp_path: Path) -> Path:
    return write_cluster_file(tmp_path, {"anonymous": ["read"]})


def test_a_token_identifies_its_user_and_anything_else_is_unauthorized(cluster_file: Path) -> None:
    token = add_user(cluster_file, "alice", "analyst")
    authenticator = Authenticator(load_config(cluster_file).auth)
    alice = authenticator.identify(f"Bearer {token}", 0.0)
    assert (alice.name, alice.role) == ("alice", "analyst")
    assert alice.may(Permission.WRITE, "insert_order") and not alice.may(Permission.WRITE, "insert_user")
    anonymous = authenticator.identify(None, 0.0)
    assert anonymous.anonymous and anonymous.may(Permission.READ, "get_user")
    assert not anonymous.may(Permission.WRITE, "insert_user")
    for header in ["Bearer " + token[:-1], "Bearer ", "Basic " + token, token]:
        with pytest.raises(Unauthorized):
            authenticator.identify(header, 0.0)


def test_running_processes_see_added_rotated_and_removed_users_within_a_second(cluster_file: Path) -> None:
    old = add_user(cluster_file, "alice", "reader")
    authenticator = Authenticator(load_config(cluster_file).auth)
    assert authenticator.identify(f"Bearer {old}", 100.0).name == "alice"
    new = rotate_token(cluster_file, "alice")
    bob = add_user(cluster_file, "bob", "writer")
    assert authenticator.identify(f"Bearer {old}", 100.5).name == "alice", "the file is checked once a second"
    with pytest.raises(Unauthorized):
        authenticator.identify(f"Bearer {old}", 101.5)
    assert authenticator.identify(f"Bearer {new}", 101.5).name == "alice"
    assert authenticator.identify(f"Bearer {bob}", 101.5).role == "writer"
    remove_user(cluster_file, "bob")
    with pytest.raises(Unauthorized):
        authenticator.identify(f"Bearer {bob}", 103.0)


def test_a_users_file_that_does_not_parse_keeps_the_users_known(
    cluster_file: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = add_user(cluster_file, "alice", "reader")
    authenticator = Authenticator(load_config(cluster_file).auth)
    cluster_file.write_text(cluster_file.read_text() + "\n[[auth.users]]\nname = 5\n")
    with caplog.at_level(logging.ERROR, logger="docraft.auth"):
        assert authenticator.identify(f"Bearer {token}", 50.0).name == "alice"
    assert "users not reloaded" in caplog.text


# -- docraft user and docraft token ---------------------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def test_user_add_prints_a_token_once_and_stores_only_its_hash(
    cluster_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = cluster_file.read_text()
    code, out, err = cli(capsys, "user", "add", "--config", str(cluster_file), "--user", "alice", "--role", "analyst")
    token = out.strip()
    assert code == 0 and len(token) >= 43 and "shown only now" in err
    text = cluster_file.read_text()
    assert token not in text and hash_token(token) in text
    assert text.startswith(before.rstrip()), "every other line of the cluster file is kept"
    assert mode(cluster_file) == 0o600
    assert load_config(cluster_file).auth.users[0].name == "alice"
    assert cli(capsys, "user", "list", "--config", str(cluster_file))[1] == "alice\tanalyst\n"
    audit = [ujson.loads(line) for line in (cluster_file.parent / AUDIT_NAME).read_text().splitlines()]
    assert audit[-1]["what"] == "user add alice" and audit[-1]["from"].startswith("cli@")


def test_a_rotated_token_replaces_the_old_one(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first = cli(capsys, "user", "add", "--config", str(cluster_file), "--user", "alice", "--role", "reader")[1].strip()
    code, out, _ = cli(capsys, "token", "rotate", "--config", str(cluster_file), "--user", "alice")
    second = out.strip()
    assert code == 0 and second != first
    users = load_config(cluster_file).auth.users
    assert [(u.name, u.role, u.token_sha256) for u in users] == [("alice", "reader", hash_token(second))]


def test_user_remove_and_mistakes(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = str(cluster_file)
    assert cli(capsys, "user", "add", "--config", config, "--user", "alice", "--role", "reader")[0] == 0
    assert cli(capsys, "user", "add", "--config", config, "--user", "bob", "--role", "writer")[0] == 0
    code, _, err = cli(capsys, "user", "add", "--config", config, "--user", "alice", "--role", "reader")
    assert code == 1 and "exists" in err
    code, _, err = cli(capsys, "user", "add", "--config", config, "--user", "carol", "--role", "root")
    assert code == 1 and "no role 'root'" in err
    code, _, err = cli(capsys, "token", "rotate", "--config", config, "--user", "dave")
    assert code == 1 and "no user 'dave'" in err
    assert cli(capsys, "user", "remove", "--config", config, "--user", "alice")[0] == 0
    assert [u.name for u in load_config(cluster_file).auth.users] == ["bob"]


def test_users_live_in_the_users_file_when_the_cluster_file_names_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cluster_file = write_cluster_file(tmp_path, {"users_file": "users.toml"})
    before = cluster_file.read_text()
    token = cli(capsys, "user", "add", "--config", str(cluster_file), "--user", "alice", "--role", "admin")[1].strip()
    users_file = tmp_path / "users.toml"
    assert cluster_file.read_text() == before
    assert mode(users_file) == 0o600 and hash_token(token) in users_file.read_text()
    assert tomllib.loads(users_file.read_text())["users"][0]["name"] == "alice"
    authenticator = Authenticator(load_config(cluster_file).auth)
    assert authenticator.identify(f"Bearer {token}", 0.0).role == "admin"


def test_users_written_inline_are_not_rewritten(cluster_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    inline = f'users = [{{name = "alice", role = "reader", token_sha256 = "{"a" * 64}"}}]'
    cluster_file.write_text(cluster_file.read_text().replace('anonymous = ["read"]', f"anonymous = []\n{inline}"))
    assert [u.name for u in load_config(cluster_file).auth.users] == ["alice"]
    before = cluster_file.read_text()
    code, _, err = cli(capsys, "user", "add", "--config", str(cluster_file), "--user", "bob", "--role", "reader")
    assert code == 2 and "write them as [[auth.users]] tables" in err and cluster_file.read_text() == before


# -- the permission matrix --------------------------------------------------------------------------

OK = "ok"  # admitted: any answer but 401 and 403 (and not a 5xx)
WHO = ("admin", "reader", "writer", "analyst", "anonymous", "member", "unknown token")


def expect(*outcomes: Any) -> dict[str, Any]:
    """Outcomes in the order of ``WHO``; anonymous's is a pair: (production config, demo config)."""
    assert len(outcomes) == len(WHO)
    return dict(zip(WHO, outcomes, strict=True))


ADMIN_ONLY = expect(OK, 403, 403, 403, (401, 401), OK, 401)
MEMBERS_ONLY = expect(401, 401, 401, 401, (401, 401), OK, 401)
STATUS = expect(OK, OK, 403, OK, (401, OK), OK, 401)
BULK = expect(OK, 403, OK, 403, (401, 401), OK, 401)
READ = expect(OK, OK, OK, OK, (401, OK), OK, 401)
WRITE = expect(OK, 403, OK, 403, (401, OK), OK, 401)
WRITE_ORDERS = expect(OK, 403, OK, OK, (401, OK), OK, 401)
PUBLIC = expect(OK, OK, OK, OK, (OK, OK), OK, OK)

MARY = {"id": 321, "first_name": "Mary", "last_name": "Smith", "country": "Australia"}
# By route path: requests to it, each with the outcome for everyone in WHO.
SAMPLES: dict[str, list[tuple[str, str, Any, dict[str, Any]]]] = {
    "/_admin/cluster": [("GET", "/_admin/cluster", None, STATUS)],
    "/_admin/alerts": [("GET", "/_admin/alerts", None, STATUS)],
    "/_schema/openapi.json": [("GET", "/_schema/openapi.json", None, PUBLIC)],
    "/_admin/": [("GET", "/_admin/", None, PUBLIC)],
    "/_admin/page.js": [("GET", "/_admin/page.js", None, PUBLIC)],
    "/_admin/page.css": [("GET", "/_admin/page.css", None, PUBLIC)],
    "/metrics": [("GET", "/metrics", None, STATUS)],
    "/livez": [("GET", "/livez", None, PUBLIC)],
    "/readyz": [("GET", "/readyz", None, PUBLIC)],
    "/_admin/fingerprint": [("POST", "/_admin/fingerprint", {"fingerprint": "f" * 64}, ADMIN_ONLY)],
    "/_admin/migrate": [("POST", "/_admin/migrate", {"model": "User", "to": 1, "dry_run": True}, ADMIN_ONLY)],
    "/_admin/repair": [("POST", "/_admin/repair", None, ADMIN_ONLY)],
    "/_admin/fault/corrupt": [("POST", "/_admin/fault/corrupt", {"collection": "User", "id": 1}, ADMIN_ONLY)],
    "/_admin/digest": [("GET", "/_admin/digest", None, MEMBERS_ONLY)],
    "/_shard/write": [("POST", "/_shard/write", {"type": "noop"}, MEMBERS_ONLY)],
    "/_shard/read": [("POST", "/_shard/read", {"endpoint": "get_user"}, MEMBERS_ONLY)],
    "/_shard/status": [("GET", "/_shard/status", None, MEMBERS_ONLY)],
    "/_shard/slots": [("GET", "/_shard/slots", None, MEMBERS_ONLY)],
    "/_shard/backup": [("GET", "/_shard/backup", None, MEMBERS_ONLY)],
    "/_admin/membership": [("POST", "/_admin/membership", {"op": "x"}, MEMBERS_ONLY)],
    "/_admin/transfer": [("POST", "/_admin/transfer", {"to": 1}, MEMBERS_ONLY)],
    "/_admin/promote": [("POST", "/_admin/promote", None, MEMBERS_ONLY)],
    "/_admin/retire": [("POST", "/_admin/retire", {"voters": "x"}, MEMBERS_ONLY)],
    "/_bulk/{Model}": [("POST", "/_bulk/User", {"docs": [MARY]}, BULK)],
    "/{endpoint}": [
        ("GET", "/get_user?id=321", None, READ),
        ("GET", "/no_such_endpoint", None, READ),
        ("POST", "/insert_user", MARY, WRITE),
        ("POST", "/insert_order", {"id": 1, "user_id": 321, "item": "book", "amount": 9.5}, WRITE_ORDERS),
    ],
}


def test_the_matrix_covers_every_route_of_the_table() -> None:
    assert set(SAMPLES) == {route.path for route in ROUTES}


class FakeService:
    """A replica's shard service that answers every internal call at once (a backup: not the leader)."""

    fault = None
    state_machine = SimpleNamespace(code_ok=True)

    async def submit(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        raise NotLeader("a fake follower")

    async def write(self, command: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"ok": None}

    async def read(self, request: dict[str, Any], timeout: float) -> dict[str, Any]:
        return {"kind": "value", "value": 0}

    def status(self) -> dict[str, Any]:
        return {"role": "follower"}

    def integrity(self) -> dict[str, Any]:
        return {"checkpoints": []}

    def corrupt(self, body: dict[str, Any]) -> bool:
        return True

    def slots(self, counts: bool) -> dict[str, Any]:
        return {"initialized": True, "epoch": 0, "ranges": [], "moves": []}

    @property
    def replica(self) -> FakeService:
        return self

    def membership(self) -> Membership:
        return Membership("joining", ())


class Ready:
    """A replica's readiness that always passes."""

    async def checks(self) -> list[Check]:
        return [Check("fake", True)]


class ServerCase(AsyncHTTPTestCase):
    """A dispatcher or a replica (fake shards, fake shard service) on a cluster file in a fresh directory,
    with users of every role; ``auth`` is its ``[auth]`` table."""

    server = "dispatcher"
    auth: ClassVar[dict[str, Any] | None] = None
    app: App = PEOPLE

    def setUp(self) -> None:
        self.directory = tempfile.TemporaryDirectory()
        self.addCleanup(self.directory.cleanup)
        self.root = Path(self.directory.name)
        path = write_cluster_file(self.root, self.auth)
        self.tokens = {name: add_user(path, name, name) for name in ("admin", "reader", "writer", "analyst")}
        self.config: ClusterConfig = load_config(path)
        super().setUp()

    def get_app(self) -> Application:
        shards = FakeShards(self.config, self.app)
        if self.server == "dispatcher":
            return dispatcher(self.config, self.app, shards).application  # type: ignore[arg-type]

        async def repair() -> None:
            return None

        router = Router(self.config, self.app, shards)  # type: ignore[arg-type]
        deps = {"service": FakeService(), "repair": repair, "router": router, "readiness": Ready()}
        deps["metrics"] = ProcessMetrics({"shard": "s0", "replica": "s0r0"})
        guard = gate(self.config, AuditLog(self.root / "replica-audit.log", "s0r0"))
        return Application(rules("replica", deps, guard, unsafe=True), default_handler_class=NotFoundHandler)

    def ask(self, who: str, method: str, target: str, body: Any) -> tuple[int, Any, Any]:
        """(status, decoded body, headers) of ``method target`` sent by ``who`` (one of ``WHO``)."""
        data = b"" if body is None else ujson.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if who in self.tokens:
            headers["Authorization"] = f"Bearer {self.tokens[who]}"
        elif who == "unknown token":
            headers["Authorization"] = "Bearer " + "x" * 43
        elif who == "member":
            headers.update(sign(internal_key(self.config.secret), method, target, data, time.time()))
        response = self.fetch(target, method=method, body=data if method == "POST" else None, headers=headers)
        as_json = response.headers.get("Content-Type", "").startswith("application/json")  # not /metrics, /_admin/
        return response.code, ujson.loads(response.body) if as_json else response.body, response.headers

    def check_matrix(self, demo: bool) -> None:
        wrong = []
        for path, samples in SAMPLES.items():
            route = next(r for r in ROUTES if r.path == path)
            if self.server not in route.servers:
                continue
            for method, target, body, outcomes in samples:
                for who in WHO:
                    wanted = outcomes[who][demo] if who == "anonymous" else outcomes[who]
                    status, answer, headers = self.ask(who, method, target, body)
                    got = OK if status not in (401, 403) and status < 500 else status
                    if got != wanted:
                        wrong.append(f"{method} {target} by {who}: {status} {answer}, expected {wanted}")
                    elif status in (401, 403):
                        assert set(answer) == {"error"} and answer["error"]["code"] in ("unauthorized", "forbidden")
                        assert answer["error"]["message"]
                        if status == 401:
                            assert headers["WWW-Authenticate"] == 'Bearer realm="docraft"'
        assert not wrong, "\n".join(wrong)


class ProductionDispatcherTest(ServerCase):
    auth = None  # as render_config writes it: nothing for anonymous clients

    def test_permission_matrix(self) -> None:
        self.check_matrix(demo=False)

    def test_a_path_that_is_no_route_is_404_for_anyone(self) -> None:
        assert self.ask("anonymous", "GET", "/_no/such/route", None)[0] == 404

    def test_refusals_and_admin_actions_go_to_the_audit_log(self) -> None:
        fingerprint = {"fingerprint": app_fingerprint(PEOPLE)}  # the code the (fake) replicas run
        assert self.ask("anonymous", "POST", "/_admin/fingerprint", fingerprint)[0] == 401
        assert self.ask("reader", "POST", "/_admin/migrate", {"model": "User", "to": 1})[0] == 403
        assert self.ask("unknown token", "GET", "/get_user", None)[0] == 401
        assert self.ask("reader", "GET", "/get_user", None)[0] == 200
        assert self.ask("admin", "POST", "/_admin/fingerprint", fingerprint)[0] == 200
        log = self.root / AUDIT_NAME
        assert mode(log) == 0o600
        entries = [ujson.loads(line) for line in log.read_text().splitlines()]
        got = [(e["who"], e["what"], e["result"], e.get("error")) for e in entries]
        assert got == [
            ("anonymous", "POST /_admin/fingerprint", 401, "unauthorized"),
            ("reader", "POST /_admin/migrate", 403, "forbidden"),
            ("unverified token", "GET /get_user", 401, "unauthorized"),
            ("admin", "POST /_admin/fingerprint", 200, None),
        ], "an admitted client request is not audited"
        assert all(e["process"] == "d0" and e["from"] == "127.0.0.1" and e["time"] for e in entries)
        assert entries[1]["reason"].startswith("user reader (role reader) does not have the permission admin")
        assert entries[3]["role"] == "admin" and entries[3]["request"] == fingerprint

    def test_a_signature_that_does_not_verify_is_refused_even_where_anonymous_clients_may_not(self) -> None:
        headers = sign(internal_key("another-cluster-secret-0123"), "GET", "/_admin/cluster", b"", time.time())
        response = self.fetch("/_admin/cluster", headers=headers)
        assert response.code == 401 and ujson.loads(response.body)["error"]["details"]["reason"] == "forged"


class DemoDispatcherTest(ServerCase):
    auth: ClassVar[dict[str, Any] | None] = DEMO_AUTH["auth"]

    def test_permission_matrix(self) -> None:
        self.check_matrix(demo=True)

    def test_a_bad_signature_is_refused_where_anonymous_clients_are_admitted(self) -> None:
        """A request that claims to be a member's is judged as one, never as an anonymous client's."""
        headers = sign(internal_key(self.config.secret), "GET", "/get_user?id=1", b"", time.time())
        assert self.fetch("/get_user?id=1").code == 200
        response = self.fetch("/get_user?id=2", headers=headers)
        assert response.code == 401 and ujson.loads(response.body)["error"]["details"]["reason"] == "altered"


class ProductionReplicaTest(ServerCase):
    server = "replica"

    def test_permission_matrix(self) -> None:
        self.check_matrix(demo=False)


class DemoReplicaTest(ServerCase):
    server = "replica"
    auth: ClassVar[dict[str, Any] | None] = DEMO_AUTH["auth"]

    def test_permission_matrix(self) -> None:
        self.check_matrix(demo=True)


class DeclaredPermissionTest(ServerCase):
    """Endpoints that declare the permission they need (tests/apps/guarded_app.py)."""

    app = GUARDED
    auth: ClassVar[dict[str, Any] | None] = {"anonymous": ["read", "write"]}

    def test_an_endpoint_is_guarded_by_the_permission_it_declares(self) -> None:
        assert self.ask("anonymous", "POST", "/add_note", {"id": 1, "text": "a"})[0] == 200
        assert self.ask("anonymous", "GET", "/get_note?id=1", None)[0] == 200
        assert self.ask("anonymous", "POST", "/erase_note", {"id": 1})[0] == 401
        status, answer, _ = self.ask("writer", "POST", "/erase_note", {"id": 1})
        assert status == 403 and answer["error"]["details"] == {"permission": "admin", "endpoint": "erase_note"}
        assert self.ask("admin", "POST", "/erase_note", {"id": 1})[0] == 200
        assert self.ask("anonymous", "GET", "/count_notes", None)[0] == 401
        assert self.ask("writer", "GET", "/count_notes", None)[0] == 403
        assert self.ask("reader", "GET", "/count_notes", None)[0] == 200


# -- docraft up's demo, for real --------------------------------------------------------------------


def port_pair_free(port: int) -> bool:
    """Whether ``port`` and ``port + 100`` (a one-replica ``docraft up``'s dispatcher and replica) are free now."""
    with contextlib.ExitStack() as stack:
        for candidate in (port, port + 100):
            probe = stack.enter_context(socket.socket())
            try:
                probe.bind(("127.0.0.1", candidate))
            except OSError:
                return False
    return True


@contextlib.contextmanager
def docraft_up(data_dir: Path) -> Iterator[tuple[str, Path]]:
    """``docraft up`` with one shard of one replica in ``data_dir``: yields (dispatcher URL, its output file)
    once it says it is up; SIGTERMed (and its processes killed if it does not stop them) on the way out."""
    port = next(p for p in free_ports(20) if p < 65000 and port_pair_free(p))
    (raft_port,) = free_ports(1)
    output = data_dir.parent / "up.out"
    command = [sys.executable, "-m", "node.cli", "up", "--data-dir", str(data_dir), "--shards", "1", "--replicas", "1"]
    command += ["--port", str(port), "--raft-port", str(raft_port)]
    with open(output, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(
            lambda: "docraft is up" in output.read_text() or process.poll() is not None, 120, "docraft up to be up"
        )
        assert process.poll() is None, output.read_text()
        yield f"http://127.0.0.1:{port}", output
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        for pid in children_of(data_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def children_of(data_dir: Path) -> list[int]:
    """Processes still running on ``data_dir``'s cluster file (none once ``docraft up`` stopped them)."""
    marker = str(data_dir / "cluster.toml").encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


@pytest.mark.cluster
def test_docraft_up_lets_anonymous_clients_use_the_app_and_keeps_admin_routes_for_the_admin_token(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "docraft-data"
    with docraft_up(data_dir) as (url, output):
        token_path = data_dir / ADMIN_TOKEN_NAME
        assert mode(token_path) == 0o600 and mode(data_dir / "cluster.toml") == 0o600
        token = token_path.read_text().strip()
        assert str(token_path) in output.read_text(), "docraft up says where the admin token is"
        assert token not in (data_dir / "cluster.toml").read_text()

        # The original notes' URLs, with plain anonymous requests; the sample was loaded with the admin token.
        code, page = http_json("GET", f"{url}/get_user?country=United%20States&limit=3")
        assert code == 200 and len(page["items"]) == 3
        insert = "/insert_user?id=100321&first_name=Mary&last_name=Smith&country=Australia&address=78%20Leaf%20St."
        assert http_json("GET", url + insert)[0] == 200
        assert http_json("GET", f"{url}/get_user?id=100321")[1]["items"][0]["first_name"] == "Mary"
        assert http_json("GET", f"{url}/_admin/cluster")[0] == 200
        assert http_json("POST", f"{url}/_bulk/User", {"docs": []})[0] == 401

        body = {"fingerprint": app_fingerprint(PEOPLE)}
        request = urllib.request.Request(f"{url}/_admin/fingerprint", data=ujson.dumps(body).encode(), method="POST")
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(request, timeout=10)
        assert refused.value.code == 401 and refused.value.headers["WWW-Authenticate"] == 'Bearer realm="docraft"'
        assert ujson.loads(refused.value.read())["error"]["code"] == "unauthorized"
        admin = {"Authorization": f"Bearer {token}"}
        code, answer = http_json("POST", f"{url}/_admin/fingerprint", body, timeout=30, headers=admin)
        assert code == 200, answer

        def audited() -> list[tuple[str, int]]:  # an admin action is audited once it has been answered
            audit = [ujson.loads(line) for line in (data_dir / AUDIT_NAME).read_text().splitlines()]
            return [(e["who"], e["result"]) for e in audit if e["what"] == "POST /_admin/fingerprint"]

        wait_for(lambda: len(audited()) == 2, 10, "the admin action in the audit log")
        assert audited() == [("anonymous", 401), ("admin", 200)]
