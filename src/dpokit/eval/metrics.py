"""Metric functions on plain tensors and strings (no model inside); definitions in docs/evaluation.md.

Each function is small enough to check against a hand computation (``tests/eval/test_metrics.py``):

* :func:`distinct_n`: corpus-level distinct n-grams / all n-grams over whitespace words;
* :func:`margin_distribution`: quantiles and a histogram of implicit-reward margins;
* :func:`topk_indicators`: top-k probability mass and base-2 entropy of the renormalised top-k
  distribution (Shi et al. 2024, k = 10);
* :func:`next_token_kl`: KL(p || q) between two next-token distributions given as log-probs;
* :func:`fisher_rao`: ``2 * arccos(BC(p, q))``, the Fisher-Rao distance between categorical
  distributions (SPINAL's transport);
* :func:`spectral_contraction`: the tail exponent of a representation's singular-value spectrum
  (SPINAL's contraction, with our choice of tail window);
* :func:`probe_accuracy`: held-out accuracy of a logistic-regression probe (k-fold, grouped);
* :func:`win_rate`: judge-score comparison of two sets of answers to the same prompt.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


# ---- text ---------------------------------------------------------------------------------------

def ngrams(words: Sequence[str], n: int) -> List[Tuple[str, ...]]:
    return [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Distinct-n (Li et al. 2016), corpus level: ``|unique n-grams| / |n-grams|`` over the
    whitespace-split words of all ``texts`` (n-grams never cross texts); 0.0 when there is none."""
    total = 0
    unique = set()
    for text in texts:
        grams = ngrams(text.split(), n)
        total += len(grams)
        unique.update(grams)
    return len(unique) / total if total else 0.0


# ---- implicit rewards ------------------------------------------------------------------------------

def margin_distribution(margins: torch.Tensor, bins: int = 20) -> Dict[str, object]:
    """``{"quantiles": {"q05": ..., "q50": ...}, "histogram": {"edges": [bins+1], "counts": [bins]}}``.

    The histogram spans ``[min, max]`` of the margins (``[m - 0.5, m + 0.5]`` when all are equal);
    quantiles interpolate linearly (``torch.quantile``)."""
    margins = margins.detach().double().flatten().cpu()
    if margins.numel() == 0:
        return {"quantiles": {}, "histogram": {"edges": [], "counts": []}}
    quantiles = torch.quantile(margins, torch.tensor(QUANTILES, dtype=torch.float64))
    lo, hi = float(margins.min()), float(margins.max())
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(margins, bins=bins, min=lo, max=hi)
    edges = torch.linspace(lo, hi, bins + 1)
    return {
        "quantiles": {f"q{int(round(q * 100)):02d}": float(v) for q, v in zip(QUANTILES, quantiles)},
        "histogram": {"edges": [float(e) for e in edges], "counts": [int(c) for c in counts]},
    }


# ---- next-token distributions ----------------------------------------------------------------------

def topk_indicators(logp: torch.Tensor, k: int = 10) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shi et al. (2024) over-optimisation indicators for each row of ``logp`` [N, V] (log-probs):

    * mass ``M = sum_{v in top-k} p(v)`` (un-normalised);
    * entropy ``H = -sum_i p~_i log2 p~_i`` of the top-k probabilities renormalised to sum to 1
      (so ``0 <= H <= log2 k``, the maximum reached when the k tokens are equally likely).

    Returns ``(mass [N], entropy [N])`` in fp32 or wider."""
    k = min(k, logp.shape[-1])
    if logp.dtype in (torch.float16, torch.bfloat16):
        logp = logp.float()
    top = logp.topk(k, dim=-1).values
    mass = top.exp().sum(-1)
    renorm = top - torch.logsumexp(top, dim=-1, keepdim=True)
    entropy = -(renorm.exp() * renorm).sum(-1) / math.log(2.0)
    return mass, entropy


def next_token_kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """``KL(p || q) = sum_v p(v) (log p(v) - log q(v))`` per row of two [N, V] log-prob tensors."""
    return (logp.exp() * (logp - logq)).sum(-1)


def fisher_rao(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """Fisher-Rao distance between categorical distributions, ``2 * arccos(BC(p, q))`` with the
    Bhattacharyya coefficient ``BC = sum_v sqrt(p(v) q(v))`` (computed in float64 and clamped to
    [0, 1]); 0 for identical distributions, pi for disjoint supports. Rows of [N, V] log-probs."""
    log_bc = torch.logsumexp(0.5 * (logp.double() + logq.double()), dim=-1)
    return 2.0 * torch.acos(log_bc.exp().clamp(0.0, 1.0))


# ---- representations --------------------------------------------------------------------------------

def spectral_contraction(hidden: torch.Tensor, window: Tuple[float, float] = (0.1, 0.6), center: bool = True) -> float:
    """Tail exponent ``alpha = -d log sigma_k / d log k`` of the singular values of ``hidden``
    [tokens, dim]: least squares of ``log sigma_k`` on ``log k`` over the ranks ``k`` in
    ``[window[0] * r, window[1] * r]`` (``r`` = number of singular values, at least 3 ranks used).

    Columns are centred first (``center=True``). A larger alpha means a faster-decaying spectrum:
    fewer effective directions. The window and the centring are our choices (the SPINAL paper's
    abstract fixes the estimator, not these details). NaN when fewer than 3 usable ranks exist."""
    h = hidden.detach().double().cpu()
    if center:
        h = h - h.mean(0, keepdim=True)
    s = torch.linalg.svdvals(h)
    s = s[s > s[0] * 1e-10] if s.numel() else s
    r = s.numel()
    if r < 3:
        return float("nan")
    lo = max(1, int(math.floor(window[0] * r)))
    hi = min(r, max(lo + 2, int(math.ceil(window[1] * r))))
    ranks = torch.arange(lo, hi + 1, dtype=torch.float64)
    x, y = ranks.log(), s[lo - 1:hi].log()
    x_c = x - x.mean()
    slope = float((x_c * (y - y.mean())).sum() / (x_c * x_c).sum())
    return -slope


def _fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, steps: int) -> Tuple[torch.Tensor, torch.Tensor]:
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    b = torch.zeros((), dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w, b], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), b.detach()


def probe_accuracy(features: torch.Tensor, labels: torch.Tensor, groups: Optional[torch.Tensor] = None,
                   folds: int = 5, l2: float = 1e-2, steps: int = 100, seed: int = 0) -> float:
    """Held-out accuracy of an L2-regularised logistic-regression probe, by k-fold cross-validation.

    ``features`` [N, D], ``labels`` [N] in {0, 1}; ``groups`` [N] keeps rows of one group (e.g. the
    chosen and rejected responses of one pair) in the same fold. Features are standardised with the
    training folds' mean and standard deviation; the probe minimises the mean logistic loss plus
    ``l2 * |w|^2`` (L-BFGS). Returns the fraction of held-out rows classified right (all rows are
    held out exactly once). NaN with fewer than 2 groups."""
    x = features.detach().double().cpu()
    y = labels.detach().double().cpu().flatten()
    n = x.shape[0]
    g = torch.arange(n) if groups is None else groups.detach().cpu().long().flatten()
    unique = torch.unique(g)
    if unique.numel() < 2:
        return float("nan")
    folds = max(2, min(folds, unique.numel()))
    generator = torch.Generator().manual_seed(seed)
    order = unique[torch.randperm(unique.numel(), generator=generator)]
    fold_of_group = {int(group): i % folds for i, group in enumerate(order)}
    fold = torch.tensor([fold_of_group[int(v)] for v in g])
    correct = 0
    for f in range(folds):
        test, train = fold == f, fold != f
        if not test.any() or not train.any():
            continue
        mean, std = x[train].mean(0), x[train].std(0, unbiased=False).clamp_min(1e-8)
        w, b = _fit_logistic((x[train] - mean) / std, y[train], l2, steps)
        predicted = (((x[test] - mean) / std) @ w + b) > 0
        correct += int((predicted.double() == y[test]).sum())
    return correct / n


# ---- judged generations --------------------------------------------------------------------------------

def win_rate(policy_scores: Sequence[Sequence[float]], reference_scores: Sequence[Sequence[float]]) -> float:
    """Per prompt, every policy answer is compared with every reference answer under the judge's
    scores: a win counts 1, a tie 1/2, a loss 0; the mean over comparisons within a prompt, then over
    prompts. 0.5 means no difference."""
    rates = []
    for ours, theirs in zip(policy_scores, reference_scores):
        if not ours or not theirs:
            continue
        total = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a in ours for b in theirs)
        rates.append(total / (len(ours) * len(theirs)))
    return sum(rates) / len(rates) if rates else float("nan")


def mean_and_stderr(values: Sequence[float]) -> Tuple[float, float]:
    t = torch.tensor(list(values), dtype=torch.float64)
    if t.numel() == 0:
        return float("nan"), float("nan")
    stderr = float(t.std() / math.sqrt(t.numel())) if t.numel() > 1 else 0.0
    return float(t.mean()), stderr
