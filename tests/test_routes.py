"""The route table (``node.routes``): every route declared once, with an audience and a permission,
and the servers and the OpenAPI document built from it."""

from __future__ import annotations

import inspect
import re
from typing import Any

import pytest

from node.handlers import JSONHandler
from node.routes import ROUTES, Route, dispatcher_routes, rules
from query.app import load_app
from query.permissions import Access, Permission
from query.schema import openapi_document

PEOPLE = load_app("examples.people")
HTTP_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS")


def sample_path(route: Route) -> str:
    """A request path ``route`` serves: each ``{name}`` part filled with a name."""
    return re.sub(r"\{[A-Za-z_]+\}", "User", route.path)


def test_every_route_needs_a_permission_or_is_explicitly_public() -> None:
    for route in ROUTES:
        assert isinstance(route.permission, Permission | Access), f"{route.path} has no permission"
    public = [route.path for route in ROUTES if route.permission is Access.PUBLIC]
    deliberate = ["/_schema/openapi.json", "/livez", "/readyz"]  # no data; health probes carry no token
    deliberate += ["/_admin/", "/_admin/page.js", "/_admin/page.css"]  # the admin page's files hold no data
    assert sorted(public) == sorted(deliberate), "a new public route must be a deliberate choice"


def test_each_route_appears_once() -> None:
    paths = [route.path for route in ROUTES]
    assert len(paths) == len(set(paths))
    handlers = [route.handler for route in ROUTES]
    assert len(handlers) == len(set(handlers))


@pytest.mark.parametrize(
    ("audience", "permission"),
    [
        ("internal", Permission.ADMIN),
        ("internal", Access.PUBLIC),
        ("admin", Permission.STATUS),
        ("admin", Access.MEMBERS),
        ("client", Access.MEMBERS),
    ],
)
def test_a_route_whose_audience_and_permission_disagree_is_refused(audience: Any, permission: Any) -> None:
    with pytest.raises(ValueError, match="/_x"):
        Route("/_x", JSONHandler, audience, permission, ("GET",), ("replica",), "x")


def test_internal_and_admin_routes_need_what_their_audience_says() -> None:
    for route in ROUTES:
        if route.audience == "internal":
            assert route.permission is Access.MEMBERS, route.path
        if route.audience == "admin":
            assert route.permission is Permission.ADMIN, route.path
    assert {r.path for r in ROUTES if r.audience == "internal"} >= {"/_shard/write", "/_shard/read", "/_admin/digest"}
    assert {r.path for r in ROUTES if r.audience == "admin"} >= {"/_admin/repair", "/_admin/fault/corrupt"}


def test_each_route_declares_exactly_the_methods_its_handler_serves() -> None:
    for route in ROUTES:
        served = {m for m in HTTP_METHODS if getattr(route.handler, m.lower()) is not getattr(JSONHandler, m.lower())}
        assert served == set(route.methods), route.path


def test_each_route_is_matched_by_its_own_rule_first() -> None:
    """The endpoint route matches any name, so every route must win over those after it."""
    for route in ROUTES:
        first = next(r for r in ROUTES if re.fullmatch(r.pattern, sample_path(route)))
        assert first is route, f"{route.path} is served by {first.path}'s handler"


def test_servers_get_their_routes_and_the_fault_hook_only_when_unsafe() -> None:
    deps: dict[str, Any] = {
        **dict.fromkeys(("router", "alerts", "service", "repair", "metrics", "readiness")),
        "document": {},
    }
    dispatcher = [handler for _, handler, _ in rules("dispatcher", deps, gate=None)]  # type: ignore[arg-type]
    replica = [handler for _, handler, _ in rules("replica", deps, gate=None)]  # type: ignore[arg-type]
    unsafe = [handler for _, handler, _ in rules("replica", deps, gate=None, unsafe=True)]  # type: ignore[arg-type]
    by_path = {route.path: route.handler for route in ROUTES}
    assert by_path["/_shard/write"] not in dispatcher and by_path["/_shard/write"] in replica
    assert by_path["/_admin/alerts"] in dispatcher and by_path["/_admin/alerts"] not in replica
    assert by_path["/_admin/fault/corrupt"] not in replica and by_path["/_admin/fault/corrupt"] in unsafe
    assert dispatcher[-1] is replica[-1] is by_path["/{endpoint}"]


def test_rules_give_each_handler_its_route_gate_and_dependencies() -> None:
    deps = {"router": "R", "alerts": "A", "document": "D", "service": "S", "repair": "P"}
    deps.update(metrics="M", readiness="H")
    for pattern, handler, kwargs in rules("replica", deps, gate="G", unsafe=True):  # type: ignore[arg-type]
        route = kwargs.pop("route")
        assert route.pattern == pattern and route.handler is handler
        assert kwargs.pop("gate") == "G"
        wanted = [name for name in inspect.signature(handler.initialize).parameters if name != "self"]
        assert kwargs == {name: deps[name] for name in wanted}
    with pytest.raises(KeyError, match="needs alerts"):
        rules("dispatcher", {"router": "R", "document": "D", "metrics": "M", "readiness": "H"}, gate="G")  # type: ignore[arg-type]


def test_the_openapi_document_describes_exactly_the_dispatchers_routes_and_their_permissions() -> None:
    document = openapi_document(PEOPLE, dispatcher_routes())
    paths = document["paths"]
    expected: dict[str, tuple[set[str], str | None]] = {}  # path: (methods, permission; None if public)
    for route in dispatcher_routes():
        if route.path == "/{endpoint}":
            for endpoint in PEOPLE.endpoints.values():
                expected[f"/{endpoint.name}"] = ({m.lower() for m in endpoint.methods}, endpoint.permission.value)
        elif route.path == "/_bulk/{Model}":
            for model in PEOPLE.models:
                expected[f"/_bulk/{model}"] = ({"post"}, route.permission.value)
        else:
            permission = None if route.permission is Access.PUBLIC else route.permission.value
            expected[route.path] = ({m.lower() for m in route.methods}, permission)
    assert set(paths) == set(expected)
    for path, (methods, permission) in expected.items():
        assert set(paths[path]) == methods, path
        for operation in paths[path].values():
            assert operation.get("x-docraft-permission") == permission, path
            if permission is None:
                assert operation["security"] == [] and "401" not in operation["responses"], path
            else:
                assert {"bearer": []} in operation["security"], path
                assert {"401", "403"} <= set(operation["responses"]), path
    assert document["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    admin = paths["/_admin/fingerprint"]["post"]["security"]
    assert admin == [{"bearer": []}], "an admin route never admits anonymous clients"


def test_the_openapi_export_refuses_a_route_it_does_not_describe() -> None:
    stray = Route("/_admin/stray", JSONHandler, "client", Permission.STATUS, ("GET",), ("dispatcher",), "x")
    with pytest.raises(ValueError, match="/_admin/stray"):
        openapi_document(PEOPLE, [*dispatcher_routes(), stray])
