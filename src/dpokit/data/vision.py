"""Vision-language preference data (``model.kind: vlm``): TRL's vision format, read, checked, tokenized, batched.

Records (JSONL, JSON, Parquet, CSV or a ``datasets.Dataset``; columns as TRL's vision DPO datasets):

* ``images``: a list of images (or ``image``: one), each a path (relative paths are resolved
  against the data file's folder), raw bytes, a ``{"bytes": ..., "path": ...}`` dict (how the
  Hugging Face ``Image`` feature stores it in Parquet) or a PIL image;
* ``prompt``, ``chosen``, ``rejected`` (pairs), ``prompt``, ``completion``, ``label`` (unpaired) or
  ``prompt``, ``responses``, ``scores`` / ``ranks`` (lists, K responses to one image prompt):
  text or conversational messages. A message's ``content`` is a string or a list of blocks
  ``{"type": "image"}`` / ``{"type": "text", "text": ...}``; in strings the placeholder is ``<image>``.

The prompt holds one placeholder per image, in order. A prompt without any placeholder gets them
before the text of its first user turn (what TRL's ``prepare_multimodal_messages`` does). Completions
hold no images. Every error names the record and field: an unreadable or missing image, a
placeholder count that does not match the images, a model without an image processor.

Tokenization renders the prompt with the processor's chat template (structured content), and the
processor expands each placeholder into the model's image tokens and turns the images into
``pixel_values``; completions are tokenized as text (EOS appended), as for language models.
Truncation never cuts image tokens: a prompt that ``max_prompt_length`` would cut inside its image
tokens is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch

from ..errors import DataError
from .collate import Batch, collate
from .files import iter_records
from .images import load_pil  # noqa: F401  (images from paths, bytes or PIL objects)
from .formats import (LoadReport, PreferencePair, RankedList, UnpairedExample, _parse_record, check_extras_consistent,
                      extra_columns)
from .tokenize import TRUNCATION_MODES, TokenizedExample, TruncationReport, _truncate

IMAGE_MARK = "<image>"
TEXT_FIELDS = ("prompt", "chosen", "rejected", "completion")
COMPLETION_FIELDS = ("chosen", "rejected", "completion")


@dataclass
class VisionPair(PreferencePair):
    images: List[Any] = field(default_factory=list)  # PIL images, one per prompt placeholder


@dataclass
class VisionUnpaired(UnpairedExample):
    images: List[Any] = field(default_factory=list)


@dataclass
class VisionList(RankedList):
    images: List[Any] = field(default_factory=list)


VISION_CLASSES = ((PreferencePair, VisionPair), (UnpairedExample, VisionUnpaired), (RankedList, VisionList))


# ---- images ---------------------------------------------------------------------------------------

# ---- placeholders -----------------------------------------------------------------------------------

def _flatten_content(location: str, name: str, j: int, content: Any) -> Any:
    """Structured content -> a string with ``<image>`` per image block (other content unchanged)."""
    if not isinstance(content, list):
        return content
    parts = []
    for b, block in enumerate(content):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "image":
            parts.append(IMAGE_MARK)
        elif kind == "text" and isinstance(block.get("text"), str):
            parts.append(block["text"])
        else:
            raise DataError(location, name, f"message {j} content block {b} must be {{'type': 'image'}} or "
                            f"{{'type': 'text', 'text': ...}}, got {block!r:.80}")
    return "".join(parts)


def _flatten(location: str, name: str, value: Any) -> Any:
    if isinstance(value, list):
        return [dict(m, content=_flatten_content(location, name, j, m.get("content"))) if isinstance(m, dict) else m
                for j, m in enumerate(value)]
    return value


def count_placeholders(value: Any) -> int:
    if isinstance(value, str):
        return value.count(IMAGE_MARK)
    if isinstance(value, list):
        return sum(m.get("content", "").count(IMAGE_MARK) for m in value
                   if isinstance(m, dict) and isinstance(m.get("content"), str))
    return 0


def _insert_placeholders(prompt: Any, n: int) -> Any:
    """TRL's rule: the images go before the text of the first user turn."""
    marks = IMAGE_MARK * n
    if isinstance(prompt, str) or prompt is None:
        return marks + (prompt or "")
    out, done = [], False
    for message in prompt:
        if not done and isinstance(message, dict) and message.get("role") == "user":
            message, done = dict(message, content=marks + str(message.get("content", ""))), True
        out.append(message)
    return out if done else [{"role": "user", "content": marks}] + out


# ---- loading ----------------------------------------------------------------------------------------

def parse_vision_record(location: str, record: Dict[str, Any], kind: str, base_dir: str) -> list:
    """One record -> :class:`VisionPair` (pairs) or :class:`VisionUnpaired` examples (unpaired; a pair
    record gives a desirable and an undesirable one)."""
    if kind not in ("pairs", "unpaired", "lists"):
        raise DataError(location, None, f"data.kind {kind!r} is not supported with model.kind: vlm",
                        "use data.kind pairs, unpaired or lists")
    record = dict(record)
    if "images" in record:
        images, name = record.pop("images"), "images"
    elif "image" in record:
        images, name = record.pop("image"), "image"
        images = [] if images is None else [images]
    else:
        raise DataError(location, "images", "is missing", "vision records need an 'images' list (or 'image')")
    images = [] if images is None else images
    if not isinstance(images, (list, tuple)):
        raise DataError(location, name, f"must be a list of images, got {type(images).__name__}")
    for key in TEXT_FIELDS:
        if key in record:
            record[key] = _flatten(location, key, record[key])
    if isinstance(record.get("responses"), list):
        record["responses"] = [_flatten(location, f"responses[{k}]", r) for k, r in enumerate(record["responses"])]
    completions = [(key, record.get(key)) for key in COMPLETION_FIELDS]
    completions += [(f"responses[{k}]", r) for k, r in enumerate(record.get("responses") or [])]
    for key, value in completions:
        if count_placeholders(value):
            raise DataError(location, key, "holds an image placeholder; images belong to the prompt")
    found = count_placeholders(record.get("prompt"))
    if found == 0 and images:
        record["prompt"] = _insert_placeholders(record.get("prompt"), len(images))
    elif found != len(images):
        raise DataError(location, "prompt", f"has {found} image placeholder(s) but '{name}' holds {len(images)} "
                        "image(s)", "one placeholder per image, in order")
    loaded = [load_pil(value, base_dir, location, f"{name}[{i}]") for i, value in enumerate(images)]
    out = []
    for example in _parse_record(location, record, kind):
        cls = next(vision for plain, vision in VISION_CLASSES if isinstance(example, plain))
        out.append(cls(**example.__dict__, images=loaded))
    return out


def load_vision_examples(source: Any, kind: str = "pairs", split: str = "train", limit: Optional[int] = None,
                         on_bad_content: str = "skip", report: Optional[LoadReport] = None,
                         on_extra_columns: str = "ignore") -> list:
    """:func:`dpokit.data.formats.load_examples` for vision records (same options and reports)."""
    report = report if report is not None else LoadReport()
    base_dir = os.path.dirname(os.path.abspath(os.fspath(source))) if isinstance(source, (str, os.PathLike)) else "."
    examples: list = []
    for location, record in iter_records(source, split=split):
        if limit is not None and len(examples) >= limit:
            break
        report.records += 1
        for column in extra_columns({k: v for k, v in record.items() if k not in ("images", "image")}):
            if on_extra_columns == "error":
                raise DataError(location, column, "is a column dpokit does not read",
                                "remove the column, or set data.on_extra_columns: ignore")
            report.ignored_columns[column] = report.ignored_columns.get(column, 0) + 1
        try:
            examples.extend(parse_vision_record(location, record, kind, base_dir))
        except DataError as err:
            if not err.content or on_bad_content == "error":
                raise
            report.skipped.append(str(err))
    if not examples:
        raise DataError(str(source), None, "contains no usable records")
    check_extras_consistent(examples)
    return examples


# ---- tokenization -----------------------------------------------------------------------------------

@dataclass
class VisionTokenizedExample(TokenizedExample):
    """A tokenized example with its images: ``pixel_values`` [n_images, C, H, W] (None without
    images); ``prompt_ids`` hold ``image_token_id`` at every image position."""

    pixel_values: Optional[torch.Tensor] = None
    image_sizes: Optional[torch.Tensor] = None
    image_token_id: int = -1
    image_grid_thw: Optional[torch.Tensor] = None  # [n_images, 3] patch grids (Qwen2-VL-style processors)


def _structured(messages: list) -> list:
    """String content with ``<image>`` marks -> blocks, as processors' chat templates expect."""
    out = []
    for message in messages:
        content = message.get("content", "")
        blocks = []
        for k, piece in enumerate(content.split(IMAGE_MARK)):
            if k:
                blocks.append({"type": "image"})
            if piece:
                blocks.append({"type": "text", "text": piece})
        out.append({**message, "content": blocks})
    return out


def _completions(example) -> list:
    if isinstance(example, PreferencePair):
        return [example.chosen, example.rejected]
    if isinstance(example, RankedList):
        return list(example.responses)
    return [example.completion]


def _render(example, processor) -> Tuple[str, List[str], bool]:
    completions = _completions(example)
    prompt = example.prompt
    if isinstance(prompt, str) and all(isinstance(c, str) for c in completions):
        token = getattr(processor, "image_token", IMAGE_MARK)
        return prompt.replace(IMAGE_MARK, token), list(completions), False
    if getattr(processor, "chat_template", None) is None:
        raise DataError(example.location, "prompt", "is a message list but the processor has no chat template",
                        "set processor.chat_template or give text fields")
    prompt_messages = _structured(prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}])
    prompt_text = processor.apply_chat_template(prompt_messages, tokenize=False, add_generation_prompt=True)
    texts = []
    for completion in completions:
        messages = completion if isinstance(completion, list) else [{"role": "assistant", "content": completion}]
        full = processor.apply_chat_template(prompt_messages + _structured(messages), tokenize=False)
        if not full.startswith(prompt_text):
            raise DataError(example.location, "chosen", "the chat template does not render the prompt as a prefix "
                            "of the conversation, so the completion boundary is undefined")
        texts.append(full[len(prompt_text):])
    return prompt_text, texts, True


def check_processor(processor, location: str = "data") -> None:
    if getattr(processor, "image_processor", None) is None or getattr(processor, "tokenizer", None) is None:
        raise DataError(location, "images", f"the model's {type(processor).__name__} has no image processor "
                        "(or no tokenizer)", "vision data needs the model's processor: save it next to the model "
                        "(processor.save_pretrained) so AutoProcessor loads it")


def tokenize_vision_examples(examples: Sequence, processor, max_length: int = 512,
                             max_prompt_length: Optional[int] = None, truncation_mode: str = "keep_end",
                             append_eos: bool = True, on_empty_completion: str = "skip",
                             vocab_size: Optional[int] = None) -> Tuple[List[VisionTokenizedExample], TruncationReport]:
    """:func:`dpokit.data.tokenize.tokenize_examples` for vision examples, through ``processor``."""
    if truncation_mode not in TRUNCATION_MODES:
        raise ValueError(f"truncation_mode must be one of {TRUNCATION_MODES}, got {truncation_mode!r}")
    check_processor(processor, examples[0].location if examples else "data")
    tokenizer = processor.tokenizer
    image_token_id = tokenizer.convert_tokens_to_ids(getattr(processor, "image_token", IMAGE_MARK))
    eos = tokenizer.eos_token_id
    report = TruncationReport(total=len(examples))
    out: List[VisionTokenizedExample] = []
    for i, example in enumerate(examples):
        prompt_text, texts, templated = _render(example, processor)
        images = list(getattr(example, "images", []) or [])
        try:
            encoded = processor(images=images or None, text=[prompt_text], add_special_tokens=not templated,
                                return_tensors="pt")
        except ValueError as err:
            raise DataError(example.location, "images", f"the processor refused the record: {err}") from None
        prompt_ids = encoded["input_ids"][0].tolist()
        completions = []
        for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]:
            ids = list(ids)
            if append_eos and (not ids or ids[-1] != eos):
                ids.append(eos)
            completions.append(ids)
        if max_prompt_length is not None and len(prompt_ids) > max_prompt_length:
            kept = _truncate(prompt_ids, max_prompt_length, truncation_mode == "keep_end")
            if kept.count(image_token_id) != prompt_ids.count(image_token_id):
                raise DataError(example.location, "prompt", f"max_prompt_length={max_prompt_length} would cut its "
                                f"image tokens ({prompt_ids.count(image_token_id)} of {len(prompt_ids)} tokens)",
                                "raise data.max_prompt_length")
            prompt_ids = kept
            report.prompt_truncated += 1
        room = max_length - len(prompt_ids)
        if room <= 0:
            if on_empty_completion == "error":
                raise DataError(example.location, "prompt", f"prompt has {len(prompt_ids)} tokens (image tokens "
                                f"included), which leaves no room within max_length={max_length}",
                                "raise max_length")
            report.dropped.append(example.location)
            continue
        if any(len(c) > room for c in completions):
            report.completion_truncated += 1
            completions = [c[:room] for c in completions]
        label = example.label if isinstance(example, UnpairedExample) else None
        tokenized = VisionTokenizedExample(i, prompt_ids, completions, label, dict(example.extras), example.location,
                                           pixel_values=encoded.get("pixel_values") if images else None,
                                           image_sizes=encoded.get("image_sizes") if images else None,
                                           image_token_id=image_token_id,
                                           image_grid_thw=encoded.get("image_grid_thw") if images else None)
        if isinstance(example, RankedList):
            tokenized.scores = list(example.scores)
            tokenized.objectives = {k: list(v) for k, v in example.objectives.items()}
        out.append(tokenized)
    return out, report


# ---- batches ----------------------------------------------------------------------------------------

class VisionGroups(list):
    """A batch's ``(prompt, completions)`` groups that also carry the batch's images, so that any
    scorer call given only the groups (a reference model's pass) finds them."""

    pixel_values: Optional[torch.Tensor] = None
    image_sizes: Optional[torch.Tensor] = None
    image_grid_thw: Optional[torch.Tensor] = None


@dataclass
class VisionBatch(Batch):
    """A :class:`~dpokit.data.collate.Batch` whose prompts hold virtual ids ``-(k + 1)`` for the
    ``k``-th image token of the batch, with ``pixel_values`` of the batch's images in order."""

    pixel_values: Optional[torch.Tensor] = None
    image_sizes: Optional[torch.Tensor] = None
    image_grid_thw: Optional[torch.Tensor] = None


def _virtual_ids(prompt: Sequence[int], image_token_id: int, start: int) -> Tuple[List[int], int]:
    out, k = [], start
    for token in prompt:
        if token == image_token_id:
            k += 1
            out.append(-k)
        else:
            out.append(token)
    return out, k


def collate_vision(examples: Sequence[VisionTokenizedExample], kind: str = "pairs") -> VisionBatch:
    base = collate(examples, kind)
    groups, k = VisionGroups(), 0
    for ex, (prompt, completions) in zip(examples, base.groups):
        prompt, k = _virtual_ids(prompt, ex.image_token_id, k) if ex.pixel_values is not None else (prompt, k)
        groups.append((prompt, completions))
    pixels = [ex.pixel_values for ex in examples if ex.pixel_values is not None]
    sizes = [ex.image_sizes for ex in examples if ex.image_sizes is not None]
    groups.pixel_values = torch.cat(pixels) if pixels else None
    grids = [ex.image_grid_thw for ex in examples if ex.image_grid_thw is not None]
    groups.image_sizes = torch.cat(sizes) if sizes else None
    groups.image_grid_thw = torch.cat(grids) if grids else None
    return VisionBatch(base.kind, groups, base.index, base.labels, base.extras, base.scores,
                       groups.pixel_values, groups.image_sizes, groups.image_grid_thw)

