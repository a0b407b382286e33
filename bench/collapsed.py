"""Collapsed stacks (py-spy ``--format raw``, flamegraph.pl's input): parse them and count where samples go.

Each line is ``frame;frame;...;frame COUNT``, outermost frame first. py-spy
writes frames as ``function (file:line)`` and, with ``--threads``, puts one
``thread (TID): NAME`` frame first. ``summarise`` aggregates by function (the
line number dropped): self samples count the innermost frame, inclusive
samples count every function on the stack once; each sample also goes to one
thread (by name) and to one category, the category of the innermost frame
that a rule matches.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

Stack = tuple[str, ...]
FRAME = re.compile(r"^(?P<function>.*) \((?P<file>.*?)(?::(?P<line>\d+))?\)$")
THREAD = re.compile(r"^thread \((?P<tid>[^)]*)\)(?:: (?P<name>.*))?$")
OTHER = "other"
NO_THREAD = "(all)"


@dataclass(frozen=True)
class Rule:
    """A category for frames whose file starts with one of ``files`` and, when ``functions`` is not empty,
    whose function is one of ``functions``."""

    category: str
    files: tuple[str, ...]
    functions: frozenset[str] = frozenset()

    def matches(self, function: str, file: str) -> bool:
        return file.startswith(self.files) and (not self.functions or function in self.functions)


def parse_collapsed(text: str) -> list[tuple[Stack, int]]:
    """The ``(stack, count)`` of every non-blank line of ``text``, in order (repeated stacks are not merged).

    Raises ``ValueError`` naming the line when one has no positive integer count after its last space.
    """
    stacks = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        frames, _, count = line.rstrip().rpartition(" ")
        if not frames or not count.isdigit() or int(count) == 0:
            raise ValueError(f"line {number} is not 'frame;frame;... COUNT': {line!r}")
        stacks.append((tuple(frames.split(";")), int(count)))
    return stacks


def split_frame(frame: str) -> tuple[str, str]:
    """``(function, file)`` of a ``function (file:line)`` frame; ``(frame, "")`` for any other frame."""
    match = FRAME.match(frame)
    if match is None:
        return frame, ""
    return match["function"], match["file"]


def function_of(frame: str) -> str:
    """The frame without its line number: ``function (file)``, so every line of a function counts as one."""
    function, file = split_frame(frame)
    return f"{function} ({file})" if file else function


def split_thread(stack: Stack) -> tuple[str, Stack]:
    """The thread's name (its id when it has none; ``(all)`` without a thread frame) and the frames below it."""
    match = THREAD.match(stack[0]) if stack else None
    if match is None:
        return NO_THREAD, stack
    return match["name"] or match["tid"], stack[1:]


def category_of(frames: Sequence[str], rules: Sequence[Rule]) -> str:
    """The category of the innermost frame that one of ``rules`` (the first that matches) claims, else ``other``."""
    for frame in reversed(frames):
        function, file = split_frame(frame)
        for rule in rules:
            if rule.matches(function, file):
                return rule.category
    return OTHER


@dataclass
class Profile:
    """Samples of one process by function (self and inclusive), by thread and by category."""

    samples: int = 0
    self_samples: Counter[str] = field(default_factory=Counter)
    inclusive: Counter[str] = field(default_factory=Counter)
    threads: Counter[str] = field(default_factory=Counter)
    categories: Counter[str] = field(default_factory=Counter)

    def share(self, count: int) -> float:
        """``count`` as a fraction of all samples (0 when there are none)."""
        return count / self.samples if self.samples else 0.0

    def working_share(self, category: str, waiting: str) -> float | None:
        """``category``'s fraction of the samples outside the ``waiting`` category (``None`` for ``waiting``
        itself; 0 when every sample waits)."""
        if category == waiting:
            return None
        working = self.samples - self.categories[waiting]
        return self.categories[category] / working if working else 0.0

    def as_json(self, top: int, waiting: str | None = None) -> dict[str, Any]:
        """The totals, and the ``top`` functions by self and by inclusive samples, with their shares.
        With ``waiting``, each category also has its ``working_share``."""

        def ranked(counter: Counter[str], limit: int | None) -> list[dict[str, Any]]:
            return [
                {"name": name, "samples": n, "share": round(self.share(n), 4)} for name, n in counter.most_common(limit)
            ]

        categories = ranked(self.categories, None)
        if waiting is not None:
            for entry in categories:
                working = self.working_share(entry["name"], waiting)
                entry["working_share"] = None if working is None else round(working, 4)
        return {
            "samples": self.samples,
            "threads": ranked(self.threads, None),
            "categories": categories,
            "top_self": ranked(self.self_samples, top),
            "top_inclusive": ranked(self.inclusive, top),
        }


def summarise(stacks: Iterable[tuple[Stack, int]], rules: Sequence[Rule] = ()) -> Profile:
    """Aggregate ``stacks`` (from ``parse_collapsed``) by function, thread and category (``rules``).

    A stack with no frame below its thread frame counts for its thread, as ``other``, and for no function.
    """
    profile = Profile()
    for stack, count in stacks:
        thread, frames = split_thread(stack)
        functions = [function_of(frame) for frame in frames]
        profile.samples += count
        profile.threads[thread] += count
        profile.categories[category_of(frames, rules)] += count
        if functions:
            profile.self_samples[functions[-1]] += count
        for function in set(functions):
            profile.inclusive[function] += count
    return profile


def format_profile(title: str, profile: Profile, top: int, waiting: str | None = None) -> str:
    """``profile`` as text: threads and categories with their shares (with ``waiting``, categories also
    with their share of the samples outside it), then the top functions by self and by inclusive samples."""

    def table(counter: Counter[str], limit: int | None, work_column: bool = False) -> list[str]:
        lines = [f"{'share':>7} {'samples':>8}  " + (f"{'of work':>7}  " if work_column else "") + "name"]
        for name, n in counter.most_common(limit):
            work = ""
            if work_column and waiting is not None:
                working = profile.working_share(name, waiting)
                work = f"{'' if working is None else f'{working:.1%}':>7}  "
            lines.append(f"{profile.share(n):>7.1%} {n:>8}  {work}{name}")
        return lines

    return "\n".join(
        [
            f"== {title}: {profile.samples} samples",
            "-- threads",
            *table(profile.threads, None),
            "-- categories (innermost matching frame)",
            *table(profile.categories, None, work_column=waiting is not None),
            f"-- top {top} by self samples",
            *table(profile.self_samples, top),
            f"-- top {top} by inclusive samples",
            *table(profile.inclusive, top),
        ]
    )
