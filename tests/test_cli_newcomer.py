"""What a newcomer and an operator meet first on the command line: one-line errors that name the thing
(an unknown model, a URL nothing answers at, an address this host does not own, an address used twice)
and help that says what each option is and its default. ``docraft`` runs as a subprocess."""

from __future__ import annotations

import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import ujson

from bench.ports import free_ports
from models.errors import Unauthorized
from node.cluster_secret import new_secret
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


class _Answer(BaseHTTPRequestHandler):
    """Answers every request with its server's ``answer``: (status, content type, body); logs nothing."""

    server: AnsweringServer

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers["Content-Length"]))
        status, content_type, body = self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        """Silent."""


class AnsweringServer(ThreadingHTTPServer):
    """A stub server on loopback that answers every POST alike, in a thread of its own."""

    def __init__(self, answer: tuple[int, str, bytes]) -> None:
        super().__init__(("127.0.0.1", 0), _Answer)
        self.answer = answer
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()


@pytest.fixture
def answering() -> Iterator[type[AnsweringServer]]:
    """Starts stub servers (``answering(answer)``); each is shut down at teardown."""
    started: list[AnsweringServer] = []

    def start(answer: tuple[int, str, bytes]) -> AnsweringServer:
        started.append(AnsweringServer(answer))
        return started[-1]

    yield start  # type: ignore[misc]
    for server in started:
        server.shutdown()
        server.server_close()
        server.thread.join(timeout=10)


def test_load_to_a_url_without_its_scheme_is_one_line() -> None:
    done = docraft("load", str(SAMPLE), "--model", "User", "--url", "127.0.0.1:8000")
    assert done.returncode == 2
    assert done.stderr == "docraft load: --url must look like http(s)://host:port, got '127.0.0.1:8000'\n"


def test_load_of_a_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    latin = tmp_path / "users.csv"
    latin.write_bytes(b"id,first_name,last_name,country\n1,Ren\xe9,B,Chile\n")
    done = docraft("load", str(latin), "--model", "User", "--url", "http://127.0.0.1:8000")
    assert done.returncode == 2
    assert done.stderr == f"docraft load: {latin} is not UTF-8 text (invalid continuation byte on line 2)\n"


def test_load_refused_for_its_token_stops_in_one_line_naming_the_url(answering: type[AnsweringServer]) -> None:
    refusal = Unauthorized("this needs the permission bulk, which anonymous clients do not have")
    server = answering((401, "application/json", ujson.dumps(refusal.to_json()).encode()))
    done = docraft("load", str(SAMPLE), "--model", "User", "--url", server.url)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"docraft load: {server.url} refused the load: this needs the permission bulk, which anonymous clients do "
        "not have (--token-file FILE sends one)"
    )
    assert "rejected" not in done.stdout + done.stderr


def test_load_to_a_server_that_is_not_docraft_stops_in_one_line(answering: type[AnsweringServer]) -> None:
    server = answering((404, "text/html", b"<html>Not Found</html>"))
    done = docraft("load", str(SAMPLE), "--model", "User", "--url", server.url)
    assert done.returncode == 2
    assert done.stderr.splitlines()[-1] == (
        f"docraft load: {server.url} answered HTTP 404 without docraft's JSON: is it a dispatcher?"
    )
    assert "rejected" not in done.stdout + done.stderr


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


def test_the_readmes_cluster_file_is_valid_as_written(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Running a cluster across hosts") :]
    example = section[section.index("```toml\n") + len("```toml\n") : section.index("```\n", section.index("```toml"))]
    (tmp_path / "cluster.toml").write_text(example.replace('"9f2c…"', f'"{new_secret()}"'), encoding="utf-8")
    config = load_config(tmp_path / "cluster.toml")
    assert [shard.id for shard in config.shards] == ["s0", "s1"]


def test_the_readmes_load_synopsis_shows_the_defaults_load_has() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    synopsis = re.search(r"^docraft load users\.csv .*$", readme, re.MULTILINE)
    assert synopsis is not None
    shown = dict(re.findall(r"\[(--[a-z-]+) ([^\]]+)\]", synopsis.group(0)))
    defaults = docraft("load", "--help").stdout
    assert re.search(rf"--url URL\s+.*\(default\s+{re.escape(shown['--url'])}\)", defaults), defaults
    assert re.search(rf"--batch-size BATCH_SIZE\s+.*\(default\s+{shown['--batch-size']};", defaults), defaults


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
