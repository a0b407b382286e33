"""The generated TypeScript client's per-call ``timeoutMs``: one call gives up sooner than the client's own
timeout, against a server that never answers. Compiled with tsc and run with node (``test_schema``'s)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from query.schema.typescript import typescript
from tests.test_schema import (  # noqa: F401  (fixtures)
    HANG,
    MARY_INSERTED,
    PEOPLE,
    client_program,
    compile_program,
    run_calls,
    scripted,
    tsc,
)

SLOW_CLIENT = {"timeoutMs": 5000, "retries": 0}


def test_a_call_of_its_own_timeout_gives_up_sooner_than_the_client(
    client_program: Path,  # noqa: F811
    scripted: Any,  # noqa: F811
) -> None:
    server = scripted([HANG, MARY_INSERTED])
    [outcome] = run_calls(client_program, server, SLOW_CLIENT, {"method": "insert_user", "options": {"timeoutMs": 300}})
    assert outcome["error"]["code"] == "timeout"
    assert 250 <= outcome["ms"] < 2000, "the call's 300 ms, not the client's 5000"


def test_the_call_timeout_is_typed_on_every_method(tsc: Path, tmp_path: Path) -> None:  # noqa: F811
    good = """
import { DocraftClient } from "./docraft.js";
const db = new DocraftClient("http://127.0.0.1:8000");
void db.get_user({ id: 1 }, { timeoutMs: 500, consistency: "linearizable" });
void db.insert_user({ id: 1, first_name: "M", last_name: "S", country: "AU" }, { timeoutMs: 500 });
"""
    bad = """
import { DocraftClient } from "./docraft.js";
void new DocraftClient("http://127.0.0.1:8000").get_user({ id: 1 }, { timeoutMs: "soon" });
"""
    code, output = compile_program(tsc, tmp_path, {"docraft.ts": typescript(PEOPLE), "good.ts": good})
    assert code == 0, output
    code, output = compile_program(tsc, tmp_path, {"docraft.ts": typescript(PEOPLE), "bad.ts": bad})
    assert code != 0 and "bad.ts(3,71): error TS2322" in output, output  # the string given as timeoutMs


def test_the_readme_example_compiles_as_es2020_and_says_how_to_run_it(tsc: Path, tmp_path: Path) -> None:  # noqa: F811
    """No top-level ``await`` (which needs ``--module es2022``); the README names what Node needs."""
    readme = (Path(__file__).parent.parent / "README.md").read_text(encoding="utf-8")
    examples = re.findall(r"```ts\n(.*?)```", readme, re.DOTALL)
    files = {"docraft.ts": typescript(PEOPLE), **{f"readme{i}.ts": text for i, text in enumerate(examples)}}
    code, output = compile_program(tsc, tmp_path, files, "--module", "es2020")
    assert code == 0, output
    said = " ".join(readme.split())
    assert '`{"type": "module"}` in the `package.json`' in said and "@types/node" in said
