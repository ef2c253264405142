"""Video preference data: clips read from frame folders, ``.npy`` arrays, frame lists or video files.

Record formats (JSONL, JSON, Parquet or CSV, read by :func:`dpokit.data.files.iter_records`):

* clip pairs:        ``caption`` (or ``prompt``), ``chosen``, ``rejected``: clips
* segment labels:    ``caption``, ``video_a``, ``video_b`` (two temporally aligned clips; ``chosen`` /
                     ``rejected`` are accepted for them too), and per-segment preferences (DenseDPO):
                     ``segments``: ``[[start, end], ...]`` frame ranges (``end`` exclusive, no overlap),
                     or ``segment_length``: s (segments ``[0, s), [s, 2s), ...``, the last one shorter);
                     ``segment_labels``: one per segment, ``1`` / ``"a"`` (``video_a`` preferred),
                     ``-1`` / ``"b"``, ``0`` / ``"tie"`` (a tie or an unlabelled segment)
* ranked lists:      ``caption``, ``videos`` (K >= 2 clips) and ``scores`` (higher is better)

A clip is one of

* a folder of frame images (PNG, JPEG, BMP, WebP), read in name order (``frame_2`` before ``frame_10``);
* a ``.npy`` file, or ``.npy`` bytes (e.g. a Parquet binary column): ``[F, H, W, C]`` with C = 3 (RGB)
  or 1 (grey), ``uint8`` in 0..255, or floats already in [-1, 1]; loaded without pickle;
* a list of frames, each an image path, image bytes or a ``{"bytes": ..., "path": ...}`` dict (a
  Parquet column of a Hugging Face ``Sequence(Image())`` feature);
* a video file (``.mp4``, ``.webm``, ``.avi``, ``.mov``, ``.mkv``, ``.gif``) when ``imageio`` (with
  its ffmpeg or pyav plugin) is installed; otherwise the error says so.

Relative paths resolve against the data file's folder. A clip becomes ``[3, F, H, W]`` in [-1, 1]
(the layout of diffusers video denoisers, ``[B, C, F, H, W]`` batched); frames are resized to
``size`` x ``size`` when ``size`` is given. Every error names the file, the line and the field:
an unreadable clip or frame, frames of different sizes, a frame count other than ``num_frames``,
clips of one record that differ in size or length, segments out of range or overlapping, a bad label.
"""

from __future__ import annotations

import io
import math
import os
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..errors import DataError
from .files import iter_records
from .images import ImageBatch, ImageExample, collate_images, load_image, _caption

FRAME_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
VIDEO_SUFFIXES = (".mp4", ".webm", ".avi", ".mov", ".mkv", ".gif")
LABELS = {1: 1, -1: -1, 0: 0, "a": 1, "b": -1, "tie": 0}


@dataclass
class VideoExample(ImageExample):
    """One condition and its M clips: ``images`` [M, 3, F, H, W] in [-1, 1]; with segment labels,
    ``segments`` (frame ranges ``[start, end)``) and ``segment_labels`` (+1 / -1 / 0) per segment."""

    segments: Optional[List[Tuple[int, int]]] = None
    segment_labels: Optional[List[int]] = None


@dataclass
class VideoBatch(ImageBatch):
    """An :class:`ImageBatch` of clips (``images`` [B, M, 3, F, H, W]) and, for segment labels,
    ``frame_segments`` [B, F] (the segment index of each frame, -1 outside every segment) with
    ``extras["segment_labels"]`` [B, S] (0 pads)."""

    frame_segments: Optional[torch.Tensor] = None

    def to(self, device) -> "VideoBatch":
        base = ImageBatch.to(self, device)
        return VideoBatch(**{**base.__dict__, "frame_segments": None if self.frame_segments is None
                             else self.frame_segments.to(device)})


def _natural_key(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _from_array(array: np.ndarray, location: str, field_name: str) -> torch.Tensor:
    """``[F, H, W, C]`` (uint8 0..255 or float in [-1, 1]) -> [3, F, H, W] float32 in [-1, 1]."""
    if array.ndim != 4 or array.shape[-1] not in (1, 3) or min(array.shape) < 1:
        raise DataError(location, field_name, f"expected a clip array [frames, height, width, 3 or 1], got shape "
                        f"{tuple(array.shape)}")
    if array.dtype == np.uint8:
        clip = torch.from_numpy(array.astype(np.float32)) / 127.5 - 1.0
    elif np.issubdtype(array.dtype, np.floating):
        clip = torch.from_numpy(array.astype(np.float32))
        if not bool(torch.isfinite(clip).all()) or float(clip.abs().max()) > 1.0 + 1e-4:
            raise DataError(location, field_name, "float clip values must be finite and in [-1, 1]",
                            "store uint8 frames (0..255), or scale floats to [-1, 1]")
    else:
        raise DataError(location, field_name, f"clip array of dtype {array.dtype}: expected uint8 or float")
    if clip.shape[-1] == 1:
        clip = clip.expand(*clip.shape[:-1], 3)
    return clip.permute(3, 0, 1, 2).contiguous()


def _load_npy(source, location: str, field_name: str, shown: str) -> torch.Tensor:
    try:
        array = np.load(source, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(location, field_name, f"unreadable .npy clip {shown}: {err}") from None
    return _from_array(np.asarray(array), location, field_name)


def _load_video_file(path: str, location: str, field_name: str, shown: str) -> torch.Tensor:
    try:
        import imageio.v3 as iio
    except ImportError:
        raise DataError(location, field_name, f"{shown} is a video file, and reading one needs imageio",
                        "pip install imageio imageio-ffmpeg, or give a folder of frames or a .npy array") from None
    try:
        frames = np.asarray(iio.imread(path))
    except Exception as err:  # the plugins raise their own error types
        raise DataError(location, field_name, f"unreadable video {shown}: {err}") from None
    if frames.ndim == 3:  # grey frames
        frames = frames[..., None]
    return _from_array(frames[..., :3], location, field_name)


def _stack_frames(frames: Sequence[torch.Tensor], names: Sequence[str], location: str) -> torch.Tensor:
    for frame, name in zip(frames[1:], names[1:]):
        if frame.shape != frames[0].shape:
            raise DataError(location, name, f"frame size {tuple(frame.shape[1:])} differs from {names[0]}'s "
                            f"{tuple(frames[0].shape[1:])}", "give frames of one size, or set diffusion.image_size")
    return torch.stack(list(frames), dim=1)


def _resize(clip: torch.Tensor, size: Optional[int]) -> torch.Tensor:
    if size is None or clip.shape[-2:] == (size, size):
        return clip
    resized = torch.nn.functional.interpolate(clip.transpose(0, 1), size=(size, size), mode="bicubic",
                                              align_corners=False, antialias=True)
    return resized.clamp(-1, 1).transpose(0, 1).contiguous()


def load_clip(value: Any, base_dir: str, location: str, field_name: str, size: Optional[int] = None,
              num_frames: Optional[int] = None) -> torch.Tensor:
    """One clip of a record as [3, F, H, W] in [-1, 1]; a :class:`DataError` naming the field otherwise."""
    if isinstance(value, dict) and (value.get("bytes") or value.get("path")):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, np.ndarray) and value.dtype != object:
        clip = _from_array(value, location, field_name)
    elif isinstance(value, (list, tuple, np.ndarray)):
        if len(value) == 0:
            raise DataError(location, field_name, "empty list of frames")
        names = [f"{field_name}[{i}]" for i in range(len(value))]
        clip = _stack_frames([load_image(v, base_dir, location, n, size) for v, n in zip(value, names)], names,
                             location)
    elif isinstance(value, (bytes, bytearray)):
        clip = _load_npy(io.BytesIO(bytes(value)), location, field_name, "(bytes)")
    elif isinstance(value, str) and value.strip():
        path = value if os.path.isabs(value) else os.path.join(base_dir, value)
        suffix = os.path.splitext(path)[1].lower()
        if os.path.isdir(path):
            files = sorted((f for f in os.listdir(path) if f.lower().endswith(FRAME_SUFFIXES)), key=_natural_key)
            if not files:
                raise DataError(location, field_name, f"no frame images ({', '.join(FRAME_SUFFIXES)}) in folder "
                                f"{value}")
            names = [f"{field_name} ({value}/{f})" for f in files]
            clip = _stack_frames([load_image(os.path.join(path, f), base_dir, location, n, size)
                                  for f, n in zip(files, names)], names, location)
        elif not os.path.isfile(path):
            raise DataError(location, field_name, f"clip not found: {value}",
                            "paths are relative to the data file's folder")
        elif suffix == ".npy":
            clip = _load_npy(path, location, field_name, value)
        elif suffix in VIDEO_SUFFIXES:
            clip = _load_video_file(path, location, field_name, value)
        else:
            raise DataError(location, field_name, f"{value}: not a frame folder, .npy array or video file "
                            f"({', '.join(VIDEO_SUFFIXES)})")
    else:
        raise DataError(location, field_name, "expected a clip: a frame folder, .npy path or bytes, a list of "
                        f"frames or a video file, got {type(value).__name__}")
    clip = _resize(clip, size)
    if num_frames is not None and clip.shape[1] != num_frames:
        raise DataError(location, field_name, f"the clip has {clip.shape[1]} frames, expected {num_frames} "
                        "(diffusion.num_frames)", "trim or pad the clips, or change diffusion.num_frames")
    return clip


def parse_segments(location: str, record: Dict[str, Any], frames: int) -> Tuple[List[Tuple[int, int]], List[int]]:
    """``(segments, labels)`` of a record with per-segment preferences over ``frames`` frames."""
    if "segments" in record:
        raw = record["segments"]
        if not isinstance(raw, (list, tuple)) or not raw:
            raise DataError(location, "segments", "expected a non-empty list of [start, end] frame ranges")
        segments = []
        for i, item in enumerate(raw):
            if not (isinstance(item, (list, tuple)) and len(item) == 2 and all(
                    isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in item)):
                raise DataError(location, f"segments[{i}]", f"expected [start, end] (integers), got {item!r}")
            start, end = int(item[0]), int(item[1])
            if not 0 <= start < end <= frames:
                raise DataError(location, f"segments[{i}]", f"frame range [{start}, {end}) is not inside the clip's "
                                f"{frames} frames (end is exclusive)")
            segments.append((start, end))
        ordered = sorted(segments)
        for (_, end), (start, _) in zip(ordered, ordered[1:]):
            if start < end:
                raise DataError(location, "segments", f"segments overlap at frame {start}: each frame belongs "
                                "to one segment at most")
    elif "segment_length" in record:
        length = record["segment_length"]
        if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < 1:
            raise DataError(location, "segment_length", f"expected a positive integer, got {length!r}")
        segments = [(s, min(s + int(length), frames)) for s in range(0, frames, int(length))]
    else:
        raise DataError(location, "segments", "segment_labels need 'segments' ([[start, end], ...]) or "
                        "'segment_length'")
    labels_raw = record.get("segment_labels")
    if not isinstance(labels_raw, (list, tuple)) or len(labels_raw) != len(segments):
        raise DataError(location, "segment_labels", f"expected {len(segments)} labels, one per segment")
    labels = []
    for i, label in enumerate(labels_raw):
        key: Any = None
        if isinstance(label, str):
            key = label.lower()
        elif isinstance(label, (int, np.integer)) and not isinstance(label, bool):
            key = int(label)
        elif isinstance(label, float) and label in (1.0, -1.0, 0.0):
            key = int(label)
        if key not in LABELS:
            raise DataError(location, f"segment_labels[{i}]", f"expected 1 / 'a', -1 / 'b' or 0 / 'tie', got {label!r}")
        labels.append(LABELS[key])
    return segments, labels


def _clip_fields(location: str, record: Dict[str, Any], kind: str) -> Tuple[List[str], List[Any]]:
    if kind == "lists":
        clips = record.get("videos")
        if not isinstance(clips, (list, tuple)) or len(clips) < 2:
            raise DataError(location, "videos", "expected a list of at least 2 clips")
        return [f"videos[{i}]" for i in range(len(clips))], list(clips)
    pair = ("video_a", "video_b") if "video_a" in record or "video_b" in record else ("chosen", "rejected")
    for name in pair:
        if name not in record:
            raise DataError(location, name, "missing clip", "pairs need 'chosen' and 'rejected' (or 'video_a' and "
                            "'video_b' with segment labels)")
    return list(pair), [record[n] for n in pair]


def parse_video_record(location: str, record: Dict[str, Any], base_dir: str, kind: str = "pairs",
                       size: Optional[int] = None, num_frames: Optional[int] = None) -> VideoExample:
    """One record -> :class:`VideoExample`."""
    caption = _caption(location, record)
    names, values = _clip_fields(location, record, kind)
    clips = [load_clip(v, base_dir, location, n, size, num_frames) for v, n in zip(values, names)]
    for clip, name in zip(clips[1:], names[1:]):
        if clip.shape != clips[0].shape:
            raise DataError(location, name, f"clip of {clip.shape[1]} frames of {tuple(clip.shape[2:])} differs from "
                            f"{names[0]}'s {clips[0].shape[1]} frames of {tuple(clips[0].shape[2:])}",
                            "the clips of a record must have the same frame count and size")
    scores = segments = labels = None
    if kind == "lists":
        raw = record.get("scores")
        if not isinstance(raw, (list, tuple)) or len(raw) != len(clips) or not all(
                isinstance(s, (int, float)) and not isinstance(s, bool) and math.isfinite(s) for s in raw):
            raise DataError(location, "scores", f"expected {len(clips)} finite numbers, one per clip")
        scores = [float(s) for s in raw]
    elif "segment_labels" in record or "segments" in record or "segment_length" in record:
        segments, labels = parse_segments(location, record, clips[0].shape[1])
    elif names[0] == "video_a":
        raise DataError(location, "segment_labels", "video_a / video_b need per-segment labels",
                        "add 'segments' and 'segment_labels', or name the clips 'chosen' and 'rejected'")
    return VideoExample(caption, torch.stack(clips), scores=scores, location=location, segments=segments,
                        segment_labels=labels)


def load_video_examples(source: str, kind: str = "pairs", size: Optional[int] = None, limit: Optional[int] = None,
                        num_frames: Optional[int] = None) -> Tuple[List[VideoExample], Dict[str, int]]:
    """All records of ``source`` as :class:`VideoExample` (``index`` = position) and a report
    ``{"records": n, "ties_dropped": 0}`` (the image loader's shape)."""
    if kind not in ("pairs", "lists"):
        raise ValueError(f"video data kind must be 'pairs' or 'lists', got {kind!r}")
    base_dir = os.path.dirname(os.path.abspath(os.fspath(source)))
    examples: List[VideoExample] = []
    for location, record in iter_records(source):
        example = parse_video_record(location, record, base_dir, kind, size, num_frames)
        example.index = len(examples)
        examples.append(example)
        if limit is not None and len(examples) >= limit:
            break
    if not examples:
        raise DataError(os.path.basename(os.fspath(source)), None, "no video records")
    return examples, {"records": len(examples), "ties_dropped": 0}


def collate_videos(examples: Sequence[VideoExample], draws: Sequence[int], encode) -> VideoBatch:
    """Stack clips into a :class:`VideoBatch`. When any example has segment labels, the batch holds
    ``frame_segments`` and ``extras["segment_labels"]``; a clip pair without them counts as one
    segment over all frames that ``chosen`` wins."""
    base = collate_images(examples, draws, encode)
    frames = base.images.shape[-3]
    if not any(getattr(ex, "segments", None) for ex in examples):
        return VideoBatch(**base.__dict__)
    plans = [(ex.segments, ex.segment_labels) if ex.segments else ([(0, frames)], [1]) for ex in examples]
    width = max(len(segments) for segments, _ in plans)
    frame_segments = torch.full((len(examples), frames), -1, dtype=torch.long)
    labels = torch.zeros(len(examples), width)
    for i, (segments, segment_labels) in enumerate(plans):
        for j, ((start, end), label) in enumerate(zip(segments, segment_labels)):
            frame_segments[i, start:end] = j
            labels[i, j] = float(label)
    extras = {**base.extras, "segment_labels": labels}
    return VideoBatch(**{**base.__dict__, "extras": extras}, frame_segments=frame_segments)
