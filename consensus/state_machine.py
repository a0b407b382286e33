"""The pure, deterministic state machine of one shard.

Every replica feeds it the same committed commands in the same order and so
holds the same state. It does no I/O and reads no clock or randomness: time
and request ids arrive inside the command, stamped by the leader. Two state
machines fed the same commands produce byte-identical snapshots.

Commands are JSON objects:

    {"type": "mutation", "endpoint": NAME, "args": {...}, "request_id": ID, "time": T}
    {"type": "insert_batch", "model": NAME, "docs": [...], "request_id": ID, "time": T}
    {"type": "noop"}
    {"type": "batch", "commands": [...]}   several commands in one log entry

``apply`` returns ``{"ok": value}`` or ``{"error": {...}}`` (the one error
shape). A command whose ``request_id`` was applied before returns the first
result again without changing anything, so a retried write is applied once.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

from models.errors import BadRequest, DocraftError, EndpointFailed, ValidationError
from models.model import Model
from query.app import App
from query.collection import Collection
from query.planner import Page
from query.views import ReadView, WriteView

Result = dict[str, Any]

SNAPSHOT_FORMAT = 1


class StateMachine:
    """Collections of one shard plus the memory of recent request ids.

    Not thread-safe: the replica calls ``apply`` from the Raft thread only and
    reads run on the same thread or between applies.
    """

    def __init__(self, app: App, remembered_requests: int = 100_000) -> None:
        self.app = app
        self.remembered_requests = remembered_requests
        self.collections: dict[str, Collection] = {}
        self.recent: OrderedDict[str, Result] = OrderedDict()
        self._reset()

    def _reset(self) -> None:
        self.collections = {name: Collection(model) for name, model in sorted(self.app.models.items())}
        self.recent = OrderedDict()

    def collection(self, model: type[Model]) -> Collection:
        return self.collections[model.name]

    # -- writes -------------------------------------------------------------

    def apply(self, command: Any) -> Result:
        """Apply one committed command and return its result; never raises for bad input.

        Results hold nothing process-specific (no reprs, addresses or hash
        orders), so every replica stores and returns the same bytes.
        """
        if not isinstance(command, dict):
            return BadRequest("a command must be a JSON object").to_json()
        request_id = command.get("request_id")
        if request_id is not None and not isinstance(request_id, str):
            return BadRequest("request_id must be a string").to_json()
        if request_id is not None and request_id in self.recent:
            return self.recent[request_id]
        stamp = command.get("time", 0.0)
        if not isinstance(stamp, int | float) or isinstance(stamp, bool) or not _finite(stamp):
            return BadRequest("time must be a finite number").to_json()
        kind = command.get("type")
        if kind == "mutation":
            result = self._mutation(command)
        elif kind == "insert_batch":
            result = self._insert_batch(command)
        elif kind == "noop":
            result = {"ok": None}
        elif kind == "batch":
            return self._batch(command)
        else:
            result = BadRequest(f"unknown command type {kind!r}").to_json()
        if request_id is not None:
            self._remember(request_id, result)
        return result

    def _view(self, command: dict[str, Any]) -> WriteView:
        return WriteView(self.collection, float(command.get("time", 0.0)), command.get("request_id") or "")

    def _mutation(self, command: dict[str, Any]) -> Result:
        view = self._view(command)
        name = str(command.get("endpoint"))
        try:
            endpoint = self.app.endpoint(name)
            if endpoint.kind != "mutation":
                raise BadRequest(f"{endpoint.name} is a query, not a mutation")
            args = command.get("args", {})
            if not isinstance(args, dict) or set(args) - set(endpoint.params):
                raise BadRequest(f"{name} takes the arguments {sorted(endpoint.params)}")
            return {"ok": endpoint(view, **args)}
        except DocraftError as exc:
            view.rollback()
            return exc.to_json()
        except Exception as exc:  # a bug in app code: rolled back, reported the same on every replica
            view.rollback()
            # Only the type name: an exception's text may hold reprs with process-specific addresses.
            return EndpointFailed(f"{name} raised {type(exc).__name__}").to_json()

    def _batch(self, command: dict[str, Any]) -> Result:
        """Apply each command in order, each with its own result and request id."""
        commands = command.get("commands")
        if not isinstance(commands, list) or any(
            c.get("type") == "batch" for c in commands if isinstance(c, dict)
        ):
            return BadRequest("a batch holds a list of commands, none of them a batch").to_json()
        return {"ok": [self.apply(c) for c in commands]}

    def _insert_batch(self, command: dict[str, Any]) -> Result:
        """Insert documents one by one; each gets its own result so one bad row spoils nothing."""
        try:
            model = self.app.model(str(command.get("model")))
        except DocraftError as exc:
            return exc.to_json()
        docs = command.get("docs")
        if not isinstance(docs, list):
            return ValidationError("insert_batch needs a list of documents").to_json()
        view = self._view(command)
        results: list[Result] = []
        for doc in docs:
            try:
                results.append({"ok": view.insert(model, doc)[model.primary_key]})
            except DocraftError as exc:
                results.append(exc.to_json())
        return {"ok": results}

    def _remember(self, request_id: str, result: Result) -> None:
        self.recent[request_id] = result
        while len(self.recent) > self.remembered_requests:
            self.recent.popitem(last=False)

    # -- reads --------------------------------------------------------------

    def query(self, endpoint_name: str, args: dict[str, Any], explain: bool = False) -> Result:
        """Run a query endpoint on the local state; returns a page or a value as JSON."""
        endpoint = self.app.endpoint(endpoint_name)
        if endpoint.kind != "query":
            raise BadRequest(f"{endpoint_name} is a mutation, not a query")
        try:
            value = endpoint(ReadView(self.collection, explain), **args)
        except DocraftError:
            raise
        except Exception as exc:
            raise EndpointFailed(f"{endpoint_name} raised {type(exc).__name__}: {exc}") from exc
        if isinstance(value, Page):
            return value.to_json()
        return {"kind": "value", "value": value}

    # -- snapshots ----------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """The whole state as plain JSON-able data, in a canonical order."""
        return {
            "format": SNAPSHOT_FORMAT,
            "collections": {name: c.all() for name, c in self.collections.items()},
            "recent_requests": [[rid, result] for rid, result in self.recent.items()],
        }

    def restore(self, snapshot: dict[str, Any]) -> None:
        """Replace the state with ``snapshot``; raises ``ValueError`` if it is not one of ours."""
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"unknown snapshot format {snapshot.get('format')!r}")
        self._reset()
        for name, docs in snapshot["collections"].items():
            collection = self.collections.get(name)
            if collection is None:
                raise ValueError(f"snapshot holds collection {name!r} the app does not define")
            for doc in docs:
                collection.put(doc)
        for rid, result in snapshot["recent_requests"]:
            self.recent[rid] = result

    def document_count(self) -> dict[str, int]:
        return {name: len(c) for name, c in self.collections.items()}


def _finite(number: float) -> bool:
    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False
