"""Sampling from a policy with ``transformers.generate`` (the default, CPU-friendly engine).

:class:`Sampler` is the interface a faster engine (vLLM) can implement: ``sample(prompts, n)``
returns, per prompt, ``n`` completions as text and as token ids (EOS excluded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch


@dataclass
class SamplingConfig:
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 64
    seed: int = 0


class HFSampler:
    def __init__(self, model, tokenizer, config: SamplingConfig = SamplingConfig()):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config

    @torch.no_grad()
    def sample(self, prompts: Sequence[str], n: int = 1) -> Tuple[List[List[str]], List[List[List[int]]]]:
        cfg, tok, model = self.config, self.tokenizer, self.model
        was_training = model.training
        model.eval()
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(cfg.seed)
        texts: List[List[str]] = []
        ids: List[List[List[int]]] = []
        padding_side = tok.padding_side
        tok.padding_side = "left"
        device = next(model.parameters()).device
        try:
            for start in range(0, len(prompts), cfg.batch_size):
                chunk = list(prompts[start:start + cfg.batch_size])
                enc = tok(chunk, return_tensors="pt", padding=True).to(device)
                out = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=cfg.temperature,
                    top_p=cfg.top_p,
                    max_new_tokens=cfg.max_new_tokens,
                    num_return_sequences=n,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                    use_cache=True,
                )
                new = out[:, enc["input_ids"].shape[1]:].tolist()
                for i in range(len(chunk)):
                    group_ids, group_texts = [], []
                    for row in new[i * n:(i + 1) * n]:
                        if tok.eos_token_id in row:
                            row = row[:row.index(tok.eos_token_id)]
                        row = [t for t in row if t != tok.pad_token_id]
                        group_ids.append(row)
                        group_texts.append(tok.decode(row, skip_special_tokens=True))
                    ids.append(group_ids)
                    texts.append(group_texts)
        finally:
            tok.padding_side = padding_side
            torch.random.set_rng_state(generator_state)
            model.train(was_training)
        return texts, ids
