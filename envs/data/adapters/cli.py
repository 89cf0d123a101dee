"""Command-line options shared by ``recipes/prepare_data.py`` and ``recipes/retrieve.py``.

Both recipes read the same annotations and find the same query and KB images, so a
query gets the same id and the same image in the retriever's result file as in its
pool. The options are dataclass fields (their docstrings are the ``--help`` text); each
recipe's argument classes inherit them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import tyro

from envs.data.adapters.images import QueryImageRoots, load_id2image, load_inat_id2name
from envs.data.adapters.kb import KbImages, load_kb_image_map


@dataclass(kw_only=True)
class QueryImageArgs:
    """Where the query images are."""

    inaturalist_root: Path | None = None
    """iNaturalist 2021 image folder (E-VQA)"""
    inat_id2name: Path | None = None
    """EchoSight's {image_id: file name} JSON for iNaturalist (train_id2name.json / val_id2name.json); without it images are looked up flat as <root>/<image_id>.jpg"""
    landmarks_root: Path | None = None
    """Google Landmarks v2 image folder (E-VQA)"""
    landmarks_layout: Literal["nested", "flat"] = "nested"
    """'nested': <root>/a/b/c/abc123.jpg (the GLDv2 download); 'flat': <root>/abc123.jpg"""
    infoseek_root: Path | None = None
    """OVEN/InfoSeek image folder: the OVEN layout <root>/<2 digits>/<image_id>.<ext> (oven_images/ of merge_oven_images.py), or flat <root>/<image_id>.jpg|.JPEG; also the base of --infoseek-id2image paths"""
    infoseek_id2image: Path | None = None
    """optional {image_id, image_path} JSONL (or {image_id: path} JSON) for images in neither layout"""

    def query_image_roots(self) -> QueryImageRoots:
        return QueryImageRoots(
            inaturalist=self.inaturalist_root,
            landmarks=self.landmarks_root,
            infoseek=self.infoseek_root,
            landmarks_layout=self.landmarks_layout,
            inat_id2name=load_inat_id2name(self.inat_id2name) if self.inat_id2name else None,
            infoseek_id2image=load_id2image(self.infoseek_id2image) if self.infoseek_id2image else None,
        )


@dataclass(kw_only=True)
class KbImageArgs:
    """Where the downloaded KB images are."""

    kb_image_root: Path | None = None
    """folder of downloaded KB images; mapped paths are relative to it, and an image URL's file name is looked up directly in it"""
    kb_image_map: tyro.conf.UseAppendAction[list[Path]] = field(default_factory=list)
    """KB-image mapping (give the flag once per file): a JSON {image URL, article URL or title: path or [paths]} or OMGM's wiki_image_url_part_*_processed.csv"""

    def kb_images(self) -> KbImages:
        return KbImages(root=self.kb_image_root, mapping=merged_image_maps(self.kb_image_map))


def merged_image_maps(paths: Sequence[Path]) -> dict[str, list[str]]:
    """All ``--kb-image-map`` files as one mapping; earlier files come first per key."""
    merged: dict[str, list[str]] = {}
    for path in paths:
        for key, values in load_kb_image_map(path).items():
            merged.setdefault(key, []).extend(values)
    return merged
