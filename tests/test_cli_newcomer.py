"""What a newcomer and an operator meet first on the command line: one-line errors that name the thing
(an unknown model, a URL nothing answers at, an address this host does not own, an address used twice)
and help that says what each option is and its default. ``docraft`` runs as a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.ports import free_ports
from node.config import ConfigError, load_config
from tests.harness import write_cluster_file

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "examples" / "people" / "users.csv"


def docraft(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node.cli", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_load_of_an_unknown_model_is_one_line_listing_the_models() -> None:
    done = docraft("load", str(SAMPLE), "--model", "Users")
    assert done.returncode == 2
    assert done.stderr == "docraft load: no model 'Users' (this app has: Order, User)\n"


def test_load_to_a_url_nothing_answers_at_names_the_url_and_rejects_no_row() -> None:
    [port] = free_ports(1)
    url = f"http://127.0.0.1:{port}"
    done = docraft("load", str(SAMPLE), "--model", "User", "--url", url, timeout=30)
    assert done.returncode == 2
    assert done.stderr.startswith(f"docraft load: cannot reach the cluster at {url}: Connection refused")
    assert len(done.stderr.splitlines()) == 1 and "rejected" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (["up"], [r"--shards SHARDS\s+replica groups of a new cluster \(default 2\)", r"--replicas REPLICAS\s+\w"]),
        (["up"], [r"--log-format \{text,json\}\s+log lines \(and its processes'\)"]),
        (["node"], [r"--config CONFIG\s+the cluster file", r"--log-format \{text,json\}\s+log lines"]),
        (["dispatcher"], [r"--config CONFIG\s+the cluster file", r"--log-format \{text,json\}\s+log lines"]),
        (["load"], [r"--model MODEL\s+the app's model", r"--url URL\s+a dispatcher or replica URL \(default\s+http"]),
        (["repair"], [r"--config CONFIG\s+the cluster file"]),
    ],
)
def test_help_says_what_each_option_is_and_its_default(command: list[str], expected: list[str]) -> None:
    done = docraft(*command, "--help")
    assert done.returncode == 0
    for pattern in expected:
        assert re.search(pattern, done.stdout), done.stdout


def test_a_replica_on_a_host_that_does_not_own_its_address_says_so_in_one_line(tmp_path: Path) -> None:
    raft, dispatcher = free_ports(2)
    elsewhere = "192.0.2.1:8101"  # TEST-NET-1: no host of ours has it
    layout = [("s0", [("s0r0", f"127.0.0.1:{raft}", elsewhere, "s0r0")])]
    config = write_cluster_file(tmp_path, layout, f"127.0.0.1:{dispatcher}", {})
    done = docraft("node", "--config", str(config), "--replica", "s0r0")
    assert done.returncode == 1
    assert done.stderr == (
        f"docraft node s0r0: cannot listen on {elsewhere}, the replica s0r0 (shard s0) http address: this host "
        "does not own that address (Cannot assign requested address); run it on its own host\n"
    )


def test_an_address_used_twice_names_both_entries(tmp_path: Path) -> None:
    replicas = [
        ("s0r0", "127.0.0.1:7100", "127.0.0.1:8100", "s0r0"),
        ("s0r1", "127.0.0.1:7101", "127.0.0.1:8000", "s0r1"),
    ]
    layout = [("s0", replicas)]
    write_cluster_file(tmp_path, layout, "127.0.0.1:8000", {})
    with pytest.raises(ConfigError) as refused:
        load_config(tmp_path / "cluster.toml")
    assert (
        str(refused.value) == "address 127.0.0.1:8000 is used by two entries: replica s0r1 http and dispatcher d0 http"
    )
