"""Model migrations inside the state machine: which are pending, and what one would do.

A migration rewrites every document of one model from the version stored on
the shard to the version the running code defines, in one replicated command.
``plan`` computes the documents as they would be after it and changes nothing;
the state machine's ``migrate`` command stores them only when every document
migrated and validated. Pure functions of the app, the documents and their
versions, so every replica computes the same plan.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from models.errors import BadRequest, DocraftError, MigrationPending
from models.migrations import Step, steps_between
from models.model import Model
from query.app import App
from query.collection import Collection

Document = dict[str, Any]


@dataclass(frozen=True)
class Plan:
    """What migrating one model would do.

    ``summary`` is ``{"model", "from", "to", "documents", "failures":
    [{"key", "error"}], "failure_count"}``, as the dry run reports it;
    ``documents`` holds every document as it would be stored after the
    migration (validated against the code's model).
    """

    model: type[Model]
    summary: dict[str, Any]
    documents: list[Document]


def pending(app: App, versions: Mapping[str, int]) -> MigrationPending | None:
    """The error to answer while any model's stored version differs from the code's, else ``None``."""
    behind = sorted(name for name, model in app.models.items() if versions.get(name) != model.version)
    if not behind:
        return None
    name = behind[0]
    return MigrationPending(
        f"{name} documents here are version {versions.get(name)}, the code's are version "
        f"{app.models[name].version}: run docraft migrate",
        model=name,
    )


def plan(
    app: App,
    collections: Mapping[str, Collection],
    versions: Mapping[str, int],
    model_name: str,
    target: int,
    most: int = 50,
) -> Plan:
    """Plan migrating ``model_name`` to version ``target``; changes nothing.

    ``summary["failures"]`` lists at most ``most`` documents that would not
    migrate. Raises ``NotFound`` for an unknown model and ``BadRequest`` when
    the code does not define version ``target`` or the steps to it.
    """
    model = app.model(model_name)
    if target != model.version:
        raise BadRequest(f"the running code defines {model.name} version {model.version}, not {target}")
    stored = versions.get(model.name, 1)
    if stored > target:
        raise BadRequest(f"{model.name} documents are already version {stored}; downgrades are not supported")
    try:
        steps = steps_between(model.migrations, stored, target)
    except KeyError as missing:
        raise BadRequest(f"{model.name} declares no migration steps to version {missing.args[0]}") from None
    migrated, failures = [], []
    for doc in collections[model.name].all():
        try:
            migrated.append(_migrated(model, doc, steps))
        except DocraftError as exc:
            failures.append({"key": doc.get(model.primary_key), "error": exc.message})
        except Exception as exc:  # app code in a step: only the type name, the same on every replica
            failures.append({"key": doc.get(model.primary_key), "error": f"{type(exc).__name__} in a migration step"})
    summary = {
        "model": model.name,
        "from": stored,
        "to": target,
        "documents": len(migrated) if stored != target else 0,
        "failures": failures[:most],
        "failure_count": len(failures),
    }
    return Plan(model, summary, migrated)


def _migrated(model: type[Model], doc: Document, steps: list[Step]) -> Document:
    """``doc`` after ``steps``, validated. ``doc`` is a copy (``Collection.all()`` gives copies),
    so a step that changes a nested value of its input cannot reach the stored document."""
    new = doc
    for step in steps:
        new = step.apply(new)
    return model.validate(new)
