"""Pieces of ``dpokit audit``: text features for the probes, cross-validated probes, interval
estimates and duplicate detection (exact keys and MinHash near-duplicates).

Nothing here needs SciPy or scikit-learn: the probes are L2-regularised logistic regressions fitted
with L-BFGS in float64 (:func:`dpokit.eval.metrics._fit_logistic`), the near-duplicate search is
MinHash with LSH banding over word shingles, verified by the exact Jaccard similarity.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from .metrics import _fit_logistic

Z975 = 1.959964
_TOKEN = re.compile(r"\w+|[^\w\s]")


def as_text(value: Any) -> str:
    """A text, or a message list as its contents joined by newlines."""
    if isinstance(value, str):
        return value
    return "\n".join(str(m.get("content", "")) for m in value)


def words(text: str) -> List[str]:
    return _TOKEN.findall(text.lower())


# ---- intervals ------------------------------------------------------------------------------------------

def wilson(successes: float, n: int, z: float = Z975) -> Optional[List[float]]:
    """95% Wilson score interval of a binomial proportion (None when n = 0)."""
    if n <= 0:
        return None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return [max(0.0, centre - half), min(1.0, centre + half)]


def mean_interval(values: Sequence[float]) -> Optional[List[float]]:
    """Normal-approximation 95% interval of a mean of independent values (None with fewer than 2)."""
    n = len(values)
    if n < 2:
        return None
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    half = Z975 * math.sqrt(var / n)
    return [max(0.0, mean - half), min(1.0, mean + half)]


# ---- features ------------------------------------------------------------------------------------------

LENGTH_FEATURES = ("chars", "words", "log_chars", "log_words", "lines")
STYLE_FEATURES = ("newlines", "list_items", "headings", "bold", "questions", "exclamations", "digits_share",
                  "upper_share", "sentences", "mean_word_length")


def length_features(text: str) -> List[float]:
    n_words = len(text.split())
    return [float(len(text)), float(n_words), math.log1p(len(text)), math.log1p(n_words),
            float(text.count("\n") + 1)]


def style_features(text: str) -> List[float]:
    letters = [c for c in text if c.isalpha()]
    tokens = text.split()
    return [float(text.count("\n")),
            float(len(re.findall(r"(?m)^\s*(?:[-*\u2022]|\d+[.)])\s", text))),
            float(len(re.findall(r"(?m)^\s*#", text))),
            float(text.count("**")),
            float(text.count("?")),
            float(text.count("!")),
            sum(c.isdigit() for c in text) / max(len(text), 1),
            sum(c.isupper() for c in letters) / max(len(letters), 1),
            float(len(re.findall(r"[.!?]+(?:\s|$)", text))),
            sum(len(t) for t in tokens) / max(len(tokens), 1)]


def hashed_ngrams(texts: Sequence[str], dim: int = 2048, n: int = 2) -> torch.Tensor:
    """``log(1 + count)`` of word 1..n-grams hashed (CRC-32) into ``dim`` buckets, [len(texts), dim]."""
    out = torch.zeros(len(texts), dim, dtype=torch.float64)
    for row, text in enumerate(texts):
        tokens = words(text)
        counts: Dict[int, int] = {}
        for size in range(1, n + 1):
            for i in range(len(tokens) - size + 1):
                key = zlib.crc32(" ".join(tokens[i:i + size]).encode("utf-8")) % dim
                counts[key] = counts.get(key, 0) + 1
        for key, count in counts.items():
            out[row, key] = math.log1p(count)
    return out


def surface_features(texts: Sequence[str], dim: int = 2048) -> torch.Tensor:
    """Hashed word uni- and bigrams, the length features and the style features of each text."""
    dense = torch.tensor([length_features(t) + style_features(t) for t in texts], dtype=torch.float64)
    return torch.cat([hashed_ngrams(texts, dim), dense.reshape(len(texts), -1)], dim=1)


def length_only(texts: Sequence[str]) -> torch.Tensor:
    return torch.tensor([length_features(t) for t in texts], dtype=torch.float64).reshape(len(texts), -1)


@torch.no_grad()
def model_features(model, tokenizer, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 8,
                   max_length: int = 512) -> torch.Tensor:
    """Mean over the response tokens of the model's last hidden state on ``prompt + response``
    ([N, hidden]). A sequence longer than ``max_length`` loses the start of its prompt."""
    device = next(model.parameters()).device
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows = []
    for p, r in zip(prompts, responses):
        p_ids = tokenizer(as_text(p), add_special_tokens=True)["input_ids"]
        r_ids = tokenizer(as_text(r), add_special_tokens=False)["input_ids"][:max_length] or [pad]
        p_ids = p_ids[max(0, len(p_ids) + len(r_ids) - max_length):]
        rows.append((p_ids + r_ids, len(p_ids)))
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        width = max(len(ids) for ids, _ in chunk)
        input_ids = torch.full((len(chunk), width), pad, dtype=torch.long)
        attention = torch.zeros(len(chunk), width, dtype=torch.long)
        mask = torch.zeros(len(chunk), width)
        for i, (ids, cut) in enumerate(chunk):
            input_ids[i, :len(ids)] = torch.tensor(ids)
            attention[i, :len(ids)] = 1
            mask[i, cut:len(ids)] = 1
        hidden = model(input_ids=input_ids.to(device), attention_mask=attention.to(device),
                       output_hidden_states=True).hidden_states[-1].float().cpu()
        out.append((hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp_min(1))
    return torch.cat(out).double()


# ---- probes --------------------------------------------------------------------------------------------

def fold_assignment(groups: Sequence[int], folds: int, seed: int) -> torch.Tensor:
    """A fold per row; rows of one group share a fold (the groups are shuffled, then dealt round-robin)."""
    unique = sorted(set(int(g) for g in groups))
    order = torch.randperm(len(unique), generator=torch.Generator().manual_seed(seed)).tolist()
    fold_of = {unique[j]: i % folds for i, j in enumerate(order)}
    return torch.tensor([fold_of[int(g)] for g in groups])


L2_GRID = (0.01, 0.1, 1.0, 10.0)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, bias: bool = True,
                 steps: int = 100) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(w, b)`` minimising the mean logistic loss of ``x @ w + b`` plus ``l2 * |w|^2`` (L-BFGS);
    ``bias=False`` fixes ``b = 0``."""
    if bias:
        return _fit_logistic(x, y, l2, steps)
    w = torch.zeros(x.shape[1], dtype=x.dtype, requires_grad=True)
    optimizer = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return w.detach(), torch.zeros((), dtype=x.dtype)


def fit_probe(x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor, bias: bool = True, seed: int = 0,
              grid: Sequence[float] = L2_GRID) -> Tuple[torch.Tensor, torch.Tensor, float]:
    """A probe on training rows: ``l2`` chosen from ``grid`` by the log-loss on a held-out fifth of the
    training groups (the test fold is never seen), then refitted on all training rows."""
    inner = fold_assignment(groups.tolist(), 5, seed) == 0 if len(set(groups.tolist())) >= 5 else None
    best, best_loss = grid[0], float("inf")
    if inner is not None and len(torch.unique(y[~inner])) == 2 and len(grid) > 1:
        for l2 in grid:
            w, b = fit_logistic(x[~inner], y[~inner], l2, bias)
            loss = float(torch.nn.functional.binary_cross_entropy_with_logits(x[inner] @ w + b, y[inner]))
            if loss < best_loss:
                best, best_loss = l2, loss
    w, b = fit_logistic(x, y, best, bias)
    return w, b, best


def heldout_logits(x: torch.Tensor, y: torch.Tensor, fold: torch.Tensor, groups: torch.Tensor, bias: bool = True,
                   center: bool = True, seed: int = 0) -> Tuple[torch.Tensor, List[float]]:
    """Each row's logit from a probe fitted on the other folds (features standardised on those
    folds; ``center=False`` scales only) and the ``l2`` chosen in each fold."""
    out = torch.zeros(x.shape[0], dtype=torch.float64)
    chosen_l2 = []
    for f in torch.unique(fold).tolist():
        test, train = fold == f, fold != f
        if not train.any() or len(torch.unique(y[train])) < 2:
            continue
        mean = x[train].mean(0) if center else torch.zeros(x.shape[1], dtype=x.dtype)
        std = x[train].std(0, unbiased=False).clamp_min(1e-8)
        w, b, l2 = fit_probe((x[train] - mean) / std, y[train], groups[train], bias, seed)
        out[test] = ((x[test] - mean) / std) @ w + b
        chosen_l2.append(l2)
    return out, chosen_l2


def separability_probe(chosen: torch.Tensor, rejected: torch.Tensor, groups: Sequence[int], folds: int = 5,
                       seed: int = 0) -> Dict[str, Any]:
    """Held-out accuracy of a logistic probe telling a chosen response (label 1) from a rejected one
    (label 0), by ``folds``-fold cross-validation with every pair's two rows, and every pair of a group
    (one prompt), in one fold. The interval treats pairs as the independent units: a pair scores 0,
    1/2 or 1 (how many of its two rows the probe gets right) and the 95% interval is that of the mean."""
    n = chosen.shape[0]
    if len(set(groups)) < 2:
        return {"accuracy": None, "ci95": None, "num_pairs": n}
    x = torch.cat([chosen, rejected]).double()
    y = torch.cat([torch.ones(n), torch.zeros(n)]).double()
    g = torch.tensor(list(groups) * 2)
    fold = fold_assignment(g.tolist(), max(2, min(folds, len(set(groups)))), seed)
    logits, l2 = heldout_logits(x, y, fold, g, seed=seed)
    right = ((logits > 0).double() == y).double()
    per_pair = ((right[:n] + right[n:]) / 2).tolist()
    return {"accuracy": sum(per_pair) / n, "ci95": mean_interval(per_pair), "num_pairs": n, "l2": l2}


def ranking_probe(chosen: torch.Tensor, rejected: torch.Tensor, groups: Sequence[int], folds: int = 5,
                  seed: int = 0) -> Dict[str, Any]:
    """A linear Bradley-Terry scorer ``s(y) = w . phi(y)`` fitted by logistic regression on feature
    differences (each pair enters once, its orientation drawn at random so both classes occur; no
    intercept, which cancels in a difference of two scores, so the features are scaled, not centred),
    cross-validated by group. Returns the held-out ``p_chosen = sig(s(y_w) - s(y_l))`` of every pair
    and the share of pairs it ranks right (``accuracy``, Wilson interval)."""
    n = chosen.shape[0]
    if len(set(groups)) < 2:
        return {"accuracy": None, "ci95": None, "p_chosen": [], "num_pairs": n}
    sign = (torch.rand(n, generator=torch.Generator().manual_seed(seed + 1)) < 0.5).double() * 2 - 1
    x = (chosen - rejected).double() * sign[:, None]
    y = (sign > 0).double()
    g = torch.tensor(list(groups))
    fold = fold_assignment(g.tolist(), max(2, min(folds, len(set(groups)))), seed)
    logits, l2 = heldout_logits(x, y, fold, g, bias=False, center=False, seed=seed)
    margin = logits * sign  # s(y_w) - s(y_l)
    correct = float((margin > 0).double().sum() + 0.5 * (margin == 0).double().sum())
    return {"accuracy": correct / n, "ci95": wilson(correct, n), "p_chosen": torch.sigmoid(margin).tolist(),
            "num_pairs": n, "l2": l2}


# ---- duplicates ----------------------------------------------------------------------------------------

def normalise(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, size: int = 3) -> set:
    tokens = words(text)
    if len(tokens) < size:
        return {" ".join(tokens)} if tokens else set()
    return {" ".join(tokens[i:i + size]) for i in range(len(tokens) - size + 1)}


_PRIME = (1 << 31) - 1


def minhash_signatures(sets: Sequence[set], num_perm: int = 64, seed: int = 0) -> np.ndarray:
    """[len(sets), num_perm] MinHash signatures: ``min over the set of (a * h + b) mod p`` with
    ``h`` the CRC-32 of a shingle (mod the Mersenne prime ``p = 2^31 - 1``) and seeded ``a, b``."""
    rng = np.random.default_rng(seed)
    a = rng.integers(1, _PRIME, num_perm, dtype=np.int64)
    b = rng.integers(0, _PRIME, num_perm, dtype=np.int64)
    out = np.full((len(sets), num_perm), _PRIME, dtype=np.int64)
    for i, items in enumerate(sets):
        if not items:
            continue
        h = np.array([zlib.crc32(s.encode("utf-8")) % _PRIME for s in items], dtype=np.int64)
        out[i] = ((h[:, None] * a[None, :] + b[None, :]) % _PRIME).min(axis=0)
    return out


def jaccard(a: set, b: set) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def near_duplicate_groups(texts: Sequence[str], threshold: float = 0.8, num_perm: int = 64, bands: int = 16,
                          size: int = 3, seed: int = 0) -> Tuple[List[List[int]], int]:
    """Groups (of two or more indices) of texts whose word-``size``-shingle Jaccard similarity is at
    least ``threshold`` with some other member (single linkage). Candidates come from MinHash LSH
    (``bands`` bands of ``num_perm / bands`` rows: a pair at similarity s is a candidate with
    probability ``1 - (1 - s^r)^bands``, 0.99 at s = 0.8 with 16 x 4) and every candidate is checked
    with the exact Jaccard. Returns the groups and the number of similar index pairs found."""
    sets = [shingles(t, size) for t in texts]
    signatures = minhash_signatures(sets, num_perm, seed)
    rows = num_perm // bands
    parent = list(range(len(texts)))

    def find(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    checked, similar = set(), 0
    for band in range(bands):
        buckets: Dict[bytes, List[int]] = {}
        for i in range(len(texts)):
            if sets[i]:
                buckets.setdefault(signatures[i, band * rows:(band + 1) * rows].tobytes(), []).append(i)
        for members in buckets.values():
            for x in range(len(members)):
                for y in range(x + 1, len(members)):
                    i, j = members[x], members[y]
                    if (i, j) in checked:
                        continue
                    checked.add((i, j))
                    if jaccard(sets[i], sets[j]) >= threshold:
                        similar += 1
                        parent[find(i)] = find(j)
    groups: Dict[int, List[int]] = {}
    for i in range(len(texts)):
        groups.setdefault(find(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: (-len(g), g[0])), similar
