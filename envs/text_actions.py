"""Text actions: parse what a VLM policy writes into an env action, and format actions as text.

A VLM answers either FULL (keep the current view) or REGION with a box to crop. The
parser turns its text into :class:`ParsedAction` (decision and a 0-1 box of the current
view) or :class:`MalformedAction` (with a reason); it never raises on a string.

Accepted syntaxes (``source`` names the one that matched):

``"tool_call"``    Qwen2.5 function calling, as in Region-R1 / DeepEyes::

                       <tool_call>
                       {"name": "image_zoom_in_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2]}}
                       </tool_call>

                   Whitespace and newlines anywhere, ints or floats, an optional
                   ``"label"`` (other extra arguments are ignored), ``"arguments"`` given
                   as a JSON string, and trailing garbage after the JSON object are
                   tolerated. A missing ``</tool_call>`` is tolerated too, because
                   inference servers usually strip a stop string from the output. Any
                   other tool name, a missing ``bbox_2d``, or a ``bbox_2d`` that is not 4
                   finite numbers is malformed.
``"box_tag"``      ``<box>x1, y1, x2, y2</box>``; brackets/parentheses around the
``"bbox_tag"``     numbers are optional (``<box>[x1,y1,x2,y2]</box>``,
``"box_special"``  ``<bbox>(x1,y1),(x2,y2)</bbox>``), likewise Qwen2-VL's
                   ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``. Exactly 4 numbers.
``"bbox_json"``    a bare ``"bbox_2d": [x1, y1, x2, y2]`` outside a tool call (Qwen2.5-VL's
                   native grounding output, e.g. a JSON list of ``{"bbox_2d": ..., "label": ...}``).
``"full_marker"``  ``NO_CROP_NEEDED`` (a whole word, any case): FULL.
``"full_answer"``  ``<answer>FULL</answer>`` (any case, inner whitespace allowed): FULL.

Two opt-in forms (arguments of :func:`parse_action_text` / :func:`text_to_action`, set
from the env's settings; off, such text reads exactly as it always did):

* ``search=True`` (the env's SEARCH): a call of the ``kb_search_tool``::

      <tool_call>
      {"name": "kb_search_tool", "arguments": {"bbox_2d": [x1, y1, x2, y2], "query": "a red tram"}}
      </tool_call>

  re-retrieves the pool with the crop of ``bbox_2d`` (a REGION that also searches) or,
  without ``bbox_2d``, with the current view (FULL + search, which stops). ``query`` is
  an optional text rewrite (a string) the env combines with the view for the search.
* ``max_regions=M > 1`` (multi-region views): ``bbox_2d`` of either tool may be a list of
  up to M boxes, ``[[x1, y1, x2, y2], ...]``, each read in the caller's frame like a
  single box. With ``M = 1`` a nested list stays malformed.

Tag names are matched in any case. Every box is read in the one ``frame`` the caller
names (see :mod:`envs.boxes`), whatever its syntax, and is returned NOT clamped: the env
clamps and validates it.

Rules:

* Reasoning is ignored: every ``<think>...</think>`` block is removed; if a stray
  ``</think>`` remains (the prompt opened the block), only the text after the last one
  counts; an unclosed ``<think>`` (reasoning cut off) drops everything after it.
* The LAST action in the remaining text wins (models reason before they act), ordered
  by where each action starts. An action nested inside another (a ``bbox_2d`` inside a
  tool call) is part of the outer one. If the last action is itself broken (say a tool
  call with 3 numbers), the result is malformed even when an earlier action was fine.
* No action at all is malformed.
* Text longer than ``max_chars`` (:data:`MAX_TEXT_CHARS`, 131,072 characters, about 32k
  tokens: far beyond any answer a VLM is asked for) is malformed without being scanned,
  so parsing any input costs at most about what parsing that many characters does.

``rules="region_r1_public"`` reads text as the public Region-R1 code's
``parse_bbox_from_completion`` does instead (see :func:`parse_action_text`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from envs.actions import FULL, REGION, InvalidBoxAction, MalformedAction, describe
from envs.boxes import FRAMES, Frame, from_norm, to_norm

TOOL_NAME = "image_zoom_in_tool"
"""The crop tool the policy calls (the name verl / DeepEyes / Region-R1 use)."""
SEARCH_TOOL_NAME = "kb_search_tool"
"""The re-retrieval tool (read only with ``search=True``)."""
FULL_MARKER = "NO_CROP_NEEDED"
"""The answer that keeps the current view (decision FULL / stop)."""

STYLES: tuple[str, ...] = ("tool_call", "box_tag", "bbox_tag", "box_special")
"""Text styles :func:`format_action_text` can write."""

MAX_TEXT_CHARS = 131_072
"""Longest text :func:`parse_action_text` reads by default; longer text is malformed unread."""
RULES: tuple[str, ...] = ("project", "region_r1_public")
"""Text rules :func:`parse_action_text` knows (see ``rules``)."""

_INTEGER_FRAMES = ("pixel", "resized", "norm1000")
_NORM_DECIMALS = 4
_BOX_CONTENT_MAX_CHARS = 200  # a box is a few numbers; the cap keeps matching linear on junk
_SNIPPET_CHARS = 60

_NUMBER = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_NUMBER_SEPARATORS = re.compile(r"[\s,()\[\]]+")

_THINK_TAG = re.compile(r"<(/?)think>", re.I)

# A tool call ends at its closing tag, at the next opening tag, or at the end of text.
_TOOL_CALL = re.compile(r"<tool_call>(.*?)(?:</tool_call>|(?=<tool_call>)|\Z)", re.S | re.I)
_BOX_TAG = re.compile(rf"<(box|bbox)>([^<]{{0,{_BOX_CONTENT_MAX_CHARS}}}?)</\1>", re.I)
_BOX_SPECIAL = re.compile(rf"<\|box_start\|>([^<]{{0,{_BOX_CONTENT_MAX_CHARS}}}?)<\|box_end\|>", re.I)
_BBOX_JSON = re.compile(rf'"bbox_2d"\s*:\s*\[([^\[\]]{{0,{_BOX_CONTENT_MAX_CHARS}}})\]')
_FULL_MARKER = re.compile(rf"\b{FULL_MARKER}\b", re.I)
_FULL_ANSWER = re.compile(r"<answer>\s*FULL\s*</answer>", re.I)


@dataclass(frozen=True, eq=False)
class ParsedAction:
    """A well-formed action read from text.

    ``decision`` is 0 (FULL / stop) or 1 (REGION). ``box`` is ``[x1, y1, x2, y2]`` in 0-1
    coordinates of the current view for REGION (not clamped: the env clamps and
    validates), ``None`` for FULL. ``source`` names the syntax that matched.
    """

    decision: int
    box: np.ndarray | None
    source: str
    boxes: np.ndarray | None = None
    """All ``(n, 4)`` 0-1 boxes of a REGION (``box`` is the first); ``None`` for FULL."""
    search: bool = False
    """A ``kb_search_tool`` call: re-retrieve with this view."""
    query: str | None = None
    """The search's text rewrite, if any."""


@dataclass(frozen=True)
class _Match:
    start: int
    end: int
    source: str
    payload: str


def _snippet(text: str) -> str:
    short = text if len(text) <= _SNIPPET_CHARS else text[:_SNIPPET_CHARS] + "..."
    return repr(short)


def _json_snippet(value: Any, fallback: str) -> str:
    try:
        return _snippet(json.dumps(value))
    except (ValueError, RecursionError):  # values json.loads accepts can still fail to dump
        return _snippet(fallback)


def _check_size(name: str, size: Any) -> None:
    try:
        w, h = (float(v) for v in size)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a (width, height) pair, got {size!r}") from None
    if not (math.isfinite(w) and math.isfinite(h) and w > 0 and h > 0):
        raise ValueError(f"{name} must be positive and finite, got {size!r}")


def _check_frame_args(frame: str, view_size: Any, resized_size: Any) -> None:
    """Missing frame arguments are a caller bug, so they raise before any parsing."""
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; choose from {FRAMES}")
    if frame == "pixel" and view_size is None:
        raise ValueError("frame 'pixel' needs view_size (width, height of the current view in pixels)")
    if frame == "resized" and resized_size is None:
        raise ValueError("frame 'resized' needs resized_size (width, height of the image the VLM saw)")
    if view_size is not None:
        _check_size("view_size", view_size)
    if resized_size is not None:
        _check_size("resized_size", resized_size)


def _view_size_arg(view_size: tuple[float, float] | None) -> tuple[float, float]:
    # envs.boxes reads view_size only for the "pixel" frame, which always has one here.
    return view_size if view_size is not None else (1.0, 1.0)


def _strip_reasoning(text: str) -> str:
    """The text outside reasoning, in one pass over the think tags (a regex for whole
    blocks goes quadratic on many unclosed ``<think>``)."""
    kept: list[str] = []
    start = 0  # where the text being kept began
    inside = False
    for tag in _THINK_TAG.finditer(text):
        closing = tag.group(1) == "/"
        if not closing and not inside:
            kept.append(text[start : tag.start()])
            inside = True
        elif closing and inside:
            inside = False
            start = tag.end()
        elif closing:  # a stray close: the prompt opened the block, so all before is reasoning
            kept = []
            start = tag.end()
    if not inside:
        kept.append(text[start:])
    return " ".join(kept)


def _find_actions(text: str) -> list[_Match]:
    """All action-looking spans, outermost only, in order of their start."""
    found: list[_Match] = []
    found += [_Match(m.start(), m.end(), "tool_call", m.group(1)) for m in _TOOL_CALL.finditer(text)]
    found += [_Match(m.start(), m.end(), f"{m.group(1).lower()}_tag", m.group(2)) for m in _BOX_TAG.finditer(text)]
    found += [_Match(m.start(), m.end(), "box_special", m.group(1)) for m in _BOX_SPECIAL.finditer(text)]
    found += [_Match(m.start(), m.end(), "bbox_json", m.group(1)) for m in _BBOX_JSON.finditer(text)]
    found += [_Match(m.start(), m.end(), "full_marker", m.group(0)) for m in _FULL_MARKER.finditer(text)]
    found += [_Match(m.start(), m.end(), "full_answer", m.group(0)) for m in _FULL_ANSWER.finditer(text)]
    outer: list[_Match] = []
    reach = -1  # furthest end of the spans kept so far: a span ending within it is nested
    for m in sorted(found, key=lambda m: (m.start, -m.end)):
        if m.end > reach:
            outer.append(m)
            reach = m.end
    return outer


def _four_numbers(content: str) -> list[float] | str:
    """The 4 finite numbers of a box body, or the reason they are not there."""
    tokens = [t for t in _NUMBER_SEPARATORS.split(content) if t]
    bad = [t for t in tokens if not _NUMBER.fullmatch(t)]
    if bad:
        return f"box holds a non-number {_snippet(bad[0])}"
    if len(tokens) != 4:
        return f"box needs 4 numbers, got {len(tokens)} in {_snippet(content)}"
    values = [float(t) for t in tokens]
    if not all(math.isfinite(v) for v in values):
        return f"box has a non-finite number in {_snippet(content)}"
    return values


@dataclass(frozen=True)
class _Call:
    boxes: list[list[float]] | None
    search: bool
    query: str | None


def _tool_call_box(body: str, max_regions: int = 1, search: bool = False) -> _Call | str:
    """The boxes (and search arguments) of a tool call body, or the reason it has none."""
    start = body.find("{")
    if start == -1:
        return f"tool call holds no JSON object: {_snippet(body.strip())}"
    try:
        call, _ = json.JSONDecoder().raw_decode(body, start)
    except (ValueError, RecursionError):
        return f"tool call is not valid JSON: {_snippet(body.strip())}"
    if not isinstance(call, dict):
        return f"tool call is not a JSON object: {_snippet(body.strip())}"
    name = call.get("name")
    if name != TOOL_NAME and not (search and name == SEARCH_TOOL_NAME):
        shown = _snippet(name) if isinstance(name, str) else _snippet(body.strip())
        expected = f"{TOOL_NAME!r} or {SEARCH_TOOL_NAME!r}" if search else repr(TOOL_NAME)
        return f"unknown tool {shown}; expected {expected}"
    is_search = name == SEARCH_TOOL_NAME
    arguments = call.get("arguments")
    if isinstance(arguments, str):  # OpenAI-style clients send arguments as a JSON string
        try:
            arguments = json.loads(arguments)
        except (ValueError, RecursionError):
            return f"tool call arguments are not valid JSON: {_snippet(arguments)}"
    if is_search and arguments is None:
        arguments = {}
    query = None
    if is_search and isinstance(arguments, dict):
        query = arguments.get("query")
        if query is not None and not isinstance(query, str):
            return f"kb_search_tool query must be a string, got {_json_snippet(query, body.strip())}"
        query = query.strip() or None if isinstance(query, str) else None
        if "bbox_2d" not in arguments:
            return _Call(None, True, query)
    if not isinstance(arguments, dict) or "bbox_2d" not in arguments:
        return f"tool call has no bbox_2d argument: {_snippet(body.strip())}"
    bbox = arguments["bbox_2d"]
    if max_regions > 1 and isinstance(bbox, list) and bbox and all(isinstance(b, list) for b in bbox):
        if len(bbox) > max_regions:
            return f"bbox_2d holds {len(bbox)} boxes, more than the {max_regions} allowed"
        boxes = [_json_box(b, body) for b in bbox]
    else:
        boxes = [_json_box(bbox, body)]
    bad = next((b for b in boxes if isinstance(b, str)), None)
    return bad if bad is not None else _Call(boxes, is_search, query)


def _json_box(bbox: Any, body: str) -> list[float] | str:
    """One ``bbox_2d`` value as 4 finite floats, or the reason it is not one."""
    if not isinstance(bbox, list) or len(bbox) != 4:
        return f"bbox_2d must be a list of 4 numbers, got {_json_snippet(bbox, body.strip())}"
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
        return f"bbox_2d must hold numbers, got {_json_snippet(bbox, body.strip())}"
    try:
        values = [float(v) for v in bbox]
    except OverflowError:  # JSON ints have no size limit
        return f"bbox_2d has a number too large: {_snippet(body.strip())}"
    if not all(math.isfinite(v) for v in values):
        return f"bbox_2d has a non-finite number: {_snippet(body.strip())}"
    return values


def _action_from_match(
    match: _Match, text: str, frame: Frame, view_size: tuple[float, float] | None, resized_size: tuple[int, int] | None,
    max_regions: int = 1, search: bool = False,
) -> ParsedAction | MalformedAction:
    if match.source in ("full_marker", "full_answer"):
        return ParsedAction(decision=FULL, box=None, source=match.source)
    if match.source == "tool_call":
        call = _tool_call_box(match.payload, max_regions, search)
    else:
        numbers = _four_numbers(match.payload)
        call = numbers if isinstance(numbers, str) else _Call([numbers], False, None)
    if isinstance(call, str):
        return MalformedAction(reason=f"{match.source}: {call}", text=text)
    if call.boxes is None:  # kb_search_tool without a box: search with the current view
        return ParsedAction(decision=FULL, box=None, source=match.source, search=True, query=call.query)
    boxes = np.stack([to_norm(coords, frame, _view_size_arg(view_size), resized_size) for coords in call.boxes])
    return ParsedAction(decision=REGION, box=boxes[0], source=match.source, boxes=boxes, search=call.search,
                        query=call.query)


_PUBLIC_BBOX = re.compile(r'"bbox_2d"\s*:\s*\[([^\]]+)\]')


def _finite(numbers: list[float], shown: str) -> list[float] | str:
    # The public code would crop with NaN or infinity; no crop can be placed there.
    if not all(math.isfinite(v) for v in numbers):
        return f"bbox_2d has a non-finite number: {_snippet(shown)}"
    return numbers


def _public_regex_box(text: str) -> list[float] | str:
    """The public fallback: the first ``"bbox_2d": [...]`` anywhere in the text, split at commas."""
    match = _PUBLIC_BBOX.search(text)
    if match is None:
        return 'tool call is not a JSON object with bbox_2d and the text has no "bbox_2d": [...]'
    coords = match.group(1).split(",")
    if len(coords) != 4:
        return f"bbox_2d needs 4 numbers, got {len(coords)} in {_snippet(match.group(0))}"
    try:
        return _finite([float(x.strip()) for x in coords], match.group(0))
    except ValueError:
        return f"bbox_2d holds a non-number: {_snippet(match.group(0))}"


def _public_member(container: Any, key: str) -> Literal["found", "missing", "fallback"]:
    """The public ``key in container and container[key]`` test: on a dict a key lookup;
    on a str or list ``in`` is membership and the lookup that follows raises TypeError;
    on anything else ``in`` itself raises TypeError (both caught: the regex fallback)."""
    if isinstance(container, dict):
        return "found" if key in container else "missing"
    if isinstance(container, (str, list)):
        return "fallback" if key in container else "missing"
    return "fallback"


def _public_box(text: str) -> list[float] | str | None:
    """The public ``parse_bbox_from_completion``: a box, a reason it failed, or ``None``
    when the text holds no ``<tool_call>...</tool_call>`` pair at all."""
    if "<tool_call>" not in text or "</tool_call>" not in text:
        return None
    content = text.split("<tool_call>", 2)[1].split("</tool_call>", 1)[0].strip()
    try:
        call = json.loads(content)
    except RecursionError:  # the public code lets this escape to its catch-all (reward 0)
        return f"tool call nests too deeply: {_snippet(content)}"
    except ValueError:
        return _public_regex_box(text)
    status = _public_member(call, "arguments")
    if status == "found":
        status = _public_member(call["arguments"], "bbox_2d")
    if status == "fallback":
        return _public_regex_box(text)
    if status == "missing":  # the public code returns None here, without the fallback
        return f"tool call has no arguments.bbox_2d: {_snippet(content)}"
    bbox = call["arguments"]["bbox_2d"]
    if not isinstance(bbox, list) or len(bbox) != 4:
        return f"bbox_2d must be a list of 4 numbers, got {_json_snippet(bbox, content)}"
    try:
        return _finite([float(v) for v in bbox], content)  # numeric strings and booleans pass, as in public
    except (TypeError, ValueError):
        return _public_regex_box(text)
    except OverflowError:  # the public code lets this escape to its catch-all (reward 0)
        return f"bbox_2d has a number too large: {_snippet(content)}"


def _parse_public(text: str, frame: Frame, view_size, resized_size) -> ParsedAction | MalformedAction:
    box = _public_box(text)
    if box is None or isinstance(box, str):
        if _FULL_MARKER.search(text):  # the public code has no FULL answer: anything without a box is FULL
            return ParsedAction(decision=FULL, box=None, source="full_marker")
        reason = box if isinstance(box, str) else f"no <tool_call>...</tool_call> in {_snippet(text.strip())}"
        return MalformedAction(reason=f"region_r1_public: {reason}", text=text)
    return ParsedAction(decision=REGION, box=to_norm(box, frame, _view_size_arg(view_size), resized_size), source="tool_call")


def parse_action_text(
    text: str,
    frame: Frame = "resized",
    view_size: tuple[float, float] | None = None,
    resized_size: tuple[int, int] | None = None,
    *,
    rules: str = "project",
    max_chars: int = MAX_TEXT_CHARS,
    max_regions: int = 1,
    search: bool = False,
) -> ParsedAction | MalformedAction:
    """Read a FULL / REGION action from a VLM's reply (see the module docstring).

    ``frame`` says what the box numbers mean: ``"resized"`` (pixels of the image the VLM
    saw; needs ``resized_size``), ``"pixel"`` (pixels of the current view; needs
    ``view_size``), ``"norm"`` (0-1) or ``"norm1000"`` (0-1000). A missing or bad frame
    argument raises ``ValueError`` before parsing; any string ``text`` returns a
    :class:`ParsedAction` or a :class:`MalformedAction`, never raises.

    ``rules="project"`` applies the rules of the module docstring.
    ``rules="region_r1_public"`` reads text as the public Region-R1 code does: only the
    FIRST ``<tool_call>`` counts and it must be closed by ``</tool_call>`` (exact case);
    reasoning is not removed (a tool call inside ``<think>`` counts); the tool name is
    not checked; the call body must be exactly one JSON object, else the first
    ``"bbox_2d": [...]`` anywhere in the text is split at commas; ``bbox_2d`` values
    may be numeric strings (``"12"``). Unlike the public code, non-finite numbers are
    malformed. Text with no box is FULL when it holds ``NO_CROP_NEEDED`` and malformed
    otherwise (the public code scores both as FULL: pair with
    ``RewardConfig.malformed_as_full``).

    ``max_chars`` caps what is read: longer text is malformed without being scanned.
    ``max_regions`` and ``search`` enable the multi-box and ``kb_search_tool`` forms of the
    module docstring (``"project"`` rules only).
    """
    _check_frame_args(frame, view_size, resized_size)
    if rules not in RULES:
        raise ValueError(f"unknown text rules {rules!r}; choose from {RULES}")
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if len(text) > max_chars:
        return MalformedAction(
            reason=f"answer is {len(text)} characters, more than the {max_chars} the parser reads", text=text
        )
    if rules == "region_r1_public":
        return _parse_public(text, frame, view_size, resized_size)
    actions = _find_actions(_strip_reasoning(text))
    if not actions:
        return MalformedAction(reason=f"no action found in {_snippet(text.strip())}", text=text)
    return _action_from_match(actions[-1], text, frame, view_size, resized_size, max_regions, search)


def text_to_action(
    text: Any,
    *,
    frame: Frame,
    view_size: tuple[float, float],
    shown_size: tuple[int, int] | None = None,
    no_frame_reason: str = "",
    rules: str = "project",
    max_chars: int = MAX_TEXT_CHARS,
    max_regions: int = 1,
    search: bool = False,
) -> dict | MalformedAction | InvalidBoxAction:
    """The env action for a VLM's answer ``text`` about the current view; never raises for any ``text``.

    ``view_size`` is the current view in original pixels (``env.view_size``). In the
    ``"resized"`` frame, ``shown_size`` is the size of the image the model was actually
    shown (the processor's resize of ``info["policy_image"]``): callers that hold that image
    pass its size, so the parser's frame and the model's input cannot drift apart.
    ``shown_size=None`` there means the view has no resized frame (``no_frame_reason`` says
    why, e.g. an aspect ratio the resize rule refuses): a FULL answer still counts, a
    REGION answer is an :class:`envs.actions.InvalidBoxAction`. Text that does not parse
    (or a non-``str``) is a :class:`envs.actions.MalformedAction`.

    With ``max_regions > 1`` the action's ``box`` is ``(n, 4)`` (a single box is one row);
    with ``search`` it has ``"search"`` (0 or 1) and ``"query"`` (the rewrite or ``None``):
    the native action of an env with those settings.
    """
    if not isinstance(text, str):
        return MalformedAction(f"a text action must be a str, got {describe(text)}")
    frameless = frame == "resized" and shown_size is None
    parsed = parse_action_text(
        text, frame="norm" if frameless else frame, view_size=view_size, resized_size=shown_size,
        rules=rules, max_chars=max_chars, max_regions=max_regions, search=search,
    )
    if not isinstance(parsed, ParsedAction):
        return parsed
    if parsed.decision == REGION and frameless:
        return InvalidBoxAction(no_frame_reason or "the view has no resized frame")
    if max_regions > 1:
        boxes = parsed.boxes if parsed.boxes is not None else (parsed.box[None] if parsed.box is not None else np.zeros((1, 4)))
        action = {"decision": parsed.decision, "box": np.asarray(boxes, dtype=np.float64)}
    else:
        box = parsed.box if parsed.box is not None else np.zeros(4)
        action = {"decision": parsed.decision, "box": np.asarray(box, dtype=np.float64)}
    if search:
        action.update(search=int(parsed.search), query=parsed.query)
    return action


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def format_action_text(
    decision: int,
    norm_box=None,
    frame: Frame = "resized",
    view_size: tuple[float, float] | None = None,
    resized_size: tuple[int, int] | None = None,
    style: str = "tool_call",
) -> str:
    """Canonical text for an action, which :func:`parse_action_text` reads back.

    FULL (``decision`` 0) is written as ``NO_CROP_NEEDED`` in every style and ignores
    ``norm_box``. REGION (1) converts the 0-1 ``norm_box`` of the current view to
    ``frame`` and writes it in ``style`` (one of :data:`STYLES`). Pixel and 0-1000
    frames are written as integers (rounded half up), as Qwen2.5-VL emits them; the
    ``"norm"`` frame with 4 decimals. A round trip is therefore exact to half a unit of
    the frame (0.5 px, 0.5/1000, or 0.00005).
    """
    _check_frame_args(frame, view_size, resized_size)
    if style not in STYLES:
        raise ValueError(f"unknown style {style!r}; choose from {STYLES}")
    if decision not in (0, 1):
        raise ValueError(f"decision must be 0 (FULL) or 1 (REGION), got {decision!r}")
    if int(decision) == 0:
        return FULL_MARKER
    if norm_box is None:
        raise ValueError("decision 1 (REGION) needs norm_box")
    box = np.asarray(norm_box, np.float64)
    if box.shape != (4,) or not np.all(np.isfinite(box)):
        raise ValueError(f"norm_box must be 4 finite numbers, got {norm_box!r}")
    framed = from_norm(box, frame, _view_size_arg(view_size), resized_size)
    if frame in _INTEGER_FRAMES:
        numbers: list[float] = [_round_half_up(v) for v in framed]
    else:
        numbers = [round(float(v), _NORM_DECIMALS) for v in framed]
    if style == "tool_call":
        call = {"name": TOOL_NAME, "arguments": {"bbox_2d": numbers}}
        return f"<tool_call>\n{json.dumps(call)}\n</tool_call>"
    x1, y1, x2, y2 = numbers
    if style == "box_special":
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    tag = "box" if style == "box_tag" else "bbox"
    return f"<{tag}>{x1}, {y1}, {x2}, {y2}</{tag}>"
