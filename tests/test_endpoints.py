"""Declaring endpoints with ``@query``/``@mutation`` and ``Endpoint.parse``."""

from __future__ import annotations

import typing
from typing import Any

import pytest

from models.errors import BadRequest
from query.endpoints import RESERVED_PARAMS, Endpoint, mutation, query


@query(shard_key="id")
def search(
    db: Any,
    id: int | None = None,
    name: str = "",
    active: bool = False,
    score: float = 1.5,
    tags: list[str] | None = None,
    ranks: list[int] | None = None,
    limit: int = 10,
) -> Any:
    return {"db": db, "id": id, "name": name, "limit": limit}


@query()
def everything(db: Any, words: list[str], flag: bool | None = None) -> Any:
    return words


@mutation(shard_key="id", methods=("get", "POST"))
def rename(db: Any, id: int, name: str, note: str | None = None) -> Any:
    return (id, name)


def parse(endpoint: Endpoint, url: dict[str, list[str]] | None = None, body: Any = None) -> dict[str, Any]:
    return endpoint.parse(url or {}, body)


def search_defaults(**changes: Any) -> dict[str, Any]:
    defaults: dict[str, Any] = {"id": None, "name": "", "active": False, "score": 1.5, "tags": None}
    return {**defaults, "ranks": None, "limit": 10, **changes}


# -- declaration -------------------------------------------------------------------


def test_declaration_records_the_signature() -> None:
    assert search.name == "search"
    assert search.kind == "query"
    assert search.methods == ("GET",)
    assert search.shard_key == "id"
    assert list(search.params) == ["id", "name", "active", "score", "tags", "ranks", "limit"]
    assert search.params["limit"].default == 10
    assert not search.params["limit"].required
    assert search.params["tags"].type.name == "list[str] | None"
    assert rename.kind == "mutation"
    assert rename.methods == ("GET", "POST")
    assert rename.params["id"].required
    assert rename.params["id"].default is None
    assert everything.shard_key is None


def test_endpoint_calls_the_function() -> None:
    assert search("the db", id=3) == {"db": "the db", "id": 3, "name": "", "limit": 10}
    assert rename(None, 1, "x") == (1, "x")


def test_shard_key_of() -> None:
    assert search.shard_key_of({"id": 4, "name": "x"}) == 4
    assert search.shard_key_of({"name": "x"}) is None
    assert everything.shard_key_of({"words": ["a"]}) is None
    assert rename.shard_key_of(parse(rename, {"id": ["12"], "name": ["n"]})) == 12


def test_unannotated_parameter_is_rejected() -> None:
    with pytest.raises(TypeError, match="endpoint bad: parameter 'limit' needs a type annotation"):

        @query()
        def bad(db: Any, id: int, limit=10) -> Any:  # type: ignore[no-untyped-def]
            return None


def test_the_first_parameter_needs_no_annotation() -> None:
    @query()
    def fine(db, id: int) -> Any:  # type: ignore[no-untyped-def]
        return None

    assert list(fine.params) == ["id"]


@pytest.mark.parametrize("reserved", sorted(RESERVED_PARAMS))
def test_reserved_parameter_name_is_rejected(reserved: str) -> None:
    namespace: dict[str, Any] = {"query": query, "Any": Any}
    source = f"@query()\ndef bad(db, id: int, {reserved}: str = '') -> Any:\n    return None\n"
    with pytest.raises(TypeError, match=f"endpoint bad: '{reserved}' is a reserved parameter name"):
        exec(source, namespace)


def test_shard_key_must_be_a_parameter() -> None:
    with pytest.raises(TypeError, match="endpoint bad: shard_key 'user_id' is not a parameter"):

        @query(shard_key="user_id")
        def bad(db: Any, id: int) -> Any:
            return None

    with pytest.raises(TypeError, match="shard_key 'user_id' is not a parameter"):

        @mutation(shard_key="user_id")
        def bad_write(db: Any, id: int) -> Any:
            return None


def test_the_view_parameter_cannot_be_the_shard_key() -> None:
    with pytest.raises(TypeError, match="shard_key 'db' is not a parameter"):

        @query(shard_key="db")
        def bad(db: Any, id: int) -> Any:
            return None


def test_mutation_shard_key_must_be_required() -> None:
    with pytest.raises(TypeError, match="mutation bad: shard_key 'id' must be required"):

        @mutation(shard_key="id")
        def bad(db: Any, id: int = 0) -> Any:
            return None

    with pytest.raises(TypeError, match="must be required"):

        @mutation(shard_key="id")
        def bad_optional(db: Any, id: int | None = None) -> Any:
            return None


@pytest.mark.parametrize("annotation", ["int | None", "str | None", "typing.Optional[int]"])
def test_mutation_shard_key_must_not_be_optional(annotation: str) -> None:
    # required (no default) but optional-typed: a null key could not be routed to a shard
    namespace: dict[str, Any] = {"Any": Any, "mutation": mutation, "typing": typing}
    source = f"@mutation(shard_key='id')\ndef optional_key(db: Any, id: {annotation}) -> Any:\n    return None\n"
    with pytest.raises(TypeError, match="mutation optional_key: shard_key 'id' must be required and not optional"):
        exec(source, namespace)


def test_optional_parameters_besides_the_shard_key_are_fine() -> None:
    assert rename.params["note"].required is False
    assert rename.params["id"].required is True


def test_unsupported_parameter_type_is_rejected() -> None:
    with pytest.raises(TypeError, match="unsupported field type"):

        @query()
        def bad(db: Any, where: dict[str, int]) -> Any:
            return None


# -- parsing the query string ----------------------------------------------------------


def test_no_arguments_gives_the_defaults() -> None:
    assert parse(search) == search_defaults()
    assert parse(search, {}, {}) == search_defaults()


def test_query_string_is_parsed_by_type() -> None:
    url = {"id": ["7"], "name": ["Ada"], "active": ["yes"], "score": ["2"], "limit": ["3"]}
    args = parse(search, url)
    assert args == search_defaults(id=7, name="Ada", active=True, score=2.0, limit=3)
    assert type(args["score"]) is float


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1", True), ("true", True), ("On", True), ("0", False), ("no", False), ("FALSE", False)],
)
def test_boolean_parameters(text: str, expected: bool) -> None:
    assert parse(search, {"active": [text]})["active"] is expected


def test_optional_parameter_empty_text_is_none() -> None:
    assert parse(search, {"id": [""]})["id"] is None
    assert parse(everything, {"words": ["a"], "flag": [""]})["flag"] is None
    assert parse(everything, {"words": ["a"], "flag": ["true"]})["flag"] is True


def test_list_parameters() -> None:
    assert parse(search, {"tags": ["a,b,c"]})["tags"] == ["a", "b", "c"]
    assert parse(search, {"ranks": ["3,1"]})["ranks"] == [3, 1]
    assert parse(search, {"tags": [""]})["tags"] is None
    assert parse(everything, {"words": [""]})["words"] == []
    assert parse(everything, {"words": ["x,y"]})["words"] == ["x", "y"]


def test_repeated_list_parameter_collects_every_value() -> None:
    assert parse(everything, {"words": ["x", "y", "z"]})["words"] == ["x", "y", "z"]


def test_repeated_optional_list_parameter_collects_every_value() -> None:
    assert parse(search, {"tags": ["a", "b"]})["tags"] == ["a", "b"]
    assert parse(search, {"ranks": ["3", "1", "2"]})["ranks"] == [3, 1, 2]
    assert parse(search, {"tags": ["a"]})["tags"] == ["a"]


def test_repeated_optional_list_values_are_checked() -> None:
    with pytest.raises(BadRequest, match="parameter 'ranks': expected int, got 'two'"):
        parse(search, {"ranks": ["1", "two"]})


def test_repeated_scalar_parameter_takes_the_last_value() -> None:
    assert parse(search, {"limit": ["1", "2"]})["limit"] == 2


@pytest.mark.parametrize(
    ("url", "param", "message"),
    [
        ({"id": ["seven"]}, "id", "expected int, got 'seven'"),
        ({"limit": [""]}, "limit", "expected int, got ''"),
        ({"limit": ["1.5"]}, "limit", "expected int"),
        ({"score": ["high"]}, "score", "expected float"),
        ({"active": ["maybe"]}, "active", "expected a boolean"),
        ({"ranks": ["1,two"]}, "ranks", "expected int, got 'two'"),
    ],
)
def test_bad_query_string_value_names_the_parameter(url: dict[str, list[str]], param: str, message: str) -> None:
    with pytest.raises(BadRequest, match=f"parameter '{param}': {message}") as info:
        parse(search, url)
    assert info.value.details == {"param": param}
    assert info.value.status == 400


def test_missing_required_parameter_names_it() -> None:
    with pytest.raises(BadRequest, match="parameter 'name' is required") as info:
        parse(rename, {"id": ["1"]})
    assert info.value.details == {"param": "name"}
    with pytest.raises(BadRequest, match="parameter 'id' is required") as info:
        parse(rename, None, {"name": "x"})
    assert info.value.details == {"param": "id"}


def test_unknown_parameter_is_rejected_listing_the_known_ones() -> None:
    with pytest.raises(BadRequest, match=r"rename takes no parameter 'nmae' \(it takes: id, name, note\)") as info:
        parse(rename, {"id": ["1"], "nmae": ["x"]})
    assert info.value.details == {"param": "nmae"}
    with pytest.raises(BadRequest, match="takes no parameter 'db'") as info:
        parse(rename, None, {"id": 1, "name": "x", "db": 1})
    assert info.value.details == {"param": "db"}


def test_endpoint_without_parameters_says_so() -> None:
    @query()
    def ping(db: Any) -> Any:
        return "pong"

    assert parse(ping) == {}
    with pytest.raises(BadRequest, match=r"\(it takes: none\)"):
        parse(ping, {"x": ["1"]})


@pytest.mark.parametrize("reserved", sorted(RESERVED_PARAMS))
def test_reserved_parameters_are_skipped(reserved: str) -> None:
    assert parse(rename, {"id": ["1"], "name": ["x"], reserved: ["1"]}) == {
        "id": 1,
        "name": "x",
        "note": None,
    }
    assert parse(rename, {reserved: ["1"]}, {"id": 1, "name": "x", reserved: "strong"}) == {
        "id": 1,
        "name": "x",
        "note": None,
    }


# -- parsing a JSON body -------------------------------------------------------------


def test_body_values_are_checked_not_parsed() -> None:
    body = {"id": 9, "name": "Ada", "active": True, "score": 3, "tags": ["a"], "ranks": [1, 2]}
    args = parse(search, None, body)
    assert args == search_defaults(id=9, name="Ada", active=True, score=3.0, tags=["a"], ranks=[1, 2])
    assert type(args["score"]) is float
    assert parse(search, None, {"id": None})["id"] is None


def test_url_and_body_combine() -> None:
    assert parse(rename, {"id": ["4"]}, {"name": "from body"}) == {"id": 4, "name": "from body", "note": None}


@pytest.mark.parametrize(
    ("body", "param", "message"),
    [
        ({"id": "7"}, "id", "expected int, got str"),
        ({"id": 7.0}, "id", "expected int, got float"),
        ({"limit": True}, "limit", "expected int, got a boolean"),
        ({"active": 1}, "active", "expected bool, got int"),
        ({"name": None}, "name", "expected str, got NoneType"),
        ({"score": "1.5"}, "score", "expected float, got str"),
        ({"tags": "a,b"}, "tags", "expected a list, got str"),
        ({"ranks": [1, "2"]}, "ranks", "expected int, got str"),
    ],
)
def test_bad_body_value_names_the_parameter(body: dict[str, Any], param: str, message: str) -> None:
    with pytest.raises(BadRequest, match=f"parameter '{param}': {message}") as info:
        parse(search, None, body)
    assert info.value.details == {"param": param}


def test_same_parameter_in_url_and_body_is_rejected() -> None:
    with pytest.raises(BadRequest, match="parameter 'name' given both in the URL and the body") as info:
        parse(rename, {"id": ["1"], "name": ["url"]}, {"name": "body"})
    assert info.value.details == {"param": "name"}
    # even when both say the same thing
    with pytest.raises(BadRequest, match="given both"):
        parse(rename, {"id": ["1"]}, {"id": 1, "name": "x"})


def test_parse_does_not_modify_its_inputs() -> None:
    url = {"id": ["1"]}
    body = {"name": "x"}
    parse(rename, url, body)
    assert url == {"id": ["1"]}
    assert body == {"name": "x"}
