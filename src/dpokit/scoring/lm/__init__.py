"""The language-model scorer: log-probs of completions under the policy and the reference.

    projection.py   hidden states -> selected-token log-probs and vocabulary statistics, in chunks
                    (no [B, T, V] logits)
    fused.py        optional Liger-Kernel fused projection (train.projection: liger, CUDA only)
    layouts.py      how prompt + completions become backbone forwards (padded | packed | prompt_shared)
    flex.py         FlexAttention block masks for packed / prompt_shared under flex_attention
    engine.py       LogProbEngine: a batch -> LossInputs, computing only what the loss's Needs ask for
"""

from .engine import LogProbEngine
from .projection import TokenLogprobs

__all__ = ["LogProbEngine", "TokenLogprobs"]
