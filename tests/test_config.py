"""The cluster file (``parse_config``, ``load_config``, ``render_config``) and the slot map."""

from __future__ import annotations

import copy
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus.raft_member import RaftTimings
from node.cluster_secret import new_secret
from node.config import SLOT_COUNT, ConfigError, load_config, parse_config, render_config
from node.shard_map import ShardMap, slot_of

SECRET = new_secret()
ROOT = Path(__file__).resolve().parent.parent


def layout(shards: int = 2, replicas: int = 3) -> list[tuple[str, list[tuple[str, str, str, str]]]]:
    return [
        (
            f"s{s}",
            [
                (
                    f"s{s}r{r}",
                    f"127.0.0.1:{7100 + 10 * s + r}",
                    f"127.0.0.1:{8100 + 10 * s + r}",
                    f"data/s{s}r{r}",
                )
                for r in range(replicas)
            ],
        )
        for s in range(shards)
    ]


DISPATCHERS = [("d0", "127.0.0.1:8000"), ("d1", "127.0.0.1:8001")]


def valid_data(shards: int = 2, replicas: int = 3) -> dict[str, Any]:
    return tomllib.loads(render_config(SECRET, "examples.people", layout(shards, replicas), DISPATCHERS))


def parse(data: dict[str, Any], path: Path = Path("/etc/docraft/cluster.toml")) -> Any:
    return parse_config(data, path)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    return path


# -- valid files -------------------------------------------------------------------


@pytest.mark.parametrize(("shards", "replicas"), [(1, 1), (2, 3), (3, 2), (7, 1)])
def test_rendered_config_round_trips(tmp_path: Path, shards: int, replicas: int) -> None:
    raft: dict[str, Any] = {
        "election_min": 0.3,
        "election_max": 0.7,
        "leader_fallback": 1.0,
        "heartbeat": 0.05,
    }
    path = write(tmp_path, render_config(SECRET, "my.app", layout(shards, replicas), DISPATCHERS, {"raft": raft}))
    config = load_config(path)
    assert config.secret == SECRET
    assert config.app == "my.app"
    assert config.path == path
    assert config.timings == RaftTimings(**raft)
    assert [(d.id, d.http) for d in config.dispatchers] == DISPATCHERS
    rendered = [
        (shard.id, [(r.id, r.raft, r.http, str(r.data_dir.relative_to(tmp_path))) for r in shard.replicas])
        for shard in config.shards
    ]
    assert rendered == layout(shards, replicas)
    for shard in config.shards:
        assert all(r.shard == shard.id for r in shard.replicas)
    # each shard gets one range; they are contiguous, equal but for the last, and cover every slot once
    assert all(len(s.slots) == 1 for s in config.shards)
    assert config.shards[0].slots[0][0] == 0
    assert config.shards[-1].slots[-1][1] == SLOT_COUNT - 1
    for before, after in zip(config.shards, config.shards[1:], strict=False):
        assert after.slots[0][0] == before.slots[-1][1] + 1
    sizes = [s.slot_count for s in config.shards]
    assert all(size == SLOT_COUNT // shards for size in sizes[:-1])


def test_defaults() -> None:
    data = valid_data()
    del data["app"]
    config = parse(data)
    assert config.app == "examples.people"
    assert config.timings == RaftTimings()


def test_relative_data_dir_is_resolved_against_the_file_folder(tmp_path: Path) -> None:
    path = write(tmp_path, render_config(SECRET, "examples.people", layout(1, 1), DISPATCHERS))
    replica = load_config(path).replica("s0r0")
    assert replica.data_dir == tmp_path / "data" / "s0r0"
    assert replica.http_url == "http://127.0.0.1:8100"


def test_absolute_data_dir_is_kept(tmp_path: Path) -> None:
    data = valid_data(1, 1)
    data["shards"][0]["replicas"][0]["data_dir"] = str(tmp_path / "elsewhere")
    assert parse(data).replica("s0r0").data_dir == tmp_path / "elsewhere"


def test_lookups_by_id() -> None:
    config = parse(valid_data())
    assert config.replica("s1r2").raft == "127.0.0.1:7112"
    assert config.shard("s1").replicas[0].id == "s1r0"
    assert config.dispatcher(None).id == "d0"
    assert config.dispatcher("d1").http == "127.0.0.1:8001"
    with pytest.raises(ConfigError, match=r"no replica 's9r9' in .*cluster.toml \(it has: s0r0, s0r1"):
        config.replica("s9r9")
    with pytest.raises(ConfigError, match="no shard 's9'"):
        config.shard("s9")
    with pytest.raises(ConfigError, match="no dispatcher 'd9'"):
        config.dispatcher("d9")


# -- invalid files -----------------------------------------------------------------


def broken(change: Any) -> dict[str, Any]:
    data = copy.deepcopy(valid_data())
    change(data)
    return data


def set_secret(value: Any) -> Any:
    return lambda data: data.__setitem__("secret", value)


def set_slots(*ranges: list[Any]) -> Any:
    def change(data: dict[str, Any]) -> None:
        for shard, slots in zip(data["shards"], ranges, strict=True):
            shard["slots"] = slots

    return change


def set_replica(shard: int, replica: int, key: str, value: Any) -> Any:
    return lambda data: data["shards"][shard]["replicas"][replica].__setitem__(key, value)


def set_raft(**values: Any) -> Any:
    return lambda data: data.__setitem__("raft", values)


INVALID: list[tuple[str, Any, str]] = [
    ("no secret", lambda data: data.pop("secret"), "the cluster needs a non-empty string 'secret'"),
    ("empty secret", set_secret(""), "needs a non-empty string 'secret'"),
    ("secret not text", set_secret(1234567890123456789), "needs a non-empty string 'secret'"),
    ("short secret", set_secret("0f" * 15), "secret is 30 characters long, it needs at least 32"),
    ("gap", set_slots([0, 8000], [8002, 16383]), "shard s1's range \\[8002, 16383\\] starts at 8002, expected 8001"),
    (
        "overlap",
        set_slots([0, 8191], [8000, 16383]),
        "shard s1's range \\[8000, 16383\\] starts at 8000, expected 8192",
    ),
    ("not from zero", set_slots([1, 8191], [8192, 16383]), "shard s0's range \\[1, 8191\\] starts at 1, expected 0"),
    ("short", set_slots([0, 8191], [8192, 16000]), "slots end at 16000, they must reach 16383"),
    ("too far", set_slots([0, 8191], [8192, 16384]), "shard s1 has the slot range \\[8192, 16384\\]"),
    ("backwards", set_slots([0, 8191], [8192, 8000]), "a range needs 0 <= first <= last <= 16383"),
    ("slots not a pair", set_slots([0, 8191], [8192]), "shard s1 needs slots = \\[first, last\\]"),
    ("ranges overlap", set_slots([[0, 8191]], [[8192, 9000], [9000, 16383]]), "s1's range \\[9000, 16383\\] starts"),
    ("ranges leave a gap", set_slots([[0, 99], [200, 8191]], [[8192, 16383]]), "expected 100"),
    ("empty shards only", set_slots([], []), "slots end at -1, they must reach 16383"),
    ("range not a pair", set_slots([[0, 8191]], [[8192, 16383, 1]]), "shard s1 needs slots"),
    ("slots not ints", set_slots([0, 8191], ["8192", 16383]), "shard s1 needs slots"),
    ("no slots", lambda data: data["shards"][0].pop("slots"), "shard s0 needs slots"),
    ("no shards", lambda data: data.pop("shards"), "the cluster lists no shards"),
    ("no replicas", lambda data: data["shards"][1].pop("replicas"), "shard s1 lists no replicas"),
    (
        "shard without id",
        lambda data: data["shards"][1].pop("id"),
        "shards\\[1\\] needs a non-empty string 'id'",
    ),
    (
        "replica without id",
        set_replica(0, 1, "id", ""),
        "shard s0 replicas\\[1\\] needs a non-empty string 'id'",
    ),
    ("no data_dir", lambda data: data["shards"][0]["replicas"][0].pop("data_dir"), "'data_dir'"),
    ("duplicate replica id", set_replica(1, 0, "id", "s0r0"), "id 's0r0' is used twice"),
    ("replica id = shard id", set_replica(1, 0, "id", "s0"), "id 's0' is used twice"),
    ("duplicate shard id", lambda data: data["shards"][1].__setitem__("id", "s0"), "id 's0' is used twice"),
    ("same raft", set_replica(1, 0, "raft", "127.0.0.1:7100"), "address 127.0.0.1:7100 is used by two"),
    ("raft = http", set_replica(0, 0, "raft", "127.0.0.1:8100"), "address 127.0.0.1:8100 is used by two"),
    (
        "dispatcher on a replica port",
        lambda data: data["dispatchers"][1].__setitem__("http", "127.0.0.1:8112"),
        "address 127.0.0.1:8112 is used by two",
    ),
    ("bad app", lambda data: data.__setitem__("app", 3), "app must be a module name"),
    ("unknown raft setting", set_raft(election_minimum=0.5), "\\[raft\\] has no setting 'election_minimum'"),
    ("raft text", set_raft(heartbeat="fast"), "\\[raft\\] heartbeat must be a positive number, got 'fast'"),
    ("raft bool", set_raft(heartbeat=True), "heartbeat must be a positive number, got True"),
    ("raft zero", set_raft(election_min=0), "election_min must be a positive number"),
    ("raft negative", set_raft(leader_fallback=-1.0), "leader_fallback must be a positive number"),
    ("heartbeat too slow", set_raft(heartbeat=0.2), "\\[raft\\]: need 0 < 3 \\* heartbeat < election_min"),
    ("election window empty", set_raft(election_min=1.0, election_max=1.0), "election_min < election_max"),
    ("fallback too short", set_raft(leader_fallback=0.3), "leader_fallback must be longer than election_min"),
]


@pytest.mark.parametrize(("case", "change", "message"), INVALID, ids=[case for case, _, _ in INVALID])
def test_invalid_config_is_a_config_error(case: str, change: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(broken(change))


BAD_ADDRESSES = ["127.0.0.1", "127.0.0.1:", ":8100", "127.0.0.1:http", "127.0.0.1:0", "127.0.0.1:65536"]
BAD_ADDRESSES += ["::1:8100", "127.0.0.1:-5", "127.0.0.1: 80"]


@pytest.mark.parametrize("address", [*BAD_ADDRESSES, 8100, None])
@pytest.mark.parametrize("key", ["raft", "http"])
def test_bad_replica_address(address: Any, key: str) -> None:
    with pytest.raises(ConfigError, match=f"shard s1 replicas\\[2\\] {key} must be a 'host:port' string"):
        parse(broken(set_replica(1, 2, key, address)))


@pytest.mark.parametrize("address", BAD_ADDRESSES)
def test_bad_dispatcher_address(address: str) -> None:
    with pytest.raises(ConfigError, match=r"dispatchers\[1\] http must be a 'host:port' string, got"):
        parse(broken(lambda data: data["dispatchers"][1].__setitem__("http", address)))


@pytest.mark.parametrize("address", ["localhost:1", "10.0.0.7:65535", "node-3.example.org:8100"])
def test_good_addresses(address: str) -> None:
    assert parse(broken(set_replica(0, 0, "http", address))).replica("s0r0").http == address


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no cluster file at .*nowhere\.toml"):
        load_config(tmp_path / "nowhere.toml")


def test_invalid_toml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cluster\.toml is not valid TOML"):
        load_config(write(tmp_path, 'secret = "unterminated\n'))


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize(
    "change",
    [
        lambda data: data["dispatchers"][1].__setitem__("id", "d0"),
        lambda data: data["dispatchers"][1].__setitem__("id", "s1"),
        lambda data: data["dispatchers"][0].__setitem__("id", "s0r2"),
    ],
    ids=["two dispatchers", "dispatcher and shard", "dispatcher and replica"],
)
def test_duplicate_dispatcher_id_is_rejected(change: Any) -> None:
    with pytest.raises(ConfigError, match=r"id '(d0|s1|s0r2)' is used twice"):
        parse(broken(change))


def set_shard(shard: int, key: str, value: Any) -> Any:
    return lambda data: data["shards"][shard].__setitem__(key, value)


WRONG_TYPES: list[tuple[str, Any, str]] = [
    ("shards is text", lambda data: data.__setitem__("shards", "s0"), r"shards must be a list of tables"),
    ("shards is a table", lambda data: data.__setitem__("shards", {"id": "s0"}), r"shards must be a list"),
    ("a shard is text", lambda data: data["shards"].append("s9"), r"shards must be a list of tables"),
    ("replicas is text", set_shard(0, "replicas", "s0r0"), r"shard s0: replicas must be a list of tables"),
    ("a replica is a number", lambda data: data["shards"][1]["replicas"].append(7), r"shard s1: replicas"),
    ("replicas is a table", set_shard(0, "replicas", {"id": "x"}), r"shard s0: replicas must be a list"),
    (
        "dispatchers is text",
        lambda data: data.__setitem__("dispatchers", "d0"),
        r"dispatchers must be a list",
    ),
    ("a dispatcher is text", lambda data: data["dispatchers"].append("d2"), r"dispatchers must be a list"),
    ("raft is text", lambda data: data.__setitem__("raft", "fast"), r"\[raft\] must be a table"),
    (
        "raft is a list",
        lambda data: data.__setitem__("raft", [{"heartbeat": 0.1}]),
        r"\[raft\] must be a table",
    ),
]


@pytest.mark.parametrize(("case", "change", "message"), WRONG_TYPES, ids=[case for case, _, _ in WRONG_TYPES])
def test_entries_of_the_wrong_type_are_config_errors(case: str, change: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse(broken(change))


def test_dispatchers_and_raft_may_be_left_out() -> None:
    data = valid_data()
    del data["dispatchers"]
    assert "raft" not in data
    config = parse(data)
    assert config.dispatchers == ()
    assert config.timings == RaftTimings()


# -- shard map -----------------------------------------------------------------------


@pytest.mark.parametrize("shards", [1, 2, 3, 5])
def test_every_slot_belongs_to_exactly_one_shard(shards: int) -> None:
    config = parse(valid_data(shards, 1))
    shard_map = ShardMap(config)
    for slot in range(SLOT_COUNT):
        owners = [s.id for s in config.shards if any(first <= slot <= last for first, last in s.slots)]
        assert len(owners) == 1
        assert shard_map.shard_for_slot(slot).id == owners[0]


def test_a_shard_may_hold_several_ranges_or_none() -> None:
    """A file written after moves lists several ranges per shard, and a new shard ``slots = []``."""
    data = valid_data(3, 1)
    set_slots([[0, 99], [8192, 16383]], [[100, 8191]], [])(data)
    config = parse(data)
    assert [s.slots for s in config.shards] == [((0, 99), (8192, 16383)), ((100, 8191),), ()]
    assert [s.slot_count for s in config.shards] == [8292, 8092, 0]
    shard_map = ShardMap(config)
    assert [shard_map.shard_for_slot(slot).id for slot in (0, 99, 100, 8191, 8192, SLOT_COUNT - 1)] == [
        "s0", "s0", "s1", "s1", "s0", "s0",
    ]  # fmt: skip


def test_the_old_single_range_form_is_read_as_one_range() -> None:
    data = valid_data(2, 1)
    set_slots([0, 8191], [8192, 16383])(data)
    assert [s.slots for s in parse(data).shards] == [((0, 8191),), ((8192, 16383),)]


def test_shard_map_does_not_depend_on_file_order() -> None:
    data = valid_data(3, 1)
    data["shards"].reverse()
    config = parse(data)
    assert [s.id for s in config.shards] == ["s2", "s1", "s0"]
    shard_map = ShardMap(config)
    assert shard_map.shard_for_slot(0).id == "s0"
    assert shard_map.shard_for_slot(SLOT_COUNT - 1).id == "s2"


KEYS = st.integers() | st.text(max_size=20) | st.none() | st.booleans()


@settings(max_examples=150, deadline=None)
@given(key=KEYS)
def test_slot_of_is_a_stable_slot(key: Any) -> None:
    slot = slot_of(key)
    assert 0 <= slot < SLOT_COUNT
    assert slot_of(key) == slot
    shard = ShardMap(parse(valid_data(3, 1))).shard_for_key(key)
    assert any(first <= slot <= last for first, last in shard.slots)


def test_slot_of_is_the_same_in_another_process() -> None:
    """Every router must agree: the slot may not depend on hash randomisation or process state."""
    keys: list[Any] = [0, 5, "5", "alice", -17, None, 12345678901234]
    code = f"from node.shard_map import slot_of; print([slot_of(k) for k in {keys!r}])"
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env={"PYTHONHASHSEED": "12345", "PATH": ""},
    )
    assert out.stdout.strip() == str([slot_of(k) for k in keys])


def test_int_and_text_keys_are_different_keys() -> None:
    # the slot is taken from the key's JSON text, so 5 and "5" need not share a slot
    pairs = [(slot_of(i), slot_of(str(i))) for i in range(100)]
    assert any(a != b for a, b in pairs)


def test_keys_spread_over_every_shard() -> None:
    shard_map = ShardMap(parse(valid_data(3, 1)))
    counts = {"s0": 0, "s1": 0, "s2": 0}
    for key in range(3000):
        counts[shard_map.shard_for_key(key).id] += 1
    assert all(count > 500 for count in counts.values()), counts
