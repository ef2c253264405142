"""The value model of OREO and the scorer wrapper that feeds it to the ``oreo`` loss.

:class:`ValueModel` is a separate small LM (the policy's transformer trunk, copied) with a scalar head
initialised to zero, as the paper's critic starts from the SFT model with a zero-initialised head. Its
value of a state is read at the state's last token: ``V(s_t)`` for response token ``t`` (the state
holding the prompt and the response tokens before ``t``) is the head's output at the token before ``t``.

:class:`ValueScorer` wraps any LM scorer for lists data (the K sampled responses of a prompt) and adds
``extras["list_values"]`` [B, K, T] (with gradient to the value model) and, given separator ids,
``extras["token_step"]`` [B, K, T] (the step of every response token, -1 outside), aligned with
``list_token_mask``: what :func:`dpokit.losses.value.oreo_loss` reads. Train both models with
``Trainer(config, scorer_wrapper=lambda s: ValueScorer(s, value_model, sep), param_groups=...)``, the
value model's parameters in their own optimizer group (:func:`oreo_param_groups`).

The trainer keeps the value model with the policy: every checkpoint and ``final/`` hold
``value.safetensors`` (:meth:`ValueScorer.checkpoint_state`), ``--resume`` restores it with the
optimizer state (which already covers its parameter group), and ``ValueModel.from_checkpoint(policy,
"run/final")`` loads it for value-guided beam search.
"""

from __future__ import annotations

import copy
import os
from typing import Dict, Iterable, List, Optional, Sequence

import torch
from safetensors.torch import load_file, save_file

from ..errors import CheckpointError
from ..scoring.steps import step_index_tensor

VALUE_FILE = "value.safetensors"  # in a trainer's checkpoints and final/, beside the policy


class ValueModel(torch.nn.Module):
    def __init__(self, trunk: torch.nn.Module, hidden_size: int):
        super().__init__()
        self.trunk = trunk
        self.head = torch.nn.Linear(hidden_size, 1)
        torch.nn.init.zeros_(self.head.weight)
        torch.nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, policy) -> "ValueModel":
        """A copy of ``policy``'s transformer trunk (``policy.base_model``) and a zero head."""
        return cls(copy.deepcopy(policy.base_model), policy.config.hidden_size)

    @classmethod
    def from_checkpoint(cls, policy, path: str) -> "ValueModel":
        """The value model a trainer saved with ``policy`` (``path``: a checkpoint or ``final/`` directory
        holding :data:`VALUE_FILE`, or the file itself), for value-guided beam search or further training."""
        model = cls.from_policy(policy)
        model.load(path)
        return model

    def state_tensors(self) -> Dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous().clone() for k, v in self.state_dict().items()}

    def save(self, path: str) -> str:
        """Write the trunk and the head to ``path`` (a directory: ``path/value.safetensors``)."""
        file = os.path.join(path, VALUE_FILE) if os.path.isdir(path) else path
        save_file(self.state_tensors(), file)
        return file

    def load(self, path: str) -> None:
        """Load weights written by :meth:`save` (or a trainer's checkpoint); every tensor must match."""
        file = os.path.join(path, VALUE_FILE) if os.path.isdir(path) else path
        if not os.path.isfile(file):
            raise CheckpointError(f"{file}: no value model saved there (a run trained with the OREO value scorer "
                                  f"writes {VALUE_FILE} into its checkpoints and final/)")
        weights = load_file(file)
        own = self.state_dict()
        missing, unknown = sorted(set(own) - set(weights)), sorted(set(weights) - set(own))
        wrong = [k for k in own if k in weights and weights[k].shape != own[k].shape]
        if missing or unknown or wrong:
            raise CheckpointError(f"{file}: does not fit this value model (missing {missing[:3]}, unknown "
                                  f"{unknown[:3]}, other shapes {wrong[:3]})")
        with torch.no_grad():
            for name, value in own.items():
                value.copy_(weights[name].to(value.device, value.dtype))

    def forward(self, input_ids: torch.Tensor, attention_mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Values [N, L]: position ``j`` is the value of the state holding tokens ``0..j``."""
        hidden = self.trunk(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        return self.head(hidden).squeeze(-1).float()

    def _run(self, rows: Sequence[Sequence[int]]) -> torch.Tensor:
        device = next(self.parameters()).device
        width = max(len(r) for r in rows)
        ids = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        mask = torch.zeros(len(rows), width, dtype=torch.long, device=device)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(list(row), dtype=torch.long)
            mask[i, :len(row)] = 1
        return self(ids, mask)

    def response_values(self, groups) -> torch.Tensor:
        """``V(s_t)`` [R, T] for every response token of every row of ``groups`` (``(prompt ids,
        [completion ids, ...])``, rows in group order), left-aligned, 0 past each response."""
        rows = [(list(prompt), list(c)) for prompt, completions in groups for c in completions]
        values = self._run([p + c for p, c in rows])
        width = max(len(c) for _, c in rows)
        out = values.new_zeros(len(rows), width)
        for i, (p, c) in enumerate(rows):
            out[i, :len(c)] = values[i, len(p) - 1:len(p) - 1 + len(c)]
        return out

    @torch.no_grad()
    def state_values(self, sequences: Sequence[Sequence[int]], finals: Sequence[bool]) -> List[float]:
        """The value of each sequence's state: at its last token, or for a finished one (ending with
        EOS) at the token before EOS, the last state the value loss trains."""
        values = self._run(sequences)
        return [float(values[i, len(s) - (2 if final and len(s) > 1 else 1)])
                for i, (s, final) in enumerate(zip(sequences, finals))]


class ValueScorer:
    """Any LM scorer plus the value model's ``list_values`` (and ``token_step``) for lists batches."""

    def __init__(self, inner, value_model: ValueModel, separator_ids: Optional[Iterable[int]] = None):
        self.inner, self.value_model = inner, value_model
        self.separator_ids = sorted(set(int(i) for i in separator_ids)) if separator_ids else None

    @property
    def needs(self):
        return self.inner.needs

    def __getattr__(self, name):  # token_logprobs, layout ...: the wrapped scorer's (references call them)
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def external_parameters(self, model) -> list:
        return self.inner.external_parameters(model)

    def checkpoint_state(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """What the trainer writes into each checkpoint and ``final/`` beside the policy."""
        return {VALUE_FILE: self.value_model.state_tensors()}

    def load_checkpoint_state(self, path: str) -> None:
        """On resume: the value model as the checkpoint ``path`` holds it."""
        self.value_model.load(path)

    def loss_inputs(self, policy, batch, reference=None):
        inputs = self.inner.loss_inputs(policy, batch, reference)
        if batch.kind != "lists":
            raise ValueError(f"ValueScorer serves lists batches (K sampled responses per prompt), got {batch.kind}")
        mask = inputs.list_mask.bool()
        token_mask = inputs.list_token_mask
        width = token_mask.shape[-1]
        values = self.value_model.response_values(batch.groups)[:, :width]
        values = torch.nn.functional.pad(values, (0, width - values.shape[1]))
        extras = dict(inputs.extras)
        extras["list_values"] = _to_list_rows(values.to(token_mask.device), mask)
        if self.separator_ids:
            completions = [c for _, cs in batch.groups for c in cs]
            index = step_index_tensor(completions, self.separator_ids, width, token_mask.device).to(values.dtype)
            steps = _to_list_rows(index, mask)
            extras["token_step"] = torch.where(token_mask.bool(), steps, torch.full_like(steps, -1.0))
        inputs.extras = extras
        return inputs


def _to_list_rows(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    out = rows.new_zeros(mask.shape[0], mask.shape[1], rows.shape[-1])
    out[mask] = rows
    return out


def oreo_param_groups(value_model: ValueModel, value_lr: Optional[float] = None):
    """``param_groups`` for the trainer: the policy's trainable parameters, then the value model's
    (with ``value_lr`` when given: the paper's separate critic learning rate)."""

    def groups(model):
        value_group = {"params": list(value_model.parameters())}
        if value_lr is not None:
            value_group["lr"] = value_lr
        return [{"params": [p for p in model.parameters() if p.requires_grad]}, value_group]

    return groups
