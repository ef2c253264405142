"""Claim: alignment gains versus training-set size: a quarter of the pairs gives most of the gain.

The "Insights into Alignment" finding (near-optimal performance with small training subsets), on the graded
demo task: DPO (beta 0.5, 3 epochs, lr 1e-3) from the same warm-up model per seed (warmed up on all 800
training prompts' demonstrations), trained on the pairs of the first 100, 200 or 800 training prompts
(``pair_prompts``; 8 samples each, best vs worst). Gain = held-out task reward after training minus the
warm-up model's, on the same 200 evaluation prompts at every size.

Criteria (fixed before running):
* the gain with 800 prompts is positive (its 95% interval above 0);
* the mean gain with 200 prompts is at least 80% of the mean gain with 800.

    python benchmarks/claims/size.py [--seeds 0 1 2] [--out runs/claims/size] [--quick]
"""

from __future__ import annotations

import time

import common

SIZES = (100, 200, 800)


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/size").parse_args(argv)
    started = time.time()
    sizes = (12, 24, 48) if args.quick else SIZES
    methods = [(f"dpo, {n} prompts", {"loss": "dpo", "pair_prompts": n}) for n in sizes]
    results = common.run_methods(methods, common.seeds_of(args), args.out, args.quick, shared={"task": "graded"})
    text = [common.table(results, ["reward", "reward_gain", "kl", "train_pairs"]), ""]
    full, quarter = methods[-1][0], methods[-2][0]
    gain_full = common.metric(results, full, "reward_gain")
    gain_quarter = common.metric(results, quarter, "reward_gain")
    text.append(f"gain with {sizes[-1]} prompts: {common.interval(gain_full)} (95% CI {common.ci_text(gain_full)}); "
                f"with {sizes[-2]}: {common.interval(gain_quarter)} (95% CI {common.ci_text(gain_quarter)})")
    ratio = gain_quarter["mean"] / gain_full["mean"] if gain_full["mean"] else float("nan")
    text.append(f"ratio of mean gains ({sizes[-2]} / {sizes[-1]} prompts): {ratio:.2f}")
    low = common.lower(gain_full)
    text.append(common.verdict([
        (f"DPO gains with {sizes[-1]} prompts (CI above 0)", None if low is None else low > 0),
        (f"{sizes[-2]} prompts give at least 80% of that gain (means)", gain_full["mean"] > 0 and ratio >= 0.8),
    ]))
    return common.finish("size", args, results, "\n".join(text), started)


if __name__ == "__main__":
    main()
