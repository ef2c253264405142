"""Condition images (ControlNet) and BideDPO's two pairs per record.

**Condition images.** A record of any image kind (pairs, Pick-a-Pic, lists) may name a
``condition_image`` (a path, bytes or an ``Image`` dict, as the other images): one condition shared by
all the record's samples, loaded as RGB, resized with the images (``diffusion.image_size``) and scaled
to [0, 1] (the range of the diffusers ControlNet training scripts). Without a size, a condition of
another size than the record's images is an error naming the record and field.

**BideDPO records** hold two preference pairs, either of which may be absent:

    {"caption": "a cat on a sofa", "condition_image": "edges/001.png",
     "text_pair":      {"chosen": "a.png", "rejected": "b.png"},
     "condition_pair": {"chosen": "c.png", "rejected": "d.png"}}

The *text pair*'s images differ in how well they follow the text, the *condition pair*'s in how well
they follow the condition image (BideDPO, Zhou et al. 2025, arXiv 2511.19268; only the abstract and
summaries were read: see ``docs/losses/bide.md``). Each pair takes the record's ``caption`` and
``condition_image`` unless it names its own (``"caption"`` / ``"condition_image"`` inside the pair), so
records where the two pairs differ in prompt or in condition are expressed too. A record becomes one
pair example per pair present, tagged ``extras["bide_pair"]`` = 0 (text) or 1 (condition), which the
``bide_dpo`` loss reads; each pair draws its own noise.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence

import torch

from ..errors import DataError
from .images import ImageExample, _caption, _same_size, load_image, parse_image_record

CONTROL_KEY = "controlnet_cond"  # the batch's condition images in ImageBatch.conditions
CONDITION_FIELD = "condition_image"
BIDE_FIELDS = ("text_pair", "condition_pair")  # extras["bide_pair"]: their position
BIDE_EXTRA = "bide_pair"


def read_condition(value: Any, base_dir: str, location: str, field_name: str, size: Optional[int],
                   images: torch.Tensor) -> torch.Tensor:
    """One condition image as [3, H, W] in [0, 1], the size of the record's ``images`` [M, 3, H, W]."""
    condition = (load_image(value, base_dir, location, field_name, size) + 1.0) / 2.0
    if condition.shape[1:] != images.shape[2:]:
        raise DataError(location, field_name, f"condition image size {tuple(condition.shape[1:])} differs from "
                        f"the images' {tuple(images.shape[2:])}", "resize them, or set diffusion.image_size")
    return condition


def parse_bide_record(location: str, record: Dict[str, Any], base_dir: str,
                      size: Optional[int] = None) -> List[ImageExample]:
    """A BideDPO record -> one pair example per pair present (text first)."""
    out = []
    for kind, name in enumerate(BIDE_FIELDS):
        pair = record.get(name)
        if pair is None:
            continue
        if not isinstance(pair, dict):
            raise DataError(location, name, f"expected an object with 'chosen' and 'rejected', got "
                            f"{type(pair).__name__}")
        for side in ("chosen", "rejected"):
            if pair.get(side) is None:
                raise DataError(location, f"{name}.{side}", "missing image")
        caption = pair.get("caption") if "caption" in pair else _caption(location, record)
        if not isinstance(caption, str):
            raise DataError(location, f"{name}.caption", f"expected a string caption, got {type(caption).__name__}")
        names = [f"{name}.chosen", f"{name}.rejected"]
        images = [load_image(pair[s], base_dir, location, n, size) for s, n in zip(("chosen", "rejected"), names)]
        _same_size(location, images, names)
        stacked = torch.stack(images)
        if CONDITION_FIELD in pair:
            condition = read_condition(pair[CONDITION_FIELD], base_dir, location, f"{name}.{CONDITION_FIELD}",
                                       size, stacked)
        elif CONDITION_FIELD in record:
            condition = read_condition(record[CONDITION_FIELD], base_dir, location, CONDITION_FIELD, size, stacked)
        else:
            condition = None
        out.append(ImageExample(caption, stacked, extras={BIDE_EXTRA: float(kind)}, location=f"{location} ({name})",
                                condition_image=condition))
    if not out:
        raise DataError(location, BIDE_FIELDS[0], "a BideDPO record needs a text_pair and/or a condition_pair")
    return out


def parse_conditioned_record(location: str, record: Dict[str, Any], base_dir: str, kind: str = "pairs",
                             size: Optional[int] = None):
    """:func:`dpokit.data.images.parse_image_record` plus the record's condition image; BideDPO
    records (``text_pair`` / ``condition_pair``) -> a list of pair examples."""
    if any(name in record for name in BIDE_FIELDS):
        if kind != "pairs":
            raise DataError(location, BIDE_FIELDS[0], "BideDPO pairs are read with data.kind: pairs")
        return parse_bide_record(location, record, base_dir, size)
    example = parse_image_record(location, record, base_dir, kind, size)
    if example is not None and CONDITION_FIELD in record:
        example.condition_image = read_condition(record[CONDITION_FIELD], base_dir, location, CONDITION_FIELD,
                                                 size, example.images)
    return example


def check_bide_uniform(examples: Sequence[ImageExample]) -> None:
    """BideDPO pairs and plain pairs do not mix in one data set (the loss needs every pair's kind)."""
    tagged = [BIDE_EXTRA in ex.extras for ex in examples]
    if any(tagged) and not all(tagged):
        plain = next(ex for ex, t in zip(examples, tagged) if not t)
        raise DataError(plain.location, BIDE_FIELDS[0], "a plain pair among BideDPO records",
                        "give every record a text_pair and/or condition_pair, or none")


def condition_batch(examples: Sequence[ImageExample]) -> Dict[str, torch.Tensor]:
    """``{CONTROL_KEY: [B, 3, H, W]}`` when the examples have condition images, else ``{}``."""
    have = [ex.condition_image is not None for ex in examples]
    if not any(have):
        return {}
    if not all(have):
        missing = next(ex for ex, h in zip(examples, have) if not h)
        raise DataError(missing.location, CONDITION_FIELD, "missing condition image (other records have one)")
    first = examples[0].condition_image
    for ex in examples[1:]:
        if ex.condition_image.shape != first.shape:
            raise DataError(ex.location, CONDITION_FIELD, f"condition image size {tuple(ex.condition_image.shape[1:])}"
                            f" differs from {examples[0].location}'s {tuple(first.shape[1:])} in the same batch",
                            "set diffusion.image_size so every image is resized to it")
    return {CONTROL_KEY: torch.stack([ex.condition_image for ex in examples])}
