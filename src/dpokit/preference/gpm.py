"""General preference model (GPM): preference embeddings compared by a skew-symmetric operator.

Source: Zhang, Zhang, Wu, Xu, Gu, "Beyond Bradley-Terry Models: A General Preference Model for
Language Model Alignment", ICML 2025, arXiv 2410.02197; official code
``general-preference/general-preference-model`` (``models/loss.py`` ``GeneralPreferenceLoss`` /
``HighDimGeneralPreferenceLoss``, ``models/rw_model_general_preference.py``
``create_skew_symmetric_block_matrix``).

Each response gets one embedding ``v_y = W_v h(x, y)`` in ``R^{2k}`` (a linear head without bias on the
last token's hidden state; L2-normalized when ``normalize``: the released inference code normalizes, the
training code leaves the line commented out, and dpokit's default follows the training code, which also
optimizes better at tau = 0.1). Two responses are compared by::

    R(x) = blockdiag(lam_1 J, ..., lam_k J),   J = [[0, -1], [1, 0]]
    s(y_i > y_j | x) = <R(x) v_i, v_j> = sum_l lam_l (v_i[2l-1] v_j[2l] - v_i[2l] v_j[2l-1])
    P(y_i > y_j | x) = sig(s / tau)

``lam_l = 1`` without a prompt head; with one (the paper's eigenvalue gate),
``lam(x) = k softmax(W_p h(x) / sqrt(d))`` from the prompt's last hidden state (``d`` the hidden
size), so that a uniform gate gives ``lam = 1``. ``s`` is skew-symmetric (``s(i>j) = -s(j>i)``,
``s(i>i) = 0``), so ``P(a>b) = 1 - P(b>a)``, and cycles (three embeddings 120 degrees apart) are
representable, which no Bradley-Terry score is. Scoring K responses needs K embedding passes (plus
one prompt pass with the gate); all K^2 preferences are then dot products.

Storage: a Hugging Face ``AutoModelForSequenceClassification`` whose ``2k`` (+ ``k`` gate) outputs
are the embedding (and the gate logits); ``config.dpokit_reward_model`` records
``{"kind": "gpm", "dim": 2k, "prompt_head": ..., "tau": ..., "normalize": ...}``.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .rm_io import reward_model_text


# ------------------------------------------------------------------------------------------------
# The operator, the score and the loss
# ------------------------------------------------------------------------------------------------
def skew_operator(dim: int, eigenvalues: Optional[torch.Tensor] = None, dtype=torch.float32) -> torch.Tensor:
    """``R = blockdiag(lam_1 J, ..., lam_k J)`` [.., 2k, 2k]; ``eigenvalues`` [.., k] (default 1)."""
    if dim < 2 or dim % 2:
        raise ValueError(f"GPM embedding dimension must be even and >= 2, got {dim}")
    k = dim // 2
    J = torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=dtype)
    base = torch.block_diag(*([J] * k))
    if eigenvalues is None:
        return base
    scale = eigenvalues.to(dtype).repeat_interleave(2, dim=-1)  # lam per row
    return scale.unsqueeze(-1) * base


def gpm_score(v_i: torch.Tensor, v_j: torch.Tensor, eigenvalues: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``s(y_i > y_j) = sum_l lam_l (v_i[2l-1] v_j[2l] - v_i[2l] v_j[2l-1])`` over the last axis (2k)."""
    if v_i.shape[-1] != v_j.shape[-1] or v_i.shape[-1] % 2:
        raise ValueError(f"GPM embeddings need the same even size, got {v_i.shape[-1]} and {v_j.shape[-1]}")
    a, b = v_i[..., 0::2], v_i[..., 1::2]
    c, d = v_j[..., 0::2], v_j[..., 1::2]
    terms = a * d - b * c
    if eigenvalues is not None:
        terms = terms * eigenvalues.to(terms.dtype)
    return terms.sum(-1)


def gpm_score_matrix(v: torch.Tensor, eigenvalues: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``T[i, j] = s(y_i > y_j)`` for embeddings ``v`` [K, 2k] of one prompt (``eigenvalues`` [k])."""
    R = skew_operator(v.shape[-1], eigenvalues, v.dtype)
    return (v @ R.transpose(-1, -2)) @ v.transpose(-1, -2)  # (R v_i) . v_j


def gpm_loss(v_chosen: torch.Tensor, v_rejected: torch.Tensor, eigenvalues: Optional[torch.Tensor] = None,
             tau: float = 0.1, margin: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Per-pair GPM loss ``L = -log sig((s(y_w > y_l | x) - m) / tau)``.

    ``s`` as :func:`gpm_score`; ``m`` an optional margin (0 without). Default ``tau`` 0.1 (the released
    models and ``scripts/run_train_rm_general_preference_single.sh``). Source: arXiv 2410.02197;
    official ``GeneralPreferenceLoss`` / ``HighDimGeneralPreferenceLoss`` in ``models/loss.py``.
    """
    if tau <= 0:
        raise ValueError(f"GPM: tau must be > 0, got {tau}")
    s = gpm_score(v_chosen, v_rejected, eigenvalues)
    if margin is not None:
        s = s - margin.to(s.dtype)
    return -F.logsigmoid(s / tau)


# ------------------------------------------------------------------------------------------------
# The model: a sequence-classification network read as embeddings (+ eigenvalue gate)
# ------------------------------------------------------------------------------------------------
def gpm_settings(model) -> Dict[str, Any]:
    settings = dict(getattr(model.config, "dpokit_reward_model", None) or {})
    if settings.get("kind") != "gpm":
        raise ValueError("not a GPM reward model (config.dpokit_reward_model.kind is not 'gpm')")
    return settings


def _last_token_outputs(model, tokenizer, texts: Sequence[str], batch_size: int, max_length: int,
                        grad: bool) -> torch.Tensor:
    """All outputs [N, num_labels] of a sequence-classification model (long texts keep their end)."""
    device = next(model.parameters()).device
    side = tokenizer.truncation_side, tokenizer.padding_side
    tokenizer.truncation_side, tokenizer.padding_side = "left", "right"
    out = []
    try:
        for start in range(0, len(texts), batch_size):
            enc = tokenizer(list(texts[start:start + batch_size]), return_tensors="pt", padding=True,
                            truncation=True, max_length=max_length).to(device)
            with torch.set_grad_enabled(grad):
                out.append(model(**enc).logits.float())
    finally:
        tokenizer.truncation_side, tokenizer.padding_side = side
    return torch.cat(out) if out else torch.zeros(0, model.config.num_labels)


def gpm_embed(model, tokenizer, prompts: Sequence[Any], responses: Sequence[Any], batch_size: int = 16,
              max_length: int = 1024, grad: bool = False) -> torch.Tensor:
    """Preference embeddings ``v_y`` [N, 2k]: one pass per (prompt, response)."""
    settings = gpm_settings(model)
    texts = [reward_model_text(tokenizer, p, r) for p, r in zip(prompts, responses)]
    v = _last_token_outputs(model, tokenizer, texts, batch_size, max_length, grad)[:, :settings["dim"]]
    return F.normalize(v, dim=-1) if settings.get("normalize", False) else v


def gpm_eigenvalues(model, tokenizer, prompts: Sequence[Any], batch_size: int = 16, max_length: int = 1024,
                    grad: bool = False) -> Optional[torch.Tensor]:
    """``lam(x) = k softmax(W_p h(x) / sqrt(d))`` [N, k] from one pass per prompt; None without a gate."""
    settings = gpm_settings(model)
    if not settings.get("prompt_head"):
        return None
    dim, k = settings["dim"], settings["dim"] // 2
    texts = [p if isinstance(p, str) else tokenizer.apply_chat_template(
        p if isinstance(p, list) else [{"role": "user", "content": p}], tokenize=False) for p in prompts]
    logits = _last_token_outputs(model, tokenizer, texts, batch_size, max_length, grad)[:, dim:dim + k]
    hidden = getattr(model.config, "hidden_size", None) or 1
    return k * torch.softmax(logits / math.sqrt(hidden), dim=-1)


def unique_eigenvalues(model, tokenizer, prompts: Sequence[Any], batch_size: int, max_length: int,
                       grad: bool = False) -> Optional[torch.Tensor]:
    """:func:`gpm_eigenvalues` with each distinct prompt computed once, returned per row."""
    if not gpm_settings(model).get("prompt_head"):
        return None
    from ..data.prompts import text_key

    index: Dict[str, int] = {}
    distinct, rows = [], []
    for p in prompts:
        key = text_key(p)
        if key not in index:
            index[key] = len(distinct)
            distinct.append(p)
        rows.append(index[key])
    lam = gpm_eigenvalues(model, tokenizer, distinct, batch_size, max_length, grad)
    return lam[torch.tensor(rows, device=lam.device)]


def num_outputs(dim: int, prompt_head: bool) -> int:
    """Outputs of the sequence-classification head: the embedding, plus ``k`` gate logits."""
    return dim + (dim // 2 if prompt_head else 0)


# ------------------------------------------------------------------------------------------------
# As a judge: linear in the number of responses
# ------------------------------------------------------------------------------------------------
class GPMJudge:
    """A GPM as a pairwise judge: ``prefer`` gives ``P(first > second) = sig(s / tau)``, and
    ``judge_group`` judges K responses with K embedding passes (+ one prompt pass with the gate)."""

    name = "GPMJudge"

    def __init__(self, model, tokenizer, batch_size: int = 16, max_length: int = 1024):
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token
        if getattr(model.config, "pad_token_id", None) is None:
            model.config.pad_token_id = tokenizer.pad_token_id
        self.settings = gpm_settings(model)
        self.model, self.tokenizer = model.eval(), tokenizer
        self.batch_size, self.max_length = batch_size, max_length
        self.tau = float(self.settings.get("tau", 0.1))

    @classmethod
    def from_pretrained(cls, path: str, trust_remote_code: bool = False, dtype: str = "auto", device: str = "auto",
                        batch_size: int = 16, max_length: int = 1024) -> "GPMJudge":
        from .rm_io import load_reward_model

        model, tokenizer = load_reward_model(path, trust_remote_code=trust_remote_code, dtype=dtype, num_labels=None)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return cls(model.to(device), tokenizer, batch_size, max_length)

    @torch.no_grad()
    def scores(self, prompts: Sequence[Any], first: Sequence[Any], second: Sequence[Any]) -> torch.Tensor:
        """Raw ``s(first > second)`` per row."""
        args = (self.batch_size, self.max_length)
        lam = unique_eigenvalues(self.model, self.tokenizer, prompts, *args)
        v_a = gpm_embed(self.model, self.tokenizer, prompts, first, *args)
        v_b = gpm_embed(self.model, self.tokenizer, prompts, second, *args)
        return gpm_score(v_a, v_b, lam)

    def prefer(self, prompts, first, second) -> List[float]:
        return torch.sigmoid(self.scores(prompts, first, second) / self.tau).tolist()

    @torch.no_grad()
    def score_matrix(self, prompt: Any, responses: Sequence[Any]) -> torch.Tensor:
        """``T[i, j] = s(y_i > y_j | x)`` [K, K] from K embedding passes."""
        k = len(responses)
        args = (self.batch_size, self.max_length)
        lam = gpm_eigenvalues(self.model, self.tokenizer, [prompt], *args)
        v = gpm_embed(self.model, self.tokenizer, [prompt] * k, list(responses), *args)
        return gpm_score_matrix(v, None if lam is None else lam[0])

    def judge_group(self, prompt: Any, responses: Sequence[Any]) -> Tuple[List[float], List[List[float]]]:
        """``(mean win rates, W)`` with ``W[i][j] = sig(T[i, j] / tau)`` (diagonal 0.5)."""
        win = torch.sigmoid(self.score_matrix(prompt, responses) / self.tau)
        rows = win.tolist()
        return [sum(r) / len(r) for r in rows], rows
