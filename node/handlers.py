"""Tornado request handlers shared by the dispatcher and the replica server.

Every handler has the same shape: parse the request, call the router or the
shard service, write JSON. Every non-2xx answer, including Tornado's own 404
and 405 and any unexpected exception, has the body
``{"error": {"code", "message", "details"?}}`` (see ``models.errors``).
Which route a handler serves, and who may call it, is ``node.routes``'s
table: before any handler method runs, ``prepare`` checks the request's
``Host`` (421, ``node.browsers``), has the route's gate admit the request or
refuse it (401 with ``WWW-Authenticate``, or 403), and refuses a POST that
is not JSON (415). What a request may ask is held to the cluster's
``[limits]`` (``node.limits``); both come in the application's settings
(``request_settings``).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable
from typing import TYPE_CHECKING, Any, ClassVar

import ujson
from tornado.httputil import HTTPServerRequest
from tornado.log import access_log
from tornado.web import Application, HTTPError, RequestHandler

from consensus.state_machine import Result
from models.errors import BadRequest, DocraftError, MethodNotAllowed, NoLeader, NotFound, Unauthorized
from models.json_values import non_finite_path
from node import logs, membership
from node.admin_ops import AdminOps
from node.alerts import AlertBook
from node.auth import Gate, Principal
from node.browsers import HostCheck, check_content_type
from node.limits import Limits
from node.request_ids import new_idempotency_key, request_id_for
from node.router import Router
from node.shard_client import TIMEOUT_HEADER
from node.shard_service import DEFAULT_TIMEOUT, ShardService
from query.permissions import Access, Permission

if TYPE_CHECKING:
    from node.metrics import ProcessMetrics
    from node.routes import Route

log = logging.getLogger("docraft.http")

MAX_TIMEOUT = 60.0
IDEMPOTENCY_HEADER = "Idempotency-Key"
AUTHENTICATE = 'Bearer realm="docraft"'  # WWW-Authenticate on every 401
_TORNADO_ERRORS: dict[int, type[DocraftError]] = {404: NotFound, 405: MethodNotAllowed}
DEFAULT_LIMITS = Limits()


def request_settings(limits: Limits, hosts: HostCheck, metrics: ProcessMetrics | None = None) -> dict[str, Any]:
    """The ``Application`` settings every ``JSONHandler`` of a server reads: its limits, the names it answers
    to, and the metrics it records each request in (none: not recorded)."""
    return {"limits": limits, "host_check": hosts, "metrics": metrics}


class JSONHandler(RequestHandler):
    """Writes JSON bodies and the one error shape; admits requests through its route's gate.

    ``route`` and ``gate`` come with every rule ``node.routes.rules`` builds;
    a handler without them (the default 404 handler) admits every request.
    """

    _idempotency_key: str | None = None
    principal: Principal | None = None  # who the gate admitted

    def __init__(
        self,
        application: Application,
        request: HTTPServerRequest,
        route: Route | None = None,
        gate: Gate | None = None,
        **kwargs: Any,
    ) -> None:
        self.route = route
        self.gate = gate
        super().__init__(application, request, **kwargs)

    def prepare(self) -> None:
        """Check the ``Host``, admit the request, check a POST's ``Content-Type``; each raises what it refuses.

        ``HostNotAllowed``, then ``Unauthorized`` / ``Forbidden``
        (``node.auth.Gate.admit``), then ``UnsupportedMediaType``.
        """
        self.check_host()
        if self.route is not None and self.gate is not None:
            need, endpoint = self.route.permission, None
            if need is Access.ENDPOINT:
                need, endpoint = self.endpoint_permission()
            self.principal = self.gate.admit(need, self.request, endpoint, time.time())
        check_content_type(self.request.method or "", self.request.headers)

    def check_host(self) -> None:
        """Raise ``HostNotAllowed`` for a ``Host`` this server does not answer to (nothing is checked when the
        application names no ``host_check``)."""
        hosts: HostCheck | None = self.settings.get("host_check")
        if hosts is not None:
            hosts.check(self.request.headers)

    @property
    def limits(self) -> Limits:
        """The server's ``[limits]`` (the defaults when the application names none)."""
        limits: Limits = self.settings.get("limits", DEFAULT_LIMITS)
        return limits

    def endpoint_permission(self) -> tuple[Permission, str]:
        """For a route whose permission is the endpoint's: that permission and the endpoint's name."""
        raise NotImplementedError(f"{type(self).__name__} serves no endpoint")

    def metric_endpoint(self) -> str:
        """How ``/metrics`` names this request's endpoint: its route's path (``unmatched`` without a route)."""
        return "unmatched" if self.route is None else self.route.path

    def on_finish(self) -> None:
        """Record the request in the server's metrics; audit every admitted request to an admin route, with
        the status it was answered with."""
        metrics: ProcessMetrics | None = self.settings.get("metrics")
        if metrics is not None:
            method, seconds = self.request.method or "", self.request.request_time()
            metrics.record_request(self.metric_endpoint(), method, self.get_status(), seconds)
        if self.principal is None or self.gate is None or self.route is None or self.route.audience != "admin":
            return
        self.gate.record_action(self.principal, self.request, self.get_status(), time.time())

    def set_default_headers(self) -> None:
        self.set_header("Content-Type", "application/json; charset=UTF-8")

    def write_json(self, body: Any, status: int = 200) -> None:
        self.set_status(status)
        self.finish(ujson.dumps(body, escape_forward_slashes=False))

    def write_error(self, status_code: int, **kwargs: Any) -> None:
        exc = kwargs.get("exc_info", (None, None, None))[1]
        if isinstance(exc, DocraftError):
            error, status = exc, exc.status
        elif 400 <= status_code < 500:
            reason = exc.log_message if isinstance(exc, HTTPError) and exc.log_message else self._reason
            error, status = _TORNADO_ERRORS.get(status_code, BadRequest)(reason), status_code
        else:
            error, status = DocraftError("internal error; the server log has the details"), status_code
        if isinstance(error, NoLeader):
            self.set_header("Retry-After", str(error.details.get("retry_after", 1)))
        if isinstance(error, Unauthorized):
            self.set_header("WWW-Authenticate", AUTHENTICATE)
        if self._idempotency_key is not None:  # send_error cleared the headers; the key matters most now
            self.set_header(IDEMPOTENCY_HEADER, self._idempotency_key)
        self.set_status(status)
        self.finish(ujson.dumps(error.to_json(), escape_forward_slashes=False))

    def log_exception(self, typ: Any, value: Any, tb: Any) -> None:
        if isinstance(value, DocraftError) and value.status < 500:
            return  # a client error, answered; not worth a log line
        super().log_exception(typ, value, tb)

    def send_error_for(self, exc: DocraftError) -> None:
        self.send_error(exc.status, exc_info=(type(exc), exc, None))

    def json_body(self) -> dict[str, Any] | None:
        """The request's JSON object body, ``None`` if empty.

        Raises ``BadRequest`` if it is not valid JSON, not an object, or holds
        a number JSON cannot: ujson reads ``NaN`` and ``Infinity`` and turns an
        overflowing literal such as ``1e999`` into infinity, and no stored
        value or response may hold one; or if it nests deeper than
        ``[limits] json_depth`` or holds an integer beyond 64 bits.
        """
        body = self.json_object()
        if body is not None:
            self.check_json_value(body)
        return body

    def json_object(self) -> dict[str, Any] | None:
        """The request's body parsed, ``None`` if empty; ``BadRequest`` if it is not a JSON object. Its
        values are not checked: ``check_json_value`` does that (``json_body`` does both)."""
        if not self.request.body:
            return None
        try:
            body = ujson.loads(self.request.body)
        except ValueError:
            raise BadRequest("the request body is not valid JSON") from None
        if not isinstance(body, dict):
            raise BadRequest("the request body must be a JSON object")
        return body

    def check_json_value(self, body: dict[str, Any]) -> None:
        """Raise ``BadRequest`` if ``body`` holds a number that is not finite, nests deeper than
        ``[limits] json_depth`` or holds an integer beyond 64 bits (see ``json_body``)."""
        path = non_finite_path(body)
        if path is not None:
            raise BadRequest(
                f"the request body holds a number that is not finite at {path}: "
                "JSON has no NaN or Infinity, and a literal such as 1e999 is too large for a float",
                path=path,
            )
        self.limits.check_json(body)

    def idempotency_key(self, mutation: bool) -> str | None:
        """The request's ``Idempotency-Key`` (a fresh one for a mutation without), echoed in the answer.

        A client that sees the outcome of a mutation as unknown retries it with
        this key and it is applied at most once. ``BadRequest`` for a malformed key.
        """
        key = self.request.headers.get(IDEMPOTENCY_HEADER)
        if key is None and mutation:
            key = new_idempotency_key()
        if key is not None:
            # BadRequest for a malformed key, before it is echoed; the id it gives marks this request's log lines
            logs.bind_request(request_id_for(key))
            self._idempotency_key = key
            self.set_header(IDEMPOTENCY_HEADER, key)
        return key

    def raft_timeout(self) -> float:
        """How long the caller lets this replica wait for Raft (``X-Docraft-Timeout``, capped); 400 if malformed."""
        text = self.request.headers.get(TIMEOUT_HEADER)
        if text is None:
            return DEFAULT_TIMEOUT
        try:
            seconds = float(text)
        except ValueError:
            raise BadRequest(f"{TIMEOUT_HEADER} must be a number of seconds") from None
        if not 0 < seconds <= MAX_TIMEOUT:
            raise BadRequest(f"{TIMEOUT_HEADER} must be between 0 and {MAX_TIMEOUT:.0f} seconds")
        return seconds

    def query_args(self) -> dict[str, list[str]]:
        """Query-string arguments decoded as UTF-8, not stripped; ``BadRequest`` otherwise."""
        try:
            return {k: [v.decode("utf-8") for v in vs] for k, vs in self.request.query_arguments.items()}
        except UnicodeDecodeError:
            raise BadRequest("the query string is not valid UTF-8") from None


class EndpointHandler(JSONHandler):
    """``/{endpoint}``: an app endpoint, routed to the shards that hold the data."""

    def initialize(self, router: Router) -> None:
        self.router = router

    def endpoint_permission(self) -> tuple[Permission, str]:
        """The called endpoint's declared permission; for a name that is no endpoint, ``read``: only a caller
        who may read learns (404) that there is none."""
        name = self.path_args[0]
        endpoint = self.router.app.endpoints.get(name)
        return (Permission.READ if endpoint is None else endpoint.permission), name

    def metric_endpoint(self) -> str:
        """The endpoint's name when the app has one by the name called, else the route's path: a client
        calling made-up names must not create series at will."""
        name = self.path_args[0] if self.path_args else ""
        return name if name in self.router.app.endpoints else super().metric_endpoint()

    async def get(self, name: str) -> None:
        await self._call(name)

    async def post(self, name: str) -> None:
        await self._call(name)

    async def _call(self, name: str) -> None:
        try:
            key = self.idempotency_key(self.router.is_mutation(name))
            body = self.json_body() if self.request.method == "POST" else None
            response = await self.router.call(name, self.request.method or "GET", self.query_args(), body, key)
        except DocraftError as exc:
            self.send_error_for(exc)
            return
        self.write_json(response)


class BulkInsertHandler(JSONHandler):
    """``POST /_bulk/{model}`` with ``{"docs": [...]}``: one result per document."""

    def initialize(self, router: Router) -> None:
        self.router = router

    async def post(self, model: str) -> None:
        try:
            body = self.json_body() or {}
            docs = body.get("docs")
            if not isinstance(docs, list):
                raise BadRequest('the body must be {"docs": [ ...documents... ]}', param="docs")
            self.limits.check_bulk(docs)
            results = await self.router.insert_batch(model, docs, self.idempotency_key(True))
        except DocraftError as exc:
            self.send_error_for(exc)
            return
        self.write_json({"results": results})


class ClusterHandler(JSONHandler):
    """``GET /_admin/cluster``: the map's epoch, each shard's slot ranges, leader and replicas, moves
    (``AdminOps.cluster_status``)."""

    def initialize(self, router: Router) -> None:
        self.admin = AdminOps(router)

    async def get(self) -> None:
        self.write_json(await self.admin.cluster_status())


class AlertsHandler(JSONHandler):
    """``GET /_admin/alerts``: active and recent integrity alerts."""

    def initialize(self, alerts: AlertBook) -> None:
        self.alerts = alerts

    def get(self) -> None:
        self.write_json(self.alerts.to_json())


class FingerprintHandler(JSONHandler):
    """``POST /_admin/fingerprint`` with ``{"fingerprint": F}``: accept new app code on every shard."""

    def initialize(self, router: Router) -> None:
        self.admin = AdminOps(router)

    async def post(self) -> None:
        try:
            fingerprint = (self.json_body() or {}).get("fingerprint")
            if not isinstance(fingerprint, str) or len(fingerprint) != 64:
                raise BadRequest('the body must be {"fingerprint": <64 hex characters>}', param="fingerprint")
            self.write_json({"shards": await self.admin.set_fingerprint(fingerprint)})
        except DocraftError as exc:
            self.send_error_for(exc)


class MigrateHandler(JSONHandler):
    """``POST /_admin/migrate`` with ``{"model", "to", "dry_run"}``: migrate a model on every shard."""

    def initialize(self, router: Router) -> None:
        self.admin = AdminOps(router)

    async def post(self) -> None:
        try:
            body = self.json_body() or {}
            model, target, dry_run = body.get("model"), body.get("to"), body.get("dry_run", False)
            if not isinstance(model, str) or type(target) is not int or not isinstance(dry_run, bool):
                raise BadRequest('the body must be {"model": NAME, "to": VERSION, "dry_run": BOOL}')
            self.write_json(await self.admin.migrate(model, target, dry_run))
        except DocraftError as exc:
            self.send_error_for(exc)


class OpenAPIHandler(JSONHandler):
    """``GET /_schema/openapi.json``: the OpenAPI document of this API, built once at startup."""

    def initialize(self, document: dict[str, Any]) -> None:
        self.document = document

    def get(self) -> None:
        self.write_json(self.document)


class DigestHandler(JSONHandler):
    """``GET /_admin/digest``: this replica's digest, recent checkpoints and code fingerprints."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def get(self) -> None:
        self.write_json(self.service.integrity())


class CorruptHandler(JSONHandler):
    """``POST /_admin/fault/corrupt``: change local state outside Raft; only with --unsafe-fault-injection."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def post(self) -> None:
        try:
            self.write_json({"corrupted": self.service.corrupt(self.json_body() or {})})
        except DocraftError as exc:
            self.send_error_for(exc)


class RepairHandler(JSONHandler):
    """``POST /_admin/repair`` with ``{"voters": [...]}``: on a replica its group has removed (``voters`` are
    the leader's), discard its state and restart as a learner (``docraft repair``: ``node.membership``).

    ``RepairRefused`` while it is still a voter.
    """

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def post(self) -> None:
        membership.leave(self.service, (self.json_body() or {}).get("voters"), "repair")
        self.write_json({"repairing": True}, status=202)


class MembershipHandler(JSONHandler):
    """``POST /_admin/membership`` with ``{"op": "add"|"remove", "raft": ADDRESS}``: on the leader, check the
    group can afford it and commit one membership change (``node.membership.change``)."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    async def post(self) -> None:
        body = self.json_body() or {}
        op, address = body.get("op"), body.get("raft")
        if op not in membership.OPS or not isinstance(address, str):
            raise BadRequest('the body must be {"op": "add" or "remove", "raft": "host:port"}')
        await membership.change(self.service, op, address)
        self.write_json({"op": op, "raft": address, "voters": self.service.replica.voters()})


class TransferHandler(JSONHandler):
    """``POST /_admin/transfer`` with ``{"to": ADDRESS|null}``: give up leadership (``membership.transfer``).

    A leader hands over to ``to`` (or the most caught-up voter); then the replica, leader or follower,
    stays out of elections for a while, as one its group is about to remove."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    async def post(self) -> None:
        target = (self.json_body() or {}).get("to")
        if target is not None and not isinstance(target, str):
            raise BadRequest('the body must be {"to": "host:port" or null}', param="to")
        await membership.transfer(self.service, target)
        self.write_json({"transferring": True})


class PromoteHandler(JSONHandler):
    """``POST /_admin/promote``: a caught-up learner restarts as a joining member, for its leader to add."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def post(self) -> None:
        self.write_json({"mode": membership.promote(self.service)}, status=202)


class RetireHandler(JSONHandler):
    """``POST /_admin/retire`` with ``{"voters": [...]}``: a replica its group has removed stops for good."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def post(self) -> None:
        membership.leave(self.service, (self.json_body() or {}).get("voters"), "retire")
        self.write_json({"retired": True})


class ShardCallHandler(JSONHandler):
    """A router's call on this replica's service: one call, or several a router coalesced (``node.coalescer``).

    One call is its JSON object, answered with its result or its error. Several
    are ``{MANY: [call, ...], "timeouts": [seconds, ...]}`` (``timeouts``
    optional: ``X-Docraft-Timeout`` then holds for each), run concurrently,
    so writes are proposed in one loop turn and share one Raft entry
    (``Replica.submit``), and answered ``{"results": [{"status", "body"},
    ...]}`` in order: the status and body each call alone would have been
    answered with. A malformed list refuses the whole request (400).
    """

    MANY: ClassVar[str]
    MAX_CALLS: ClassVar[int] = 1024

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def run(self, call: dict[str, Any], timeout: float) -> Awaitable[Result]:
        """The service's answer to one call, waiting for Raft at most ``timeout`` seconds."""
        raise NotImplementedError

    async def post(self) -> None:
        body = self.json_object()
        if body is not None and self.MANY in body and set(body) <= {self.MANY, "timeouts"}:
            calls, timeouts = self._coalesced(body)
            results = await asyncio.gather(*(self._answer(c, t) for c, t in zip(calls, timeouts, strict=True)))
            self.write_json({"results": results})
            return
        try:
            if body is not None:
                logs.bind_request(body.get("request_id"))
                self.check_json_value(body)
            self.write_json(await self.run(body or {}, self.raft_timeout()))
        except DocraftError as exc:
            self.send_error_for(exc)

    def _coalesced(self, body: dict[str, Any]) -> tuple[list[Any], list[float]]:
        """The calls of a coalesced request and how long each may wait; ``BadRequest`` if malformed."""
        calls = body[self.MANY]
        if not isinstance(calls, list) or not 0 < len(calls) <= self.MAX_CALLS:
            raise BadRequest(f"{self.MANY} must be a list of 1 to {self.MAX_CALLS} calls", param=self.MANY)
        timeouts = body.get("timeouts")
        if timeouts is None:
            return calls, [self.raft_timeout()] * len(calls)
        if not isinstance(timeouts, list) or len(timeouts) != len(calls) or not all(map(_is_timeout, timeouts)):
            raise BadRequest(
                f"timeouts must list one number of seconds per call, each between 0 and {MAX_TIMEOUT:.0f}",
                param="timeouts",
            )
        return calls, timeouts

    async def _answer(self, call: Any, timeout: float) -> dict[str, Any]:
        """``{"status", "body"}``: what ``call`` alone would have been answered with; logged as a request
        of its own (with its request id) when every request is (``node.logs``)."""
        logs.bind_request(call.get("request_id") if isinstance(call, dict) else None)
        answer = await self._outcome(call, timeout)
        access_log.info("%d %s (one call of a coalesced request)", answer["status"], self.request.path)
        return answer

    async def _outcome(self, call: Any, timeout: float) -> dict[str, Any]:
        try:
            if not isinstance(call, dict):
                raise BadRequest("the request body must be a JSON object")
            self.check_json_value(call)
            return {"status": 200, "body": await self.run(call, timeout)}
        except DocraftError as exc:
            return {"status": exc.status, "body": exc.to_json()}
        except Exception:
            log.exception("a coalesced call to %s failed", self.request.path)
            return {"status": 500, "body": DocraftError("internal error; the server log has the details").to_json()}


class ShardWriteHandler(ShardCallHandler):
    """``POST /_shard/write``: propose a command on this replica, or several (``commands``) (routers only)."""

    MANY = "commands"

    def run(self, call: dict[str, Any], timeout: float) -> Awaitable[Result]:
        return self.service.write(call, timeout)


class ShardReadHandler(ShardCallHandler):
    """``POST /_shard/read``: run a query endpoint on this replica, or several (``requests``) (routers only)."""

    MANY = "requests"

    def run(self, call: dict[str, Any], timeout: float) -> Awaitable[Result]:
        return self.service.read(call, timeout)


class ShardStatusHandler(JSONHandler):
    """``GET /_shard/status``: this replica's role, term and indexes."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def get(self) -> None:
        self.write_json(self.service.status())


class ShardSlotsHandler(JSONHandler):
    """``GET /_shard/slots[?counts=1]``: this replica's copy of its group's slot table (``ShardService.slots``)."""

    def initialize(self, service: ShardService) -> None:
        self.service = service

    def get(self) -> None:
        counts = self.query_args().get("counts", ["0"])[-1]
        if counts not in ("0", "1"):
            raise BadRequest("counts must be 1 or 0", param="counts")
        self.write_json(self.service.slots(counts == "1"))


class NotFoundHandler(JSONHandler):
    """Every path no route matches."""

    def prepare(self) -> None:
        self.check_host()
        raise NotFound(f"no route {self.request.path!r}", path=self.request.path)


def _is_timeout(value: Any) -> bool:
    """Whether ``value`` is a number of seconds a replica may wait for Raft: over 0, at most ``MAX_TIMEOUT``."""
    return type(value) in (int, float) and 0 < value <= MAX_TIMEOUT
