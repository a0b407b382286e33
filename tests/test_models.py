"""Model declaration, ``Model.validate``, ``Model.from_text`` and ``value_type_of``."""

from __future__ import annotations

import re
import typing
from typing import Any, ClassVar

import pytest

from models import Model, field
from models.errors import ValidationError
from models.types import ListOf, Optional, Scalar, value_type_of


class Person(Model, indexes=("country", "age")):
    id: int = field(primary_key=True)
    first_name: str
    country: str
    age: int | None
    score: float = 0.0
    active: bool = True
    tags: list[str] = field([])
    nickname: str | None = "anon"
    registry: ClassVar[str] = "not a field"


class Order(Model, partition_key="customer"):
    number: str = field(primary_key=True)
    customer: int


def valid_person(**changes: Any) -> dict[str, Any]:
    return {"id": 1, "first_name": "Ada", "country": "UK", **changes}


# -- declaration ---------------------------------------------------------------


def test_declaration_collects_fields_keys_and_indexes() -> None:
    assert list(Person.fields) == [
        "id",
        "first_name",
        "country",
        "age",
        "score",
        "active",
        "tags",
        "nickname",
    ]
    assert Person.name == "Person"
    assert Person.primary_key == "id"
    assert Person.indexes == ("country", "age")
    assert Person.fields["id"].primary_key
    assert not Person.fields["first_name"].primary_key
    assert Person.fields["first_name"].required
    assert not Person.fields["score"].required
    # an optional field without a default defaults to None
    assert not Person.fields["age"].required
    assert Person.fields["age"].default is None


def test_partition_key_defaults_to_primary_key() -> None:
    assert Person.partition_key == "id"


def test_partition_key_can_be_another_field() -> None:
    assert Order.primary_key == "number"
    assert Order.partition_key == "customer"


def test_class_var_annotations_are_not_fields() -> None:
    assert "registry" not in Person.fields


def test_model_without_primary_key_is_rejected() -> None:
    with pytest.raises(TypeError, match="exactly one primary key"):

        class NoKey(Model):
            a: int


def test_model_with_two_primary_keys_is_rejected() -> None:
    with pytest.raises(TypeError, match=r"exactly one primary key, found \['a', 'b'\]"):

        class TwoKeys(Model):
            a: int = field(primary_key=True)
            b: int = field(primary_key=True)


def test_unknown_index_field_is_rejected() -> None:
    with pytest.raises(TypeError, match="'colour' is not a field"):

        class Paint(Model, indexes=("colour",)):
            id: int = field(primary_key=True)
            color: str


def test_unknown_partition_key_is_rejected() -> None:
    with pytest.raises(TypeError, match="'tenant' is not a field"):

        class Row(Model, partition_key="tenant"):
            id: int = field(primary_key=True)


@pytest.mark.parametrize("annotation", ["dict[str, int]", "set[int]", "int | str", "bytes", "list"])
def test_unsupported_annotation_is_rejected(annotation: str) -> None:
    namespace: dict[str, Any] = {"Model": Model, "field": field}
    source = f"class Bad(Model):\n    id: int = field(primary_key=True)\n    value: {annotation}\n"
    with pytest.raises(TypeError, match="unsupported field type"):
        exec(source, namespace)


def test_fields_may_share_names_with_model_metadata() -> None:
    class Product(Model, indexes=("name",), partition_key="partition_key"):
        id: int = field(primary_key=True)
        name: str  # type: ignore[misc]
        fields: str = "f"  # type: ignore[misc]
        indexes: list[str] = field([])  # type: ignore[misc]
        primary_key: bool = False  # type: ignore[misc]
        partition_key: int = 0  # type: ignore[misc]

    assert list(Product.fields) == ["id", "name", "fields", "indexes", "primary_key", "partition_key"]
    # the metadata still describes the model, whatever the fields are called
    assert Product.name == "Product"
    assert Product.primary_key == "id"
    assert Product.partition_key == "partition_key"
    assert Product.indexes == ("name",)
    assert Product.fields["fields"].default == "f"
    assert Product.fields["name"].required
    assert Product.validate({"id": 1, "name": "lamp", "primary_key": True}) == {
        "id": 1,
        "name": "lamp",
        "fields": "f",
        "indexes": [],
        "primary_key": True,
        "partition_key": 0,
    }
    with pytest.raises(ValidationError, match=r"Product\.name is required"):
        Product.validate({"id": 1})


# -- subclassing -----------------------------------------------------------------


class Account(Model, indexes=("country",), partition_key="country"):
    id: int = field(primary_key=True)
    country: str
    note: str = "none"


class Premium(Account):
    level: int = 1
    note: int = 0  # type: ignore[assignment]  # redeclared: a new type and default


class Gold(Premium, indexes=("level",), partition_key="id"):
    perks: list[str] = field([])


def test_subclass_inherits_fields_keys_and_indexes() -> None:
    assert Premium.name == "Premium"
    # parent fields first, in their order, a redeclared field keeps its place
    assert list(Premium.fields) == ["id", "country", "note", "level"]
    assert Premium.primary_key == "id"
    assert Premium.partition_key == "country"
    assert Premium.indexes == ("country",)
    assert Premium.fields["note"].default == 0
    assert Premium.fields["note"].type.name == "int"
    assert Premium.validate({"id": 1, "country": "FR"}) == {"id": 1, "country": "FR", "note": 0, "level": 1}
    with pytest.raises(ValidationError, match=r"Premium\.note"):
        Premium.validate({"id": 1, "country": "FR", "note": "text"})


def test_subclass_leaves_its_parent_alone() -> None:
    assert Account.name == "Account"
    assert list(Account.fields) == ["id", "country", "note"]
    assert Account.fields["note"].default == "none"
    with pytest.raises(ValidationError, match="Account has no field 'level'"):
        Account.validate({"id": 1, "country": "FR", "level": 2})


def test_grandchild_may_redeclare_indexes_and_partition_key() -> None:
    assert list(Gold.fields) == ["id", "country", "note", "level", "perks"]
    assert Gold.indexes == ("level",)
    assert Gold.partition_key == "id"
    assert Gold.primary_key == "id"


def test_subclass_may_redeclare_the_primary_key_field() -> None:
    class Renumbered(Account):
        id: str = field(primary_key=True)  # type: ignore[assignment]

    assert Renumbered.primary_key == "id"
    assert Renumbered.validate({"id": "A-1", "country": "FR"})["id"] == "A-1"


def test_subclass_cannot_add_a_second_primary_key() -> None:
    with pytest.raises(TypeError, match=r"exactly one primary key, found \['id', 'code'\]"):

        class Coded(Account):
            code: str = field(primary_key=True)


def test_subclass_index_must_be_a_field() -> None:
    with pytest.raises(TypeError, match="'colour' is not a field"):

        class Painted(Account, indexes=("colour",)):
            pass


def test_every_model_base_is_inherited_or_rejected() -> None:
    class Left(Model):
        id: int = field(primary_key=True)
        x: int = 0

    class Right(Model):
        id: int = field(primary_key=True)
        y: int = 0

    try:

        class Both(Left, Right):
            pass

    except TypeError:
        return
    assert set(Both.fields) == {"id", "x", "y"}


# -- validate ------------------------------------------------------------------


def test_validate_fills_defaults_in_field_order() -> None:
    doc = Person.validate(valid_person())
    assert doc == {
        "id": 1,
        "first_name": "Ada",
        "country": "UK",
        "age": None,
        "score": 0.0,
        "active": True,
        "tags": [],
        "nickname": "anon",
    }
    assert list(doc) == list(Person.fields)


def test_validate_does_not_share_list_defaults() -> None:
    first = Person.validate(valid_person())
    first["tags"].append("mutated")
    assert Person.validate(valid_person())["tags"] == []


def test_validate_does_not_modify_its_input() -> None:
    given = valid_person(score=3)
    Person.validate(given)
    assert given == {"id": 1, "first_name": "Ada", "country": "UK", "score": 3}


def test_optional_field_accepts_none_and_a_value() -> None:
    assert Person.validate(valid_person(age=None))["age"] is None
    assert Person.validate(valid_person(age=36))["age"] == 36
    assert Person.validate(valid_person(nickname=None))["nickname"] is None


def test_int_is_accepted_for_float_and_normalised() -> None:
    score = Person.validate(valid_person(score=3))["score"]
    assert score == 3.0
    assert type(score) is float


@pytest.mark.parametrize(("name", "value"), [("id", True), ("age", False), ("score", True)])
def test_bool_is_rejected_for_numbers(name: str, value: bool) -> None:
    with pytest.raises(ValidationError, match="got a boolean") as info:
        Person.validate(valid_person(**{name: value}))
    assert info.value.details["field"] == name


@pytest.mark.parametrize(
    ("name", "value"),
    [("id", 1.5), ("first_name", 7), ("active", 1), ("score", "1.0"), ("age", "36"), ("tags", "a,b")],
)
def test_wrong_type_names_the_field(name: str, value: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Person.validate(valid_person(**{name: value}))
    assert info.value.details == {"model": "Person", "field": name}
    assert info.value.status == 422
    assert f"Person.{name}" in info.value.message


def test_unknown_field_is_an_error_naming_it() -> None:
    with pytest.raises(ValidationError, match="no field 'surname'") as info:
        Person.validate(valid_person(surname="Lovelace"))
    assert info.value.details["field"] == "surname"


def test_missing_required_field_names_it() -> None:
    doc = valid_person()
    del doc["country"]
    with pytest.raises(ValidationError, match=r"Person\.country is required") as info:
        Person.validate(doc)
    assert info.value.details["field"] == "country"


def test_non_object_document_is_rejected() -> None:
    with pytest.raises(ValidationError, match="must be a JSON object"):
        Person.validate([("id", 1)])


def test_list_items_are_checked() -> None:
    assert Person.validate(valid_person(tags=["a", "b"]))["tags"] == ["a", "b"]
    with pytest.raises(ValidationError, match="expected str, got int") as info:
        Person.validate(valid_person(tags=["a", 2]))
    assert info.value.details["field"] == "tags"


# -- from_text -----------------------------------------------------------------


def test_from_text_parses_each_type() -> None:
    doc = Person.from_text(
        {
            "id": " 42 ",
            "first_name": "Grace",
            "country": "US",
            "age": "85",
            "score": "2.5",
            "active": "no",
            "tags": "navy,cobol",
            "nickname": "Amazing Grace",
        }
    )
    assert doc == {
        "id": 42,
        "first_name": "Grace",
        "country": "US",
        "age": 85,
        "score": 2.5,
        "active": False,
        "tags": ["navy", "cobol"],
        "nickname": "Amazing Grace",
    }


@pytest.mark.parametrize(("text", "expected"), [("true", True), ("YES", True), ("1", True), ("off", False)])
def test_from_text_parses_booleans(text: str, expected: bool) -> None:
    assert Person.from_text({"id": "1", "first_name": "A", "country": "B", "active": text})["active"] is expected


def test_from_text_empty_cell_takes_the_default() -> None:
    row = {"id": "1", "first_name": "A", "country": "B", "age": "", "score": "", "active": ""}
    row |= {"tags": "", "nickname": ""}
    doc = Person.from_text(row)
    assert doc["age"] is None
    assert doc["score"] == 0.0
    assert doc["active"] is True
    assert doc["tags"] == []
    assert doc["nickname"] == "anon"


def test_from_text_empty_cell_of_required_str_is_the_empty_string() -> None:
    assert Person.from_text({"id": "1", "first_name": "", "country": "B"})["first_name"] == ""


@pytest.mark.parametrize(
    ("name", "text"), [("id", "forty-two"), ("id", ""), ("age", "1.5"), ("score", "x"), ("active", "maybe")]
)
def test_from_text_bad_value_names_the_field(name: str, text: str) -> None:
    row = {"id": "1", "first_name": "A", "country": "B", name: text}
    with pytest.raises(ValidationError) as info:
        Person.from_text(row)
    assert info.value.details["field"] == name
    assert repr(text) in info.value.message


def test_from_text_unknown_column_is_reported() -> None:
    with pytest.raises(ValidationError, match="no field 'email'") as info:
        Person.from_text({"id": "1", "first_name": "A", "country": "B", "email": "a@b"})
    assert info.value.details["field"] == "email"


# -- value_type_of -------------------------------------------------------------


@pytest.mark.parametrize("python_type", [str, int, float, bool])
def test_value_type_of_scalars(python_type: type) -> None:
    value_type = value_type_of(python_type)
    assert isinstance(value_type, Scalar)
    assert value_type.name == python_type.__name__


@pytest.mark.parametrize("annotation", [int | None, typing.Optional[int], None | int])  # noqa: UP045
def test_value_type_of_optional(annotation: Any) -> None:
    value_type = value_type_of(annotation)
    assert isinstance(value_type, Optional)
    assert value_type.name == "int | None"
    assert value_type.check(None) is None
    assert value_type.check(3) == 3
    assert value_type.parse("") is None
    assert value_type.parse("3") == 3


def test_value_type_of_lists() -> None:
    value_type = value_type_of(list[int])
    assert isinstance(value_type, ListOf)
    assert value_type.name == "list[int]"
    assert value_type.parse("1,2,3") == [1, 2, 3]
    assert value_type.parse("") == []
    assert value_type.check([1, 2]) == [1, 2]
    with pytest.raises(ValueError, match="expected a list"):
        value_type.check((1, 2))
    with pytest.raises(ValueError, match="expected int"):
        value_type.parse("1,x")


def test_value_type_of_nested() -> None:
    value_type = value_type_of(list[float] | None)
    assert value_type.name == "list[float] | None"
    assert value_type.check([1, 2.5]) == [1.0, 2.5]
    assert value_type.check(None) is None


@pytest.mark.parametrize(
    "annotation", [dict, dict[str, int], tuple[int, int], int | str | None, int | str, list, type(None), Any]
)
def test_value_type_of_unsupported(annotation: Any) -> None:
    with pytest.raises(TypeError, match=re.escape("use str, int, float, bool, Ref[Model], X | None or list[X]")):
        value_type_of(annotation)


def test_scalar_check_messages() -> None:
    with pytest.raises(ValueError, match="expected int, got a boolean"):
        value_type_of(int).check(True)
    with pytest.raises(ValueError, match="expected str, got int"):
        value_type_of(str).check(1)
    assert value_type_of(bool).check(False) is False
    with pytest.raises(ValueError, match=r"expected a boolean \(true/false\), got 'maybe'"):
        value_type_of(bool).parse("maybe")
