"""The README documents every route, error code, CLI command and [raft] setting."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from consensus.raft_member import RaftTimings
from models.errors import ERROR_CLASSES
from node.cli import parser
from node.config import IntegrityConfig

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


def test_every_route_is_documented() -> None:
    routes = (
        "/_bulk/",
        "/_admin/cluster",
        "/_shard/write",
        "/_shard/read",
        "/_shard/status",
        "/_admin/alerts",
    )
    routes += ("/_admin/fingerprint", "/_admin/digest", "/_admin/repair", "/_admin/fault/corrupt")
    for route in routes:
        assert route in README, f"{route} undocumented"
