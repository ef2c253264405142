"""Positives-only image data: expert images with their captions (Diffusion-DRO, ``data.kind: expert``).

A record (JSONL, JSON, Parquet or CSV, read by :func:`dpokit.data.files.iter_records`) is
``{"caption": ..., "image": ...}`` (``prompt`` is read as the caption too); the image is a path
(relative to the data file's folder), raw bytes or a ``{"bytes": ..., "path": ...}`` dict, as in
:mod:`dpokit.data.images`. Images are converted to RGB, resized to ``size`` x ``size`` when
``size`` is given and scaled to [-1, 1]. Every error names the file, the line and the field: a
missing or non-string caption, a missing or unreadable image, an image whose size differs from the
first record's (without ``size``).
"""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

from ..errors import DataError
from .files import iter_records
from .images import ImageExample, _caption, load_image

EXPERT_IMAGE_FIELD = "image"


def parse_expert_record(location: str, record: Dict, base_dir: str, size: Optional[int] = None) -> ImageExample:
    """One record -> :class:`ImageExample` with ``images`` [1, 3, H, W]."""
    caption = _caption(location, record)
    if EXPERT_IMAGE_FIELD not in record or record[EXPERT_IMAGE_FIELD] is None:
        raise DataError(location, EXPERT_IMAGE_FIELD, "missing image",
                        "expert records are {'caption': ..., 'image': path}")
    image = load_image(record[EXPERT_IMAGE_FIELD], base_dir, location, EXPERT_IMAGE_FIELD, size)
    return ImageExample(caption, image.unsqueeze(0), location=location)


def load_expert_images(source: str, size: Optional[int] = None,
                       limit: Optional[int] = None) -> Tuple[List[ImageExample], Dict[str, int]]:
    """All expert records of ``source`` (``index`` = position) and a report ``{"records": n}``."""
    base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
    examples: List[ImageExample] = []
    for location, record in iter_records(source):
        example = parse_expert_record(location, record, base_dir, size)
        if examples and example.images.shape != examples[0].images.shape:
            raise DataError(location, EXPERT_IMAGE_FIELD, f"image size {tuple(example.images.shape[2:])} differs "
                            f"from {examples[0].location}'s {tuple(examples[0].images.shape[2:])}",
                            "resize the images, or set diffusion.image_size")
        example.index = len(examples)
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(os.path.basename(os.fspath(source)), None, "no expert image records")
    return examples, {"records": len(examples)}
