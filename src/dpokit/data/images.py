"""Image preference data: records naming image files, loaded as tensors, and their batches.

Record formats (JSONL, JSON, Parquet or CSV, read by :func:`dpokit.data.files.iter_records`):

* pairs:          ``caption`` (or ``prompt``), ``chosen``, ``rejected``: image paths
* Pick-a-Pic:     ``caption``, ``jpg_0``, ``jpg_1``, ``label_0`` (1: ``jpg_0`` preferred, 0: ``jpg_1``,
                  0.5: a tie, dropped by default as in the official Diffusion-DPO training code)
* ranked lists:   ``caption``, ``images`` (K >= 2 paths) and ``scores`` (higher is better)

An image is a path (relative paths are resolved against the data file's folder), raw bytes, or a
``{"bytes": ..., "path": ...}`` dict as the Hugging Face ``Image`` feature stores it. Other numeric
columns (``chosen_score`` / ``rejected_score`` for ``smpo``, ``weight``, ...) travel with the example as
``extras``, as written (every record must have the same ones). Images are
converted to RGB, resized to ``size`` x ``size`` when ``size`` is given, and scaled to [-1, 1]
(``x / 127.5 - 1``), the range diffusion models are trained on. Every error names the file, the
line and the field: an unreadable or missing image, a missing caption, chosen and rejected of
different sizes (without ``size``), a bad label.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from .files import iter_records
from .formats import _numeric_extras, check_extras_consistent

CAPTION_KEYS = ("caption", "prompt")
IMAGE_FIELDS = CAPTION_KEYS + ("chosen", "rejected", "jpg_0", "jpg_1", "label_0", "images", "scores")


@dataclass
class ImageExample:
    """One condition and its M samples: ``images`` [M, C, H, W] in [-1, 1].

    Pairs have M = 2 (chosen first); lists hold K samples and their ``scores``."""

    caption: str
    images: torch.Tensor
    index: int = 0
    scores: Optional[List[float]] = None
    extras: Dict[str, float] = field(default_factory=dict)
    location: str = ""
    condition_image: Optional[torch.Tensor] = None  # [3, H, W] in [0, 1] (ControlNet; dpokit.data.conditions)

    @property
    def num_tokens(self) -> int:  # what length-grouped batch orders read; images have no length
        return 1


@dataclass
class ImageBatch:
    """What the diffusion scorer reads: ``images`` [B, M, C, H, W], ``conditions`` (keyword tensors of
    the denoiser, leading dimension B), ``indices`` and ``draws`` [B] (the noise seeds)."""

    images: torch.Tensor
    conditions: Dict[str, torch.Tensor]
    indices: torch.Tensor
    draws: torch.Tensor
    captions: List[str]
    list_mask: Optional[torch.Tensor] = None
    list_scores: Optional[torch.Tensor] = None
    labels: Optional[torch.Tensor] = None
    extras: Dict[str, torch.Tensor] = field(default_factory=dict)
    num_tokens: int = 0

    def to(self, device) -> "ImageBatch":
        move = lambda v: None if v is None else v.to(device)  # noqa: E731
        return ImageBatch(move(self.images), {k: move(v) for k, v in self.conditions.items()}, move(self.indices),
                          move(self.draws), self.captions, move(self.list_mask), move(self.list_scores),
                          move(self.labels), {k: move(v) for k, v in self.extras.items()}, self.num_tokens)


def to_unit_range(image) -> torch.Tensor:
    """A PIL image (RGB) -> [3, H, W] float32 in [-1, 1]."""
    array = np.asarray(image, dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).contiguous() / 127.5 - 1.0


def to_pil(tensor: torch.Tensor):
    """[3, H, W] in [-1, 1] -> a PIL RGB image (values clipped)."""
    from PIL import Image

    array = ((tensor.detach().float().clamp(-1, 1) + 1.0) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
    return Image.fromarray(array, "RGB")


def load_pil(value: Any, base_dir: str, location: str, field_name: str):
    """One image as an RGB PIL image, or a :class:`DataError` naming the record and field."""
    from PIL import Image, UnidentifiedImageError

    if isinstance(value, Image.Image):
        return value.convert("RGB")
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        source, shown = io.BytesIO(value), "the image bytes"
    elif isinstance(value, str) and value.strip():
        source = value if os.path.isabs(value) else os.path.join(base_dir, value)
        shown = value
        if not os.path.isfile(source):
            raise DataError(location, field_name, f"image file not found: {value}",
                            "paths are relative to the data file's folder")
    else:
        raise DataError(location, field_name, f"expected an image path or bytes (or a PIL image), got {type(value).__name__}")
    try:
        with Image.open(source) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as err:
        raise DataError(location, field_name, f"unreadable image {shown}: {err}") from None


def load_image(value: Any, base_dir: str, location: str, field_name: str, size: Optional[int] = None) -> torch.Tensor:
    """One image of a record as [3, H, W] in [-1, 1]; a :class:`DataError` naming the field otherwise."""
    from PIL import Image

    image = load_pil(value, base_dir, location, field_name)
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    return to_unit_range(image)


def _caption(location: str, record: Dict[str, Any]) -> str:
    for key in CAPTION_KEYS:
        if key in record:
            value = record[key]
            if not isinstance(value, str):
                raise DataError(location, key, f"expected a string caption, got {type(value).__name__}")
            return value
    raise DataError(location, "caption", "missing caption", "give each record a 'caption' (or 'prompt')")


def _pick_a_pic_order(location: str, record: Dict[str, Any]) -> Optional[Tuple[str, str]]:
    """``(chosen field, rejected field)`` from ``label_0``; None for a tie."""
    label = record.get("label_0")
    if isinstance(label, bool) or not isinstance(label, (int, float)) or not math.isfinite(label) \
            or label not in (0, 0.5, 1):
        raise DataError(location, "label_0", f"expected 1, 0 or 0.5 (a tie), got {label!r}")
    if label == 0.5:
        return None
    return ("jpg_0", "jpg_1") if label == 1 else ("jpg_1", "jpg_0")


def _same_size(location: str, images: Sequence[torch.Tensor], names: Sequence[str]) -> None:
    for image, name in zip(images[1:], names[1:]):
        if image.shape != images[0].shape:
            raise DataError(location, name, f"image size {tuple(image.shape[1:])} differs from {names[0]}'s "
                            f"{tuple(images[0].shape[1:])}", "resize the images, or set the data's image size")


def parse_image_record(location: str, record: Dict[str, Any], base_dir: str, kind: str = "pairs",
                       size: Optional[int] = None) -> Optional[ImageExample]:
    """One record -> :class:`ImageExample` (None for a Pick-a-Pic tie, which is dropped)."""
    caption = _caption(location, record)
    scores = None
    if kind == "lists":
        paths = record.get("images")
        if not isinstance(paths, list) or len(paths) < 2:
            raise DataError(location, "images", "expected a list of at least 2 images")
        names = [f"images[{i}]" for i in range(len(paths))]
        raw = record.get("scores")
        if not isinstance(raw, list) or len(raw) != len(paths) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in raw):
            raise DataError(location, "scores", f"expected {len(paths)} finite numbers, one per image")
        scores = [float(s) for s in raw]
        values = paths
    elif "jpg_0" in record or "label_0" in record:
        order = _pick_a_pic_order(location, record)
        if order is None:
            return None
        for name in ("jpg_0", "jpg_1"):
            if name not in record:
                raise DataError(location, name, "missing image")
        names = list(order)
        values = [record[n] for n in names]
    else:
        for name in ("chosen", "rejected"):
            if name not in record:
                raise DataError(location, name, "missing image", "pairs need 'chosen' and 'rejected' image paths")
        names = ["chosen", "rejected"]
        values = [record["chosen"], record["rejected"]]
    images = [load_image(v, base_dir, location, n, size) for v, n in zip(values, names)]
    _same_size(location, images, names)
    extras = {k: v for k, v in _numeric_extras(location, record, IMAGE_FIELDS).items() if not isinstance(v, list)}
    return ImageExample(caption, torch.stack(images), scores=scores, extras=extras, location=location)


def load_image_examples(source: str, kind: str = "pairs", size: Optional[int] = None,
                        limit: Optional[int] = None, parse: Optional[Callable] = None,
                        check: Optional[Callable] = None) -> Tuple[List[ImageExample], Dict[str, int]]:
    """All records of ``source`` as :class:`ImageExample` (``index`` = position), and a report
    ``{"records": n, "ties_dropped": k}``. ``parse`` (default :func:`parse_image_record`, same
    arguments) may return one example, None (dropped tie) or a list of examples (one record, several
    pairs: :mod:`dpokit.data.conditions`); ``check(examples)`` runs on all of them before the
    check that every record has the same numeric fields (its error says more about its records)."""
    parse = parse or parse_image_record
    if kind not in ("pairs", "lists"):
        raise ValueError(f"image data kind must be 'pairs' or 'lists', got {kind!r}")
    base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
    examples: List[ImageExample] = []
    records = ties = 0
    for location, record in iter_records(source):
        records += 1
        example = parse(location, record, base_dir, kind, size)
        if example is None:
            ties += 1
            continue
        for one in example if isinstance(example, list) else [example]:
            one.index = len(examples)
            examples.append(one)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(os.path.basename(os.fspath(source)), None, "no usable image records")
    if check is not None:
        check(examples)
    check_extras_consistent(examples)
    return examples, {"records": records, "ties_dropped": ties}


Encoder = Callable[[List[str]], Dict[str, torch.Tensor]]


def collate_images(examples: Sequence[ImageExample], draws: Sequence[int], encode: Encoder) -> ImageBatch:
    """Stack examples into an :class:`ImageBatch`; ``encode(captions)`` gives the denoiser's condition
    tensors (a text encoder's ``encoder_hidden_states``, or ``class_labels``). Lists of different
    lengths are padded (``list_mask``)."""
    if len(draws) != len(examples):
        raise ValueError(f"collate_images: {len(draws)} draws for {len(examples)} examples")
    first = examples[0]
    for ex in examples[1:]:
        if ex.images.shape[1:] != first.images.shape[1:]:
            raise DataError(ex.location, "images", f"image size {tuple(ex.images.shape[2:])} differs from "
                            f"{first.location}'s {tuple(first.images.shape[2:])} in the same batch",
                            "set the data's image size so every image is resized to it")
    m = max(ex.images.shape[0] for ex in examples)
    images = torch.zeros((len(examples), m) + tuple(first.images.shape[1:]))
    mask = torch.zeros(len(examples), m, dtype=torch.bool)
    for i, ex in enumerate(examples):
        images[i, :ex.images.shape[0]] = ex.images
        mask[i, :ex.images.shape[0]] = True
    scores = None
    if first.scores is not None:
        scores = torch.zeros(len(examples), m)
        for i, ex in enumerate(examples):
            scores[i, :len(ex.scores)] = torch.tensor(ex.scores)
    captions = [ex.caption for ex in examples]
    extras = {k: torch.tensor([float(ex.extras[k]) for ex in examples]) for k in first.extras}
    return ImageBatch(images, encode(captions), torch.tensor([ex.index for ex in examples]),
                      torch.tensor([int(d) for d in draws]), captions, list_mask=mask if scores is not None else None,
                      list_scores=scores, extras=extras)
