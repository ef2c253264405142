"""Tiny video preference files for tests and examples: random clips as frame folders or ``.npy`` arrays.

``save_video_pairs(folder, n, ...)`` writes ``pairs.jsonl`` in the formats of :mod:`dpokit.data.video`:
clip pairs (``chosen`` / ``rejected``) or, with ``segments=True``, aligned clips ``video_a`` /
``video_b`` with per-segment labels (DenseDPO), alternating between segment ranges and a
``segment_length``. Pair it with ``save_tiny_pipeline(path, "wan")``.
"""

from __future__ import annotations

import json
import os
from typing import List, Sequence

import numpy as np
import torch

from ..paths import safe_join

CAPTIONS = ("a red square", "a blue circle", "a green bar")


def save_video_pairs(folder: str, n: int, frames: int = 4, size: int = 8, seed: int = 0, segments: bool = False,
                     layout: str = "frames", captions: Sequence[str] = CAPTIONS) -> str:
    """``pairs.jsonl`` of ``n`` records with random clips (``layout`` "frames": PNG folders; "npy")."""
    from ..data.images import to_pil

    if layout not in ("frames", "npy"):
        raise ValueError(f"layout must be 'frames' or 'npy', got {layout!r}")
    generator = torch.Generator().manual_seed(seed)
    os.makedirs(safe_join(folder, "clips"), exist_ok=True)
    rows: List[dict] = []
    for i in range(n):
        names = []
        for which in ("a", "b"):
            clip = torch.rand((frames, 3, size, size), generator=generator) * 2 - 1
            if layout == "npy":
                name = f"clips/{i:04d}_{which}.npy"
                array = ((clip.permute(0, 2, 3, 1) + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
                np.save(safe_join(folder, name), array, allow_pickle=False)
            else:
                name = f"clips/{i:04d}_{which}"
                os.makedirs(safe_join(folder, name), exist_ok=True)
                for f in range(frames):
                    to_pil(clip[f]).save(safe_join(folder, name, f"frame_{f}.png"))
            names.append(name)
        row = {"caption": captions[i % len(captions)]}
        if segments:
            row.update(video_a=names[0], video_b=names[1])
            half = max(1, frames // 2)
            if i % 2:  # a wins the even segments, b the odd ones
                row.update(segment_length=half, segment_labels=[1 - 2 * (j % 2) for j in range(-(-frames // half))])
            else:
                row.update(segments=[[0, half], [half, frames]] if frames > 1 else [[0, 1]],
                           segment_labels=[-1, 1] if frames > 1 else [1])
        else:
            row.update(chosen=names[0], rejected=names[1])
        rows.append(row)
    path = safe_join(folder, "pairs.jsonl")
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path
