"""Sampling from a policy with ``transformers.generate`` (the default, CPU-friendly engine).

:class:`Sampler` is the interface a faster engine (vLLM) can implement: ``sample(prompts, n)``
returns, per prompt, ``n`` completions as text and as token ids (EOS excluded);
``sample_tokens(prompts, n)`` returns :class:`Sampled`: the same plus the prompt ids the model
was given and the completion ids exactly as generated (EOS kept where it was generated; a
completion cut at ``max_new_tokens`` has none), which online training trains on without
re-tokenizing the text; ``update(model, path=None)`` points the sampler at new policy weights
(online training calls it between rounds). :class:`HFSampler` is the default;
:class:`VLLMSampler` imports ``vllm`` only when built and says so clearly when it is not installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Protocol, Sequence, Tuple, runtime_checkable

import torch

Samples = Tuple[List[List[str]], List[List[List[int]]]]


@dataclass
class Sampled:
    """Per prompt ``p`` and sample ``k``: ``texts[p][k]`` (decoded, special tokens skipped),
    ``completion_ids[p][k]`` (as generated, ending with EOS exactly when EOS was generated) and
    ``prompt_ids[p]`` (what the model was given, padding removed)."""

    texts: List[List[str]]
    completion_ids: List[List[List[int]]]
    prompt_ids: List[List[int]]

    def samples(self, eos: Optional[int]) -> Samples:
        """``(texts, ids)`` with a final EOS removed (:meth:`Sampler.sample`)."""
        return self.texts, [[row[:-1] if row and row[-1] == eos else row for row in group]
                            for group in self.completion_ids]


@runtime_checkable
class Sampler(Protocol):
    def sample(self, prompts: Sequence[str], n: int = 1) -> Samples:
        """Per prompt, ``n`` completions: ``(texts [P][n], token ids [P][n][len])``, EOS excluded."""

    def sample_tokens(self, prompts: Sequence[str], n: int = 1) -> Sampled:
        """Per prompt, ``n`` completions with the prompt ids and the completion ids as generated."""

    def update(self, model, path: Optional[str] = None) -> None:
        """Sample from ``model`` from now on (``path``: the same weights saved on disk, if any)."""


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64
    seed: int = 0
    top_k: Optional[int] = None  # None: the model's generation config decides
    add_special_tokens: bool = True  # False for prompts already rendered with a chat template


class HFSampler:
    def __init__(self, model, tokenizer, config: SamplingConfig = SamplingConfig()):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    def update(self, model, path: Optional[str] = None) -> None:
        self.model = model

    def sample(self, prompts: Sequence[str], n: int = 1) -> Samples:
        return self.sample_tokens(prompts, n).samples(self.tokenizer.eos_token_id)

    @torch.no_grad()
    def sample_tokens(self, prompts: Sequence[str], n: int = 1) -> Sampled:
        cfg, tok, model = self.config, self.tokenizer, self.model
        was_training = model.training
        model.eval()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        texts: List[List[str]] = []
        ids: List[List[List[int]]] = []
        prompt_ids: List[List[int]] = []
        padding_side = tok.padding_side
        tok.padding_side = "left"
        device = next(model.parameters()).device
        try:
            for start in range(0, len(prompts), cfg.batch_size):
                chunk = list(prompts[start:start + cfg.batch_size])
                enc = tok(chunk, return_tensors="pt", padding=True,
                          add_special_tokens=cfg.add_special_tokens).to(device)
                extra = {} if cfg.top_k is None else {"top_k": cfg.top_k}
                per = n
                if cfg.temperature > 0:
                    extra.update(do_sample=True, temperature=cfg.temperature, top_p=cfg.top_p)
                else:  # greedy: one answer, repeated n times
                    extra.update(do_sample=False)
                    per = 1
                out = model.generate(
                    **enc,
                    **extra,
                    max_new_tokens=cfg.max_new_tokens,
                    num_return_sequences=per,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    use_cache=True,
                )
                new = out[:, enc["input_ids"].shape[1]:].tolist()
                for i in range(len(chunk)):
                    mask = enc["attention_mask"][i].tolist()
                    prompt_ids.append([t for t, m in zip(enc["input_ids"][i].tolist(), mask) if m])
                    group_ids, group_texts = [], []
                    for row in new[i * per:(i + 1) * per] * (n // per):
                        # generation stops at the first EOS; what follows it is padding
                        if tok.eos_token_id in row:
                            row = row[:row.index(tok.eos_token_id) + 1]
                        group_ids.append(row)
                        group_texts.append(tok.decode(row, skip_special_tokens=True))
                    ids.append(group_ids)
                    texts.append(group_texts)
        finally:
            tok.padding_side = padding_side
            torch.random.set_rng_state(generator_state)
            model.train(was_training)
        return Sampled(texts, ids, prompt_ids)


class VLLMSampler:
    """Sampling with vLLM (GPU). ``vllm`` is imported here, not at dpokit import time.

    ``model_path`` is a local directory or hub id vLLM can load; :meth:`update` needs the new
    weights saved on disk (online training passes each round's saved policy) and rebuilds the
    engine from them.
    """

    def __init__(self, model_path: str, tokenizer, config: SamplingConfig = SamplingConfig(), **engine_kwargs):
        try:
            import vllm  # noqa: F401
        except ImportError as err:
            raise RuntimeError(
                "sampler 'vllm' needs the vllm package (pip install vllm; it needs a CUDA GPU). "
                "Use sampler 'hf' (transformers.generate), which runs anywhere."
            ) from err
        self.tokenizer = tokenizer
        self.config = config
        self.engine_kwargs = engine_kwargs
        self._load(model_path)

    def _load(self, model_path: str) -> None:
        from vllm import LLM

        self.llm = LLM(model=model_path, seed=self.config.seed, **self.engine_kwargs)

    def update(self, model, path: Optional[str] = None) -> None:
        if path is None:
            raise ValueError("VLLMSampler.update needs the policy saved on disk (path)")
        del self.llm
        self._load(path)

    def sample(self, prompts: Sequence[str], n: int = 1) -> Samples:
        return self.sample_tokens(prompts, n).samples(self.tokenizer.eos_token_id)

    def sample_tokens(self, prompts: Sequence[str], n: int = 1) -> Sampled:
        from vllm import SamplingParams

        cfg = self.config
        params = SamplingParams(n=n, temperature=cfg.temperature, top_p=cfg.top_p, max_tokens=cfg.max_new_tokens,
                                seed=cfg.seed, top_k=cfg.top_k if cfg.top_k is not None else -1)
        eos = self.tokenizer.eos_token_id
        texts, ids, prompt_ids = [], [], []
        for result in self.llm.generate(list(prompts), params, use_tqdm=False):
            rows = []
            for out in result.outputs:  # vLLM keeps a generated EOS in token_ids; stop at the first one
                row = list(out.token_ids)
                rows.append(row[:row.index(eos) + 1] if eos in row else row)
            ids.append(rows)
            prompt_ids.append(list(result.prompt_token_ids))
            texts.append([self.tokenizer.decode(row, skip_special_tokens=True) for row in rows])
        return Sampled(texts, ids, prompt_ids)


def make_sampler(kind: str, model, tokenizer, config: SamplingConfig, model_path: Optional[str] = None) -> Sampler:
    """``hf`` (default) or ``vllm`` (needs ``model_path``)."""
    if kind == "hf":
        return HFSampler(model, tokenizer, config)
    if kind == "vllm":
        if not model_path:
            raise ValueError("sampler 'vllm' needs the model saved on disk (a path)")
        return VLLMSampler(model_path, tokenizer, config)
    raise ValueError(f"unknown sampler {kind!r} (hf or vllm)")
