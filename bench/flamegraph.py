"""A flame graph as a standalone SVG, drawn from collapsed stacks (``bench.collapsed``).

Each frame is a box as wide as the samples it was on the stack for, with its
callees stacked above it; hovering shows its name, samples and share. Boxes
narrower than ``MIN_WIDTH`` pixels are left out (their samples still widen
their callers). No JavaScript: open it in any browser.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from xml.sax.saxutils import escape

from bench.collapsed import NO_THREAD, Stack, function_of, split_thread

WIDTH = 1200.0
ROW = 16.0
MIN_WIDTH = 0.3
CHAR_WIDTH = 6.5  # of the 11 px monospace font, to cut labels to their box
HEADER = 24.0


@dataclass
class Node:
    """A frame in the call tree: ``samples`` on the stack, ``children`` by frame."""

    samples: int = 0
    children: dict[str, Node] = field(default_factory=dict)


def call_tree(stacks: Iterable[tuple[Stack, int]]) -> Node:
    """The tree of ``stacks``, merging threads by name and frames by function (line numbers dropped).

    The root holds every sample; its children are the threads (or the outermost frames, without thread frames).
    """
    root = Node()
    for stack, count in stacks:
        thread, frames = split_thread(stack)
        root.samples += count
        node = root
        if thread != NO_THREAD:
            node = node.children.setdefault(f"thread {thread}", Node())
            node.samples += count
        for frame in frames:
            node = node.children.setdefault(function_of(frame), Node())
            node.samples += count
    return root


def _depth(node: Node) -> int:
    return 1 + max((_depth(child) for child in node.children.values()), default=0)


def _colour(name: str) -> str:
    """A warm colour that depends only on ``name``, so a function has the same colour in every graph."""
    hue = zlib.crc32(name.encode()) % 50
    return f"hsl({hue}, 80%, {55 + hue % 15}%)"


def _label(name: str, width: float) -> str:
    """``name`` as it fits a box ``width`` pixels wide: whole, cut with ``..``, or empty when under 3 characters fit."""
    fits = int((width - 4) / CHAR_WIDTH)
    if len(name) <= fits:
        return name
    return name[: fits - 2] + ".." if fits >= 3 else ""


def render(stacks: Iterable[tuple[Stack, int]], title: str) -> str:
    """The SVG document of the flame graph of ``stacks`` (the outermost frame at the bottom)."""
    root = call_tree(stacks)
    height = HEADER + ROW * max(_depth(root) - 1, 1)
    scale = WIDTH / root.samples if root.samples else 0.0
    boxes: list[str] = []

    def draw(node: Node, name: str, x: float, depth: int) -> None:
        width = node.samples * scale
        if width < MIN_WIDTH:
            return
        y = height - ROW * (depth + 1)
        label = _label(name, width)
        text = f'<text x="{x + 2:.1f}" y="{y + 11.5:.1f}">{escape(label)}</text>' if label else ""
        share = node.samples / root.samples
        boxes.append(
            f"<g><title>{escape(name)} ({node.samples} samples, {share:.2%})</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{width:.1f}" height="{ROW - 1:.0f}" fill="{_colour(name)}"/>'
            f"{text}</g>"
        )
        for child_name, child in sorted(node.children.items()):
            draw(child, child_name, x, depth + 1)
            x += child.samples * scale

    x = 0.0
    for name, child in sorted(root.children.items()):
        draw(child, name, x, 0)
        x += child.samples * scale
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH:.0f}" height="{height:.0f}" '
        f'font-family="monospace" font-size="11">'
        f'<text x="4" y="16" font-size="14">{escape(title)} ({root.samples} samples)</text>'
        + "".join(boxes)
        + "</svg>\n"
    )
