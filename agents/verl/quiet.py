"""Silence exactly the verl start-up messages a user of this project cannot act on.

verl 0.9.1 warns in every process that imports its engines that engines this project
never uses are not installed (megatron, mindspeed, torchtitan, veomni, automodel), and
its platform manager logs "No supported accelerator detected ... Falling back to
'nvidia'" on every CPU-only process. Both are filtered by their exact text; every other
warning of verl stays. :func:`install` runs where verl runs: in the plug-in verl loads on
``import verl`` (:mod:`agents.verl.plugin`, every verl process), in the CPU platform module
(:mod:`agents.verl.cpu`, loaded before verl's engines) and in
:func:`agents.verl.launch.launch`; importing :mod:`agents` alone installs nothing.
"""

from __future__ import annotations

import logging
import re
import warnings

UNUSED_ENGINES = ("megatron", "mindspeed", "torchtitan", "veomni", "automodel")
ENGINE_WARNING = rf"({'|'.join(UNUSED_ENGINES)}) engine is not available: ModuleNotFoundError"
PLATFORM_MESSAGES = re.compile(
    r"No supported accelerator detected|Platform 'nvidia' \(PlatformCUDA\) is registered but not available"
)


class _DropPlatformFallback(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not PLATFORM_MESSAGES.search(record.getMessage())


def install() -> None:
    """Install the warning filter and the log filter (idempotent)."""
    warnings.filterwarnings("ignore", message=ENGINE_WARNING, category=UserWarning)
    logger = logging.getLogger("verl.plugin.platform.platform_manager")
    if not any(isinstance(f, _DropPlatformFallback) for f in logger.filters):
        logger.addFilter(_DropPlatformFallback())
