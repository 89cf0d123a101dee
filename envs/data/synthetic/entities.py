"""The knowledge base of the synthetic benchmark: every shape x colour x pattern, with its text."""

from __future__ import annotations

import itertools
from dataclasses import dataclass


SHAPES: tuple[str, ...] = ("circle", "triangle", "square", "diamond", "hexagon", "star", "cross", "heart")
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (205, 35, 35),
    "orange": (240, 135, 25),
    "yellow": (240, 215, 35),
    "green": (40, 150, 55),
    "cyan": (40, 195, 205),
    "blue": (35, 65, 200),
    "purple": (125, 45, 165),
    "pink": (240, 130, 185),
    "brown": (125, 75, 35),
    "gray": (125, 125, 125),
}
PATTERNS: tuple[str, ...] = ("plain", "striped", "dotted", "checkered", "ringed")
_LIGHT = {"yellow", "cyan", "pink", "orange"}
@dataclass(frozen=True)
class Entity:
    """One knowledge-base entry: a shape of one colour with one pattern."""

    index: int
    shape: str
    colour: str
    pattern: str

    @property
    def id(self) -> str:
        return f"{self.colour}-{self.pattern}-{self.shape}"

    @property
    def text(self) -> str:
        """The candidate text, e.g. ``"a red striped hexagon"``."""
        return f"a {self.colour} {self.pattern} {self.shape}"

    @property
    def ink(self) -> tuple[int, int, int]:
        """Colour of the pattern: dark on light bodies, light on dark ones."""
        return (25, 25, 25) if self.colour in _LIGHT else (245, 245, 245)


ENTITIES: tuple[Entity, ...] = tuple(
    Entity(i, shape, colour, pattern) for i, (shape, colour, pattern) in enumerate(itertools.product(SHAPES, COLOURS, PATTERNS))
)
"""The knowledge base, in a fixed order (``ENTITIES[i].index == i``)."""
