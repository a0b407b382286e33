"""Models and endpoints of version 2 of the example app (``--app examples.people_v2``).

A new app version is a new module: models, endpoints and the migration from
the previous version, shipped together.
"""

from __future__ import annotations

from typing import Any

from models import Model, Ref, field
from models.migrations import AddField, DropField
from query import Page, ReadView, WriteView, mutation, query


class User(
    Model,
    indexes=("country",),
    version=2,
    migrations={2: [DropField("address"), AddField("email", "")]},
):
    id: int = field(primary_key=True)
    first_name: str
    last_name: str
    country: str
    city: str = ""
    email: str = ""


class Order(Model, partition_key="user_id"):
    id: int = field(primary_key=True)
    user_id: Ref[User] = field(related_name="orders")
    item: str
    amount: float
    created_at: float = 0.0


@query(shard_key="id")
def get_user(
    db: ReadView, id: int | None = None, country: str | None = None, limit: int = 100, cursor: str | None = None
) -> Page[User]:
    """Users by id (one shard) or by country (every shard, merged in id order)."""
    where = {name: value for name, value in (("id", id), ("country", country)) if value is not None}
    return db.find(User, where, limit=limit, after=cursor)


@mutation(shard_key="id", methods=("GET", "POST"), returns=User)
def insert_user(
    db: WriteView, id: int, first_name: str, last_name: str, country: str, city: str = "", email: str = ""
) -> dict[str, Any]:
    """Store a new user; 409 if the id is taken."""
    doc = {"id": id, "first_name": first_name, "last_name": last_name, "country": country, "city": city}
    return db.insert(User, {**doc, "email": email})


@query(shard_key="user_id")
def get_user_orders(db: ReadView, user_id: int, limit: int = 100, cursor: str | None = None) -> Page[Order]:
    """One user's orders; they live on the user's shard."""
    return db.find(Order, {"user_id": user_id}, limit=limit, after=cursor)


@mutation(shard_key="user_id", methods=("GET", "POST"), returns=Order)
def insert_order(db: WriteView, id: int, user_id: int, item: str, amount: float) -> dict[str, Any]:
    """Store an order of an existing user (422 naming ``user_id`` if there is none)."""
    return db.insert(Order, {"id": id, "user_id": user_id, "item": item, "amount": amount, "created_at": db.now})
