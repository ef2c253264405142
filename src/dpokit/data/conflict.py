"""Consistency-aware preference pairs (CA-DPO) from (image, caption) data.

Source: SABER-LLM, arXiv 2601.18321 ("Integrating Fine-Grained Audio-Visual Evidence for Robust
Multimodal Emotion Reasoning"). Its second stage, CA-DPO, is DPO on *modality-conflict* scenarios:
the chosen answer is a full evidence path that states both modalities' evidence and the conflict
between them before the label; the rejected answer is a *uni-modal dominance* path that reads one
modality and jumps to the label that modality alone suggests. The objective is the standard DPO
loss, ``-log sigmoid(beta [log pi(y_w|v,x)/pi_ref(y_w|v,x) - log pi(y_l|v,x)/pi_ref(y_l|v,x)])``
(the paper's figures show no further term), so these pairs train with ``loss: dpo`` and
``model.kind: vlm``; the reference is the supervised (evidence-format) model.

What is partial: the paper works with video + audio and emotion labels and releases no training
code; how its negatives are produced (model samples or templates) and whether the loss has an extra
consistency term are unknown. Here the two modalities are the image and a caption given in the text,
the label needs both (does the caption describe the image?), negatives are templates, and the split
into consistent and conflicting records (``split``) is what an evaluation reports separately.

For records ``(image, caption)``:

* **conflict** (another record's, different caption ``c'``): prompt = image + "caption: c'. does the
  caption match the image?"; chosen = ``"image: c; caption: c'; conflict; no"``; rejected (the
  caption dominates) = ``"caption: c'; yes"``;
* **consistent** (its own caption, only with ``consistent_fraction > 0``): chosen =
  ``"image: c; caption: c; consistent; yes"``; rejected (the same label without the image evidence)
  = ``"caption: c; yes"``.
"""

from __future__ import annotations

import random
from typing import Any, Dict, List, Sequence, Tuple

QUESTION = "does the caption match the image?"


def evidence_answer(image_caption: str, shown_caption: str) -> str:
    """The full evidence path: both modalities, the (in)consistency, then the label."""
    match = image_caption == shown_caption
    return (f"image: {image_caption}; caption: {shown_caption}; {'consistent' if match else 'conflict'}; "
            f"{'yes' if match else 'no'}")


def shortcut_answer(shown_caption: str) -> str:
    """The uni-modal (text-dominance) path: the caption alone, taken as true."""
    return f"caption: {shown_caption}; yes"


def prompt_for(shown_caption: str) -> List[Dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"},
                                         {"type": "text", "text": f"caption: {shown_caption}. {QUESTION}"}]}]


def ca_dpo_pairs(records: Sequence[Tuple[Any, str]], seed: int = 0, consistent_fraction: float = 0.0
                 ) -> List[Dict[str, Any]]:
    """TRL vision-format pair records (``images``, ``prompt``, ``chosen``, ``rejected``, plus ``split``:
    ``conflict`` or ``consistent``) from ``(image, caption)`` records. Every record gives one conflict
    pair (a caption of another record that differs from its own, drawn with ``seed``); a fraction
    ``consistent_fraction`` of records also gives a consistent pair. Needs two distinct captions."""
    if not 0.0 <= consistent_fraction <= 1.0:
        raise ValueError(f"consistent_fraction must be in [0, 1], got {consistent_fraction}")
    captions = [caption for _, caption in records]
    if len(set(captions)) < 2:
        raise ValueError("conflict pairs need at least two distinct captions")
    rng = random.Random(seed)
    out = []
    for image, caption in records:
        other = rng.choice([c for c in captions if c != caption])
        out.append(_record(image, caption, other))
        if consistent_fraction and rng.random() < consistent_fraction:
            out.append(_record(image, caption, caption))
    return out


def _record(image: Any, caption: str, shown: str) -> Dict[str, Any]:
    return {"images": [image], "prompt": prompt_for(shown),
            "chosen": [{"role": "assistant", "content": evidence_answer(caption, shown)}],
            "rejected": [{"role": "assistant", "content": shortcut_answer(shown)}],
            "split": "consistent" if caption == shown else "conflict"}


def sft_records(records: Sequence[Tuple[Any, str]], seed: int = 0, conflict_fraction: float = 0.5
                ) -> List[Dict[str, Any]]:
    """Stage 1 (structured evidence decomposition): ``(images, prompt, completion)`` demonstrations in the
    evidence format, a ``conflict_fraction`` of them with another record's caption."""
    captions = [caption for _, caption in records]
    rng = random.Random(seed)
    out = []
    for image, caption in records:
        shown = rng.choice([c for c in captions if c != caption]) if rng.random() < conflict_fraction else caption
        out.append({"images": [image], "prompt": prompt_for(shown),
                    "completion": [{"role": "assistant", "content": evidence_answer(caption, shown)}],
                    "split": "consistent" if caption == shown else "conflict"})
    return out


def answer_label(text: str) -> str:
    """The label an answer ends with (``yes`` / ``no``; ``""`` when it ends with neither)."""
    words = text.replace(";", " ").split()
    return words[-1] if words and words[-1] in ("yes", "no") else ""
