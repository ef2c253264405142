"""Shared builders for loss tests: random LossInputs that match a loss's Needs, and NumPy helpers.

``make_inputs`` fills exactly the fields a loss may read according to its ``Needs`` (so a loss that
reads an undeclared field fails the registry-wide test), with paired sums consistent with the
per-token tensors. ``make_full_inputs`` fills everything.
"""

from __future__ import annotations

import pytest
import torch

from dpokit.losses import LossInputs, Needs

from .references import np_logsig, np_sig, to_numpy  # noqa: F401  (shared with the test modules)

EXTRA_KEYS = (
    "chosen_token_weights",
    "rejected_token_weights",
    "rm_margin",
    "modpo_chosen_scores",
    "modpo_rejected_scores",
    "win_prob_chosen",
    "win_prob_rejected",
    "udm_weight",
    "sem_weight",
    # online losses (dpokit.losses.online)
    "ref_is_chosen",
    "side_policy_logps",
    "side_reference_logps",
    "side_mask",
    "ofs_other_chosen_logps",
    "ofs_other_rejected_logps",
    # policy-gradient losses (dpokit.losses.policy_gradient)
    "list_old_logps",
    "list_old_token_logps",
    "answer_ids",
    # process-reward losses (dpokit.losses.process_reward)
    "list_num_steps",
    "step_rewards",
    "step_mask",
    "token_step",
    # diffusion losses (dpokit.losses.diffusion)
    "chosen_score",
    "rejected_score",
    "segment_policy_logps",
    "segment_reference_logps",
    "segment_labels",
)
TOKEN_STATS = ("ref_kl", "sum_p2", "entropy")


def _token_logps(gen, batch, T, lengths, dtype):
    mask = torch.arange(T).unsqueeze(0) < lengths.unsqueeze(1)
    values = -(0.05 + 3.0 * torch.rand(batch, T, generator=gen, dtype=dtype))
    return values * mask.to(dtype), mask


def make_full_inputs(batch: int = 4, T: int = 6, seed: int = 0, dtype=torch.float64, K: int = 3) -> LossInputs:
    gen = torch.Generator().manual_seed(seed)
    len_w = torch.randint(1, T + 1, (batch,), generator=gen)
    len_l = torch.randint(1, T + 1, (batch,), generator=gen)
    len_w[0], len_l[0] = T, max(1, T // 2)  # at least one pair of unequal lengths
    ptw, m_w = _token_logps(gen, batch, T, len_w, dtype)
    ptl, m_l = _token_logps(gen, batch, T, len_l, dtype)
    rtw, _ = _token_logps(gen, batch, T, len_w, dtype)
    rtl, _ = _token_logps(gen, batch, T, len_l, dtype)
    stats = {}
    for which, m in (("chosen", m_w), ("rejected", m_l)):
        md = m.to(dtype)
        stats[f"{which}/ref_kl"] = 0.3 * torch.rand(batch, T, generator=gen, dtype=dtype) * md
        stats[f"{which}/sum_p2"] = (0.05 + 0.9 * torch.rand(batch, T, generator=gen, dtype=dtype)) * md
        stats[f"{which}/entropy"] = 2.0 * torch.rand(batch, T, generator=gen, dtype=dtype) * md
    extras = {
        "chosen_token_weights": (0.5 + torch.rand(batch, T, generator=gen, dtype=dtype)) * m_w.to(dtype),
        "rejected_token_weights": (0.5 + torch.rand(batch, T, generator=gen, dtype=dtype)) * m_l.to(dtype),
        "rm_margin": 8.0 * torch.rand(batch, generator=gen, dtype=dtype) - 4.0,
        "modpo_chosen_scores": torch.randn(batch, 1, generator=gen, dtype=dtype),
        "modpo_rejected_scores": torch.randn(batch, 1, generator=gen, dtype=dtype),
        "win_prob_chosen": 0.5 + 0.5 * torch.rand(batch, generator=gen, dtype=dtype),
        "win_prob_rejected": 0.5 * torch.rand(batch, generator=gen, dtype=dtype),
        "udm_weight": 12.0 * torch.rand(batch, generator=gen, dtype=dtype),
    }
    extras["sem_weight"] = torch.exp(-torch.rand(batch, generator=torch.Generator().manual_seed(seed + 104729),
                                                 dtype=dtype))
    online = torch.Generator().manual_seed(seed + 7919)  # own stream: the values above stay as they were
    side_mask = torch.ones(batch, K, dtype=dtype)
    side_mask[0, -1] = 0.0
    extras.update({
        "ref_is_chosen": torch.tensor([float(i % 2) for i in range(batch)], dtype=dtype),
        "side_policy_logps": -5 * torch.rand(batch, K, generator=online, dtype=dtype),
        "side_reference_logps": -5 * torch.rand(batch, K, generator=online, dtype=dtype),
        "side_mask": side_mask,
        "ofs_other_chosen_logps": -10 * torch.rand(batch, generator=online, dtype=dtype),
        "ofs_other_rejected_logps": -10 * torch.rand(batch, generator=online, dtype=dtype),
    })
    prompt = torch.Generator().manual_seed(seed + 15485863)  # own stream, as above
    prompt_lengths = torch.randint(0, T + 1, (batch,), generator=prompt)
    prompt_logps = -(0.05 + 3.0 * torch.rand(batch, generator=prompt, dtype=dtype)) * prompt_lengths.to(dtype)
    labels = torch.tensor([i % 2 == 0 for i in range(batch)])
    labels[-1] = not labels[0]
    list_mask = torch.ones(batch, K, dtype=torch.bool)
    list_mask[0, -1] = False
    list_policy_logps = -5 * torch.rand(batch, K, generator=gen, dtype=dtype)
    list_reference_logps = -5 * torch.rand(batch, K, generator=gen, dtype=dtype)
    list_lengths = torch.randint(1, T + 1, (batch, K), generator=gen).to(dtype)
    # per-token list log-probs consistent with the sums: lp_k / L_k on each of the L_k tokens
    list_token_mask = torch.arange(T).view(1, 1, T) < list_lengths.unsqueeze(-1)
    spread = list_token_mask.to(dtype) / list_lengths.unsqueeze(-1)
    pg = torch.Generator().manual_seed(seed + 32452843)  # own stream, as above
    old_tokens = (list_policy_logps.unsqueeze(-1) * spread
                  + 0.05 * torch.randn(batch, K, T, generator=pg, dtype=dtype)) * list_token_mask.to(dtype)
    extras.update({"list_old_token_logps": old_tokens, "list_old_logps": old_tokens.sum(-1),
                   "answer_ids": torch.randint(0, 2, (batch, K), generator=pg).to(dtype)})
    steps = 2  # two steps per response: the first half of its tokens, then the rest
    token_step = torch.where(torch.arange(T).view(1, 1, T) < (list_lengths.unsqueeze(-1) + 1) // 2, 0, 1)
    extras.update({"list_num_steps": torch.full((batch, K), float(steps), dtype=dtype),
                   "step_rewards": 0.1 * torch.randn(batch, K, steps, generator=pg, dtype=dtype),
                   "step_mask": torch.ones(batch, K, steps, dtype=torch.bool),
                   "token_step": torch.where(list_token_mask, token_step, -1).to(dtype)})
    value_stream = torch.Generator().manual_seed(seed + 49979687)  # own stream, as above
    extras["list_values"] = torch.rand(batch, K, T, generator=value_stream, dtype=dtype) * list_token_mask.to(dtype)
    diffusion = torch.Generator().manual_seed(seed + 86028121)  # own stream, as above
    segments = 3
    labels_f = torch.randint(-1, 2, (batch, segments), generator=diffusion).to(dtype)
    labels_f[:, 0] = 1.0  # every example has a labelled segment
    extras.update({"chosen_score": 0.11 + 0.17 * torch.rand(batch, generator=diffusion, dtype=dtype),
                   "rejected_score": 0.11 + 0.17 * torch.rand(batch, generator=diffusion, dtype=dtype),
                   "segment_policy_logps": -0.2 * torch.rand(batch, 2, segments, generator=diffusion, dtype=dtype),
                   "segment_reference_logps": -0.2 * torch.rand(batch, 2, segments, generator=diffusion,
                                                                dtype=dtype),
                   "segment_labels": labels_f})
    extras["bide_pair"] = torch.tensor([float(i % 2) for i in range(batch)], dtype=dtype)  # BideDPO pair kinds
    return LossInputs(
        policy_chosen_logps=ptw.sum(-1),
        policy_rejected_logps=ptl.sum(-1),
        reference_chosen_logps=rtw.sum(-1),
        reference_rejected_logps=rtl.sum(-1),
        chosen_lengths=len_w.to(dtype),
        rejected_lengths=len_l.to(dtype),
        policy_chosen_token_logps=ptw,
        policy_rejected_token_logps=ptl,
        reference_chosen_token_logps=rtw,
        reference_rejected_token_logps=rtl,
        chosen_token_mask=m_w,
        rejected_token_mask=m_l,
        token_stats=stats,
        policy_prompt_logps=prompt_logps,
        prompt_lengths=prompt_lengths.to(dtype),
        list_policy_logps=list_policy_logps,
        list_reference_logps=list_reference_logps,
        list_lengths=list_lengths,
        list_policy_token_logps=list_policy_logps.unsqueeze(-1) * spread,
        list_reference_token_logps=list_reference_logps.unsqueeze(-1) * spread,
        list_token_mask=list_token_mask,
        list_scores=torch.rand(batch, K, generator=gen, dtype=dtype),
        list_mask=list_mask,
        policy_logps=-10 * torch.rand(batch, generator=gen, dtype=dtype),
        reference_logps=-10 * torch.rand(batch, generator=gen, dtype=dtype),
        lengths=torch.randint(1, T + 1, (batch,), generator=gen).to(dtype),
        labels=labels,
        kl_policy_logps=-10 * torch.rand(batch, generator=gen, dtype=dtype),
        kl_reference_logps=-10 * torch.rand(batch, generator=gen, dtype=dtype),
        extras=extras,
    )


_PAIR_FIELDS = ("policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps",
                "reference_rejected_logps", "chosen_lengths", "rejected_lengths")
_TOKEN_FIELDS = ("policy_chosen_token_logps", "policy_rejected_token_logps", "reference_chosen_token_logps",
                 "reference_rejected_token_logps", "chosen_token_mask", "rejected_token_mask")
_PROMPT_FIELDS = ("policy_prompt_logps", "prompt_lengths")
_LIST_FIELDS = ("list_policy_logps", "list_reference_logps", "list_lengths", "list_scores", "list_mask")
_LIST_TOKEN_FIELDS = ("list_policy_token_logps", "list_reference_token_logps", "list_token_mask")
_UNPAIRED_FIELDS = ("policy_logps", "reference_logps", "lengths", "labels")
_KL_FIELDS = ("kl_policy_logps", "kl_reference_logps")
_REFERENCE_FIELDS = ("reference_chosen_logps", "reference_rejected_logps", "reference_chosen_token_logps",
                     "reference_rejected_token_logps", "list_reference_logps", "reference_logps",
                     "kl_reference_logps", "list_reference_token_logps")


def make_inputs(needs: Needs, batch: int = 4, T: int = 6, seed: int = 0, dtype=torch.float64) -> LossInputs:
    """Random LossInputs holding only what ``needs`` declares (everything a loss may read)."""
    full = make_full_inputs(batch, T, seed, dtype)
    keep = set()
    if needs.data == "pairs":
        keep.update(_PAIR_FIELDS)
        # Per-token tensors only when declared: a loss must not rely on fields it did not ask for.
        if needs.token_logps:
            keep.update(_TOKEN_FIELDS)
        if needs.prompt_logps:
            keep.update(_PROMPT_FIELDS)
    elif needs.data == "unpaired":
        keep.update(_UNPAIRED_FIELDS)
        if needs.mismatched_kl:
            keep.update(_KL_FIELDS)
    else:
        keep.update(_LIST_FIELDS)
        if needs.token_logps:
            keep.update(_LIST_TOKEN_FIELDS)
    if not needs.reference:
        keep -= set(_REFERENCE_FIELDS)
    changes = {}
    for name in (_PAIR_FIELDS + _TOKEN_FIELDS + _PROMPT_FIELDS + _LIST_FIELDS + _LIST_TOKEN_FIELDS
                 + _UNPAIRED_FIELDS + _KL_FIELDS):
        if name not in keep:
            changes[name] = None
    prefixes = ("chosen", "rejected") if needs.data == "pairs" else ()
    changes["token_stats"] = {f"{p}/{s}": full.token_stats[f"{p}/{s}"] for p in prefixes for s in needs.token_stats}
    changes["extras"] = {k: full.extras[k] for k in needs.extras}
    return full.replace(**changes)


@pytest.fixture
def full_inputs():
    return make_full_inputs()
