"""The cluster configuration: one TOML file describing every process.

    secret = "..."                 # Raft password and signing key root; random (see node.cluster_secret)
    app = "examples.people"        # default app module

    [[shards]]
    id = "s0"
    slots = [[0, 8191]]            # inclusive ranges of the 16384 hash slots ([first, last] is one range;
                                   # [] for a new shard): the bootstrap map, the groups hold the live one
    [[shards.replicas]]
    id = "s0r0"
    raft = "127.0.0.1:7100"        # advertised: where the others reach it
    http = "127.0.0.1:8100"
    raft_listen = "0.0.0.0:7100"   # optional: where it binds, when not the advertised address (NAT, containers)
    http_listen = "0.0.0.0:8100"   # optional, likewise (dispatchers too)
    data_dir = "docraft-data/s0r0"  # relative paths are relative to this file

    [[dispatchers]]
    id = "d0"
    http = "127.0.0.1:8000"

    [raft]                          # optional; see consensus.raft_member.RaftTimings
    election_min = 0.4

    [integrity]                     # optional; see IntegrityConfig
    monitor_interval = 1.0

    [rebalance]                     # optional; see RebalanceConfig
    stall_after = 30.0

    [alerts]                        # optional
    webhooks = ["http://ops.example/hook"]

    [auth]                          # optional; see node.auth (absent: anonymous clients may do nothing)
    anonymous = ["read"]

    [tls]                           # optional; see node.tls (absent: plain HTTP)
    dir = "tls"

    [limits]                        # optional; see node.limits
    body_bytes = 4194304

    [http]                          # optional; see node.browsers
    hosts = ["db.example.com"]

``load_config`` validates everything and raises ``ConfigError`` with a
sentence that names the offending entry; nothing is checked by assert.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from consensus.raft_member import RaftTimings
from consensus.slots import SLOT_COUNT
from node.auth import AuthConfig, parse_auth
from node.browsers import HttpConfig, parse_http
from node.cluster_secret import secret_problem
from node.limits import Limits, parse_limits
from node.tls import CA_NAME, TlsConfig, parse_tls


class ConfigError(ValueError):
    """The cluster file is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ReplicaConfig:
    """A replica: ``raft`` and ``http`` are the addresses others reach it at, ``*_listen`` those it binds."""

    id: str
    shard: str
    raft: str
    http: str
    data_dir: Path
    raft_listen: str
    http_listen: str
    scheme: str = "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{self.http}"


SlotRange = tuple[int, int]


@dataclass(frozen=True)
class ShardConfig:
    """A replica group. ``slots`` are the inclusive slot ranges the file gives it, sorted: the map a new
    cluster starts from (the groups hold the live one, see ``node.cluster_view``); empty for a new shard."""

    id: str
    slots: tuple[SlotRange, ...]
    replicas: tuple[ReplicaConfig, ...]

    @property
    def slot_count(self) -> int:
        return sum(last - first + 1 for first, last in self.slots)


@dataclass(frozen=True)
class DispatcherConfig:
    id: str
    http: str
    http_listen: str
    scheme: str = "http"

    @property
    def http_url(self) -> str:
        return f"{self.scheme}://{self.http}"


@dataclass(frozen=True)
class IntegrityConfig:
    """Divergence and liveness detection: digests on replicas, the monitor in the dispatcher.

    ``digests`` off is for measuring their cost only: the monitor then has
    nothing to compare. A replica is ``replica_unreachable`` after
    ``unreachable_after`` seconds without an answer, and ``apply_stalled``
    when it has not applied an entry ``apply_stall_after`` seconds after
    reporting it committed. A shard is ``no_leader`` after ``no_leader_after``
    seconds in which no answering replica led it.
    """

    digests: bool = True
    checkpoint_interval: int = 50
    monitor_interval: float = 1.0
    unreachable_after: float = 3.0
    apply_stall_after: float = 5.0
    no_leader_after: float = 3.0


@dataclass(frozen=True)
class RebalanceConfig:
    """Moves between groups: a dispatcher resumes a move none of whose records changed for ``stall_after``
    seconds (its rebalancer died; ``node.move_janitor``)."""

    stall_after: float = 30.0


@dataclass(frozen=True)
class ClusterConfig:
    secret: str
    app: str
    shards: tuple[ShardConfig, ...]
    dispatchers: tuple[DispatcherConfig, ...]
    path: Path
    timings: RaftTimings = dataclasses.field(default_factory=RaftTimings)
    integrity: IntegrityConfig = dataclasses.field(default_factory=IntegrityConfig)
    webhooks: tuple[str, ...] = ()
    auth: AuthConfig = dataclasses.field(default_factory=AuthConfig)
    limits: Limits = dataclasses.field(default_factory=Limits)
    http: HttpConfig = dataclasses.field(default_factory=HttpConfig)
    tls: TlsConfig | None = None
    rebalance: RebalanceConfig = dataclasses.field(default_factory=RebalanceConfig)

    @property
    def ca(self) -> Path | None:
        """The CA file a client of this cluster verifies its servers against; ``None`` without ``[tls]``."""
        return self.tls.ca if self.tls is not None else None

    def replica(self, replica_id: str) -> ReplicaConfig:
        """The replica called ``replica_id``; raises ``ConfigError`` listing the known ones."""
        for shard in self.shards:
            for replica in shard.replicas:
                if replica.id == replica_id:
                    return replica
        known = ", ".join(r.id for s in self.shards for r in s.replicas)
        raise ConfigError(f"no replica {replica_id!r} in {self.path} (it has: {known})")

    def shard(self, shard_id: str) -> ShardConfig:
        for shard in self.shards:
            if shard.id == shard_id:
                return shard
        raise ConfigError(f"no shard {shard_id!r} in {self.path}")

    def dispatcher(self, dispatcher_id: str | None) -> DispatcherConfig:
        """The dispatcher called ``dispatcher_id``, or the first one when ``None``."""
        for dispatcher in self.dispatchers:
            if dispatcher_id in (None, dispatcher.id):
                return dispatcher
        raise ConfigError(f"no dispatcher {dispatcher_id!r} in {self.path}")


def _addresses(replica: ReplicaConfig) -> tuple[tuple[str, str], ...]:
    """The addresses others reach ``replica`` at, each with its key in the file."""
    return (("raft", replica.raft), ("http", replica.http))


def _address(value: Any, what: str) -> str:
    if not isinstance(value, str) or value.count(":") != 1:
        raise ConfigError(f"{what} must be a 'host:port' string, got {value!r}")
    host, port = value.split(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{what} must be a 'host:port' string, got {value!r}")
    return value


def _text(table: dict[str, Any], key: str, what: str) -> str:
    value = table.get(key)
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{what} needs a non-empty string {key!r}")
    return value


def _tables(table: dict[str, Any], key: str, what: str) -> list[dict[str, Any]]:
    """``table[key]`` as a list of tables (``[[key]]`` in TOML); missing means none."""
    value = table.get(key, [])
    if not isinstance(value, list) or not all(isinstance(item, dict) for item in value):
        raise ConfigError(f"{what}: {key} must be a list of tables ([[{key}]] in TOML)")
    return value


def parse_config(data: dict[str, Any], path: Path) -> ClusterConfig:
    """Validate parsed TOML; raises ``ConfigError``."""
    base = path.parent
    secret = _text(data, "secret", "the cluster")
    problem = secret_problem(secret)
    if problem is not None:
        raise ConfigError(f"the cluster secret {problem}")
    try:
        tls = parse_tls(data.get("tls"), base)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    scheme = "https" if tls is not None else "http"
    shards: list[ShardConfig] = []
    seen: set[str] = set()
    for i, table in enumerate(_tables(data, "shards", "the cluster")):
        shard_id = _text(table, "id", f"shards[{i}]")
        slots = _slot_ranges(table.get("slots"), shard_id)
        replicas = []
        for j, entry in enumerate(_tables(table, "replicas", f"shard {shard_id}")):
            what = f"shard {shard_id} replicas[{j}]"
            replica_id = _text(entry, "id", what)
            data_dir = Path(_text(entry, "data_dir", what))
            raft, http = _address(entry.get("raft"), f"{what} raft"), _address(entry.get("http"), f"{what} http")
            replicas.append(
                ReplicaConfig(
                    id=replica_id,
                    shard=shard_id,
                    raft=raft,
                    http=http,
                    data_dir=data_dir if data_dir.is_absolute() else base / data_dir,
                    raft_listen=_address(entry.get("raft_listen", raft), f"{what} raft_listen"),
                    http_listen=_address(entry.get("http_listen", http), f"{what} http_listen"),
                    scheme=scheme,
                )
            )
        if not replicas:
            raise ConfigError(f"shard {shard_id} lists no replicas")
        shards.append(ShardConfig(shard_id, slots, tuple(replicas)))
        for name in [shard_id, *(r.id for r in replicas)]:
            if name in seen:
                raise ConfigError(f"id {name!r} is used twice")
            seen.add(name)
    if not shards:
        raise ConfigError("the cluster lists no shards")
    _check_cover(shards)
    addresses = [(a, f"replica {r.id} {kind}") for s in shards for r in s.replicas for kind, a in _addresses(r)]
    dispatchers = tuple(
        _dispatcher(table, f"dispatchers[{i}]", scheme)
        for i, table in enumerate(_tables(data, "dispatchers", "the cluster"))
    )
    for dispatcher in dispatchers:
        if dispatcher.id in seen:
            raise ConfigError(f"id {dispatcher.id!r} is used twice")
        seen.add(dispatcher.id)
    addresses += [(d.http, f"dispatcher {d.id} http") for d in dispatchers]
    duplicated = sorted(a for a, _ in addresses if [b for b, _ in addresses].count(a) > 1)
    if duplicated:
        first, second = [entry for a, entry in addresses if a == duplicated[0]][:2]
        raise ConfigError(f"address {duplicated[0]} is used by two entries: {first} and {second}")
    if tls is not None and CA_NAME in seen:
        raise ConfigError(f"with [tls], no process may be called {CA_NAME!r}: its certificate would be the CA's")
    app = data.get("app", "examples.people")
    if not isinstance(app, str):
        raise ConfigError("app must be a module name")
    timings = _settings(data, "raft", RaftTimings)
    integrity = _settings(data, "integrity", IntegrityConfig)
    rebalance = _settings(data, "rebalance", RebalanceConfig)
    alerts = data.get("alerts", {})
    webhooks = alerts.get("webhooks", []) if isinstance(alerts, dict) else None
    if not isinstance(webhooks, list) or not all(isinstance(u, str) and u.startswith("http") for u in webhooks):
        raise ConfigError("[alerts] webhooks must be a list of http(s) URLs")
    try:
        auth = parse_auth(data.get("auth"), path)
        limits = parse_limits(data.get("limits"))
        http_config = parse_http(data.get("http"))
    except (OSError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    return ClusterConfig(
        secret,
        app,
        tuple(shards),
        dispatchers,
        path,
        timings,
        integrity,
        tuple(webhooks),
        auth,
        limits,
        http_config,
        tls=tls,
        rebalance=rebalance,
    )


def _slot_ranges(value: Any, shard_id: str) -> tuple[SlotRange, ...]:
    """A shard's ``slots``: ``[first, last]`` (one range), ``[[first, last], ...]`` or ``[]``; sorted."""

    def pair(item: Any) -> bool:
        return (
            isinstance(item, list)
            and len(item) == 2
            and all(isinstance(s, int) and not isinstance(s, bool) for s in item)
        )

    if pair(value):
        value = [value]
    if not isinstance(value, list) or not all(pair(item) for item in value):
        raise ConfigError(f"shard {shard_id} needs slots = [first, last], [[first, last], ...] or []")
    for first, last in value:
        if not 0 <= first <= last < SLOT_COUNT:
            raise ConfigError(
                f"shard {shard_id} has the slot range [{first}, {last}]: a range needs 0 <= first <= last <= "
                f"{SLOT_COUNT - 1}"
            )
    return tuple(sorted((first, last) for first, last in value))


def _check_cover(shards: list[ShardConfig]) -> None:
    """Raise ``ConfigError`` unless the shards' ranges are disjoint and together hold every slot."""
    expected = 0
    for first, last, shard_id in sorted((*span, s.id) for s in shards for span in s.slots):
        if first != expected:
            raise ConfigError(
                f"shard slots must cover 0..{SLOT_COUNT - 1} without gaps or overlaps; "
                f"shard {shard_id}'s range [{first}, {last}] starts at {first}, expected {expected}"
            )
        expected = last + 1
    if expected != SLOT_COUNT:
        raise ConfigError(f"shard slots end at {expected - 1}, they must reach {SLOT_COUNT - 1}")


def _dispatcher(table: dict[str, Any], what: str, scheme: str) -> DispatcherConfig:
    http = _address(table.get("http"), f"{what} http")
    listen = _address(table.get("http_listen", http), f"{what} http_listen")
    return DispatcherConfig(_text(table, "id", what), http, listen, scheme)


SettingsT = TypeVar("SettingsT")


def _settings(data: dict[str, Any], section: str, kind: Callable[..., SettingsT]) -> SettingsT:
    """The ``[section]`` table as a ``kind`` dataclass: known names, positive numbers or booleans."""
    table = data.get(section, {})
    if not isinstance(table, dict):
        raise ConfigError(f"[{section}] must be a table")
    known = {f.name: f.type for f in dataclasses.fields(kind)}  # type: ignore[arg-type]
    unknown = sorted(set(table) - set(known))
    if unknown:
        raise ConfigError(f"[{section}] has no setting {unknown[0]!r} (known: {', '.join(sorted(known))})")
    for name, value in table.items():
        if known[name] == "bool":
            if not isinstance(value, bool):
                raise ConfigError(f"[{section}] {name} must be true or false, got {value!r}")
        elif not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            raise ConfigError(f"[{section}] {name} must be a positive number, got {value!r}")
    try:
        return kind(**table)
    except ValueError as exc:
        raise ConfigError(f"[{section}]: {exc}") from None


def load_config(path: Path) -> ClusterConfig:
    """Read and validate the cluster file at ``path``; raises ``ConfigError``."""
    try:
        with open(path, "rb") as source:
            data = tomllib.load(source)
    except FileNotFoundError:
        raise ConfigError(f"no cluster file at {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from None
    return parse_config(data, path)


def render_config(
    secret: str,
    app: str,
    shards: list[tuple[str, list[tuple[str, str, str, str]]]],
    dispatchers: list[tuple[str, str]],
    sections: dict[str, dict[str, Any]] | None = None,
    slots: list[list[list[int]]] | None = None,
) -> str:
    """TOML text for a cluster; shards get ``slots`` (one list of ``[first, last]`` ranges per shard, in the
    order given), or by default equal slot ranges.

    ``shards`` is ``[(shard_id, [(replica_id, raft, http, data_dir), ...]), ...]``
    and ``dispatchers`` is ``[(dispatcher_id, http), ...]``.
    """
    lines = [f'secret = "{secret}"', f'app = "{app}"', ""]
    per_shard = SLOT_COUNT // len(shards)
    for i, (shard_id, replicas) in enumerate(shards):
        last = SLOT_COUNT - 1 if i == len(shards) - 1 else (i + 1) * per_shard - 1
        ranges = [[i * per_shard, last]] if slots is None else slots[i]
        lines += ["[[shards]]", f'id = "{shard_id}"', f"slots = {_toml(ranges)}", ""]
        for replica_id, raft_address, http, data_dir in replicas:
            lines += [
                "[[shards.replicas]]",
                f'id = "{replica_id}"',
                f'raft = "{raft_address}"',
                f'http = "{http}"',
                f'data_dir = "{data_dir}"',
                "",
            ]
    for dispatcher_id, http in dispatchers:
        lines += ["[[dispatchers]]", f'id = "{dispatcher_id}"', f'http = "{http}"', ""]
    for section, values in (sections or {}).items():
        lines += [f"[{section}]", *(f"{name} = {_toml(value)}" for name, value in values.items()), ""]
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(value)
