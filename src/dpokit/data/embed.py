"""Text embedders for data-side weights (Sem-DPO): ``Embedder.embed(texts) -> Tensor[N, D]``.

Any object with an ``embed(texts: Sequence[str]) -> torch.Tensor`` method is an embedder. Two ship:

* :class:`HashedNgramEmbedder` (the default): a hashed bag of words and character n-grams,
  L2-normalised. No model, no download, deterministic across processes and machines (features are
  hashed with BLAKE2b, not Python's salted ``hash``). It measures surface overlap, not meaning;
  pass a neural embedder where meaning matters.
* :class:`HFMeanPoolEmbedder`: mean-pooled last hidden states of a ``transformers`` model
  (a local path or hub id, e.g. a sentence encoder), L2-normalised.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, List, Protocol, Sequence, Union

import torch

_WORD = re.compile(r"\w+", re.UNICODE)


class Embedder(Protocol):
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        """Return one embedding per text, shape [N, D]."""


def text_of(value: Union[str, List[dict]]) -> str:
    """A string as is; a message list as its contents joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content", "")) for m in value)


class HashedNgramEmbedder:
    """Hashed bag of lower-cased words and character n-grams (``ngram_min..ngram_max`` within
    ``" word "``), signed feature hashing into ``dim`` buckets, L2-normalised."""

    def __init__(self, dim: int = 1024, ngram_min: int = 3, ngram_max: int = 4, words: bool = True):
        if dim < 1 or not 1 <= ngram_min <= ngram_max:
            raise ValueError("HashedNgramEmbedder: need dim >= 1 and 1 <= ngram_min <= ngram_max")
        self.dim, self.ngram_min, self.ngram_max, self.words = dim, ngram_min, ngram_max, words

    def _features(self, text: str) -> List[str]:
        tokens = _WORD.findall(text.lower())
        features = [f"w:{t}" for t in tokens] if self.words else []
        for token in tokens:
            padded = f" {token} "
            for n in range(self.ngram_min, self.ngram_max + 1):
                features.extend(f"c:{padded[i:i + n]}" for i in range(max(len(padded) - n + 1, 0)))
        return features

    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        out = torch.zeros(len(texts), self.dim, dtype=torch.float32)
        for row, text in enumerate(texts):
            for feature in self._features(text):
                digest = hashlib.blake2b(feature.encode("utf-8"), digest_size=8).digest()
                value = int.from_bytes(digest, "little")
                out[row, value % self.dim] += 1.0 if (value >> 63) & 1 else -1.0
        return torch.nn.functional.normalize(out, dim=-1)


class HFMeanPoolEmbedder:
    """Mean of a ``transformers`` model's last hidden states over the text's tokens, L2-normalised.

    ``model`` is a path/hub id (loaded with ``AutoModel``, safetensors only) or a loaded model, in
    which case ``tokenizer`` must be given.
    """

    def __init__(self, model: Any, tokenizer: Any = None, batch_size: int = 32, max_length: int = 256):
        if isinstance(model, str):
            from transformers import AutoModel, AutoTokenizer

            tokenizer = tokenizer or AutoTokenizer.from_pretrained(model)
            model = AutoModel.from_pretrained(model, use_safetensors=True)
        if tokenizer is None:
            raise ValueError("HFMeanPoolEmbedder: give the tokenizer with a loaded model")
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length

    @torch.no_grad()
    def embed(self, texts: Sequence[str]) -> torch.Tensor:
        device = next(self.model.parameters()).device
        rows = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(list(texts[start:start + self.batch_size]), return_tensors="pt", padding=True,
                                 truncation=True, max_length=self.max_length).to(device)
            out = self.model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
                             output_hidden_states=True)
            hidden = out.hidden_states[-1].float()
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            rows.append(((hidden * mask).sum(1) / mask.sum(1).clamp_min(1)).cpu())
        return torch.nn.functional.normalize(torch.cat(rows), dim=-1)


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``1 - cos(a, b)`` row by row, in [0, 2]."""
    return 1.0 - torch.nn.functional.cosine_similarity(a.float(), b.float(), dim=-1)
