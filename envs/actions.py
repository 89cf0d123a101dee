"""The env's action vocabulary and its one reader: what counts as a FULL, a REGION or a malformed action.

Everything that turns a user's object into an env action goes through :func:`read_action`
(the native ``Dict`` action) or :func:`read_flat_action` (the flat ``Box(0, 1, (5,))``
action of :class:`envs.wrappers.FlatBoxAction`). Both are total: they return a result for
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
from typing import Any

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


def describe(value: Any) -> str:
    """A short ``repr`` for error messages: bounded length and depth, never raises."""
    try:
        return _REASON_REPR.repr(value)
    except Exception:  # a user object's __repr__ may raise anything
        return f"<{type(value).__name__} object>"


def read_decision(value: Any) -> int | None:
    """0 or 1 for a valid decision (see the module rules), ``None`` otherwise."""
    if isinstance(value, bool) or isinstance(value, np.bool_):
        return None
    if isinstance(value, (int, np.integer)):
        number = int(value)
    elif isinstance(value, np.ndarray) and value.shape == () and np.issubdtype(value.dtype, np.integer):
        number = int(value.item())
    else:
        return None
    return number if number in (FULL, REGION) else None


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


def read_action(action: Any) -> ReadAction:
    """Read a native action (``{"decision": 0|1, "box": [x1, y1, x2, y2]}``); never raises."""
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
    return ReadAction(REGION, box)


def read_flat_action(action: Any, threshold: float = 0.5) -> dict | MalformedAction:
    """Map a flat ``[d, x1, y1, x2, y2]`` action to a native one; never raises.

    ``d >= threshold`` is REGION, otherwise FULL. The 5 values must be finite real
    numbers (a list/tuple or a ``(5,)`` array); anything else (a wrong shape, NaN, an
    overflowing integer, strings, ragged input) is a :class:`MalformedAction`.
    """
    values = read_numbers(action, 5)
    if values is None:
        return MalformedAction(f"flat action {describe(action)} is not 5 finite numbers [d, x1, y1, x2, y2]")
    return {"decision": REGION if values[0] >= threshold else FULL, "box": values[1:]}
