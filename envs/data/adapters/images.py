"""Where the query images of E-VQA and InfoSeek live on disk.

The public downloads store them in several layouts:

- iNaturalist 2021 (E-VQA ``dataset_name == "inaturalist"``): the original tree, mapped
  from E-VQA's image id with an ``id2name`` JSON (``{image_id: relative file name}``, as
  EchoSight ships), or files renamed flat to ``<image_id>.jpg`` (as OMGM does).
- Google Landmarks v2 (``"landmarks"``): the original nested tree
  ``a/b/c/abc123.jpg`` (first three characters of the id), or flat ``abc123.jpg``.
- InfoSeek / OVEN (``"infoseek"``): the official OVEN layout, nested by the first two
  digits of the id's number, ``oven_images/01/oven_01963180.jpg`` (what the OVEN
  toolkit's ``image_downloads/merge_oven_images.py`` writes, keeping each source image's
  extension, and what UniIR reads as ``oven_images/<image_id[-8:-6]>/<image_id>.jpg``);
  flat ``<image_id>.jpg`` or ``.JPEG`` (EchoSight's InfoSeek folders); or, when neither
  fits, an ``id2image`` JSONL mapping of your own (``{"image_id": ..., "image_path": ...}``
  per line, the file the InfoSeek toolkit's scripts expect you to prepare).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Mapping

from envs.data.pools import DataError, iter_jsonl

LandmarksLayout = Literal["nested", "flat"]
IMAGE_SUFFIXES: tuple[str, ...] = (".jpg", ".JPEG", ".jpeg", ".JPG", ".png")
"""Suffixes tried, in order, for images stored as ``<image_id><suffix>``."""


def _first_existing(stem: Path) -> Path | None:
    for suffix in IMAGE_SUFFIXES:
        candidate = stem.with_name(stem.name + suffix)
        if candidate.is_file():
            return candidate
    return None


def oven_shard(image_id: str) -> str | None:
    """The OVEN image folder of ``image_id``: the first two characters of the part after its
    last ``_`` (``oven_01963180`` -> ``01``), as ``merge_oven_images.py`` shards them."""
    number = image_id.rsplit("_", 1)[-1]
    return number[:2] if len(number) >= 2 and number[:2].isalnum() else None


@dataclass(frozen=True)
class QueryImageRoots:
    """Image folders and layouts for each ``dataset_name`` an annotation can name.

    A root left as ``None`` is only an error when a row actually needs it.
    """

    inaturalist: Path | None = None
    landmarks: Path | None = None
    infoseek: Path | None = None
    landmarks_layout: LandmarksLayout = "nested"
    inat_id2name: Mapping[str, str] | None = None
    """iNaturalist image id -> file name relative to ``inaturalist``; ``None``: flat ``<id>.jpg``."""
    infoseek_id2image: Mapping[str, str] | None = None
    """InfoSeek image id -> path (absolute, or relative to ``infoseek``); ``None``: the OVEN
    layout ``<root>/<2 digits>/<id>.<ext>``, then flat ``<root>/<id>.<ext>``."""

    def resolve(self, dataset_name: str, image_id: str, where: str) -> Path | None:
        """The file holding ``image_id``, or ``None`` when it is not on disk.

        Raises:
            DataError: prefixed with ``where`` for an unknown ``dataset_name`` or a
                dataset whose root was not configured.
        """
        if dataset_name == "inaturalist":
            root = self._root(self.inaturalist, "inaturalist", "--inaturalist-root", where)
            if self.inat_id2name is not None:
                name = self.inat_id2name.get(image_id)
                return root / name if name is not None and (root / name).is_file() else None
            return _first_existing(root / image_id)
        if dataset_name == "landmarks":
            root = self._root(self.landmarks, "landmarks", "--landmarks-root", where)
            folder = root / image_id[0] / image_id[1] / image_id[2] if self.landmarks_layout == "nested" else root
            return _first_existing(folder / image_id)
        if dataset_name == "infoseek":
            if self.infoseek_id2image is not None:
                mapped = self.infoseek_id2image.get(image_id)
                if mapped is None:
                    return None
                path = Path(mapped) if self.infoseek is None else self.infoseek / mapped
                return path if path.is_file() else None
            root = self._root(self.infoseek, "infoseek", "--infoseek-root", where)
            shard = oven_shard(image_id)
            nested = _first_existing(root / shard / image_id) if shard else None
            return nested or _first_existing(root / image_id)
        raise DataError(
            f"{where}: field 'dataset_name': unknown image dataset {dataset_name!r} "
            "(expected 'inaturalist', 'landmarks' or 'infoseek')"
        )

    @staticmethod
    def _root(root: Path | None, dataset: str, option: str, where: str) -> Path:
        if root is None:
            raise DataError(f"{where}: a {dataset!r} image is needed but no {dataset} image root was given ({option})")
        return root


def load_inat_id2name(path: str | os.PathLike) -> dict[str, str]:
    """Read EchoSight's iNaturalist ``id2name`` JSON: ``{image_id: file name}``."""
    source = Path(path)
    try:
        mapping = json.loads(source.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise DataError(f"{source}: id2name file not found") from exc
    except json.JSONDecodeError as exc:
        raise DataError(f"{source}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise DataError(f"{source}: an id2name file must be a JSON object mapping image ids to file names")
    return {str(k): v for k, v in mapping.items()}


def load_id2image(path: str | os.PathLike) -> dict[str, str]:
    """Read an InfoSeek ``id2image`` mapping: JSONL with ``image_id`` and ``image_path``
    per line, or (for a ``.json`` file) one object ``{image_id: image_path}``."""
    source = Path(path)
    if not source.is_file():
        raise DataError(f"{source}: id2image file not found")
    if source.suffix == ".json":
        return load_inat_id2name(source)
    mapping: dict[str, str] = {}
    for _, where, entry in iter_jsonl(source):
        for field_name in ("image_id", "image_path"):
            if not isinstance(entry, dict) or not isinstance(entry.get(field_name), str):
                raise DataError(f"{where}: field {field_name!r} must be a string")
        mapping[entry["image_id"]] = entry["image_path"]
    return mapping
