"""The language-model scorer: from a batch and models to :class:`~dpokit.losses.LossInputs`.

:class:`LogProbEngine` implements :class:`dpokit.scoring.Scorer` for causal LMs.

The engine computes exactly what the loss declares in its ``Needs``: reference log-probs only for
losses that use a reference, per-vocabulary statistics only when asked for, the KTO mismatched
batch only for losses that read it, the prompt's own log-probs only for losses that set
``Needs.prompt_logps``. The layout (padded, packed, prompt-shared) is a config switch.
"""

from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import torch

from ...data.collate import Batch
from ...distributed import forward_through
from .fused import PROJECTIONS, liger_logps, liger_usable, warn_fallback
from .layouts import get_layout
from .projection import RowGroup, TokenLogprobs, logit_transform, project_selected, scatter_rows, split_model
from ...losses import LossInputs, Needs


class LogProbEngine:
    def __init__(self, needs: Needs, pad_token_id: int, layout: str = "padded", chunk_size: int = 1024,
                 projection: str = "chunked"):
        if projection not in PROJECTIONS:
            raise ValueError(f"unknown projection {projection!r}; choose one of {list(PROJECTIONS)}")
        self.needs = needs
        self.pad_token_id = pad_token_id
        self.layout_name = layout
        self.layout = get_layout(layout)
        self.chunk_size = chunk_size
        self.projection = projection

    def external_parameters(self, model) -> list:
        """Weights read outside the model's own forward: the LM head (chunked projection)."""
        return list(split_model(model)[1].parameters(recurse=False))

    # -- raw log-probs ------------------------------------------------------------------------
    def hidden(self, model, groups: Sequence[RowGroup]):
        backbone, lm_head = split_model(model)
        hidden, targets, lengths = self.layout(backbone, groups, self.pad_token_id, lm_head.weight.device)
        return hidden, targets, lengths, lm_head

    def token_logprobs(
        self,
        model,
        groups: Sequence[RowGroup],
        stats: Sequence[str] = (),
        reference=None,
    ) -> TokenLogprobs:
        """Per-token completion log-probs of ``model`` for every row of ``groups``.

        ``reference`` (a :mod:`dpokit.reference` object) is used only for the ``ref_kl`` statistic.
        Under DDP/FSDP/DeepSpeed the computation runs as the wrapped model's forward
        (:func:`dpokit.distributed.forward_through`), so the engines' hooks fire.
        """

        def run():
            lp = self._token_logprobs(model, groups, stats, reference)
            return lp.token_logps, lp.mask, lp.stats

        token_logps, mask, stats_out = forward_through(model, run)
        return TokenLogprobs(token_logps, mask, stats_out)

    def _token_logprobs(self, model, groups, stats, reference) -> TokenLogprobs:
        hidden, targets, lengths, lm_head = self.hidden(model, groups)
        ref_hidden = ref_head = None
        if "ref_kl" in stats:
            if reference is None or not reference.has_model:
                raise ValueError("this loss needs per-token KL to the reference, which needs a reference "
                                 "model (not precomputed reference log-probs)")
            with torch.no_grad():
                ref_hidden, ref_head = reference.selected_hidden(self, groups)
        out = self._project(hidden, targets, lm_head, stats, logit_transform(model), ref_hidden, ref_head)
        token_logps, mask = scatter_rows(out["logps"], lengths)
        return TokenLogprobs(token_logps, mask, {k: scatter_rows(out[k], lengths)[0] for k in stats})

    def _project(self, hidden, targets, lm_head, stats, transform, ref_hidden, ref_head):
        """Selected hidden states -> ``{"logps": [N], <stat>: [N]}`` (fp32): the chunked projection,
        or with ``projection='liger'`` Liger's fused kernel where it applies (:mod:`.fused`)."""
        if self.projection == "liger" and hidden.shape[0]:
            ok, reason = liger_usable(hidden, stats, transform)
            if ok:
                return {"logps": liger_logps(hidden, targets, lm_head, transform)}
            warn_fallback(reason)
        return project_selected(hidden, targets, lm_head, stats, self.chunk_size, transform, ref_hidden, ref_head)

    # -- loss inputs --------------------------------------------------------------------------
    def loss_inputs(self, policy, batch: Batch, reference=None) -> LossInputs:
        needs = self.needs
        if needs.reference and reference is None:
            raise ValueError("this loss needs a reference model but none is configured")
        if needs.prompt_logps and batch.kind != "pairs":
            raise ValueError(f"prompt log-probs are computed for pairs only; this batch holds {batch.kind}")
        groups = list(batch.groups)
        if needs.prompt_logps:
            groups += _prompt_groups(batch.groups)
        policy_lp = self.token_logprobs(policy, groups, needs.token_stats, reference)
        prompt_lp = None
        if needs.prompt_logps:
            rows = sum(len(completions) for _, completions in batch.groups)
            policy_lp, prompt_lp = policy_lp.rows(slice(0, rows)), policy_lp.rows(slice(rows, None))
        ref_lp = reference.token_logprobs(self, batch) if needs.reference else None
        if batch.kind == "pairs":
            inputs = _pair_inputs(policy_lp, ref_lp)
            if prompt_lp is not None:
                inputs.policy_prompt_logps = prompt_lp.sums
                inputs.prompt_lengths = prompt_lp.lengths.to(prompt_lp.token_logps.dtype)
        elif batch.kind == "unpaired":
            inputs = _unpaired_inputs(policy_lp, ref_lp, batch.labels)
            if needs.mismatched_kl:
                inputs = self._with_mismatched_kl(policy, batch, reference, inputs)
        elif batch.kind == "lists":
            inputs = _list_inputs(policy_lp, ref_lp, [len(completions) for _, completions in batch.groups])
            if batch.scores is not None:
                inputs.list_scores = batch.scores.to(policy_lp.token_logps.device)
        else:
            raise ValueError(f"batch kind {batch.kind!r} is not supported by this engine")
        inputs.extras = {k: v.to(policy_lp.token_logps.device) for k, v in batch.extras.items()}
        return inputs

    def _with_mismatched_kl(self, policy, batch: Batch, reference, inputs: LossInputs) -> LossInputs:
        """KTO's KL batch: prompt i with completion i-1 (rotated by one), without gradients."""
        n = len(batch.groups)
        mismatched = [(batch.groups[i][0], batch.groups[(i - 1) % n][1]) for i in range(n)]
        mismatched_batch = Batch(batch.kind, mismatched, batch.index, batch.labels)
        with torch.no_grad():
            kl_policy = self.token_logprobs(policy, mismatched).sums
            kl_reference = reference.token_logprobs(self, mismatched_batch, cache=False).sums if reference else None
        return inputs.replace(kl_policy_logps=kl_policy, kl_reference_logps=kl_reference)


def _prompt_groups(groups: Sequence[RowGroup]) -> list:
    """One extra row per group: the prompt's tokens after the first, predicted from those before.

    Row ``(x[:1], [x[1:]])`` has exactly the context of the prompt part of every ``x + y`` row, so
    its log-probs are those of the prompt tokens in the chosen sequence under any layout. It runs
    in the same forward as the pairs (one pass per step, as distributed wrappers expect).
    """
    return [(list(prompt[:1]), [list(prompt[1:])]) for prompt, _ in groups]


def _split(lp: Optional[TokenLogprobs], stride: int, offset: int) -> Optional[TokenLogprobs]:
    return None if lp is None else lp.rows(slice(offset, None, stride))


def _pair_inputs(policy: TokenLogprobs, reference: Optional[TokenLogprobs]) -> LossInputs:
    pc, pr = _split(policy, 2, 0), _split(policy, 2, 1)
    rc, rr = _split(reference, 2, 0), _split(reference, 2, 1)
    stats: Dict[str, torch.Tensor] = {}
    for name in policy.stats:
        stats[f"chosen/{name}"] = pc.stats[name]
        stats[f"rejected/{name}"] = pr.stats[name]
    dtype = pc.token_logps.dtype
    return LossInputs(
        policy_chosen_logps=pc.sums,
        policy_rejected_logps=pr.sums,
        reference_chosen_logps=None if rc is None else rc.sums,
        reference_rejected_logps=None if rr is None else rr.sums,
        chosen_lengths=pc.lengths.to(dtype),
        rejected_lengths=pr.lengths.to(dtype),
        policy_chosen_token_logps=pc.token_logps,
        policy_rejected_token_logps=pr.token_logps,
        reference_chosen_token_logps=None if rc is None else rc.token_logps,
        reference_rejected_token_logps=None if rr is None else rr.token_logps,
        chosen_token_mask=pc.mask,
        rejected_token_mask=pr.mask,
        token_stats=stats,
    )


def _unpaired_inputs(policy: TokenLogprobs, reference: Optional[TokenLogprobs], labels) -> LossInputs:
    return LossInputs(
        policy_logps=policy.sums,
        reference_logps=None if reference is None else reference.sums,
        lengths=policy.lengths.to(policy.token_logps.dtype),
        labels=labels.to(policy.token_logps.device),
        token_stats=dict(policy.stats),
    )


def _to_lists(values: torch.Tensor, sizes: Sequence[int]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row values [R] (group-major) -> [B, K_max] plus a mask of real responses."""
    width = max(sizes)
    mask = torch.arange(width, device=values.device).unsqueeze(0) < torch.tensor(sizes, device=values.device).unsqueeze(1)
    out = values.new_zeros(len(sizes), width)
    return out.masked_scatter(mask, values), mask


def _list_inputs(policy: TokenLogprobs, reference: Optional[TokenLogprobs], sizes: Sequence[int]) -> LossInputs:
    """Listwise inputs: ``list_*`` fields of shape [B, K] (K = most responses in the batch)."""
    policy_logps, mask = _to_lists(policy.sums, sizes)
    lengths, _ = _to_lists(policy.lengths.to(policy.token_logps.dtype), sizes)
    return LossInputs(
        list_policy_logps=policy_logps,
        list_reference_logps=None if reference is None else _to_lists(reference.sums, sizes)[0],
        list_lengths=lengths,
        list_mask=mask,
        list_policy_token_logps=_to_list_rows(policy.token_logps, mask),
        list_reference_token_logps=None if reference is None else _to_list_rows(reference.token_logps, mask),
        list_token_mask=_to_list_rows(policy.mask, mask),
    )


def _to_list_rows(rows: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-row tensors [R, T] (group-major) -> [B, K_max, T], zeros for padded responses."""
    out = rows.new_zeros(mask.shape[0], mask.shape[1], rows.shape[-1])
    out[mask] = rows
    return out
