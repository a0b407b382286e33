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
    {"type": "set_fingerprint", "fingerprint": F, "initial": bool}

``apply`` returns ``{"ok": value}`` or ``{"error": {...}}`` (the one error
shape). A command whose ``request_id`` was applied before returns the first
result again without changing anything, so a retried write is applied once.

Integrity: ``digest()`` combines a running hash of every applied command and
its result with a hash of the current contents; ``checkpoints`` records the
digest at every ``checkpoint_interval``-th log index. Replicas fed the same
log have equal digests at equal indexes, so comparing them finds a replica
whose state changed outside the log. The cluster's code fingerprint is part of
the state: a machine whose local fingerprint differs applies nothing but
``set_fingerprint`` and answers ``code_mismatch``.
"""

from __future__ import annotations

import hashlib
import math
from collections import OrderedDict, deque
from typing import Any

import ujson

from models.errors import (
    BadRequest,
    CodeMismatch,
    DocraftError,
    EndpointFailed,
    MigrationPending,
    MigrationRefused,
    NotFound,
    ValidationError,
)
from models.migrations import steps_between
from models.model import Model
from query.app import App
from query.collection import HASH_MODULUS, Collection
from query.ordering import value_key
from query.planner import Page
from query.views import ReadView, WriteView

Result = dict[str, Any]

SNAPSHOT_FORMAT = 2
CHECKPOINTS_KEPT = 64


class StateMachine:
    """Collections of one shard plus the memory of recent request ids.

    Not thread-safe: the replica calls ``apply`` from the Raft thread only and
    reads run on the same thread or between applies.
    """

    def __init__(
        self,
        app: App,
        remembered_requests: int = 100_000,
        local_fingerprint: str | None = None,
        checkpoint_interval: int = 50,
        digests: bool = True,
    ) -> None:
        self.app = app
        self.remembered_requests = remembered_requests
        self.local_fingerprint = local_fingerprint
        self.checkpoint_interval = checkpoint_interval
        self.digests = digests
        self.collections: dict[str, Collection] = {}
        self.recent: OrderedDict[str, Result] = OrderedDict()
        self._reset()

    def _reset(self) -> None:
        self.collections = {name: Collection(model) for name, model in sorted(self.app.models.items())}
        self.recent = OrderedDict()
        self.log_hash = bytes(16)
        self.applied_index = 0
        self.next_checkpoint = self.checkpoint_interval
        self.checkpoints: deque[tuple[int, str]] = deque(maxlen=CHECKPOINTS_KEPT)
        self.fingerprint: str | None = None
        # The model version each collection's documents were written with; a
        # migration rewrites a whole collection in one command, so one per collection.
        self.versions = {name: model.version for name, model in sorted(self.app.models.items())}

    @property
    def code_ok(self) -> bool:
        """False when the cluster's recorded code fingerprint is not this process's."""
        return self.fingerprint is None or self.local_fingerprint in (None, self.fingerprint)

    def collection(self, model: type[Model]) -> Collection:
        return self.collections[model.name]

    # -- writes -------------------------------------------------------------

    def apply(self, command: Any, index: int | None = None, raw: bytes | None = None) -> Result:
        """Apply one committed command and return its result; never raises for bad input.

        ``index`` is the command's Raft log index (checkpoints are kept by
        index); ``raw`` is the log entry's bytes when the caller has them, so
        the digest folds them instead of encoding the command again. Results
        hold nothing process-specific (no reprs, addresses or hash orders), and
        are built in a fixed key order, so every replica encodes the same bytes.
        """
        if index is not None:
            self._checkpoint_before(index)
        result = self._apply(command)
        if self.digests:
            entry = raw if raw is not None else ujson.dumps(command, sort_keys=True).encode()
            encoded = ujson.dumps(result, escape_forward_slashes=False).encode()
            self.log_hash = hashlib.blake2b(self.log_hash + entry + encoded, digest_size=16).digest()
        if index is not None:
            self.applied_index = index
        return result

    def _checkpoint_before(self, index: int) -> None:
        if self.next_checkpoint >= index:
            return
        digest = self.digest()
        while self.next_checkpoint < index:
            self.checkpoints.append((self.next_checkpoint, digest))
            self.next_checkpoint += self.checkpoint_interval

    def digest(self) -> str:
        """Hex digest of everything applied so far and of the current contents."""
        contents = sum(c.content_hash for c in self.collections.values()) % HASH_MODULUS
        return hashlib.blake2b(self.log_hash + contents.to_bytes(16, "big"), digest_size=16).hexdigest()

    def integrity(self) -> dict[str, Any]:
        """What the integrity monitor compares: current digest, checkpoints, code fingerprints."""
        return {
            "applied_index": self.applied_index,
            "digest": self.digest(),
            "checkpoints": [list(c) for c in self.checkpoints],
            "fingerprint": {"cluster": self.fingerprint, "local": self.local_fingerprint, "ok": self.code_ok},
        }

    def _apply(self, command: Any) -> Result:
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
        if kind == "set_fingerprint":
            return self._set_fingerprint(command)
        if kind not in ("noop", "batch") and not self.code_ok:
            return CodeMismatch(
                "this replica runs app code other than the cluster's; it applies nothing until fixed",
                cluster=self.fingerprint,
                local=self.local_fingerprint,
            ).to_json()
        if kind in ("mutation", "insert_batch") and (pending := self._pending_migration()):
            return pending.to_json()
        if kind == "migrate":
            return self._migrate(command)
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
        if not isinstance(commands, list) or any(c.get("type") == "batch" for c in commands if isinstance(c, dict)):
            return BadRequest("a batch holds a list of commands, none of them a batch").to_json()
        return {"ok": [self._apply(c) for c in commands]}

    # -- migrations -----------------------------------------------------------

    def _pending_migration(self) -> MigrationPending | None:
        behind = [name for name, model in self.app.models.items() if self.versions.get(name) != model.version]
        if not behind:
            return None
        name = sorted(behind)[0]
        return MigrationPending(
            f"{name} documents here are version {self.versions.get(name)}, the code's are version "
            f"{self.app.models[name].version}: run docraft migrate",
            model=name,
        )

    def migration_plan(self, model_name: str, target: int, most: int = 50) -> Result:
        """What migrating ``model_name`` to ``target`` would do here, changing nothing.

        ``{"model", "from", "to", "documents", "failures": [{"key", "error"}]}``;
        raises ``BadRequest`` when the code does not define version ``target``.
        """
        plan, _ = self._plan(model_name, target, most)
        return plan

    def _plan(self, model_name: str, target: int, most: int = 50) -> tuple[Result, list[dict[str, Any]]]:
        """The migration plan and the documents as they would be after it."""
        model = self.app.model(model_name)
        if target != model.version:
            raise BadRequest(f"the running code defines {model_name} version {model.version}, not {target}")
        stored = self.versions.get(model.name, 1)
        if stored > target:
            raise BadRequest(f"{model_name} documents are already version {stored}; downgrades are not supported")
        migrated, failures = self._migrated_documents(model, stored, target)
        plan = {
            "model": model.name,
            "from": stored,
            "to": target,
            "documents": len(migrated) if stored != target else 0,
            "failures": failures[:most],
            "failure_count": len(failures),
        }
        return plan, migrated

    def _migrated_documents(
        self, model: type[Model], stored: int, target: int
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        steps = steps_between(model.migrations, stored, target)
        migrated, failures = [], []
        for doc in self.collections[model.name].all():
            key = doc.get(model.primary_key)
            try:
                new = doc
                for step in steps:
                    new = step.apply(new)
                migrated.append(model.validate(new))
            except DocraftError as exc:
                failures.append({"key": key, "error": exc.message})
            except (ValueError, TypeError, KeyError) as exc:
                failures.append({"key": key, "error": f"{type(exc).__name__} in a migration step"})
        return migrated, failures

    def _migrate(self, command: dict[str, Any]) -> Result:
        """Rewrite every document of a model to the code's version in this one command, or none."""
        try:
            plan, migrated = self._plan(str(command.get("model")), int(command.get("to", 0)))
        except DocraftError as exc:
            return exc.to_json()
        except (TypeError, ValueError):
            return BadRequest("migrate needs a model name and an integer version").to_json()
        if plan["failure_count"]:
            return MigrationRefused(
                f"{plan['failure_count']} {plan['model']} documents would fail validation", **plan
            ).to_json()
        model = self.app.model(plan["model"])
        if plan["from"] != plan["to"]:
            collection = self.collections[model.name]
            for doc in migrated:
                collection.put(doc)
            self.versions[model.name] = plan["to"]
        return {"ok": {"model": model.name, "from": plan["from"], "to": plan["to"], "documents": plan["documents"]}}

    def _set_fingerprint(self, command: dict[str, Any]) -> Result:
        """Record the cluster's code fingerprint; ``initial`` ones never replace a recorded one."""
        fingerprint = command.get("fingerprint")
        if not isinstance(fingerprint, str) or not fingerprint:
            return BadRequest("set_fingerprint needs a fingerprint string").to_json()
        if not (command.get("initial") and self.fingerprint is not None):
            self.fingerprint = fingerprint
        return {"ok": self.fingerprint}

    def corrupt(self, collection: str, key: Any, fields: dict[str, Any]) -> dict[str, Any]:
        """Fault injection for tests: change a document outside the log. Raises ``NotFound``."""
        model = self.app.model(collection)
        store = self.collections[model.name]
        current = store.get(key)
        if current is None:
            raise NotFound(f"no {collection} with key {key!r} on this replica", key=key)
        changed = {**current, **fields}
        store.put(changed)
        return changed

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

    def lookup(self, model_name: str, field: str, values: Any) -> Result:
        """Documents of ``model_name`` whose ``field`` is one of ``values``, in primary-key order.

        Used to include related documents. Raises ``NotFound``/``BadRequest``.
        """
        if pending := self._pending_migration():
            raise pending
        model = self.app.model(model_name)
        if field not in model.fields or not isinstance(values, list):
            raise BadRequest(f"lookup needs a field of {model_name} and a list of values", field=field)
        collection = self.collections[model.name]
        wanted = {ujson.dumps(v) for v in values}
        if field == model.primary_key:
            found = [d for d in (collection.get(v) for v in values) if d is not None]
        elif field in model.indexes:
            found = [d for v in values for d in collection.scan_index(field, value_key(v), value_key(v))]
        else:
            found = [d for d in collection.all() if wanted & {ujson.dumps(v) for v in _as_list(d.get(field))}]

        unique = {ujson.dumps(d[model.primary_key]): d for d in found}
        return {"kind": "docs", "items": sorted(unique.values(), key=lambda d: value_key(d[model.primary_key]))}

    def query(self, endpoint_name: str, args: dict[str, Any], explain: bool = False) -> Result:
        """Run a query endpoint on the local state; returns a page or a value as JSON."""
        if pending := self._pending_migration():
            raise pending
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
            "integrity": {
                "log_hash": self.log_hash.hex(),
                "applied_index": self.applied_index,
                "next_checkpoint": self.next_checkpoint,
                "checkpoints": [list(c) for c in self.checkpoints],
                "fingerprint": self.fingerprint,
            },
            "versions": dict(self.versions),
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
        integrity = snapshot["integrity"]
        self.log_hash = bytes.fromhex(integrity["log_hash"])
        self.applied_index = integrity["applied_index"]
        self.next_checkpoint = integrity["next_checkpoint"]
        self.checkpoints.extend((index, digest) for index, digest in integrity["checkpoints"])
        self.fingerprint = integrity["fingerprint"]
        self.versions.update(snapshot.get("versions", {}))

    def document_count(self) -> dict[str, int]:
        return {name: len(c) for name, c in self.collections.items()}


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _finite(number: float) -> bool:

    try:
        return math.isfinite(float(number))
    except OverflowError:
        return False
