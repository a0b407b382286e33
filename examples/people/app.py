"""Models and endpoints of the example app (``--app examples.people``).

``User`` is the original notes' model; ``Order`` references a user and is
co-located with it (partitioned by ``user_id``), so a user and its orders
live on one shard and ``get_user?id=321&include=orders`` reads both there.
"""

from __future__ import annotations

from typing import Any

from models import Model, Ref, field
from query import Page, ReadView, WriteView, mutation, query


class User(Model, indexes=("country",)):
    id: int = field(primary_key=True)
    first_name: str
    last_name: str
    country: str
    address: str = ""
    city: str = ""


class Order(Model, partition_key="user_id"):
    id: int = field(primary_key=True)
    user_id: Ref[User] = field(related_name="orders")
    item: str
    amount: float
    created_at: float = 0.0


@query(shard_key="id")
def get_user(
    db: ReadView,
    id: int | None = None,
    country: str | None = None,
    limit: int = 100,
    cursor: str | None = None,
) -> Page[User]:
    """Users by id (one shard) or by country (every shard, merged in id order)."""
    where: dict[str, Any] = {}
    if id is not None:
        where["id"] = id
    if country is not None:
        where["country"] = country
    return db.find(User, where, limit=limit, after=cursor)


@mutation(shard_key="id", methods=("GET", "POST"), returns=User)
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


@query(shard_key="user_id")
def get_user_orders(db: ReadView, user_id: int, limit: int = 100, cursor: str | None = None) -> Page[Order]:
    """One user's orders, oldest first; they live on the user's shard."""
    return db.find(Order, {"user_id": user_id}, limit=limit, after=cursor)


@mutation(shard_key="user_id", methods=("GET", "POST"), returns=Order)
def insert_order(db: WriteView, id: int, user_id: int, item: str, amount: float) -> dict[str, Any]:
    """Store an order of an existing user (422 naming ``user_id`` if there is none); 409 if the id is taken."""
    return db.insert(Order, {"id": id, "user_id": user_id, "item": item, "amount": amount, "created_at": db.now})


# Loaded by ``docraft up`` when it creates a cluster: model name -> CSV beside this file.
SAMPLE_DATA = {"User": "users.csv"}
