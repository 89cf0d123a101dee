"""The Wikipedia knowledge base (E-VQA's format) and the local copies of its images.

The E-VQA knowledge base (``encyclopedic_kb_wiki.json``; EchoSight's 100K InfoSeek KB
uses the same format) is one JSON object mapping a Wikipedia URL to an entry with
``title``, ``section_titles``, ``section_texts``, ``image_urls``, ... The 2M-entry file
is far larger than memory once parsed, so :func:`load_knowledge_base` streams it and
keeps only the entries a set of pools needs.

KB images are URLs; the pixels are downloaded separately. :class:`KbImages` finds an
entity's first local image through mapping files (JSON, or OMGM's wiki-image CSVs) and,
failing that, by the URL's file name under a root folder.
"""

from __future__ import annotations

import csv
import json
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Iterator, Mapping, Sequence, TextIO
from urllib.parse import unquote

from envs.data.pools import DataError, read_image_size


def entity_key(url: str) -> str:
    """Comparable form of a Wikipedia URL (or entity id): percent-decoded, spaces as
    underscores, ``https``, no trailing slash, so one article matches however it was written."""
    key = unquote(url.strip()).replace(" ", "_").rstrip("/")
    return "https://" + key[len("http://"):] if key.startswith("http://") else key


def title_from_url(url: str) -> str:
    """Article title spelled by a Wikipedia URL (``.../wiki/Eiffel_Tower`` -> ``Eiffel Tower``)."""
    return unquote(url.rstrip("/").rsplit("/", 1)[-1]).replace("_", " ")


def normalize_title(title: str) -> str:
    """A Wikipedia title in MediaWiki's canonical form, so one article matches however its
    title was written: Unicode NFC, underscores as spaces, whitespace runs collapsed and
    trimmed, the first character upper-cased (MediaWiki treats it as case-insensitive; the
    rest of a title is case-sensitive). This is how Wikipedia spells a title in its URLs
    (``.../wiki/<title with underscores>``, the keys of E-VQA's and EchoSight's KBs), and
    how InfoSeek's ``entity_text`` / Wiki6M's ``wikipedia_title`` (titles of the 2022-10-01
    dump) are matched to KB entries here."""
    text = " ".join(unicodedata.normalize("NFC", title).replace("_", " ").split())
    return text[:1].upper() + text[1:]


@dataclass(frozen=True)
class KbEntry:
    """The parts of a knowledge-base article a candidate is built from."""

    url: str
    title: str
    lead: str
    """Text of the first (lead) section."""
    image_urls: tuple[str, ...]


class _JsonObjectStream:
    """Reads the members of one top-level JSON object chunk by chunk."""

    # A single entry this large means the file is not what it claims to be.
    MAX_ENTRY_CHARS = 1 << 28

    def __init__(self, handle: TextIO, source: Path, chunk_chars: int) -> None:
        self.handle, self.source, self.chunk_chars = handle, source, chunk_chars
        self.decoder = json.JSONDecoder()
        self.buffer, self.pos, self.consumed, self.eof = "", 0, 0, False

    def _read_more(self) -> None:
        data = self.handle.read(self.chunk_chars)
        if not data:
            self.eof = True
            return
        self.consumed += self.pos
        self.buffer, self.pos = self.buffer[self.pos :] + data, 0

    def _error(self, message: str) -> DataError:
        return DataError(f"{self.source}: invalid JSON near character {self.consumed + self.pos}: {message}")

    def peek(self) -> str:
        """Next non-whitespace character ('' at end of file), not consumed."""
        while True:
            while self.pos < len(self.buffer) and self.buffer[self.pos] in " \t\n\r":
                self.pos += 1
            if self.pos < len(self.buffer):
                return self.buffer[self.pos]
            if self.eof:
                return ""
            self._read_more()

    def expect(self, char: str) -> None:
        found = self.peek()
        if found != char:
            raise self._error(f"expected {char!r}, found {found or 'end of file'!r}")
        self.pos += 1

    def value(self) -> Any:
        if not self.peek():
            raise self._error("unexpected end of file")
        while True:
            try:
                value, end = self.decoder.raw_decode(self.buffer, self.pos)
            except json.JSONDecodeError as exc:
                if self.eof:
                    raise self._error(exc.msg) from exc
                end = None
            # A value touching the end of the buffer may continue in the next chunk.
            if end is not None and (end < len(self.buffer) or self.eof):
                self.pos = end
                return value
            if len(self.buffer) - self.pos > self.MAX_ENTRY_CHARS:
                raise self._error(f"a single value exceeds {self.MAX_ENTRY_CHARS} characters")
            self._read_more()


def iter_json_object(path: str | os.PathLike, chunk_chars: int = 1 << 24) -> Iterator[tuple[str, Any]]:
    """Yield the ``(key, value)`` members of a file holding one JSON object, in file
    order, holding at most about one chunk plus one member in memory."""
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: knowledge-base file not found")
    with source.open(encoding="utf-8") as handle:
        stream = _JsonObjectStream(handle, source, chunk_chars)
        stream.expect("{")
        if stream.peek() == "}":
            return
        while True:
            key = stream.value()
            if not isinstance(key, str):
                raise stream._error("object keys must be strings")
            stream.expect(":")
            yield key, stream.value()
            if stream.peek() == ",":
                stream.pos += 1
                continue
            stream.expect("}")
            return


def _string_list(value: Any, field_name: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: field {field_name!r} must be a list of strings")
    return value


def _kb_entry(url: str, value: Any, where: str) -> KbEntry:
    if not isinstance(value, dict):
        raise DataError(f"{where}: must be an object, got {type(value).__name__}")
    title = value.get("title")
    if not isinstance(title, str):
        raise DataError(f"{where}: field 'title' must be a string, got {type(title).__name__}")
    texts = _string_list(value.get("section_texts"), "section_texts", where)
    images = _string_list(value.get("image_urls"), "image_urls", where)
    return KbEntry(url=url, title=title, lead=texts[0] if texts else "", image_urls=tuple(images))


def load_knowledge_base(path: str | os.PathLike, keep: Collection[str] | None = None) -> dict[str, KbEntry]:
    """Read knowledge-base entries keyed by :func:`entity_key` of their URL.

    Args:
        path: the KB JSON (``{wikipedia_url: entry}``), streamed.
        keep: entity keys to keep (the others are parsed and discarded); ``None`` keeps all.

    Raises:
        DataError: naming the file and the entry's URL for a malformed entry.
    """
    return scan_knowledge_base(path, keep)[0]


def iter_knowledge_base(path: str | os.PathLike) -> Iterator[KbEntry]:
    """Every entry of a KB JSON in file order, validated, streamed (one entry in memory at a time).

    Raises:
        DataError: naming the file and the entry's URL for a malformed entry.
    """
    source = Path(path)
    for url, value in iter_json_object(source):
        yield _kb_entry(url, value, f"{source}: entry {url!r}")


def scan_knowledge_base(
    path: str | os.PathLike, keep: Collection[str] | None = None, titles: Collection[str] = ()
) -> tuple[dict[str, KbEntry], dict[str, list[str]]]:
    """One streaming pass over a KB JSON: the entries to keep, and which entries bear some titles.

    Args:
        path: the KB JSON (``{wikipedia_url: entry}``).
        keep: entity keys (:func:`entity_key`) of the entries to return; ``None``: all.
        titles: :func:`normalize_title` forms to look for, matched against each entry's
            ``title`` field and the title its URL spells.

    Returns:
        ``(entries by entity key, {normalized title: [entity keys bearing it, in file order]})``;
        a title no entry bears is absent from the second mapping.

    Raises:
        DataError: naming the file and the entry's URL for a malformed kept entry.
    """
    source = Path(path)
    wanted = set(titles)
    entries: dict[str, KbEntry] = {}
    by_title: dict[str, list[str]] = {}
    for url, value in iter_json_object(source):
        key = entity_key(url)
        if keep is None or key in keep:
            entries[key] = _kb_entry(url, value, f"{source}: entry {url!r}")
        if wanted:
            title = value.get("title") if isinstance(value, dict) else None
            names = {normalize_title(title_from_url(url))}
            if isinstance(title, str):
                names.add(normalize_title(title))
            for name in names & wanted:
                keys = by_title.setdefault(name, [])
                if key not in keys:
                    keys.append(key)
    return entries, by_title


def candidate_text(title: str, lead: str, max_chars: int) -> str:
    """``"<title>. <lead section>"`` cut at a word boundary to at most ``max_chars``."""
    text = f"{title}. {' '.join(lead.split())}" if lead.strip() else title
    if len(text) <= max_chars:
        return text
    cut = text[:max_chars]
    return cut[: cut.rfind(" ")] if " " in cut else cut


def _read_image_map_csv(source: Path, handle: TextIO) -> dict[str, list[str]]:
    reader = csv.reader(handle)
    header = next(reader, None)
    if header is None:
        raise DataError(f"{source}:1: empty image-map CSV")
    names = [h.strip() for h in header]
    # OMGM's wiki-image CSVs are read by position in its code: title, image URL, img_path.
    title_col = names.index("title") if "title" in names else 0
    path_col = names.index("img_path") if "img_path" in names else 2
    url_col = next((names.index(n) for n in ("image_URL", "image_url") if n in names), None)
    mapping: dict[str, list[str]] = {}
    for row in reader:
        if not row:
            continue
        if len(row) <= max(title_col, path_col):
            raise DataError(f"{source}:{reader.line_num}: field 'img_path': row has {len(row)} columns")
        keys = [row[title_col]] + ([row[url_col]] if url_col is not None and url_col < len(row) else [])
        for key in keys:
            mapping.setdefault(key.strip(), []).append(row[path_col])
    return mapping


def load_kb_image_map(path: str | os.PathLike) -> dict[str, list[str]]:
    """Read a KB-image mapping: key -> image paths (relative to the KB-image root).

    Keys may be image URLs, article URLs or article titles. Accepted files:

    - ``.json``: ``{key: path}`` or ``{key: [path, ...]}``;
    - ``.csv``: OMGM's ``wiki_image_url_part_*_processed.csv`` (title, ``image_URL``,
      ``img_path``, ...): both the title and the image URL map to ``img_path``.
    """
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: KB-image map not found")
    if source.suffix.lower() == ".csv":
        with source.open(encoding="utf-8", newline="") as handle:
            return _read_image_map_csv(source, handle)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{source}: a KB-image map must be a JSON object {{key: path or [paths]}}")
    mapping: dict[str, list[str]] = {}
    for key, value in data.items():
        paths = [value] if isinstance(value, str) else value
        if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
            raise DataError(f"{source}: entry {key!r}: must be a path or a list of paths")
        mapping[key.strip()] = paths
    return mapping


@dataclass
class KbImages:
    """Finds the first readable local image of a knowledge-base entity.

    Tried in order: the mapping under the article's URL (as written, or as
    :func:`entity_key` spells it), then under its title, then for each of the article's
    ``image_urls`` in order the mapping under that URL and the URL's file name directly
    under ``root``. Mapped relative paths are under ``root`` (or the working directory
    without one). Missing and unreadable files are skipped.
    """

    root: Path | None = None
    mapping: Mapping[str, Sequence[str]] = field(default_factory=dict)
    _found: dict[str, Path | None] = field(default_factory=dict, init=False, repr=False)

    def _paths(self, url: str, entry: KbEntry | None, title: str) -> Iterator[Path]:
        base = self.root if self.root is not None else Path()
        for name in dict.fromkeys((url.strip(), entity_key(url), title)):
            for relative in self.mapping.get(name, ()):
                yield base / relative
        for image_url in entry.image_urls if entry else ():
            for relative in self.mapping.get(image_url.strip(), ()):
                yield base / relative
            if self.root is not None:
                yield self.root / unquote(image_url.rstrip("/").rsplit("/", 1)[-1])

    def first_image(self, url: str, entry: KbEntry | None, title: str) -> Path | None:
        """The first readable image of the entity at ``url`` (its KB ``entry``, if any,
        and ``title``), or ``None``; cached per entity."""
        key = entity_key(url)
        if key not in self._found:
            self._found[key] = self.find_first_image(url, entry, title)
        return self._found[key]

    def find_first_image(self, url: str, entry: KbEntry | None, title: str) -> Path | None:
        """:meth:`first_image` without the cache (for one pass over a whole KB)."""
        return next((p for p in self._paths(url, entry, title) if _readable(p)), None)


def _readable(path: Path) -> bool:
    if not path.is_file():
        return False
    try:
        read_image_size(path)
    except DataError:
        return False
    return True


def knowledge_base_items(
    path: str | os.PathLike,
    features: str,
    kb_images: KbImages | None = None,
    *,
    max_text_chars: int = 1000,
    progress: bool = True,
) -> tuple[list, dict[str, int]]:
    """The KB's entries as :class:`envs.data.kb_index.KbItem` s for a :class:`~envs.data.kb_index.KnowledgeBaseIndex`.

    Each item is what a candidate of that entity carries in a query pool: its id is the
    KB's URL key, its image the first readable local image (:meth:`KbImages.find_first_image`,
    the lookup candidates use) and its text ``"<title>. <lead section>"`` cut to
    ``max_text_chars`` (:func:`candidate_text`). Only what ``features`` (``"image"``,
    ``"text"`` or ``"image+text"``) needs is looked up; an item without a local image
    has ``image=None`` and the index counts it.

    Returns:
        ``(items in file order, counts)`` with counts ``entries`` (read) and
        ``duplicate_urls`` (entries whose URL, as :func:`entity_key` spells it, came
        earlier in the file: the first is kept).

    Raises:
        DataError: for a malformed entry (file and URL named), or ``kb_images`` missing
            when ``features`` needs images.
    """
    from tqdm.auto import tqdm

    from envs.data.kb_index import KbItem, check_features

    check_features(features)
    if features != "text" and kb_images is None:
        raise DataError(f"features {features!r} need KB images (a KB-image root or map)")
    items: list[KbItem] = []
    seen: set[str] = set()
    counts = {"entries": 0, "duplicate_urls": 0}
    for entry in tqdm(iter_knowledge_base(path), desc=f"reading {Path(path).name}", unit=" entries", disable=None if progress else True):
        counts["entries"] += 1
        key = entity_key(entry.url)
        if key in seen:
            counts["duplicate_urls"] += 1
            continue
        seen.add(key)
        image = kb_images.find_first_image(entry.url, entry, entry.title) if features != "text" else None
        text = candidate_text(entry.title, entry.lead, max_text_chars) if features != "image" else None
        items.append(KbItem(id=entry.url, image=image, text=text))
    return items, counts
