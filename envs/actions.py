"""The env's action vocabulary and its one reader: what counts as a FULL, a REGION or a malformed action.

Everything that turns a user's object into an env action goes through :func:`read_action`
(the native ``Dict`` action) or :func:`read_flat_action` (the flat 5-number action of
:class:`envs.wrappers.FlatBoxAction`). Both are total: they return a result for
any Python object and never raise.

Rules:

* A **decision** is valid only as the integer 0 (FULL) or 1 (REGION): a Python ``int``,
  a NumPy integer scalar or a 0-d NumPy integer array (what ``Discrete(2)`` samples and
  accepts). ``bool``, floats (``1.0``, ``0.9``, ``inf``), strings, bytes, lists and
  arrays of any other shape are malformed: silently rounding ``0.9`` to FULL or reading
  ``"1"`` as REGION would hide policy bugs.
* A **box** is 4 real numbers representable as finite float64: a length-4 list/tuple of
  ``int`` / ``float`` / NumPy integer or floating scalars, or a shape ``(4,)`` NumPy
  integer or floating array. ``bool``, complex, strings, NaN, infinities and integers too
  large for a float (``10**400``) are malformed. The box is only read for REGION.
* Two opt-in extensions (arguments of :func:`read_action`, set from the env's settings;
  with both off an action is read exactly as above and extra keys are ignored):

  - ``search=True``: an optional ``"search"`` key, the integer 0 or 1 read like a
    decision (missing is 0), asks to re-retrieve the pool with the step's view (see
    :class:`envs.region_rerank.RegionRerankEnv`); an optional ``"query"`` str is a text
    rewrite for that search (anything else there is malformed);
  - ``max_regions=M > 1``: a REGION ``"box"`` may hold up to M boxes: 4 numbers (one
    box), or an ``(n, 4)`` array / list of n lists of 4 numbers, ``1 <= n <= M``; an
    optional ``"count"`` integer in ``1..M`` keeps the first ``count`` rows (the env's
    fixed-shape ``(M, 4)`` box plus a count). Every kept row must be 4 finite numbers.
* :class:`MalformedAction` (what the text parser returns for text without an action) is
  malformed with its own reason; :class:`InvalidBoxAction` (a REGION whose box cannot be
  placed, see :class:`envs.wrappers.TextAction`) is an invalid box.

This module depends on nothing but NumPy, so any backend (the verl agent loop, the
trainers) can share the constants and the reader without importing the env.
"""

from __future__ import annotations

import math
import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

FULL = 0
"""Keep the current view and stop."""
REGION = 1
"""Crop the box (and, with ``max_steps > 1``, continue from the crop)."""
MALFORMED = -1
"""``info["decision"]`` of an action that is neither FULL nor REGION."""

_REASON_REPR = reprlib.Repr()
_REASON_REPR.maxstring = 40
_REASON_REPR.maxother = 40
_REASON_REPR.maxlevel = 3


@dataclass(frozen=True)
class MalformedAction:
    """An action that holds no usable decision; ``reason`` says why (and quotes the input)."""

    reason: str
    text: str = ""
    """The text it came from, for text actions (kept by reference, never scanned again)."""


@dataclass(frozen=True)
class InvalidBoxAction:
    """A REGION action whose box cannot be placed on the current view; paid as an invalid box."""

    reason: str


@dataclass(frozen=True)
class ReadAction:
    """The result of :func:`read_action`: ``decision`` is FULL, REGION or MALFORMED.

    ``box`` is the float64 ``(4,)`` box for REGION (not clamped), else ``None``;
    ``reason`` explains a MALFORMED decision (or an invalid box with ``invalid_box``).
    """

    decision: int
    box: np.ndarray | None = None
    reason: str = ""
    invalid_box: bool = False
    boxes: np.ndarray | None = None
    """The ``(n, 4)`` boxes of a REGION (``box`` is the first), else ``None``."""
    search: bool = False
    """Re-retrieve the pool with this step's view (only read with ``search=True``)."""
    query: str | None = None
    """The search's text rewrite, if any."""


DESCRIBE_MAX_CHARS = 160
"""Longest :func:`describe` text: reprlib bounds each part, not the sum of a nested value's."""


def describe(value: Any) -> str:
    """A short ``repr`` for error messages: bounded length and depth, never raises."""
    try:
        text = _REASON_REPR.repr(value)
    except Exception:  # a user object's __repr__ may raise anything
        return f"<{type(value).__name__} object>"
    return text if len(text) <= DESCRIBE_MAX_CHARS else text[: DESCRIBE_MAX_CHARS - 3] + "..."


def read_decision(value: Any) -> int | None:
    """0 or 1 for a valid decision (see the module rules), ``None`` otherwise."""
    return read_decision_range(value, FULL, REGION)


def _real(value: Any) -> float | None:
    """``value`` as a finite float, if it is a real number (not bool) that fits one."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        return None
    try:
        number = float(value)
    except OverflowError:  # Python ints have no size limit
        return None
    return number if math.isfinite(number) else None


def read_numbers(value: Any, n: int) -> np.ndarray | None:
    """``value`` as a float64 ``(n,)`` array of finite numbers, or ``None`` (see the module rules)."""
    if isinstance(value, np.ndarray):
        if value.shape != (n,) or not (np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
            return None
        with np.errstate(over="ignore", invalid="ignore"):  # float128 / huge ints overflow to inf, checked below
            numbers = value.astype(np.float64)
        return numbers if np.all(np.isfinite(numbers)) else None
    if not isinstance(value, (list, tuple)) or len(value) != n:
        return None
    numbers = [_real(v) for v in value]
    if any(v is None for v in numbers):
        return None
    return np.array(numbers, dtype=np.float64)


def read_boxes(value: Any, count: Any, max_regions: int) -> np.ndarray | str:
    """The ``(n, 4)`` float64 boxes of a multi-box REGION, or the reason there are none
    (see the module rules); never raises."""
    single = read_numbers(value, 4)
    if single is not None:
        rows = single[None, :]
    elif isinstance(value, np.ndarray) and value.ndim == 2 and value.shape[1] == 4 and 1 <= value.shape[0] <= max_regions:
        rows = value
    elif isinstance(value, (list, tuple)) and 1 <= len(value) <= max_regions:
        rows = list(value)
    else:
        return f"box {describe(value)} is not 1 to {max_regions} boxes of 4 finite numbers"
    n = len(rows)
    if count is not None:
        number = read_decision_range(count, 1, max_regions)
        if number is None:
            return f"count {describe(count)} is not an integer in 1..{max_regions}"
        if number > n:
            return f"count {number} is more than the {n} boxes given"
        n = number
    boxes = [read_numbers(rows[i], 4) for i in range(n)]
    if any(b is None for b in boxes):
        return f"box {describe(value)} is not 1 to {max_regions} boxes of 4 finite numbers"
    return np.stack(boxes)


def read_decision_range(value: Any, low: int, high: int) -> int | None:
    """``value`` as an integer in ``low..high`` under the decision rules (no bool, float or str), else ``None``."""
    # numpy counts timedelta64 as an integer type; its NaT has no integer value.
    if isinstance(value, (bool, np.bool_, np.timedelta64)):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, np.ndarray) and value.shape == () and value.dtype.kind in "iu":
        number = int(value.item())
    else:
        return None
    return number if low <= number <= high else None


def read_action(action: Any, *, search: bool = False, max_regions: int = 1) -> ReadAction:
    """Read a native action (``{"decision": 0|1, "box": [x1, y1, x2, y2]}``, plus the
    ``search`` / multi-box extensions when enabled, see the module rules); never raises."""
    if search or max_regions > 1:
        return _read_extended(action, search, max_regions)
    if isinstance(action, MalformedAction):
        return ReadAction(MALFORMED, reason=action.reason or "malformed action")
    if isinstance(action, InvalidBoxAction):
        return ReadAction(REGION, reason=action.reason, invalid_box=True)
    if not isinstance(action, Mapping):
        return ReadAction(MALFORMED, reason=f"action {describe(action)} is not a dict with 'decision' and 'box'")
    try:  # a user Mapping's lookups may raise anything
        has_decision = "decision" in action
        raw_decision = action["decision"] if has_decision else None
        raw_box = action["box"] if "box" in action else None
    except Exception as err:
        return ReadAction(MALFORMED, reason=f"action {describe(action)} cannot be read: {type(err).__name__}")
    if not has_decision:
        return ReadAction(MALFORMED, reason=f"action {describe(action)} has no 'decision'")
    decision = read_decision(raw_decision)
    if decision is None:
        return ReadAction(
            MALFORMED, reason=f"decision {describe(raw_decision)} is not the integer 0 (FULL) or 1 (REGION)"
        )
    if decision == FULL:
        return ReadAction(FULL)
    box = read_numbers(raw_box, 4)
    if box is None:
        return ReadAction(MALFORMED, reason=f"box {describe(raw_box)} is not 4 finite numbers")
    return ReadAction(REGION, box, boxes=box[None, :])


BoxEncoding = Literal["center", "corners"]
"""How a flat action's last 4 numbers make a box (:func:`read_flat_action`)."""
BOX_ENCODINGS: tuple[str, ...] = ("center", "corners")
MIN_CENTER_SIDE = 0.1
"""Smallest box side of the ``"center"`` encoding, as a fraction of the view's side."""


def center_box(values: np.ndarray) -> np.ndarray:
    """The ``"center"`` encoding: ``[cx, cy, w, h]`` in ``[-1, 1]`` (clipped) -> a 0-1 box
    ``[x1, y1, x2, y2]`` that is never empty or inverted.

    ``cx, cy`` map to ``[0, 1]``; ``w, h`` to ``[MIN_CENTER_SIDE, 1]`` of the view's side; a
    box reaching past an edge is shifted inside (its size kept). So any 4 finite numbers are
    a valid box on a view at least ``min_box_side / MIN_CENTER_SIDE`` pixels wide and high
    (40 px with the default 4 px), which a Gaussian policy needs: under the ``"corners"``
    encoding ~87% of ``N(0, 1)`` draws are inverted or empty boxes.
    """
    unit = (np.clip(np.asarray(values, np.float64), -1.0, 1.0) + 1.0) / 2.0
    size = MIN_CENTER_SIDE + (1.0 - MIN_CENTER_SIDE) * unit[2:]
    corner = np.clip(unit[:2] - size / 2.0, 0.0, 1.0 - size)
    return np.concatenate([corner, corner + size])


def read_flat_action(action: Any, threshold: float | None = None, encoding: BoxEncoding = "corners") -> dict | MalformedAction:
    """Map a flat 5-number action ``[d, *box]`` to a native one; never raises.

    ``encoding`` says what the numbers are:

    - ``"corners"``: ``[d, x1, y1, x2, y2]`` in ``[0, 1]``, the box's corners normalized to
      the view as the native action has them (unsorted: ``x2 < x1`` is an inverted, invalid
      box); ``d >= threshold`` (default 0.5) is REGION;
    - ``"center"``: ``[d, cx, cy, w, h]`` in ``[-1, 1]``, a box valid by construction
      (:func:`center_box`); ``d >= threshold`` (default 0) is REGION.

    The 5 values must be finite real numbers (a list/tuple or a ``(5,)`` array); anything
    else (a wrong shape, NaN, an overflowing integer, strings, ragged input) is a
    :class:`MalformedAction`.
    """
    if encoding not in BOX_ENCODINGS:
        raise ValueError(f"box encoding {encoding!r}; choose from {BOX_ENCODINGS}")
    fields = "x1, y1, x2, y2" if encoding == "corners" else "cx, cy, w, h"
    values = read_numbers(action, 5)
    if values is None:
        return MalformedAction(f"flat action {describe(action)} is not 5 finite numbers [d, {fields}]")
    if threshold is None:
        threshold = 0.5 if encoding == "corners" else 0.0
    box = values[1:] if encoding == "corners" else center_box(values[1:])
    return {"decision": REGION if values[0] >= threshold else FULL, "box": box}


def _read_extended(action: Any, search: bool, max_regions: int) -> ReadAction:
    """:func:`read_action` with the search flag and/or multi-box REGION enabled."""
    if isinstance(action, (MalformedAction, InvalidBoxAction)) or not isinstance(action, Mapping):
        return read_action(action)  # the same reasons as without the extensions
    try:  # a user Mapping's lookups may raise anything
        raw = {key: action[key] for key in ("decision", "box", "search", "query", "count") if key in action}
    except Exception as err:
        return ReadAction(MALFORMED, reason=f"action {describe(action)} cannot be read: {type(err).__name__}")
    if "decision" not in raw:
        return ReadAction(MALFORMED, reason=f"action {describe(action)} has no 'decision'")
    decision = read_decision(raw["decision"])
    if decision is None:
        return ReadAction(
            MALFORMED, reason=f"decision {describe(raw['decision'])} is not the integer 0 (FULL) or 1 (REGION)"
        )
    wants_search, query = False, None
    if search:
        flag = read_decision(raw["search"]) if raw.get("search") is not None else 0
        if flag is None:
            return ReadAction(MALFORMED, reason=f"search {describe(raw['search'])} is not the integer 0 or 1")
        query = raw.get("query")
        if query is not None and not isinstance(query, str):
            return ReadAction(MALFORMED, reason=f"query {describe(query)} is not a str")
        wants_search, query = bool(flag), (query.strip() or None) if isinstance(query, str) else None
    if decision == FULL:
        return ReadAction(FULL, search=wants_search, query=query)
    if max_regions == 1:
        box = read_numbers(raw.get("box"), 4)
        if box is None:
            return ReadAction(MALFORMED, reason=f"box {describe(raw.get('box'))} is not 4 finite numbers")
        return ReadAction(REGION, box, boxes=box[None, :], search=wants_search, query=query)
    boxes = read_boxes(raw.get("box"), raw.get("count"), max_regions)
    if isinstance(boxes, str):
        return ReadAction(MALFORMED, reason=boxes)
    return ReadAction(REGION, boxes[0], boxes=boxes, search=wants_search, query=query)
