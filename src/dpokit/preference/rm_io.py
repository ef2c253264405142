"""Reward models as Hugging Face sequence classifiers: loading one (safetensors only) and scoring text with it.

The judges (:mod:`dpokit.preference.judges`), the reward-model kinds (:mod:`dpokit.preference.rm_kinds`)
and the general preference model (:mod:`dpokit.preference.gpm`) all read models through these.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence

import torch


def reward_model_text(tokenizer, prompt: Any, response: Any) -> str:
    """What a reward model reads: prompt + response as text, or the chat-templated conversation."""
    if isinstance(prompt, str) and isinstance(response, str):
        return prompt + response
    messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
    reply = response if isinstance(response, list) else [{"role": "assistant", "content": response}]
    return tokenizer.apply_chat_template(messages + reply, tokenize=False)


def reward_model_scores(model, tokenizer, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 16,
                        max_length: int = 1024, grad: bool = False) -> torch.Tensor:
    """Scalar rewards [N] of a sequence-classification model (first output). Long texts keep their
    end (the response). ``grad=True`` keeps the graph (reward-model training)."""
    texts = [reward_model_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    device = next(model.parameters()).device
    side = tokenizer.truncation_side, tokenizer.padding_side
    tokenizer.truncation_side, tokenizer.padding_side = "left", "right"
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True, truncation=True,
                            max_length=max_length).to(device)
            with torch.set_grad_enabled(grad):
                logits = model(**enc).logits
            out.append(logits[:, 0].float())
    finally:
        tokenizer.truncation_side, tokenizer.padding_side = side
    return torch.cat(out) if out else torch.zeros(0)


def load_reward_model(path: str, trust_remote_code: bool = False, dtype: str = "auto", num_labels: Optional[int] = 1,
                      ignore_mismatched_sizes: bool = False):
    """``AutoModelForSequenceClassification`` + tokenizer from a local directory or hub id;
    safetensors weights only. A causal-LM checkpoint gets a fresh, untrained score head
    (``num_labels`` outputs; None: as saved; ``ignore_mismatched_sizes``: a fresh head where the saved
    one has another size)."""
    from transformers import AutoModelForSequenceClassification

    from ..models import DTYPES, load_tokenizer

    kwargs: Dict[str, Any] = {"trust_remote_code": trust_remote_code, "use_safetensors": True}
    if num_labels is not None:
        kwargs["num_labels"] = num_labels
    if ignore_mismatched_sizes:
        kwargs["ignore_mismatched_sizes"] = True
    if dtype != "auto":
        kwargs["dtype"] = DTYPES[dtype]
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, **kwargs)
    except OSError as err:
        if "safetensors" in str(err).lower():
            raise OSError(f"{path}: no safetensors weights found; dpokit does not unpickle .bin weights") from err
        raise
    tokenizer = load_tokenizer(path, trust_remote_code)
    model.config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
