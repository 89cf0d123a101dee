"""Query pools: the data format every part of the project reads.

A query-pool file is JSONL, one record per query::

    {"query_id": "q1", "question": "Which building is this?", "image": "images/q1.jpg",
     "box": [x1, y1, x2, y2],                       # optional, original-image pixels
     "candidates": [{"id": "c1", "image": "kb/c1.jpg", "text": "...", "positive": true}, ...],
     "gold_ids": ["c1"],                            # optional: the query's gold KB entities
     "kb": "kb.jsonl"}                              # optional: the knowledge base the pool came from

Paths are relative to the data root (by default the file's folder). A candidate has an
image, a text, or both. The two optional fields serve the env's SEARCH action
(:class:`envs.region_rerank.RegionRerankEnv` with ``search=True``): ``kb`` names the
knowledge-base file the pool was retrieved from (the format of
:func:`envs.data.kb_index.load_kb_file`), so a pool knows where to search again; ``gold_ids``
names the query's gold entities, by which a re-retrieved pool's positives are judged
(without it, the ids of the positive candidates: a pool that lacks its positive then
cannot recover it). Files without them load exactly as before. Training keeps only queries whose pool holds a positive (as the
paper does) and reports how many it dropped; evaluation keeps every query so CondR@1
can be reported.

:func:`load_query_pools` validates a file and returns a :class:`QueryDataset`;
:func:`write_query_pools` writes pools back (adapters and generators use it);
:func:`load_image` reads one image with a decompression-bomb guard and
:func:`read_image_size` checks one from its header; :class:`ImageCache` shares decoded
images between envs.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError
from envs.atomic import atomic_open

Purpose = Literal["train", "eval"]

DEFAULT_MAX_IMAGE_PIXELS = 89_478_485
"""Largest image (width x height) read before refusing it as a decompression bomb.

Equal to Pillow's own default ``PIL.Image.MAX_IMAGE_PIXELS`` (about 0.25 GB of RGBA).
Pillow also refuses images over twice its global limit when opening them, so a larger
value here only takes effect if ``PIL.Image.MAX_IMAGE_PIXELS`` is raised as well.
"""

logger = logging.getLogger(__name__)


class DataError(ValueError):
    """Bad input data; the message names the file, line and field."""


@dataclass(frozen=True)
class Candidate:
    """One entry of a candidate pool. Paths are absolute once loaded."""

    id: str
    positive: bool
    image: Path | None = None
    text: str | None = None


@dataclass(frozen=True)
class QueryPool:
    """One query: the question, its image, its candidate pool and an optional target box."""

    query_id: str
    question: str
    image: Path
    candidates: tuple[Candidate, ...]
    box: tuple[float, float, float, float] | None = None
    """Annotated target region in original-image pixels ``[x1, y1, x2, y2]``."""
    where: str = field(default="", compare=False)
    """``"file:line"`` of the record it was loaded from ("" when built in memory), so an
    image that fails later (at ``reset``) is reported with its record."""
    gold_ids: tuple[str, ...] | None = field(default=None, compare=False)
    """The query's gold knowledge-base entity ids (``None``: the positive candidates' ids,
    see :attr:`gold`). Only a re-retrieved pool (SEARCH) reads it."""
    kb: Path | None = field(default=None, compare=False)
    """The knowledge-base file (:func:`envs.data.kb_index.load_kb_file`) the pool was retrieved
    from, where SEARCH looks again; ``None``: the pool names none."""

    @property
    def positives(self) -> np.ndarray:
        """Boolean relevance labels in pool order, shape ``(K,)``."""
        return np.array([c.positive for c in self.candidates], dtype=bool)

    @property
    def has_positive(self) -> bool:
        return any(c.positive for c in self.candidates)

    @property
    def gold(self) -> tuple[str, ...]:
        """Ids that count as positives in any pool of this query: :attr:`gold_ids`, else the
        positive candidates' ids. Labels come from the data only, never from a search."""
        if self.gold_ids is not None:
            return self.gold_ids
        return tuple(c.id for c in self.candidates if c.positive)


@dataclass
class QueryDataset(Sequence[QueryPool]):
    """The pools of one file plus what loading dropped (a ``Sequence`` of ``QueryPool``)."""

    pools: list[QueryPool]
    source: str = "<memory>"
    dropped_without_positive: int = 0

    def __len__(self) -> int:
        return len(self.pools)

    def __getitem__(self, index):  # type: ignore[override]
        return self.pools[index]


class _BadImage(Exception):
    """Why an image file cannot be used; the caller adds where it was referenced."""


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _decode_fully(image: Image.Image, path: Path) -> None:
    """Decode every pixel of an opened image: truncated or corrupt data only shows here."""
    try:
        image.load()
    except Exception as exc:  # Pillow's decoders raise OSError, SyntaxError, ValueError, zlib/struct errors...
        raise _BadImage(f"unreadable image {path} (truncated or corrupt): {type(exc).__name__}: {exc}") from exc


def _open_image_header(path: Path, max_pixels: int) -> Image.Image:
    """Open ``path`` lazily (Pillow reads only the header) and apply the pixel guard."""
    if not path.is_file():
        raise _BadImage(f"image file not found: {path}")
    try:
        with warnings.catch_warnings():
            # The size is checked against max_pixels below; Pillow's own warning would only
            # repeat that check against its global default.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as exc:
        raise _BadImage(f"image {path} exceeds Pillow's decompression-bomb limit ({exc})") from exc
    except (UnidentifiedImageError, OSError) as exc:
        raise _BadImage(f"unreadable image {path}: {exc}") from exc
    except Exception as exc:  # a corrupt header can make a Pillow plug-in raise anything
        raise _BadImage(f"unreadable image {path}: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width * height > max_pixels:
        image.close()
        raise _BadImage(
            f"image {path} is {width}x{height} = {width * height} pixels, more than "
            f"max_image_pixels={max_pixels} (decompression-bomb guard)"
        )
    return image


def read_image_size(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> tuple[int, int]:
    """``(width, height)`` of an image, read from its header only (no pixel decoding).

    Raises:
        DataError: naming the path, if the file is missing, unreadable or has more than
            ``max_pixels`` pixels.
    """
    try:
        with _open_image_header(Path(path), max_pixels) as image:
            return image.size
    except _BadImage as exc:
        raise DataError(str(exc)) from exc


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> Image.Image:
    """Read an image fully into memory as RGB.

    The size is checked from the file header before any pixels are decoded, so an
    oversized file (a decompression bomb) is refused cheaply. Pillow's global
    ``MAX_IMAGE_PIXELS`` is left untouched.

    Raises:
        DataError: naming the path, if the file is missing, unreadable, truncated or has
            more than ``max_pixels`` pixels.
    """
    path = Path(path)
    try:
        with _open_image_header(path, max_pixels) as image:
            _decode_fully(image, path)
            return image.convert("RGB")
    except _BadImage as exc:
        raise DataError(str(exc)) from exc


class ImageCache:
    """Decoded images shared by several envs: the rollouts of a query decode its image once.

    A least-recently-used cache bounded by total pixels, keyed by the resolved path and the
    file's size and modification time (a file rewritten in place is decoded again). Callers
    share the returned image and must not modify it in place (the env never does: crops and
    resizes make new images). Thread-safe.

    Args:
        max_pixels: total width x height kept (64 Mpx by default, about 200 MB of RGB).
    """

    def __init__(self, max_pixels: int = 64 * 2**20) -> None:
        if max_pixels < 1:
            raise ValueError(f"ImageCache max_pixels must be >= 1, got {max_pixels}")
        self.max_pixels = max_pixels
        self._images: OrderedDict[tuple, Image.Image] = OrderedDict()
        self._pixels = 0
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def load(self, path: str | os.PathLike) -> Image.Image:
        """:func:`load_image` of ``path``, decoded once while it stays cached."""
        path = Path(path)
        try:
            stat = path.stat()
        except OSError:
            return load_image(path)  # load_image raises the located DataError
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        with self._lock:
            image = self._images.get(key)
            if image is not None:
                self._images.move_to_end(key)
                self.hits += 1
                return image
        image = load_image(path)  # decoded outside the lock: other paths need not wait
        with self._lock:
            self.misses += 1
            if key not in self._images:
                self._images[key] = image
                self._pixels += image.width * image.height
                while self._pixels > self.max_pixels and len(self._images) > 1:
                    _, dropped = self._images.popitem(last=False)
                    self._pixels -= dropped.width * dropped.height
            return self._images[key]


def _require(record: dict, key: str, kind: type | tuple[type, ...], where: str, context: str = "") -> Any:
    """``record[key]`` if present and of ``kind`` (bool is never accepted as a number;
    a string must be valid Unicode: JSON's ``\\ud800`` escapes can hold lone surrogates)."""
    name = f"{context}{key}"
    if key not in record:
        raise DataError(f"{where}: missing field '{name}'")
    value = record[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise DataError(f"{where}: field '{name}' must be {expected}, got {type(value).__name__} {_short(value)}")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise DataError(f"{where}: field '{name}' is not valid Unicode ({exc.reason} at character {exc.start})") from None
    return value


def _require_nonempty_str(record: dict, key: str, where: str, context: str = "") -> str:
    value = _require(record, key, str, where, context)
    if not value.strip():
        raise DataError(f"{where}: field '{context}{key}' must be a non-empty string")
    return value


def _optional_str(record: dict, key: str, where: str, context: str = "") -> str | None:
    if record.get(key) is None:
        return None
    return _require_nonempty_str(record, key, where, context)


def _parse_box(value: Any, where: str) -> tuple[float, float, float, float]:
    if (
        not isinstance(value, list)
        or len(value) != 4
        or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    ):
        raise DataError(f"{where}: field 'box' must be a list of 4 numbers [x1, y1, x2, y2], got {_short(value)}")
    try:
        x1, y1, x2, y2 = (float(v) for v in value)
    except OverflowError:  # JSON integers have no size limit
        raise DataError(f"{where}: field 'box' holds a number too large for a float: {_short(value)}") from None
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or min(x1, y1) < 0 or not (x1 < x2 and y1 < y2):
        raise DataError(
            f"{where}: field 'box' must satisfy 0 <= x1 < x2 and 0 <= y1 < y2 in original-image pixels, "
            f"got {_short(value)}"
        )
    return x1, y1, x2, y2


def _absolute(base: Path, relative: str) -> Path:
    # abspath normalises '..' without resolving symlinks (image folders are often links).
    return Path(os.path.abspath(base / relative))


def _parse_candidate(entry: Any, index: int, where: str, base: Path) -> Candidate:
    context = f"candidates[{index}]."
    if not isinstance(entry, dict):
        raise DataError(f"{where}: field 'candidates[{index}]' must be an object, got {_short(entry)}")
    candidate_id = _require_nonempty_str(entry, "id", where, context)
    positive = _require(entry, "positive", bool, where, context)
    image = _optional_str(entry, "image", where, context)
    text = _optional_str(entry, "text", where, context)
    if image is None and text is None:
        raise DataError(f"{where}: field 'candidates[{index}]' (id {candidate_id!r}) has neither 'image' nor 'text'")
    return Candidate(
        id=candidate_id,
        positive=positive,
        image=_absolute(base, image) if image is not None else None,
        text=text,
    )


def _parse_record(record: Any, where: str, base: Path) -> QueryPool:
    if not isinstance(record, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {_short(record)}")
    query_id = _require_nonempty_str(record, "query_id", where)
    question = _require(record, "question", str, where)
    image = _require_nonempty_str(record, "image", where)
    box = _parse_box(record["box"], where) if record.get("box") is not None else None
    entries = _require(record, "candidates", list, where)
    if not entries:
        raise DataError(f"{where}: field 'candidates' is empty (query {query_id!r} has no candidate pool)")
    candidates = tuple(_parse_candidate(entry, i, where, base) for i, entry in enumerate(entries))
    gold_ids = _parse_gold_ids(record["gold_ids"], where) if record.get("gold_ids") is not None else None
    kb = _optional_str(record, "kb", where)
    first_index: dict[str, int] = {}
    for i, candidate in enumerate(candidates):
        if candidate.id in first_index:
            raise DataError(
                f"{where}: field 'candidates[{i}].id': duplicate candidate id {candidate.id!r} "
                f"(also candidates[{first_index[candidate.id]}]) in query {query_id!r}"
            )
        first_index[candidate.id] = i
    return QueryPool(
        query_id=query_id,
        question=question,
        image=_absolute(base, image),
        candidates=candidates,
        box=box,
        where=where,
        gold_ids=gold_ids,
        kb=_absolute(base, kb) if kb is not None else None,
    )


def _parse_gold_ids(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise DataError(f"{where}: field 'gold_ids' must be a list of non-empty strings, got {_short(value)}")
    for v in value:
        _require({"gold_ids": v}, "gold_ids", str, where)  # the Unicode check
    return tuple(value)


def _verify_pool_images(
    pool: QueryPool, where: str, max_pixels: int, sizes: dict[Path, tuple[int, int]], decode: bool
) -> None:
    """Check every image of ``pool`` (headers, and every pixel with ``decode``);
    ``sizes`` caches files already seen."""

    def size_of(path: Path, field_name: str) -> tuple[int, int]:
        if path not in sizes:
            try:
                with _open_image_header(path, max_pixels) as image:
                    if decode:
                        _decode_fully(image, path)
                    sizes[path] = image.size
            except _BadImage as exc:
                raise DataError(f"{where}: field '{field_name}': {exc}") from exc
        return sizes[path]

    if pool.kb is not None and not pool.kb.is_file():
        raise DataError(f"{where}: field 'kb': knowledge-base file not found: {pool.kb}")
    width, height = size_of(pool.image, "image")
    if pool.box is not None and (pool.box[2] > width or pool.box[3] > height):
        raise DataError(f"{where}: field 'box' {list(pool.box)} lies outside the {width}x{height} query image")
    for i, candidate in enumerate(pool.candidates):
        if candidate.image is not None:
            size_of(candidate.image, f"candidates[{i}].image")


def iter_jsonl(path: str | os.PathLike) -> Iterator[tuple[int, str, Any]]:
    """``(line_number, "file:line", record)`` for every non-blank line of a JSONL file
    (gzip-compressed when its name ends in ``.gz``).

    Raises:
        DataError: naming the file and 1-based line of a missing file, an unreadable gzip
            stream, a line that is not UTF-8, one that is not valid JSON, nests too deeply
            for the parser, or holds an integer too long to read.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: file not found")
    for line_number, raw in _raw_lines(source):
        where = f"{source}:{line_number}"
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(f"{where}: not valid UTF-8 ({exc.reason} at byte {exc.start})") from exc
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: invalid JSON: {exc.msg} (column {exc.colno})") from exc
        except RecursionError:
            raise DataError(f"{where}: invalid JSON: nested too deeply to read") from None
        except ValueError as exc:  # e.g. an integer longer than Python's int digit limit
            raise DataError(f"{where}: invalid JSON: {exc}") from None
        yield line_number, where, record


def _raw_lines(source: Path) -> Iterator[tuple[int, bytes]]:
    """The file's lines as bytes, numbered from 1; a broken gzip stream is a located DataError."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as handle:
        line_number = 0
        while True:
            try:
                raw = handle.readline()
            except (OSError, EOFError) as exc:  # gzip: truncated or not gzip at all
                raise DataError(f"{source}:{line_number + 1}: not a readable gzip file: {exc}") from exc
            if not raw:
                return
            line_number += 1
            yield line_number, raw


def load_query_pools(
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
    *,
    purpose: Purpose = "eval",
    verify_images: bool = True,
    decode_images: bool = True,
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
) -> QueryDataset:
    """Read and validate a query-pool JSONL file.

    Args:
        path: the JSONL file (format in the module docstring). Blank lines are skipped.
        root: folder the record paths are relative to; defaults to the file's folder.
            Loaded paths are absolute.
        purpose: ``"train"`` drops queries whose pool has no positive (as the paper does)
            and logs how many; ``"eval"`` keeps every query so CondR@1 can be reported.
        verify_images: check that every query and candidate image exists, is readable
            and has at most ``max_image_pixels`` pixels.
        decode_images: with ``verify_images``, decode every image fully (each file
            once), so a truncated or corrupt file fails here, not in the middle of
            training. ``False`` reads only file headers (much faster on huge datasets;
            a corrupt file then fails at ``reset``, still naming its record).
        max_image_pixels: decompression-bomb guard, see :data:`DEFAULT_MAX_IMAGE_PIXELS`.

    Returns:
        The pools in file order; ``dropped_without_positive`` counts what ``"train"``
        dropped.

    Raises:
        DataError: naming the file, the 1-based line and the field (and the value where
            it helps) for a missing file, invalid JSON, a missing or mistyped field, a
            duplicate query id (both lines named), a duplicate candidate id, an empty
            pool, a malformed box (overflowing numbers included), a string that is not
            valid Unicode, or a missing/unreadable/truncated/oversized image.
    """
    if purpose not in ("train", "eval"):
        raise ValueError(f"purpose must be 'train' or 'eval', got {purpose!r}")
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: query-pool file not found")
    base = Path(os.path.abspath(root if root is not None else source.parent))
    pools = _read_pools(source, base, verify_images, decode_images, max_image_pixels)
    return _dataset_for_purpose(pools, source, purpose)


def _read_pools(
    source: Path, base: Path, verify_images: bool, decode_images: bool, max_image_pixels: int
) -> list[QueryPool]:
    """Every record of ``source`` parsed (paths under ``base``) and checked, in file order;
    raises :class:`DataError` as :func:`load_query_pools` says."""
    pools: list[QueryPool] = []
    first_line: dict[str, int] = {}
    sizes: dict[Path, tuple[int, int]] = {}
    for line_number, where, record in iter_jsonl(source):
        pool = _parse_record(record, where, base)
        if pool.query_id in first_line:
            raise DataError(
                f"{where}: field 'query_id': duplicate query id {pool.query_id!r} "
                f"(first at line {first_line[pool.query_id]})"
            )
        first_line[pool.query_id] = line_number
        if verify_images:
            _verify_pool_images(pool, where, max_image_pixels, sizes, decode_images)
        pools.append(pool)
    if not pools:
        raise DataError(f"{source}: no query records")
    return pools


def _dataset_for_purpose(pools: list[QueryPool], source: Path, purpose: Purpose) -> QueryDataset:
    """The dataset of ``pools``: for ``"train"`` without the pools that hold no positive
    (counted and logged), for ``"eval"`` all of them."""
    dropped = 0
    if purpose == "train":
        kept = [pool for pool in pools if pool.has_positive]
        dropped = len(pools) - len(kept)
        if dropped:
            logger.warning(
                "%s: dropped %d of %d queries without a positive in their pool (purpose='train')",
                source, dropped, len(pools),
            )
        pools = kept
    return QueryDataset(pools=pools, source=str(source), dropped_without_positive=dropped)


def _relative_to_root(path: Path, root: Path) -> str:
    """POSIX path relative to ``root`` when inside it, else the absolute path."""
    absolute = Path(os.path.abspath(path))
    try:
        return absolute.relative_to(root).as_posix()
    except ValueError:
        return str(absolute)


def _pool_record(pool: QueryPool, root: Path) -> dict:
    record: dict[str, Any] = {
        "query_id": pool.query_id,
        "question": pool.question,
        "image": _relative_to_root(pool.image, root),
    }
    if pool.box is not None:
        record["box"] = [float(v) for v in pool.box]
    candidates = []
    for candidate in pool.candidates:
        entry: dict[str, Any] = {"id": candidate.id}
        if candidate.image is not None:
            entry["image"] = _relative_to_root(candidate.image, root)
        if candidate.text is not None:
            entry["text"] = candidate.text
        entry["positive"] = bool(candidate.positive)
        candidates.append(entry)
    record["candidates"] = candidates
    if pool.gold_ids is not None:
        record["gold_ids"] = list(pool.gold_ids)
    if pool.kb is not None:
        record["kb"] = _relative_to_root(pool.kb, root)
    return record


def write_query_pools(
    pools: Iterable[QueryPool],
    path: str | os.PathLike,
    root: str | os.PathLike | None = None,
) -> Path:
    """Write pools as query-pool JSONL that :func:`load_query_pools` reads back.

    Image paths inside ``root`` (default: the output file's folder) are written relative
    to it, so the data folder can be moved as a whole; paths outside it are written
    absolute. The file is written to a temporary name and renamed, so a crash never
    leaves a half-written file behind. Returns the output path.
    """
    out = Path(path)
    base = Path(os.path.abspath(root if root is not None else out.parent))
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(out, "w", encoding="utf-8") as handle:
        for pool in pools:
            handle.write(json.dumps(_pool_record(pool, base), ensure_ascii=False) + "\n")
    return out
