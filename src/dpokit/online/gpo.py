"""GPO, general preference optimization (PARTIAL; Zhang et al., ICML 2025, arXiv 2410.02197, the
``LLM-Alignment`` pipeline of the official general-preference-model code): self-play rounds whose
targets are general-preference scores instead of win probabilities.

Per round and prompt: K samples from the round's starting policy ``pi_t``; the judge's preference
table ``T[i][j] = s(y_i > y_j | x)``; each response's score against the group,
``s_bar_i = mean_j T[i][j]`` (the diagonal ``s(y > y) = 0`` included, as a row mean); ``y_w`` /
``y_l`` the highest / lowest score; and the SPPO-style square loss with the scores as targets (no
1/2 offset, since ``s(pi_t > pi_t) = 0``)::

    L = (log pi(y_w|x)/pi_t(y_w|x) - s_bar_w / beta)^2 + (log pi(y_l|x)/pi_t(y_l|x) - s_bar_l / beta)^2

with ``s_bar / beta`` clamped to ``[-clamp, clamp]`` (the pipeline's ``CLAMP_THRES`` = 1000) and the
previous iterate as reference. It trains with the registered ``sppo`` loss, which at
``P = 1/2 + s_bar`` is exactly half of ``L`` (same minimiser; Adam is insensitive to the factor).

``T`` is a GPM judge's raw score table (``online.judge: {kind: gpm, path: ...}``: its ``score_matrix``,
K embedding passes per prompt); for any other judge it comes from the judged probabilities,
``T[i][j] = tau logit W[i][j]`` (the preference logit; ``tau`` 1 unless given). Unverified: the loss itself (it lives in an external SPPO fork; the
form above is inferred from the pipeline), and whether the pipeline's score is the row mean or
``mean_j (T[i][j] - T[j][i])`` (twice the row mean for a skew-symmetric judge; ``options.score:
antisymmetric`` selects that one).
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

from ..errors import ConfigError
from ..losses import resolve_name
from .rounds import pair_info as _info, select_pairs
from .strategies import RoundStrategy, register_strategy, with_beta

def preference_table(win: List[List[float]], tau: float = 1.0, eps: float = 1e-12) -> List[List[float]]:
    """``T[i][j] = tau logit W[i][j]`` (probabilities clipped to ``[eps, 1 - eps]``)."""
    out = []
    for row in win:
        out.append([tau * math.log(min(max(p, eps), 1 - eps) / (1 - min(max(p, eps), 1 - eps))) for p in row])
    return out


def _row_mean(table: List[List[float]]) -> List[float]:
    return [sum(row) / len(table) for row in table]


def _antisymmetric(table: List[List[float]]) -> List[float]:
    k = len(table)
    return [sum(table[i][j] - table[j][i] for j in range(k)) / k for i in range(k)]


SCORE_FORMS = {"row_mean": _row_mean, "antisymmetric": _antisymmetric}


def group_scores(table: List[List[float]], form: str = "row_mean") -> List[float]:
    """``mean_j T[i][j]`` (``row_mean``) or ``mean_j (T[i][j] - T[j][i])`` (``antisymmetric``)."""
    if form not in SCORE_FORMS:
        raise ConfigError(f"online.options.score: {form!r} is not one of {', '.join(SCORE_FORMS)}")
    return SCORE_FORMS[form](table)


def gpo_target(score: float, beta: float, clamp: float) -> float:
    """``clamp(s_bar / beta, -clamp, clamp) * beta``: the score after the pipeline's clamp."""
    return max(min(score / beta, clamp), -clamp) * beta


@register_strategy("gpo")
class GPO(RoundStrategy):
    """GPO (PARTIAL; Zhang et al. 2025, arXiv 2410.02197): SPPO-style self-play rounds on
    general-preference scores (:mod:`dpokit.online.gpo`). Options: ``clamp`` (1000, the pipeline's
    CLAMP_THRES on ``s_bar / beta``), ``score`` (``row_mean`` or ``antisymmetric``), ``tau`` (judges
    without a score table: ``T = tau logit W``; None: the judge's ``tau``, else 1)."""

    reference = "previous"
    lists_ok = False
    verified = "partial"
    source = "Zhang et al. 2025, arXiv 2410.02197 (GPO pipeline of general-preference-model)"
    OPTIONS = {"clamp": 1000.0, "score": "row_mean", "tau": None}

    @classmethod
    def loss_section(cls, base, options):
        if resolve_name(base.get("name", "dpo")) == "sppo":
            return dict(base)
        return with_beta({"name": "sppo"}, base)

    def _beta(self) -> float:
        section = self.loss_section(dict(self.loop.config.loss), self.opts)
        return float(section.get("beta", 1e-3))

    def rows(self, groups, r):
        judge = getattr(self.loop, "judge", None)
        tau = float(self.opts["tau"] if self.opts["tau"] is not None else getattr(judge, "tau", 1.0))
        beta, clamp = self._beta(), float(self.opts["clamp"])
        train, info = [], []
        for group in groups:
            flat = group.flat()
            if callable(getattr(judge, "score_matrix", None)):  # the raw GPM scores, not rounded probabilities
                table = judge.score_matrix(group.prompt, [t for _, t in flat]).double().tolist()
            else:
                table = preference_table(group.win, tau)
            scores = group_scores(table, self.opts["score"])
            for i, j in select_pairs([t for _, t in flat], scores, "best_vs_worst", self.loop.online.min_margin):
                s_w, s_l = gpo_target(scores[i], beta, clamp), gpo_target(scores[j], beta, clamp)
                extra: Dict[str, Any] = {"win_prob_chosen": 0.5 + s_w, "win_prob_rejected": 0.5 + s_l}
                train.append(group.pair_row(i, j, **extra))
                info.append(_info(group, r, i, j, group.scores, gpo_score_chosen=s_w, gpo_score_rejected=s_l,
                                  **extra))
        return train, info
