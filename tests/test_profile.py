"""The pure parts of ``bench.profile``: collapsed-stack parsing, aggregation by function, thread and category,
the flame graph, and the tool commands."""

from __future__ import annotations

import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from bench.collapsed import (
    NO_THREAD,
    OTHER,
    Rule,
    category_of,
    format_profile,
    function_of,
    parse_collapsed,
    split_thread,
    summarise,
)
from bench.flamegraph import call_tree, render
from bench.profile import CATEGORIES, record_command, run_all, strace_command

LOOP = "thread (0x10): MainThread"
TICK = "thread (0x20): Thread-1 (_autoTickThread)"
RUN = "IOLoop.start (tornado/platform/asyncio.py:205)"
HANDLE = "RequestHandler._execute (tornado/web.py:1800)"
DUMPS = "encode (node/codec.py:12)"
LOG = "Logger.info (logging/__init__.py:1489)"
TICK_LOOP = "SyncObj._autoTickThread (pysyncobj/syncobj.py:580)"

SAMPLE = f"""
{LOOP};{RUN};{HANDLE};{DUMPS} 5
{LOOP};{RUN};{HANDLE.replace("1800", "1811")} 3
{LOOP};{RUN};{HANDLE};{LOG} 2
{TICK};{TICK_LOOP} 10
"""


def test_parse_collapsed_splits_frames_and_counts_and_skips_blank_lines() -> None:
    stacks = parse_collapsed(SAMPLE)
    assert len(stacks) == 4
    assert stacks[0] == ((LOOP, RUN, HANDLE, DUMPS), 5)
    assert stacks[3] == ((TICK, TICK_LOOP), 10)


def test_parse_collapsed_keeps_spaces_inside_frames() -> None:
    [(stack, count)] = parse_collapsed("<module> (<string>:6);a b (x.py:1) 7\n")
    assert stack == ("<module> (<string>:6)", "a b (x.py:1)")
    assert count == 7


@pytest.mark.parametrize("line", ["a;b", "a;b x", "a;b 0", "42", "a;b -3"])
def test_parse_collapsed_rejects_a_line_without_a_positive_count(line: str) -> None:
    with pytest.raises(ValueError, match="line 2"):
        parse_collapsed(f"a;b 1\n{line}\n")


def test_function_of_drops_the_line_number_only() -> None:
    assert function_of("RequestHandler._execute (tornado/web.py:1800)") == "RequestHandler._execute (tornado/web.py)"
    assert function_of("<module> (<string>:6)") == "<module> (<string>)"
    assert function_of("no file here") == "no file here"


def test_split_thread_names_threads_by_name_else_by_id() -> None:
    assert split_thread((TICK, TICK_LOOP)) == ("Thread-1 (_autoTickThread)", (TICK_LOOP,))
    assert split_thread(("thread (0x30)", RUN)) == ("0x30", (RUN,))
    assert split_thread((RUN, HANDLE)) == (NO_THREAD, (RUN, HANDLE))


def test_category_is_the_innermost_frame_a_rule_claims() -> None:
    rules = [Rule("http", ("tornado/web.py",)), Rule("loop", ("tornado/",)), Rule("json", ("node/codec.py",))]
    assert category_of((RUN, HANDLE, DUMPS), rules) == "json"
    assert category_of((RUN, HANDLE), rules) == "http"  # the first matching rule wins for one frame
    assert category_of((RUN,), rules) == "loop"
    assert category_of(("main (app.py:1)",), rules) == OTHER


def test_a_rule_with_functions_claims_only_those_functions() -> None:
    rule = Rule("json", ("node/codec.py",), frozenset({"encode"}))
    assert category_of((RUN, DUMPS), [rule]) == "json"
    assert category_of((RUN, "decode (node/codec.py:30)"), [rule]) == OTHER


def test_summarise_counts_self_at_the_leaf_and_inclusive_once_per_stack() -> None:
    recursive = f"{LOOP};{RUN};f (a.py:1);f (a.py:2);f (a.py:1) 4\n"
    profile = summarise(parse_collapsed(SAMPLE + recursive), [Rule("json", ("node/codec.py",))])
    assert profile.samples == 24
    handler = "RequestHandler._execute (tornado/web.py)"
    assert profile.self_samples[handler] == 3  # two line numbers, one function
    assert profile.inclusive[handler] == 10
    assert profile.inclusive["IOLoop.start (tornado/platform/asyncio.py)"] == 14
    assert profile.self_samples["f (a.py)"] == 4
    assert profile.inclusive["f (a.py)"] == 4  # recursion does not count a sample twice
    assert profile.threads == {"MainThread": 14, "Thread-1 (_autoTickThread)": 10}
    assert profile.categories == {"json": 5, OTHER: 19}
    assert sum(profile.self_samples.values()) == profile.samples


def test_summary_json_ranks_the_top_functions_with_their_shares() -> None:
    facts = summarise(parse_collapsed(SAMPLE)).as_json(top=2)
    assert [row["name"] for row in facts["top_self"]] == [
        "SyncObj._autoTickThread (pysyncobj/syncobj.py)",
        "encode (node/codec.py)",
    ]
    assert facts["top_self"][0]["share"] == 0.5
    assert len(facts["top_inclusive"]) == 2
    assert {"name": "Thread-1 (_autoTickThread)", "samples": 10, "share": 0.5} in facts["threads"]


def test_format_profile_prints_every_table_with_shares() -> None:
    text = format_profile("leader s0r1", summarise(parse_collapsed(SAMPLE), CATEGORIES), top=3)
    assert text.startswith("== leader s0r1: 20 samples")
    assert "top 3 by self samples" in text
    assert " 50.0%       10  SyncObj._autoTickThread (pysyncobj/syncobj.py)" in text
    assert "logging" in text


def test_docraft_categories_put_logging_pysyncobj_and_tornado_where_the_report_reads_them() -> None:
    assert category_of((RUN, HANDLE, LOG), CATEGORIES) == "logging"
    assert category_of((TICK_LOOP,), CATEGORIES).startswith("PySyncObj")
    assert category_of((RUN, HANDLE), CATEGORIES) == "Tornado HTTP server"
    assert category_of(("Router.write (node/router.py:80)",), CATEGORIES) == "router/group_calls"
    assert category_of(("StateMachine.apply (consensus/state_machine.py:80)",), CATEGORIES) == "state machine apply"


def test_call_tree_merges_threads_by_name_and_frames_by_function() -> None:
    other_loop_thread = LOOP.replace("0x10", "0x11")
    tree = call_tree(parse_collapsed(SAMPLE + f"{other_loop_thread};{RUN} 6\n"))
    assert tree.samples == 26
    loop = tree.children["thread MainThread"]
    assert loop.samples == 16
    assert (
        loop.children["IOLoop.start (tornado/platform/asyncio.py)"]
        .children["RequestHandler._execute (tornado/web.py)"]
        .samples
        == 10
    )


def test_flame_graph_is_svg_with_a_box_per_wide_enough_frame() -> None:
    svg = render(parse_collapsed(SAMPLE), "leader <s0r1>")
    root = ElementTree.fromstring(svg)  # well-formed despite the < > in names and title
    titles = [t.text or "" for t in root.iter("{http://www.w3.org/2000/svg}title")]
    assert "thread MainThread (10 samples, 50.00%)" in titles
    assert "encode (node/codec.py) (5 samples, 25.00%)" in titles
    assert len(titles) == 7  # 2 threads + 5 functions
    assert "leader &lt;s0r1&gt; (20 samples)" in svg


def test_record_command_samples_a_pid_into_collapsed_stacks_without_idle_or_gil_filtering() -> None:
    command = record_command("py-spy", 42, 15, 100, Path("out/leader.collapsed.txt"))
    assert command[:2] == ["py-spy", "record"]
    assert {"--pid=42", "--duration=15", "--rate=100", "--format=raw", "--threads"} <= set(command)
    assert "--output=out/leader.collapsed.txt" in command
    assert not {"--idle", "--gil", "-i", "-g"} & set(command)


def test_strace_command_counts_every_thread_of_the_pid() -> None:
    assert strace_command("strace", 42, Path("x.txt")) == ["strace", "-c", "-f", "-p", "42", "-o", "x.txt"]


def test_run_all_reports_failures_and_accepts_an_interrupted_exit() -> None:
    failures = run_all(
        {
            "fine": [sys.executable, "-c", "pass"],
            "broken": [sys.executable, "-c", "import sys; sys.exit('no such pid')"],
        },
        None,
    )
    assert failures == {"broken": "no such pid"}
    assert run_all({"killed by SIGINT": ["sleep", "30"]}, 0.1) == {}
    assert run_all({"130 unasked": [sys.executable, "-c", "import sys; sys.exit(130)"]}, None) == {"130 unasked": ""}
