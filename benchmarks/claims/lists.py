"""Claim: listwise losses match or beat best-vs-worst pairs with K = 4 graded responses.

On the graded demo task (five reward levels): per seed, the same warm-up model samples K = 4 answers per
training prompt, each scored by the task reward, written as one ranked list per prompt (``train_data:
lists``; prompts whose four answers tie are left out for every method). From the same warm-up model, with
the same number of optimizer steps (one training example per list, batch 16, 3 epochs, lr 1e-3, beta 0.5):

* ``dpo / best_vs_worst``: one pair per list, the best answer over the worst (``data.pair_builder``);
* ``dpo / all_pairs``: every better answer over every worse one (more pairs, more steps; for context);
* ``plackett_luce``: the whole ranking (Plackett-Luce over implicit rewards);
* ``lipo_lambda``: the whole list with its graded scores (LambdaRank weights).

Criteria (fixed before running), differences paired by seed, held-out task reward:
* for plackett_luce and for lipo_lambda: the mean of (listwise - best_vs_worst) is at least -0.02
  ("match or beat"); the 95% interval is printed next to it.

    python benchmarks/claims/lists.py [--seeds 0 1 2] [--out runs/claims/lists] [--quick]
"""

from __future__ import annotations

import time

import common

BASELINE = "dpo / best_vs_worst"
LISTWISE = ("plackett_luce", "lipo_lambda")
METHODS = ((BASELINE, {"loss": "dpo", "pair_builder": "best_vs_worst"}),
           ("dpo / all_pairs", {"loss": "dpo", "pair_builder": "all_pairs"}),
           ("plackett_luce", {"loss": "plackett_luce"}),
           ("lipo_lambda", {"loss": "lipo_lambda"}))


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/lists").parse_args(argv)
    started = time.time()
    shared = {"task": "graded", "train_data": "lists", "samples_per_prompt": 4}
    results = common.run_methods(METHODS, common.seeds_of(args), args.out, args.quick, shared=shared)
    text = [common.table(results, ["reward", "reward_gain", "kl", "train_pairs"]), "",
            "train_pairs: ranked lists with a preference (the same lists for every method)"]
    checks = []
    for method in LISTWISE:
        reward = common.paired(results, BASELINE, method, "reward")
        text.append(f"{method} - {BASELINE}: reward {common.interval(reward)} (95% CI {common.ci_text(reward)})")
        checks.append((f"{method} matches or beats best-vs-worst pairs (mean difference >= -0.02)",
                       reward["mean"] >= -0.02))
    text.append(common.verdict(checks))
    return common.finish("lists", args, results, "\n".join(text), started)


if __name__ == "__main__":
    main()
