"""Search throughput: shared-prefix expansion (one prefix forward, a KV cache repeated for the siblings)
against naive re-encoding (each sibling alone, the whole context re-run at every token), same search,
same process. ``dpokit bench --modality steps`` (:mod:`dpokit.bench.steps`) runs it from the command line."""

from __future__ import annotations

import time
from typing import Callable, Dict, List, Sequence

from .expand import StepSampler
from .search import MCTS, SearchConfig, SearchTask


def run_search(model, tokenizer, task: SearchTask, prompts: Sequence[str], separator_ids: List[int],
               config: SearchConfig, shared: bool, max_step_tokens: int = 16,
               clock: Callable[[], float] = time.perf_counter) -> Dict[str, float]:
    """One search over ``prompts`` with one expansion layout; its rates and counts (``clock``: the
    timer, wall clock by default, ``time.process_time`` for CPU time)."""
    sampler = StepSampler(model, separator_ids, tokenizer.eos_token_id, max_step_tokens=max_step_tokens,
                          shared=shared, seed=config.seed)
    search = MCTS(sampler, task, tokenizer, config)
    started = clock()
    pairs = 0
    for prompt in prompts:
        pairs += len(search.pairs(search.search(prompt)))
    seconds = clock() - started
    s = sampler.stats
    return {
        "layout": "shared_prefix_kv" if shared else "naive_reencode",
        "seconds": round(seconds, 3),
        "expansions": s.expansions,
        "expansions_per_s": round(s.expansions / seconds, 2),
        "generated_tokens": s.generated_tokens,
        "processed_tokens": s.processed_tokens,
        "forwards": s.forwards,
        "step_pairs": pairs,
        "step_pairs_per_1k_generated_tokens": round(1000 * pairs / max(1, s.generated_tokens), 2),
        "processed_per_generated_token": round(s.processed_tokens / max(1, s.generated_tokens), 2),
    }


def compare_expansion(model, tokenizer, task: SearchTask, prompts: Sequence[str], separator_ids: List[int],
                      config: SearchConfig = SearchConfig(), log: Callable = print) -> List[Dict[str, float]]:
    """Both searches on the same prompts; returns one row each (shared first)."""
    rows = [run_search(model, tokenizer, task, prompts, separator_ids, config, shared) for shared in (True, False)]
    for row in rows:
        log("  ".join(f"{k}={v}" for k, v in row.items()))
    return rows
