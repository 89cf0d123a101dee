"""The README and docs/ stay true to the repository: links resolve, commands name real things.

A reader follows links and copies commands; both break silently when a file or a target
moves. Checked here: every relative link (and its #anchor) of README.md and docs/*.md, every
``make`` target, recipe, example and ``python -m`` module named in code, and that the README
stays a one-screen entry point that points nowhere outside the repository.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)|!\[[^\]]*\]\(([^)\s]+)\)")
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    outside_fences = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#{1,6} (.+)$", outside_fences, flags=re.M)}


def code_spans(page: Path) -> str:
    return "\n".join(CODE.findall(page.read_text()))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_and_anchors_resolve(page):
    for match in LINK.finditer(page.read_text()):
        target = match.group(1) or match.group(2)
        if re.match(r"[a-z]+://|mailto:", target):
            continue
        path, _, anchor = target.partition("#")
        resolved = (page.parent / path).resolve() if path else page
        assert resolved.exists(), f"{page.name}: link {target!r} points to a missing file"
        assert ROOT in resolved.parents or resolved == ROOT, f"{page.name}: link {target!r} leaves the repository"
        if anchor:
            assert anchor in anchors(resolved), f"{page.name}: link {target!r}: no heading with that anchor"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_commands_name_real_targets_recipes_and_modules(page):
    code = code_spans(page)
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"\bmake ([a-z][a-z-]*)", code):
        assert re.search(rf"^{target}:", makefile, flags=re.M), f"{page.name}: `make {target}` is not a Makefile target"
    for script in set(re.findall(r"(?<![\w/])((?:recipes|examples)/[\w/]+\.py)\b", code)):
        assert (ROOT / script).is_file(), f"{page.name}: {script} does not exist"
    for module in set(re.findall(r"python -m ((?:agents|envs|rewards)[\w.]*)", code)):
        assert importlib.util.find_spec(module) is not None, f"{page.name}: python -m {module}: no such module"


def test_the_readme_fits_a_screen_and_points_only_inside_the_repository():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 250
    for page in PAGES:
        assert "../shared" not in page.read_text(), f"{page.name} points outside the repository"


def test_the_readme_custom_agent_example_runs_on_a_pool_file(scene_pool_files):
    # The quick start a custom agent copies first: run as printed, on a small pool file.
    section = (ROOT / "README.md").read_text().split("## Your own agent", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert 'dataset="my_pools.jsonl"' in code
    namespace: dict = {}
    exec(code.replace('"my_pools.jsonl"', repr(str(scene_pool_files["val"]))), namespace)
    assert namespace["i"] == len(namespace["env"].unwrapped.pools) - 1 and namespace["terminated"]
    assert namespace["info"]["outcome"] == "region"
