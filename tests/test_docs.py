"""The README documents every route (with its audience and permission), error code, CLI command and setting."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

from consensus.raft_member import RaftTimings
from models.errors import ERROR_CLASSES
from node.cli import parser
from node.config import IntegrityConfig
from node.routes import ROUTES, markdown_table

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_every_error_code_is_documented_with_its_status() -> None:
    for code, cls in ERROR_CLASSES.items():
        assert re.search(rf"\|\s*{cls.status}\s*\|\s*`{code}`", README), f"{code} ({cls.status}) undocumented"


def test_every_raft_setting_is_documented() -> None:
    for setting in dataclasses.fields(RaftTimings):
        assert f"{setting.name} =" in README, f"[raft] {setting.name} undocumented"


def test_every_integrity_setting_is_documented() -> None:
    for setting in dataclasses.fields(IntegrityConfig):
        assert f"{setting.name} =" in README, f"[integrity] {setting.name} undocumented"


def test_every_cli_command_is_documented() -> None:

    commands = parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for name in commands:
        assert f"docraft {name}" in README, f"docraft {name} undocumented"


def http_api_table() -> str:
    """The first table under README's "## HTTP API" heading, as text."""
    section = README[README.index("## HTTP API\n") :]
    lines = section[section.index("\n| route |") + 1 :].splitlines()
    return "".join(f"{line}\n" for line in itertools.takewhile(lambda line: line.startswith("|"), lines))


def test_the_http_api_table_is_the_route_table() -> None:
    """Every route, its servers, audience and permission, as node/routes.py declares them (python -m node.routes)."""
    documented = http_api_table()
    for route in ROUTES:
        assert f"| `{'/'.join(route.methods)} {route.path}` |" in documented, f"{route.path} undocumented"
    assert documented == markdown_table(), "README's HTTP API table differs from `python -m node.routes`"
