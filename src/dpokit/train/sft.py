"""Supervised fine-tuning on demonstrations (used for the demo's warm-up): token-mean NLL of the
completion given the prompt, computed with the same chunked log-prob engine as preference training."""

from __future__ import annotations

import random
from typing import Sequence, Tuple

import torch

from ..data.tokenize import TokenizedExample
from ..scoring.lm.engine import LogProbEngine
from ..losses import Needs


def sft_train(model, tokenizer, demonstrations: Sequence[Tuple[str, str]], steps: int = 300, batch_size: int = 32,
              lr: float = 3e-3, seed: int = 0, log_every: int = 0) -> float:
    """Train ``model`` in place on ``(prompt, completion)`` texts; returns the last loss."""
    eos = tokenizer.eos_token_id
    prompts = tokenizer([p for p, _ in demonstrations])["input_ids"]
    completions = tokenizer([c for _, c in demonstrations], add_special_tokens=False)["input_ids"]
    examples = [TokenizedExample(i, p, [c + [eos]]) for i, (p, c) in enumerate(zip(prompts, completions))]
    engine = LogProbEngine(Needs(reference=False, data="unpaired"), tokenizer.pad_token_id)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min(1.0, (s + 1) / 20) * (1 - s / steps))
    rng = random.Random(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        batch = rng.sample(examples, min(batch_size, len(examples)))
        lp = engine.token_logprobs(model, [(ex.prompt_ids, ex.completions) for ex in batch])
        loss = -(lp.token_logps.sum() / lp.mask.sum())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if log_every and (step + 1) % log_every == 0:
            print(f"  warm-up step {step + 1}/{steps}  nll {loss.item():.3f}")
    model.eval()
    return float(loss.detach())
