"""The colour task: a small image shows a coloured square; the question asks its colour.

Verifiable reward: 1 when the answer's first word is the square's colour, else 0. Images are
16 x 16 RGB: grey noise with a square of one of :data:`COLOURS` (size and place drawn at random,
the colour jittered), so the answer can only come from the image. Records are written in TRL's
vision format (:mod:`dpokit.data.vision`): an ``images`` column and conversational
``prompt`` / ``chosen`` / ``rejected`` with an image placeholder in the prompt.
"""

from __future__ import annotations

import io
import os
import random
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (220, 30, 30), "green": (30, 180, 40), "blue": (40, 60, 220), "yellow": (230, 210, 30),
}
QUESTION = "what colour is the square"
IMAGE_SIZE = 16


def draw(colour: str, rng: random.Random, size: int = IMAGE_SIZE):
    """A PIL image: grey noise with a square of ``colour``."""
    from PIL import Image

    noise = np.random.default_rng(rng.randrange(2 ** 32))
    pixels = noise.integers(90, 160, size=(size, size, 1)).repeat(3, axis=2).astype(np.int16)
    side = rng.randint(size // 2, size - 2)
    top, left = rng.randint(0, size - side), rng.randint(0, size - side)
    jitter = noise.integers(-20, 21, size=3)
    pixels[top:top + side, left:left + side] = np.clip(np.array(COLOURS[colour]) + jitter, 0, 255)
    return Image.fromarray(pixels.astype(np.uint8), "RGB")


def prompt_messages() -> List[Dict[str, Any]]:
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": QUESTION}]}]


def answer_messages(word: str) -> List[Dict[str, Any]]:
    return [{"role": "assistant", "content": [{"type": "text", "text": word}]}]


def reward(colour: str, answer: str) -> float:
    words = answer.strip().split()
    return float(bool(words) and words[0] == colour)


def vocabulary_corpus() -> List[str]:
    """Texts for the tokenizer: every word the task and the chat template use."""
    return [f"<|user|> <|assistant|> {QUESTION} " + " ".join(COLOURS)] * 4


def draw_items(n: int, seed: int) -> List[Tuple[str, Any]]:
    """``n`` (colour, image) items, colours balanced."""
    rng = random.Random(seed)
    names = list(COLOURS)
    return [(names[i % len(names)], draw(names[i % len(names)], rng)) for i in range(n)]


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def pair_records(items: Sequence[Tuple[str, Any]], rejected: Sequence[str], folder: str, name: str,
                 store: str = "path") -> List[Dict[str, Any]]:
    """Preference records (chosen: the right colour, rejected: ``rejected[i]``). ``store``: ``path``
    (PNG files under ``folder/images``, relative paths in the records) or ``bytes`` (PNG bytes in
    the record, as a Parquet ``Image`` column holds them)."""
    if store == "path":
        os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for i, ((colour, image), wrong) in enumerate(zip(items, rejected)):
        if store == "path":
            relative = os.path.join("images", f"{name}-{i:05d}.png")
            image.save(os.path.join(folder, relative))
            value: Any = relative
        else:
            value = {"bytes": _png(image), "path": None}
        rows.append({"images": [value], "prompt": prompt_messages(), "chosen": answer_messages(colour),
                     "rejected": answer_messages(wrong)})
    return rows


def list_records(items: Sequence[Tuple[str, Any]], folder: str, name: str, store: str = "path",
                 answers: Sequence[str] = tuple(COLOURS)) -> List[Dict[str, Any]]:
    """Ranked-list records (``data.kind: lists``): each image with every answer in ``answers`` as a
    response, scored ``reward - k / (10 K)`` for the ``k``-th of the ``K`` answers (the verifiable
    reward, 1 for the square's colour, else 0; the small offset makes the wrong answers' scores distinct)."""
    rows = pair_records(items, [answers[0]] * len(items), folder, name, store)
    for row, (colour, _) in zip(rows, items):
        del row["chosen"], row["rejected"]
        row["responses"] = [answer_messages(a) for a in answers]
        row["scores"] = [reward(colour, a) - k / (10 * len(answers)) for k, a in enumerate(answers)]
    return rows


def write_records(rows: List[Dict[str, Any]], path: str) -> str:
    """JSONL (path-stored images) or Parquet (any), chosen by the file's suffix."""
    if path.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        import json

        with open(path, "w") as handle:
            for row in rows:
                handle.write(json.dumps(row) + "\n")
    return path
