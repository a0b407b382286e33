"""Models and endpoints of the example app (``--app examples.people``)."""

from __future__ import annotations

from typing import Any

from models import Model, field
from query import Page, ReadView, WriteView, mutation, query


class User(Model, indexes=("country",)):
    id: int = field(primary_key=True)
    first_name: str
    last_name: str
    country: str
    address: str = ""
    city: str = ""


@query(shard_key="id")
def get_user(
    db: ReadView,
    id: int | None = None,
    country: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page:
    """Users by id (one shard) or by country (every shard, merged in id order)."""
    where: dict[str, Any] = {}
    if id is not None:
        where["id"] = id
    if country is not None:
        where["country"] = country
    return db.find(User, where, limit=limit, after=cursor)


@mutation(shard_key="id", methods=("GET", "POST"))
def insert_user(
    db: WriteView,
    id: int,
    first_name: str,
    last_name: str,
    country: str,
    address: str = "",
    city: str = "",
) -> dict[str, Any]:
    """Store a new user; 409 if the id is taken."""
    return db.insert(
        User,
        {
            "id": id,
            "first_name": first_name,
            "last_name": last_name,
            "country": country,
            "address": address,
            "city": city,
        },
    )


# Loaded by ``docraft up`` when it creates a cluster: model name -> CSV beside this file.
SAMPLE_DATA = {"User": "users.csv"}
