"""Who may do what: users, tokens, roles and permissions, and the gate every request passes.

Clients send ``Authorization: Bearer <token>``. A token is random (256 bits,
``new_token``) and stored only as its SHA-256 (``hash_token``): with that
much entropy a fast hash is the right one. Each user has one role; a role
grants permissions (``query.permissions.Permission``), ``read`` and ``write``
for every endpoint or for named ones (``write:insert_order``). The cluster
file's ``[auth]`` table (``parse_auth``) names the users (inline, or in a
users file), custom roles and what an anonymous client may do: nothing
unless it says so. Cluster members (dispatchers, replicas, docraft's CLI
with the cluster file) sign their requests instead (``node.signing``) and
may do everything.

The ``Gate`` applies this to one request of one route: internal routes take
only a member's signature; admin routes an ``admin`` token or a signature;
client routes a token, a signature or nothing, and the permission the route
(or the called endpoint) needs. A missing or unknown token is ``Unauthorized``
(401), a known caller without the permission ``Forbidden`` (403).
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import re
import secrets
import tomllib
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ujson
from tornado.httputil import HTTPServerRequest

from models.errors import Forbidden, Unauthorized
from node.audit import AuditLog
from node.signing import SIGNATURE_HEADER, Verifier
from query.permissions import Access, Permission

log = logging.getLogger("docraft.auth")

__all__ = ["Access", "AuthConfig", "Authenticator", "Gate", "Grant", "Permission", "Principal", "Role", "User"]

USER_NAME = re.compile(r"[A-Za-z0-9._-]{1,64}")
_ENDPOINT_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_AUDITED_BODY = 4096  # bytes of an admin request's JSON body the audit log keeps


def new_token() -> str:
    """A fresh random token: 256 bits, URL-safe text."""
    return secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    """What is stored for ``token``: its SHA-256 in hex."""
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class Grant:
    """One permission, for every endpoint (``endpoint`` None) or, for read and write, one endpoint."""

    permission: Permission
    endpoint: str | None = None

    @classmethod
    def parse(cls, text: Any) -> Grant:
        """``"read"``, ``"write:insert_order"``...; raises ``ValueError`` naming what is wrong."""
        if not isinstance(text, str):
            raise ValueError(f"a permission is a string such as 'read' or 'write:insert_user', not {text!r}")
        name, colon, endpoint = text.partition(":")
        try:
            permission = Permission(name)
        except ValueError:
            known = ", ".join(p.value for p in Permission)
            raise ValueError(f"no permission {name!r} (known: {known})") from None
        if not colon:
            return cls(permission)
        if permission not in (Permission.READ, Permission.WRITE):
            raise ValueError(f"only read and write can be limited to an endpoint, not {text!r}")
        if not _ENDPOINT_NAME.fullmatch(endpoint):
            raise ValueError(f"{text!r} does not name an endpoint after the colon")
        return cls(permission, endpoint)

    def __str__(self) -> str:
        return self.permission.value if self.endpoint is None else f"{self.permission.value}:{self.endpoint}"


def grants_allow(grants: frozenset[Grant], permission: Permission, endpoint: str | None = None) -> bool:
    """Whether ``grants`` hold ``permission`` (for ``endpoint``, when one is called)."""
    return Grant(permission) in grants or (endpoint is not None and Grant(permission, endpoint) in grants)


def parse_grants(values: Any, what: str) -> frozenset[Grant]:
    """A TOML list of permission names as grants; ``ValueError`` naming ``what`` otherwise."""
    if not isinstance(values, list):
        raise ValueError(f'{what} must be a list of permissions such as ["read", "write:insert_user"]')
    try:
        return frozenset(Grant.parse(value) for value in values)
    except ValueError as exc:
        raise ValueError(f"{what}: {exc}") from None


@dataclass(frozen=True)
class Role:
    name: str
    grants: frozenset[Grant]


BUILT_IN_ROLES: dict[str, Role] = {
    "admin": Role("admin", frozenset(Grant(p) for p in Permission)),
    "reader": Role("reader", frozenset({Grant(Permission.READ), Grant(Permission.STATUS)})),
    "writer": Role("writer", frozenset({Grant(Permission.READ), Grant(Permission.WRITE), Grant(Permission.BULK)})),
}


@dataclass(frozen=True)
class User:
    name: str
    role: str
    token_sha256: str


@dataclass(frozen=True)
class AuthConfig:
    """``[auth]``: anonymous grants, roles by name, users, and the file the users are kept in.

    ``users_path`` is the users file, or the cluster file when users are listed
    in it; ``users_table`` is where in that file (``("auth", "users")`` or
    ``("users",)``). ``None``: users given only in memory (tests).
    """

    anonymous: frozenset[Grant] = frozenset()
    roles: Mapping[str, Role] = field(default_factory=lambda: dict(BUILT_IN_ROLES))
    users: tuple[User, ...] = ()
    users_path: Path | None = None
    users_table: tuple[str, ...] = ("auth", "users")


_AUTH_KEYS = ("anonymous", "users", "users_file", "roles")


def parse_auth(table: Any, cluster_path: Path) -> AuthConfig:
    """Validate the cluster file's ``[auth]`` table (``None`` if absent); raises ``ValueError``.

    Absent, or without ``anonymous``, anonymous clients may do nothing.
    ``users_file`` is relative to the cluster file; a users file that does not
    exist (yet) holds no users.
    """
    table = {} if table is None else table
    if not isinstance(table, dict):
        raise ValueError("[auth] must be a table")
    unknown = sorted(set(table) - set(_AUTH_KEYS))
    if unknown:
        raise ValueError(f"[auth] has no setting {unknown[0]!r} (known: {', '.join(_AUTH_KEYS)})")
    roles = _roles(table.get("roles", {}))
    anonymous = parse_grants(table.get("anonymous", []), "[auth] anonymous")
    users_file = table.get("users_file")
    if users_file is None:
        users = parse_users(table.get("users", []), roles, "[auth] users")
        return AuthConfig(anonymous, roles, users, cluster_path, ("auth", "users"))
    if not isinstance(users_file, str) or not users_file:
        raise ValueError("[auth] users_file must be a path")
    if "users" in table:
        raise ValueError("[auth] lists users and names a users_file: keep them in one place")
    path = Path(users_file) if Path(users_file).is_absolute() else cluster_path.parent / users_file
    return AuthConfig(anonymous, roles, read_users(path, ("users",), roles), path, ("users",))


def _roles(table: Any) -> dict[str, Role]:
    if not isinstance(table, dict):
        raise ValueError("[auth.roles] must be a table of roles")
    roles = dict(BUILT_IN_ROLES)
    for name, entry in table.items():
        if name in BUILT_IN_ROLES:
            raise ValueError(f"[auth.roles.{name}]: {name} is a built-in role and cannot be redefined")
        if not USER_NAME.fullmatch(name):
            raise ValueError(f"[auth.roles] role name {name!r} must be 1 to 64 of A-Z a-z 0-9 . _ -")
        if not isinstance(entry, dict) or set(entry) != {"permissions"}:
            raise ValueError(f"[auth.roles.{name}] must hold exactly: permissions = [...]")
        roles[name] = Role(name, parse_grants(entry["permissions"], f"[auth.roles.{name}] permissions"))
    return roles


def parse_users(entries: Any, roles: Mapping[str, Role], what: str) -> tuple[User, ...]:
    """Users from a TOML list of tables; ``ValueError`` naming ``what`` and the entry at fault."""
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise ValueError(f"{what} must be a list of tables ([[users]] in TOML)")
    users: list[User] = []
    for i, entry in enumerate(entries):
        name, role, digest = entry.get("name"), entry.get("role"), entry.get("token_sha256")
        where = f"{what}[{i}]"
        if set(entry) != {"name", "role", "token_sha256"}:
            raise ValueError(f"{where} must hold exactly name, role and token_sha256")
        if not isinstance(name, str) or not USER_NAME.fullmatch(name):
            raise ValueError(f"{where}: name must be 1 to 64 of A-Z a-z 0-9 . _ -, got {name!r}")
        if role not in roles:
            raise ValueError(f"{where} ({name}): no role {role!r} (known: {', '.join(sorted(roles))})")
        if not isinstance(digest, str) or not _SHA256.fullmatch(digest):
            raise ValueError(f"{where} ({name}): token_sha256 must be 64 lowercase hex digits")
        if any(u.name == name for u in users):
            raise ValueError(f"{what}: user {name!r} is listed twice")
        if any(u.token_sha256 == digest for u in users):
            raise ValueError(f"{what}: {name!r} has the token of another user")
        users.append(User(name, role, digest))
    return tuple(users)


def read_users(path: Path, table: tuple[str, ...], roles: Mapping[str, Role]) -> tuple[User, ...]:
    """The users listed at ``table`` in the TOML file ``path``; none if the file does not exist.

    Raises ``ValueError`` for a file that is not valid TOML or lists invalid
    users, ``OSError`` for one that cannot be read.
    """
    try:
        with open(path, "rb") as source:
            data: Any = tomllib.load(source)
    except FileNotFoundError:
        return ()
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path} is not valid TOML: {exc}") from None
    for key in table:
        data = data.get(key, {}) if isinstance(data, dict) else {}
    return parse_users(data or [], roles, f"{path}: {'.'.join(table)}")


@dataclass(frozen=True)
class Principal:
    """Who sent a request: a user, ``anonymous``, or a cluster member (which may do everything)."""

    name: str
    grants: frozenset[Grant]
    role: str | None = None
    member: bool = False

    @property
    def anonymous(self) -> bool:
        return self.role is None and not self.member

    def may(self, permission: Permission, endpoint: str | None = None) -> bool:
        """Whether this caller holds ``permission``, for ``endpoint`` when one is called."""
        return self.member or grants_allow(self.grants, permission, endpoint)


MEMBER = Principal("cluster member", frozenset(), member=True)


class Authenticator:
    """Tells who sent a request from its ``Authorization`` header; one per process, on its event loop.

    Users are re-read from their file when it changes (checked at most once
    every ``RELOAD_EVERY`` seconds), so ``docraft user`` and ``docraft token
    rotate`` take effect without a restart. A file that fails to parse is
    logged and the users already known are kept; roles and anonymous grants
    change on restart only.
    """

    RELOAD_EVERY = 1.0

    def __init__(self, auth: AuthConfig) -> None:
        self.auth = auth
        self.anonymous = Principal("anonymous", auth.anonymous)
        self._by_hash = _by_hash(auth.users, auth.roles)
        self._checked = -math.inf
        self._stamp = self._file_stamp()

    def identify(self, authorization: str | None, now: float) -> Principal:
        """The caller: ``anonymous`` without the header, else the token's user.

        Raises ``Unauthorized`` for a header that is not ``Bearer <token>`` or
        a token no user has. ``now`` (Unix seconds) paces the users file check.
        """
        self.refresh(now)
        if authorization is None:
            return self.anonymous
        scheme, _, token = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be 'Bearer <token>'")
        user = self._by_hash.get(hash_token(token.strip()))
        if user is None:
            raise Unauthorized("the token is not known (revoked, rotated or mistyped)")
        return user

    def refresh(self, now: float) -> None:
        """Re-read the users if their file changed since it was last read (at most once a second)."""
        if self.auth.users_path is None or now - self._checked < self.RELOAD_EVERY:
            return
        self._checked = now
        stamp = self._file_stamp()
        if stamp == self._stamp:
            return
        self._stamp = stamp
        try:
            users = read_users(self.auth.users_path, self.auth.users_table, self.auth.roles)
        except (OSError, ValueError) as exc:
            log.error("users not reloaded, the %d known are kept: %s", len(self._by_hash), exc)
            return
        self._by_hash = _by_hash(users, self.auth.roles)
        log.info("users reloaded from %s: %d users", self.auth.users_path, len(users))

    def _file_stamp(self) -> tuple[int, int, int] | None:
        if self.auth.users_path is None:
            return None
        try:
            stat = os.stat(self.auth.users_path)
        except OSError:
            return None
        return stat.st_ino, stat.st_mtime_ns, stat.st_size


def _by_hash(users: Iterable[User], roles: Mapping[str, Role]) -> dict[str, Principal]:
    return {u.token_sha256: Principal(u.name, roles[u.role].grants, role=u.role) for u in users}


class Gate:
    """Admits or refuses each request of a server; one per process, used on its event loop.

    Every refusal, and every request to an admin route, goes to ``audit``; refusals are also counted by
    error code in ``refusals`` (for ``/metrics``).
    """

    def __init__(self, authenticator: Authenticator, verifier: Verifier, audit: AuditLog) -> None:
        self.authenticator = authenticator
        self.verifier = verifier
        self.audit = audit
        self.refusals: Counter[str] = Counter({Unauthorized.code: 0, Forbidden.code: 0})

    def admit(
        self, need: Permission | Access, request: HTTPServerRequest, endpoint: str | None, now: float
    ) -> Principal:
        """The caller of ``request``, if it may do what ``need`` says; ``endpoint`` is the endpoint called.

        ``need`` is a permission, ``Access.MEMBERS`` (a valid signature only) or
        ``Access.PUBLIC`` (anyone). A request carrying a signature is a cluster
        member's if the signature verifies. Raises ``Unauthorized`` (no or bad
        credentials, or an anonymous caller without the permission) or
        ``Forbidden`` (a user without it), after writing the audit entry.
        """
        if need is Access.PUBLIC:
            return self.authenticator.anonymous
        principal: Principal | None = None
        try:
            principal = self._identify(need, request, now)
            if isinstance(need, Permission) and not principal.may(need, endpoint):
                raise _refusal(principal, need, endpoint)
        except (Unauthorized, Forbidden) as exc:
            self.refusals[exc.code] += 1
            who = principal.name if principal is not None else _claimed(request)
            self.audit.record(
                now, who, _what(request), request.remote_ip or "", exc.status, error=exc.code, reason=exc.message
            )
            raise
        return principal

    def _identify(self, need: Permission | Access, request: HTTPServerRequest, now: float) -> Principal:
        if need is Access.MEMBERS or SIGNATURE_HEADER in request.headers:
            self.verifier.verify(request.method or "", request.uri or "", request.body, request.headers, now)
            return MEMBER
        return self.authenticator.identify(request.headers.get("Authorization"), now)

    def record_action(self, principal: Principal, request: HTTPServerRequest, status: int, now: float) -> None:
        """Audit an admin request ``principal`` was admitted to, answered with ``status``."""
        details: dict[str, Any] = {}
        if principal.role is not None:
            details["role"] = principal.role
        if request.body:
            details["request"] = _body_for_audit(request.body)
        self.audit.record(now, principal.name, _what(request), request.remote_ip or "", status, **details)


def _refusal(principal: Principal, need: Permission, endpoint: str | None) -> Unauthorized | Forbidden:
    target = f" on {endpoint}" if endpoint else ""
    details: dict[str, Any] = {"permission": need.value}
    if endpoint:
        details["endpoint"] = endpoint
    if principal.anonymous:
        return Unauthorized(
            f"this needs the permission {need.value}{target}, which anonymous clients do not have: "
            "send Authorization: Bearer <token>",
            **details,
        )
    return Forbidden(
        f"user {principal.name} (role {principal.role}) does not have the permission {need.value}{target}", **details
    )


def _what(request: HTTPServerRequest) -> str:
    return f"{request.method} {request.path}"


def _claimed(request: HTTPServerRequest) -> str:
    """Who a refused caller that could not be identified claimed to be, for the audit log."""
    if SIGNATURE_HEADER in request.headers:
        return "bad signature"
    return "unverified token" if "Authorization" in request.headers else "anonymous"


def _body_for_audit(body: bytes) -> Any:
    """An admin request's JSON body as the audit log keeps it: the value, or its size if not small JSON."""
    try:
        return ujson.loads(body) if len(body) <= _AUDITED_BODY else {"bytes": len(body)}
    except ValueError:
        return {"bytes": len(body)}
