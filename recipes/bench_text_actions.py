"""The text parser's worst case, measured side by side in one run (ratios, not absolute timings).

A policy's reply is parsed on every step, and an RL policy early in training writes
anything: thousands of repeated tags, unclosed brackets, one action repeated to the token
limit. The parser must stay linear in the text's length on such input, and text over
``MAX_TEXT_CHARS`` must cost nothing. For each pathological piece (and each text rule)
this prints the parse time of the piece repeated to the cap, the ratio to the same piece
at 1/8 of the cap (about 8 for a linear parse, 64 for a quadratic one) and the ratio to a
typical one-action reply; and the cost of rejecting 2.2 MB over the cap.

    python recipes/bench_text_actions.py
    python recipes/bench_text_actions.py --repeats 5 --rules project
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import tyro

from envs.text_actions import MAX_TEXT_CHARS, RULES, parse_action_text

PATHOLOGICAL_PIECES: tuple[str, ...] = (
    "<tool_call>", "<box>", "1,", '"bbox_2d": [', "<think>", "</think>", "NO_CROP_NEEDED ", "{", "[", "x",
)
"""Pieces whose repetition stresses the matcher: open tags, number lists, nesting, markers."""
TYPICAL_REPLY = (
    "<think>The sign in the lower left names the shop.</think>\n<tool_call>\n"
    '{"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [0.05, 0.55, 0.45, 0.98]}}\n</tool_call>'
)


@dataclass
class Args:
    repeats: int = 3
    """parses per measurement; the median is reported"""
    rules: tuple[str, ...] = RULES
    """text rules to measure (see envs.text_actions.RULES)"""


def repeated_to(piece: str, chars: int) -> str:
    """``piece`` repeated and cut to exactly ``chars`` characters."""
    return (piece * (chars // len(piece) + 1))[:chars]


def parse_seconds(text: str, rules: str, repeats: int) -> float:
    """Median wall time of parsing ``text`` as 0-1 boxes under ``rules``."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        parse_action_text(text, "norm", rules=rules)
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main(args: Args) -> None:
    typical = {rules: parse_seconds(TYPICAL_REPLY, rules, 100) for rules in args.rules}
    print(f"typical reply ({len(TYPICAL_REPLY)} chars): " + ", ".join(f"{r} {t * 1e6:.0f} us" for r, t in typical.items()))
    over = "<tool_call>" * 200_000
    print(f"{len(over) / 1e6:.1f} MB over the cap, rejected unread: {parse_seconds(over, 'project', args.repeats) * 1e6:.0f} us")
    print(f"{'piece':18s} {'rules':16s} {'s at cap':>9s} {'cap / (cap/8)':>14s} {'cap / typical':>14s}")
    worst = 0.0
    for piece in PATHOLOGICAL_PIECES:
        for rules in args.rules:
            full = parse_seconds(repeated_to(piece, MAX_TEXT_CHARS), rules, args.repeats)
            eighth = parse_seconds(repeated_to(piece, MAX_TEXT_CHARS // 8), rules, args.repeats)
            worst = max(worst, full)
            print(f"{piece!r:18s} {rules:16s} {full:9.3f} {full / eighth:14.1f} {full / typical[rules]:14.0f}")
    print(f"worst case at the {MAX_TEXT_CHARS}-character cap: {worst:.3f} s (linear: the middle column near 8)")


if __name__ == "__main__":
    main(tyro.cli(Args))
