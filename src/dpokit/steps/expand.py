"""Sampling candidate reasoning steps after a prefix, the expansion step of tree search.

:class:`StepSampler` samples ``n`` sibling steps after one prefix. With ``shared=True`` (default)
the prefix runs through the model once, its key/value cache is repeated for the ``n`` siblings and
they decode together, one token per forward for all of them. With ``shared=False`` every sibling is
decoded alone and every token re-encodes the whole prefix and step so far (no cache): the naive
search the benchmark (:func:`dpokit.steps.bench.compare_expansion`) measures against.

A step ends at a separator token (kept: it belongs to the step) or at EOS (the step is final), or
after ``max_step_tokens`` tokens. Each candidate carries its summed log-prob under the sampling
model, from which the search's length-normalised prior is taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, List, Optional, Sequence

import torch


@dataclass
class Candidate:
    ids: List[int]  # the step's tokens, separator or EOS included when generated
    logp: float  # sum of log pi(token | context) over ids
    final: bool  # ended with EOS

    @property
    def length(self) -> int:
        return len(self.ids)


@dataclass
class SamplerStats:
    expansions: int = 0  # calls of sample()
    generated_tokens: int = 0  # tokens of the returned candidates
    processed_tokens: int = 0  # tokens the model read (prefix and generated), over all forwards
    forwards: int = 0


@dataclass
class StepSampler:
    model: torch.nn.Module
    separator_ids: Sequence[int]
    eos_id: int
    max_step_tokens: int = 16
    temperature: float = 1.0
    shared: bool = True
    seed: int = 0
    stats: SamplerStats = field(default_factory=SamplerStats)

    def __post_init__(self):
        self.generator = torch.Generator().manual_seed(self.seed)
        self._stops = set(int(i) for i in self.separator_ids) | {int(self.eos_id)}

    def _device(self):
        return next(self.model.parameters()).device

    def _next(self, logits: torch.Tensor) -> torch.Tensor:
        """Sampled tokens [rows] and their log-probs [rows] from last-position logits [rows, V]."""
        logp = torch.log_softmax(logits.float(), -1)
        if self.temperature <= 0:
            tokens = logp.argmax(-1)
        else:
            probs = torch.softmax(logits.float() / self.temperature, -1).cpu()
            tokens = torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).to(logp.device)
        return tokens, logp.gather(-1, tokens[:, None]).squeeze(-1)

    @torch.no_grad()
    def sample(self, prefix: Sequence[int], n: int, to_end: bool = False,
               max_tokens: Optional[int] = None) -> List[Candidate]:
        """``n`` candidate steps after ``prefix`` (token ids, BOS first). ``to_end``: ignore separators and
        decode to EOS (up to ``max_tokens``), the forced completion at the depth limit."""
        self.model.eval()
        limit = max_tokens or self.max_step_tokens
        stops = {int(self.eos_id)} if to_end else self._stops
        self.stats.expansions += 1
        rows = self._shared(prefix, n, limit, stops) if self.shared else [self._alone(prefix, limit, stops) for _ in range(n)]
        self.stats.generated_tokens += sum(c.length for c in rows)
        return rows

    def _shared(self, prefix, n, limit, stops) -> List[Candidate]:
        device = self._device()
        ids = torch.tensor([list(prefix)], dtype=torch.long, device=device)
        out = self.model(input_ids=ids, use_cache=True)
        self.stats.forwards += 1
        self.stats.processed_tokens += len(prefix)
        cache = _cache_of(out)
        cache.batch_repeat_interleave(n)
        logits = out.logits[:, -1].expand(n, -1)
        rows: List[List[int]] = [[] for _ in range(n)]
        logps = [0.0] * n
        done = [False] * n
        for _ in range(limit):
            tokens, token_logps = self._next(logits)
            for r in range(n):
                if not done[r]:
                    rows[r].append(int(tokens[r]))
                    logps[r] += float(token_logps[r])
                    done[r] = int(tokens[r]) in stops
            if all(done):
                break
            out = self.model(input_ids=tokens[:, None], use_cache=True, **{_cache_keyword(self.model): cache})
            self.stats.forwards += 1
            self.stats.processed_tokens += n
            cache, logits = _cache_of(out), out.logits[:, -1]
        return [Candidate(row, lp, bool(row) and row[-1] == self.eos_id) for row, lp in zip(rows, logps)]

    def _alone(self, prefix, limit, stops) -> Candidate:
        device = self._device()
        row: List[int] = []
        total = 0.0
        for _ in range(limit):
            ids = torch.tensor([list(prefix) + row], dtype=torch.long, device=device)
            logits = self.model(input_ids=ids, use_cache=False).logits[:, -1]
            self.stats.forwards += 1
            self.stats.processed_tokens += ids.shape[1]
            token, logp = self._next(logits)
            row.append(int(token[0]))
            total += float(logp[0])
            if row[-1] in stops:
                break
        return Candidate(row, total, bool(row) and row[-1] == self.eos_id)

    @torch.no_grad()
    def score(self, prefix: Sequence[int], ids: Sequence[int]) -> float:
        """Summed log-prob of ``ids`` after ``prefix`` under the model (one forward)."""
        self.model.eval()
        full = torch.tensor([list(prefix) + list(ids)], dtype=torch.long, device=self._device())
        logp = torch.log_softmax(self.model(input_ids=full, use_cache=False).logits[0, :-1].float(), -1)
        targets = full[0, 1:]
        picked = logp.gather(-1, targets[:, None]).squeeze(-1)
        return float(picked[len(prefix) - 1:].sum())


def _cache_keyword(model) -> str:
    """The forward's key/value-cache argument: ``cache`` (transformers >= 5.2x) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def _cache_of(output):
    return output["cache"] if "cache" in output else output.past_key_values


def length_normalised_prior(logp: float, length: int, length_penalty: float = 1.25) -> float:
    """MCTS-DPO's step prior ``p = exp(sum_t log pi(a_t|s) / |a|^lambda)``."""
    return float(torch.tensor(logp / max(length, 1) ** length_penalty).exp())


def split_ids(ids: Iterable[int], separator_ids: Iterable[int]) -> List[List[int]]:
    """Token ids of several steps -> one list per step (each keeping its separator)."""
    separators = set(separator_ids)
    out, current = [], []
    for token in ids:
        current.append(token)
        if token in separators:
            out.append(current)
            current = []
    if current:
        out.append(current)
    return out
