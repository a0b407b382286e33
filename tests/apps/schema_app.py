"""An app with every kind of type the schema export walks: lists, optionals, references, value results."""

from __future__ import annotations

from typing import Any

from models import Model, Ref, field
from query import Page, ReadView, WriteView, mutation, query


class Author(Model):
    id: str = field(primary_key=True)
    name: str
    active: bool = True


class Book(Model, indexes=("year",), version=2):
    """A book; ``co_authors`` may be empty."""

    id: int = field(primary_key=True)
    title: str
    author: Ref[Author] = field(related_name="books")
    co_authors: list[Ref[Author]] = field(default=[])
    year: int
    rating: float | None
    notes: list[str] | None = None


@query(methods=("GET", "POST"))
def search_books(db: ReadView, tags: list[str] | None = None, year: int | None = None, limit: int = 10) -> Page[Book]:
    """Books of one year, or all."""
    return db.find(Book, {} if year is None else {"year": year}, limit=limit)


@query()
def count_books(db: ReadView) -> int:
    return len(db.find(Book, {}, limit=1000).items)


@query(shard_key="id")
def book_titles(db: ReadView, id: int) -> dict[str, str]:
    return {str(b["id"]): b["title"] for b in db.find(Book, {"id": id}).items}


@query()
def authors(db: ReadView, cursor: str | None = None) -> Page:  # type: ignore[type-arg]
    return db.find(Author, {}, after=cursor)


@mutation(shard_key="id")
def add_book(db: WriteView, id: int, title: str, author: str, year: int, co_authors: list[str] | None = None) -> Book:
    doc: Any = {"id": id, "title": title, "author": author, "year": year, "co_authors": co_authors or []}
    return db.insert(Book, doc)  # type: ignore[no-any-return]
