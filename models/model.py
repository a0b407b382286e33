"""Declarative models: typed fields, primary key, partition key, indexes.

    class User(Model, indexes=("country",)):
        id: int = field(primary_key=True)
        first_name: str
        country: str
        city: str = ""

A model is a schema, never an instance holder: documents are plain dicts,
checked and normalised by ``Model.validate``. The partition key (which shard
a document lives on) defaults to the primary key.
"""

from __future__ import annotations

import builtins
import inspect
import typing
from dataclasses import dataclass
from typing import Any, ClassVar

from models.errors import ValidationError
from models.json_values import copy_json
from models.migrations import Step
from models.types import Optional, Reference, ValueType, references_of, value_type_of

_MISSING: Any = object()


class FieldOptions:
    """A field's declared options; the type comes from the annotation."""

    def __init__(self, default: Any, primary_key: bool, related_name: str | None = None) -> None:
        self.default = default
        self.primary_key = primary_key
        self.related_name = related_name


def field(default: Any = _MISSING, *, primary_key: bool = False, related_name: str | None = None) -> Any:
    """Declare a field's default, mark it as the primary key, or name a reference's reverse relation.

    ``id: int = field(primary_key=True)``; ``user_id: Ref[User] = field(related_name="orders")``
    lets ``include=orders`` on a ``User`` query embed each user's orders.
    """
    return FieldOptions(default, primary_key, related_name)


@dataclass(frozen=True)
class Relation:
    """``model.field`` references the model this relation is declared on."""

    name: str
    model: type[Model]
    field: str


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: ValueType
    default: Any
    primary_key: bool
    related_name: str | None = None

    @property
    def required(self) -> bool:
        return self.default is _MISSING

    @property
    def references(self) -> builtins.type[Model] | None:
        """The model this field references, if it is a ``Ref`` (or a list or optional of one)."""
        reference = references_of(self.type)
        target: builtins.type[Model] | None = None if reference is None else reference.target
        return target


class Model:
    """Base class of every model. Subclass keywords: ``indexes``, ``partition_key``, ``version``.

    A model whose partition key is a ``Ref`` to another model is co-located
    with it: a child lives on its parent's shard, so one mutation can write
    both atomically and the reference can be checked there. Scalar ``Ref``
    fields are indexed automatically. ``relations`` lists the reverse
    relations other models declared with ``related_name``. ``co_located_parent``
    is the model a co-located one lives with (``None`` for others).
    """

    name: ClassVar[str]
    fields: ClassVar[dict[str, FieldSpec]]
    field_names: ClassVar[frozenset[str]]
    primary_key: ClassVar[str]
    partition_key: ClassVar[str]
    indexes: ClassVar[tuple[str, ...]]
    version: ClassVar[int]
    migrations: ClassVar[dict[int, list[Step]]]
    relations: ClassVar[dict[str, Relation]]
    co_located_parent: ClassVar[type[Model] | None]

    def __init_subclass__(
        cls,
        *,
        indexes: tuple[str, ...] = (),
        partition_key: str | None = None,
        version: int | None = None,
        migrations: dict[int, list[Step]] | None = None,
        **kwargs: Any,
    ) -> None:

        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls)
        parents = [b for b in cls.__bases__ if issubclass(b, Model) and b is not Model]
        if len(parents) > 1:
            raise TypeError(f"model {cls.__name__} may extend one model, not {[p.__name__ for p in parents]}")
        parent = parents[0] if parents else None
        specs: dict[str, FieldSpec] = dict(parent.fields) if parent else {}
        # Only this class's own annotations: a field may share a name with the
        # metadata below (``name`` is a common field), and parents' fields are inherited.
        for name in inspect.get_annotations(cls):
            annotation = hints[name]
            if typing.get_origin(annotation) is ClassVar:
                continue
            declared = cls.__dict__.get(name, _MISSING)
            options = declared if isinstance(declared, FieldOptions) else FieldOptions(declared, False)
            default = options.default
            value_type = value_type_of(annotation)
            if default is _MISSING and isinstance(value_type, Optional):
                default = None
            specs[name] = FieldSpec(name, value_type, default, options.primary_key, options.related_name)

        cls.name = cls.__name__
        keys = [s.name for s in specs.values() if s.primary_key]
        if len(keys) != 1:
            raise TypeError(f"model {cls.name} must declare exactly one primary key, found {keys}")
        cls.fields = specs
        cls.field_names = frozenset(specs)
        cls.primary_key = keys[0]
        cls.partition_key = partition_key or (parent.partition_key if parent else keys[0])
        indexes = indexes or (parent.indexes if parent else ())
        for name in (*indexes, cls.partition_key):
            if name not in specs:
                raise TypeError(f"model {cls.name}: {name!r} is not a field")
        scalar_refs = [s.name for s in specs.values() if isinstance(s.type, Reference)]
        cls.indexes = tuple(dict.fromkeys([*indexes, *scalar_refs]))
        cls.version = version if version is not None else (parent.version if parent else 1)
        if cls.version < 1:
            raise TypeError(f"model {cls.name}: version must be 1 or more")
        cls.migrations = dict(migrations) if migrations is not None else (dict(parent.migrations) if parent else {})
        strays = sorted(set(cls.migrations) - set(range(2, cls.version + 1)))
        if strays:
            raise TypeError(f"model {cls.name}: migrations lead to versions 2..{cls.version}, not {strays}")

        parent_model = specs[cls.partition_key].references
        cls.co_located_parent = parent_model if parent_model is not None and cls.co_located_with(parent_model) else None
        cls.relations = {}
        for spec in specs.values():
            target = spec.references
            if spec.related_name is None:
                continue
            if target is None:
                raise TypeError(f"model {cls.name}: related_name on {spec.name!r}, which is not a Ref")
            if spec.related_name in target.fields or spec.related_name in target.relations:
                raise TypeError(f"model {target.name} already has a field or relation {spec.related_name!r}")
            target.relations[spec.related_name] = Relation(spec.related_name, cls, spec.name)

    @classmethod
    def co_located_with(cls, target: type[Model]) -> bool:
        """Whether every document of ``cls`` lives on the shard of the ``target`` it references."""
        return cls.fields[cls.partition_key].references is target and target.partition_key == target.primary_key

    @classmethod
    def validate(cls, doc: Any) -> dict[str, Any]:
        """Return a new document: ``doc`` checked against the model, defaults filled in.

        It shares no list with ``doc`` or the defaults, and is valid JSON
        (floats are finite). Raises ``ValidationError`` naming the first field
        at fault; unknown fields are errors too, so a typo never silently drops data.
        """
        if not isinstance(doc, dict):
            raise ValidationError(f"a {cls.name} must be a JSON object", model=cls.name)
        if not cls.field_names.issuperset(doc):
            unknown = sorted(set(doc) - cls.field_names)
            raise ValidationError(f"{cls.name} has no field {unknown[0]!r}", model=cls.name, field=unknown[0])
        out: dict[str, Any] = {}
        for name, spec in cls.fields.items():
            if name not in doc:
                if spec.required:
                    raise ValidationError(f"{cls.name}.{name} is required", model=cls.name, field=name)
                out[name] = copy_json(spec.default)
                continue
            try:
                out[name] = spec.type.check(doc[name])
            except ValueError as exc:
                raise ValidationError(f"{cls.name}.{name}: {exc}", model=cls.name, field=name) from None
        return out

    @classmethod
    def from_text(cls, row: dict[str, str]) -> dict[str, Any]:
        """Validate a document whose values are text (a CSV row, a query string).

        Empty cells of fields with a default take the default.
        """
        doc: dict[str, Any] = {}
        for name, text in row.items():
            spec = cls.fields.get(name)
            if spec is None:
                doc[name] = text  # validate() reports the unknown field
                continue
            if text == "" and not spec.required:
                continue
            try:
                doc[name] = spec.type.parse(text)
            except ValueError as exc:
                raise ValidationError(f"{cls.name}.{name}: {exc}", model=cls.name, field=name) from None
        return cls.validate(doc)
