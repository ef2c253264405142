"""From rated lists to what a loss trains on: pair builders, curricula, label noise, semantic weights.

    lists = load_examples("lists.jsonl", kind="lists")             # RankedList: prompt, K responses, scores
    pairs = pairs_from_lists(lists, "best_vs_each", min_margin=0.5)
    pairs, flipped = inject_label_noise(pairs, fraction=0.1, seed=0)

Pair builders (``data.pair_builder``; ``s`` = the list's primary scores, higher is better):

* ``best_vs_worst``: one pair per list, a best-scored response over a worst-scored one.
* ``best_vs_each``: the best response over every response scored strictly lower (K-1 pairs when
  there are no ties; Curry-DPO's construction).
* ``all_pairs``: every pair ``(i, j)`` with ``s_i > s_j`` (up to K(K-1)/2).
* ``margin``: every pair with ``s_i - s_j >= min_margin``; ``min_margin`` must be > 0.

Every builder keeps only pairs with ``s_i - s_j > 0`` and ``>= min_margin``: tied responses are never
paired, and a list whose responses all tie gives no pair. Among tied best (or worst) responses the
first in the list is taken. A pair whose two texts are identical is dropped, and identical
``(chosen, rejected)`` texts from one list are kept once. Each pair carries the list's numeric extras
plus ``rm_margin = s_w - s_l`` (MADPO's reward-model margin) and, when the list has further objectives,
``modpo_chosen_scores`` / ``modpo_rejected_scores`` (those objectives' scores of ``y_w`` / ``y_l``,
in record order; MODPO's margin terms).
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from .embed import Embedder, HashedNgramEmbedder, cosine_distance, text_of
from ..errors import DataError
from .formats import LoadReport, PreferencePair, RankedList, UnpairedExample, load_examples, split_pairs
from .prompts import text_key

logger = logging.getLogger(__name__)

PAIR_BUILDERS = ("best_vs_worst", "best_vs_each", "all_pairs", "margin")


def _check_builder(strategy: str, min_margin: float) -> None:
    if strategy not in PAIR_BUILDERS:
        raise ValueError(f"unknown pair builder {strategy!r}; choose one of {', '.join(PAIR_BUILDERS)}")
    if not min_margin >= 0:
        raise ValueError(f"min_margin must be >= 0, got {min_margin}")
    if strategy == "margin" and min_margin <= 0:
        raise ValueError("the 'margin' pair builder needs min_margin > 0")


def _make_pair(item: RankedList, i: int, j: int) -> PreferencePair:
    extras: Dict[str, Any] = dict(item.extras)
    extras["rm_margin"] = item.scores[i] - item.scores[j]
    if item.objectives:
        extras["modpo_chosen_scores"] = [values[i] for values in item.objectives.values()]
        extras["modpo_rejected_scores"] = [values[j] for values in item.objectives.values()]
    ids = item.response_ids or [None] * len(item.responses)
    return PreferencePair(item.prompt, item.responses[i], item.responses[j], extras,
                          f"{item.location} (response {i} over {j})", item.prompt_ids, ids[i], ids[j])


def ranked_pair_indices(scores: Sequence[float], key: Callable[[int], Any], strategy: str = "best_vs_worst",
                        min_margin: float = 0.0) -> List[Tuple[int, int]]:
    """``[(i, j), ...]``, member ``i`` preferred over member ``j``, that ``strategy`` builds from a list
    with ``scores`` (the module docstring's rules). ``key(i)`` identifies member ``i``'s content: two
    members with the same key are never paired, and each pair of keys is built once."""
    _check_builder(strategy, min_margin)
    s = scores
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))  # best first, ties in list order

    def usable(i: int, j: int) -> bool:
        gap = s[i] - s[j]
        return gap > 0 and gap >= min_margin and key(i) != key(j)

    if strategy == "best_vs_worst":
        best = [i for i in order if s[i] == s[order[0]]]
        worst = [j for j in order if s[j] == s[order[-1]]]
        candidates = [(i, j) for i in best for j in worst if usable(i, j)][:1]
    elif strategy == "best_vs_each":
        candidates = [(order[0], j) for j in order[1:] if usable(order[0], j)]
    else:
        candidates = [(i, j) for a, i in enumerate(order) for j in order[a + 1:] if usable(i, j)]
    seen, pairs = set(), []
    for i, j in candidates:
        if (key(i), key(j)) not in seen:
            seen.add((key(i), key(j)))
            pairs.append((i, j))
    return pairs


def pairs_from_list(item: RankedList, strategy: str = "best_vs_worst", min_margin: float = 0.0) -> List[PreferencePair]:
    """The preference pairs ``strategy`` builds from one ranked list (see the module docstring)."""
    indices = ranked_pair_indices(item.scores, lambda i: text_key(item.responses[i]), strategy, min_margin)
    return [_make_pair(item, i, j) for i, j in indices]


def pairs_from_lists(items: Sequence[RankedList], strategy: str = "best_vs_worst",
                     min_margin: float = 0.0) -> List[PreferencePair]:
    """:func:`pairs_from_list` over many lists, in list order."""
    _check_builder(strategy, min_margin)
    return [pair for item in items for pair in pairs_from_list(item, strategy, min_margin)]


def scalarize(items: Sequence[RankedList], weights: Mapping[str, float]) -> List[RankedList]:
    """Lists whose primary ``scores`` are ``sum_name w_name * scores_name`` (multi-objective ranking).

    Names are objective names (``scores_<name>`` columns or keys of a ``scores`` dict); the primary
    objective goes by its own name (``scores``, ``ranks`` (as ``-rank``), or the dict's first key).
    ``objectives`` are left as they are (MODPO still reads them).
    """
    if not weights:
        raise ValueError("objective_weights is empty")
    out = []
    for item in items:
        total = [0.0] * len(item.responses)
        for name, weight in weights.items():
            column = item.scores if name == item.primary else item.objectives.get(name)
            if column is None:
                raise DataError(item.location, f"scores_{name}", "is missing",
                                f"data.objective_weights names objective {name!r}; this list has "
                                f"{[item.primary] + list(item.objectives)}")
            total = [t + float(weight) * v for t, v in zip(total, column)]
        out.append(replace(item, scores=total))
    return out


# ------------------------------------------------------------------------------------------------
# label noise (robustness experiments)
# ------------------------------------------------------------------------------------------------
_SWAPPED_EXTRAS = (("modpo_chosen_scores", "modpo_rejected_scores"),)


def flip_pair(pair: PreferencePair) -> PreferencePair:
    """Chosen and rejected swapped; ``rm_margin`` negated and per-side extras swapped with them."""
    extras = dict(pair.extras)
    if "rm_margin" in extras:
        extras["rm_margin"] = -extras["rm_margin"]
    for a, b in _SWAPPED_EXTRAS:
        if a in extras and b in extras:
            extras[a], extras[b] = extras[b], extras[a]
    # replace() keeps the pair's class and any further fields (a vision pair's images)
    return replace(pair, chosen=pair.rejected, rejected=pair.chosen, extras=extras, chosen_ids=pair.rejected_ids,
                   rejected_ids=pair.chosen_ids)


def _noisy_positions(n: int, fraction: float, seed: int) -> List[int]:
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"label noise fraction must be in [0, 1], got {fraction}")
    count = int(round(fraction * n))
    return sorted(random.Random(seed).sample(range(n), count))


def inject_label_noise(pairs: Sequence[PreferencePair], fraction: float,
                       seed: int = 0) -> Tuple[List[PreferencePair], List[int]]:
    """Flip exactly ``round(fraction * N)`` pairs chosen with ``random.Random(seed)``.

    Returns the new pairs and the flipped positions (for analysis; losses never see them).
    """
    flipped = _noisy_positions(len(pairs), fraction, seed)
    chosen = set(flipped)
    return [flip_pair(p) if i in chosen else p for i, p in enumerate(pairs)], flipped


def inject_list_noise(items: Sequence[RankedList], fraction: float,
                      seed: int = 0) -> Tuple[List[RankedList], List[int]]:
    """Listwise label noise: in ``round(fraction * N)`` lists (drawn among lists with at least two
    distinct scores, with ``random.Random(seed)``), the scores of two responses with different scores,
    drawn at random, are swapped. Returns the new lists and the positions of the noisy ones."""
    eligible = [i for i, item in enumerate(items) if len(set(item.scores)) > 1]
    picked = [eligible[k] for k in _noisy_positions(len(eligible), fraction, seed)]
    rng = random.Random(seed + 1)
    out = list(items)
    for i in picked:
        item = items[i]
        k = len(item.scores)
        candidates = [(a, b) for a in range(k) for b in range(a + 1, k) if item.scores[a] != item.scores[b]]
        a, b = rng.choice(candidates)
        scores = list(item.scores)
        scores[a], scores[b] = scores[b], scores[a]
        out[i] = replace(item, scores=scores, ranks=None)
    return out, picked


# ------------------------------------------------------------------------------------------------
# curriculum (Curry-DPO)
# ------------------------------------------------------------------------------------------------
def curriculum_stages(pairs: Sequence[PreferencePair], stages: int) -> List[int]:
    """Stage of each pair, easy to hard: pairs sorted by score gap ``|rm_margin|`` (largest gap =
    easiest first, ties in data order) and cut into ``stages`` buckets of (nearly) equal size.

    Curry-DPO (Pattnaik et al. 2024, arXiv 2403.07230) trains stage k on bucket k with the reference
    model replaced by the policy that finished stage k-1 (see ``dpokit.train.curriculum``).
    """
    if stages < 1:
        raise ValueError(f"curriculum stages must be >= 1, got {stages}")
    for p in pairs:
        if "rm_margin" not in p.extras:
            raise DataError(p.location, "rm_margin", "is missing",
                            "a curriculum orders pairs by score gap: build pairs from lists, or give an rm_margin column")
    order = sorted(range(len(pairs)), key=lambda i: -abs(float(pairs[i].extras["rm_margin"])))
    stage_of = [0] * len(pairs)
    for position, i in enumerate(order):
        stage_of[i] = position * stages // max(len(pairs), 1)
    return stage_of


# ------------------------------------------------------------------------------------------------
# Sem-DPO weights
# ------------------------------------------------------------------------------------------------
def semantic_weights(pairs: Sequence[PreferencePair], embedder: Optional[Embedder] = None, alpha: float = 1.0,
                     key: str = "sem_weight", batch_size: int = 256) -> List[PreferencePair]:
    """Pairs with ``extras[key] = exp(-alpha * d_cos(e(x), e(y_w)))`` (Sem-DPO's weight).

    ``e`` is ``embedder`` (default :class:`~dpokit.data.embed.HashedNgramEmbedder`); message lists are
    embedded as their joined contents. Source: Mohamed et al. 2025, Sem-DPO, arXiv 2507.20133 (from
    secondary summaries; the paper's default ``alpha`` and any normalisation of W are unverified).
    """
    if alpha < 0:
        raise ValueError(f"semantic weight alpha must be >= 0, got {alpha}")
    embedder = embedder or HashedNgramEmbedder()
    out: List[PreferencePair] = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        e_x = embedder.embed([text_of(p.prompt) for p in chunk])
        e_w = embedder.embed([text_of(p.chosen) for p in chunk])
        weights = torch.exp(-alpha * cosine_distance(e_x, e_w)).tolist()
        out.extend(replace(p, extras={**p.extras, key: float(w)}) for p, w in zip(chunk, weights))
    return out


# ------------------------------------------------------------------------------------------------
# the trainer's entry point
# ------------------------------------------------------------------------------------------------
@dataclass
class DataPlan:
    """What :func:`prepare_examples` did: for the log and for the batch order."""

    lists: int = 0
    pairs_built: int = 0
    noisy: List[int] = field(default_factory=list)
    stages: Optional[List[int]] = None  # stage of each example (by position before tokenization)
    num_stages: int = 0
    epochs_per_stage: int = 1

    def summary(self) -> str:
        parts = []
        if self.lists:
            parts.append(f"{self.pairs_built} pairs built from {self.lists} lists" if self.pairs_built
                         else f"{self.lists} lists")
        if self.noisy:
            parts.append(f"label noise injected into {len(self.noisy)} examples")
        if self.stages is not None:
            sizes = [self.stages.count(s) for s in range(self.num_stages)]
            parts.append(f"curriculum of {self.num_stages} stages ({sizes} examples)")
        return "; ".join(parts)


CURRICULUM_KEYS = {"stages": 3, "epochs_per_stage": 1}


def curriculum_settings(value: Optional[Mapping[str, Any]]) -> Optional[Dict[str, int]]:
    """``data.curriculum`` with defaults filled in (None when off); raises ValueError naming the key."""
    if not value:
        return None
    unknown = sorted(set(value) - set(CURRICULUM_KEYS))
    if unknown:
        raise ValueError(f"data.curriculum: unknown key(s) {unknown}; valid: {sorted(CURRICULUM_KEYS)}")
    settings = {**CURRICULUM_KEYS, **value}
    for key, number in settings.items():
        if isinstance(number, bool) or not isinstance(number, int) or number < 1:
            raise ValueError(f"data.curriculum.{key}: must be an integer >= 1, got {number!r}")
    return settings


def prepare_examples(examples: Sequence, data, loss_data: str, training: bool = True) -> Tuple[list, DataPlan]:
    """Turn parsed examples into what the loss trains on, following the ``data`` config section.

    * lists with a pairwise (or unpaired) loss: pairs from ``data.pair_builder`` / ``data.min_margin``
      (split into unpaired examples for an unpaired loss); lists with a listwise loss stay lists;
      ``data.objective_weights`` first re-scores lists by a weighted sum of objectives;
    * training only: ``data.label_noise`` flips pairs (swaps scores inside lists, flips unpaired
      labels), seeded by ``data.label_noise_seed``; ``data.curriculum`` assigns pairs to stages
      (:func:`curriculum_stages`);
    * ``data.sem_alpha``: Sem-DPO weights on pairs (``extras["sem_weight"]``).
    """
    plan = DataPlan()
    out = list(examples)
    is_lists = bool(out) and isinstance(out[0], RankedList)
    if is_lists:
        plan.lists = len(out)
        if getattr(data, "objective_weights", None):
            out = scalarize(out, data.objective_weights)
        if loss_data in ("pairs", "unpaired"):
            out = pairs_from_lists(out, data.pair_builder, data.min_margin)
            plan.pairs_built = len(out)
            if not out:
                raise DataError(str(data.train), "scores", "no preference pair could be built from the lists",
                                "every list is all ties or below data.min_margin")
        elif training and data.label_noise:
            out, plan.noisy = inject_list_noise(out, data.label_noise, data.label_noise_seed)
    if out and isinstance(out[0], PreferencePair):
        if training and data.label_noise:
            out, plan.noisy = inject_label_noise(out, data.label_noise, data.label_noise_seed)
        if getattr(data, "sem_alpha", None) is not None:
            out = semantic_weights(out, alpha=data.sem_alpha)
        curriculum = curriculum_settings(getattr(data, "curriculum", None))
        if training and curriculum:
            plan.num_stages = curriculum["stages"]
            plan.epochs_per_stage = curriculum["epochs_per_stage"]
            plan.stages = curriculum_stages(out, plan.num_stages)
        if loss_data == "unpaired" and is_lists:
            out = split_pairs(out)
    elif out and isinstance(out[0], UnpairedExample) and training and data.label_noise:
        plan.noisy = _noisy_positions(len(out), data.label_noise, data.label_noise_seed)
        flip = set(plan.noisy)
        out = [replace(ex, label=not ex.label) if i in flip else ex for i, ex in enumerate(out)]
    if training and plan.summary():
        logger.info("data: %s", plan.summary())
    return out, plan


def load_run_data(d, seed: int, data_kind: str, tokenize, load=None, prepare=None) -> Tuple[list, list, DataPlan, Dict[str, str]]:
    """A run's tokenized ``(train, eval, plan, report)`` from its ``data`` section: records loaded and
    checked, the eval set (``data.eval``, or ``eval_fraction`` held out with ``seed``), lists turned into
    pairs for a pairwise loss (``data_kind``: what the loss trains on), label noise, curriculum stages,
    then ``tokenize(examples) -> (tokenized, report)``. Eval positions follow the training positions, so
    one reference cache holds both. ``load``: the record reader (default :func:`load_examples`; vision
    data: :func:`dpokit.data.vision.load_vision_examples`). ``prepare(examples) -> examples`` (the
    scorer's ``prepare_examples``) runs on the loaded records first (step pairs -> token-id pairs)."""
    load_examples_ = load or load_examples
    report = LoadReport()
    examples = _prepared(load_examples_(d.train, d.kind, d.split, d.limit, d.on_bad_content, report,
                                        on_extra_columns=d.on_extra_columns), prepare)
    eval_examples = (_prepared(load_examples_(d.eval, d.kind, d.split, None, d.on_bad_content,
                                              on_extra_columns=d.on_extra_columns), prepare) if d.eval else [])
    if not eval_examples and d.eval_fraction > 0:
        perm = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed)).tolist()
        n_eval = max(1, int(len(examples) * d.eval_fraction))
        eval_examples = [examples[i] for i in sorted(perm[:n_eval])]
        examples = [examples[i] for i in sorted(perm[n_eval:])]
    examples, plan = prepare_examples(examples, d, data_kind, training=True)
    eval_examples, _ = prepare_examples(eval_examples, d, data_kind, training=False)
    train, train_report = tokenize(examples)
    evaluation, _ = tokenize(eval_examples) if eval_examples else ([], None)
    offset = 1 + max(ex.index for ex in train) if train else 0
    for ex in evaluation:  # train and eval positions key one reference cache: keep them distinct
        ex.index += offset
    if not train:
        raise ValueError("no training examples remain after tokenization: " + train_report.summary())
    return train, evaluation, plan, {"load": report.summary(), "tokenize": train_report.summary()}


def _prepared(examples: list, prepare) -> list:
    """``prepare(examples)`` when given; a step pair left over (no step scorer) stops the run here."""
    from .steps import StepPair

    out = prepare(examples) if prepare is not None else examples
    for ex in out:
        if isinstance(ex, StepPair):
            raise DataError(ex.location, "chosen_step", "is a step pair, which the configured scorer cannot read",
                            "set train.scorer: steps (and train.step_separator) to train on step pairs")
    return list(out)
