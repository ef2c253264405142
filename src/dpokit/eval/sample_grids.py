"""Image and frame grids of diffusion samples: policy vs reference from the same fixed noise.

A run writes ``samples/diffusion/`` (``dpokit train`` on ``model.kind: diffusion`` next to ``final/``;
``dpokit demo --modality diffusion`` under ``train/``): one PNG per caption and model, and
``index.json``:

    {"kind": "image" | "video", "frames": [0, 3, 7] (video), "seed": ..., "steps": ...,
     "rows": [{"caption": ..., "policy": "policy_000.png", "reference": "reference_000.png"}, ...]}

A video sample is drawn as its first, middle and last frames side by side (one strip per sample).
``dpokit report`` reads the index and shows the grids (:func:`grids_section`); the PNGs are embedded
in the page, drawn enlarged without smoothing.
"""

from __future__ import annotations

import base64
import html
import json
import os
from typing import Any, Dict, List, Optional, Sequence

import torch

from ..data.images import to_pil
from ..paths import UnsafePathError, safe_join

FOLDER = os.path.join("samples", "diffusion")
DISPLAY_HEIGHT = 96  # pixels of one sample on the page


def key_frames(frames: int) -> List[int]:
    """First, middle and last frame indices (fewer for clips of one or two frames)."""
    return sorted({0, (frames - 1) // 2, frames - 1})


def _strip(sample: torch.Tensor, frames: Optional[List[int]]):
    """[3, H, W] -> a PIL image; [3, F, H, W] -> the key frames side by side, 1 pixel apart."""
    from PIL import Image

    if frames is None:
        return to_pil(sample)
    tiles = [to_pil(sample[:, f]) for f in frames]
    width, height = tiles[0].size
    strip = Image.new("RGB", (len(tiles) * width + len(tiles) - 1, height), (255, 255, 255))
    for i, tile in enumerate(tiles):
        strip.paste(tile, (i * (width + 1), 0))
    return strip


def save_sample_grids(directory: str, captions: Sequence[str], policy: torch.Tensor,
                      reference: Optional[torch.Tensor] = None, meta: Optional[Dict[str, Any]] = None) -> str:
    """Write the samples [N, 3, H, W] or [N, 3, F, H, W] (N = len(captions)) and ``index.json``."""
    if policy.dim() not in (4, 5) or policy.shape[0] != len(captions) or policy.shape[1] != 3:
        raise ValueError(f"save_sample_grids: expected {len(captions)} RGB samples [N, 3, (F,) H, W], got "
                         f"{tuple(policy.shape)}")
    if reference is not None and reference.shape != policy.shape:
        raise ValueError(f"save_sample_grids: reference samples {tuple(reference.shape)} differ from the policy's "
                         f"{tuple(policy.shape)}")
    os.makedirs(directory, exist_ok=True)
    video = policy.dim() == 5
    frames = key_frames(policy.shape[2]) if video else None
    rows = []
    for i, caption in enumerate(captions):
        row = {"caption": caption}
        for name, samples in (("policy", policy), ("reference", reference)):
            if samples is None:
                continue
            file = f"{name}_{i:03d}.png"
            _strip(samples[i], frames).save(safe_join(directory, file))
            row[name] = file
        rows.append(row)
    index = {"kind": "video" if video else "image", **({"frames": frames} if video else {}), **(meta or {}),
             "rows": rows}
    path = safe_join(directory, "index.json")
    with open(path, "w") as handle:
        json.dump(index, handle, indent=2)
    return path


def read_sample_grids(run_dir: str) -> Optional[Dict[str, Any]]:
    """The index of a run's grids (in the run or its ``train/``), with ``dir`` added; None without one."""
    for base in (run_dir, os.path.join(run_dir, "train")):
        path = os.path.join(base, FOLDER, "index.json")
        if os.path.isfile(path):
            try:
                with open(path) as handle:
                    index = json.load(handle)
            except (OSError, ValueError):
                return None
            if isinstance(index, dict) and isinstance(index.get("rows"), list):
                return {**index, "dir": os.path.dirname(path)}
    return None


def _embedded(directory: str, name: Any, alt: str) -> str:
    if not isinstance(name, str):
        return ""
    try:
        path = safe_join(directory, name)
        with open(path, "rb") as handle:
            data = base64.b64encode(handle.read()).decode("ascii")
    except (OSError, UnsafePathError):
        return "<span class=note>missing</span>"
    return (f'<img alt="{html.escape(alt)}" style="height:{DISPLAY_HEIGHT}px;image-rendering:pixelated" '
            f'src="data:image/png;base64,{data}">')


def grids_html(name: str, index: Dict[str, Any]) -> str:
    video = index.get("kind") == "video"
    has_ref = any("reference" in row for row in index["rows"])
    what = f"frames {index.get('frames')} (first, middle, last) of each clip" if video else "one image per caption"
    note = (f"<p class=note>{html.escape(what)}; policy and reference from the same initial noise (seed "
            f"{html.escape(str(index.get('seed', '-')))}, {html.escape(str(index.get('steps', '-')))} sampler steps)</p>")
    head = "<tr><th class=text>caption</th><th class=text>policy</th>" + (
        "<th class=text>reference</th>" if has_ref else "") + "</tr>"
    lines = []
    for row in index["rows"]:
        caption = str(row.get("caption", ""))
        cells = (f"<td class=text>{html.escape(caption)}</td>"
                 f"<td>{_embedded(index['dir'], row.get('policy'), 'policy: ' + caption)}</td>")
        if has_ref:
            cells += f"<td>{_embedded(index['dir'], row.get('reference'), 'reference: ' + caption)}</td>"
        lines.append(f"<tr>{cells}</tr>")
    return f"<h3>{html.escape(name)}</h3>{note}<table>{head}{''.join(lines)}</table>"


def grids_section(runs) -> List[str]:
    """The report's "Samples" section for the runs that have grids (empty list when none has)."""
    blocks = []
    for run in runs:
        index = read_sample_grids(run.path)
        if index is not None:
            blocks.append(grids_html(run.name, index))
    if not blocks:
        return []
    kinds = {(read_sample_grids(run.path) or {}).get("kind") for run in runs} - {None}
    title = "Frame grids" if kinds == {"video"} else "Image grids" if kinds == {"image"} else "Image and frame grids"
    return [f"<h2>{title}: policy vs reference samples</h2>"] + blocks
