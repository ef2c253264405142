"""Claim: SimPO and LD-DPO produce shorter answers than DPO at similar reward.

On the graded demo task (answers of 1 to 5 words before the digit): per seed, the same warm-up model
and the same on-policy pairs; DPO (beta 0.5, the demo's), LD-DPO (DPO with ``modifiers.ld_alpha: 0.5``)
and SimPO (its defaults, beta 2.0, gamma 0.5; no reference) train from the same start.

Criteria (fixed before running), differences paired by seed, on the policy's own held-out answers:
* for SimPO and for LD-DPO: the 95% interval of (method - DPO) response length lies below 0;
* and |mean (method - DPO) task reward| <= 0.05 ("similar reward").

    python benchmarks/claims/length.py [--seeds 0 1 2] [--out runs/claims/length] [--quick]
"""

from __future__ import annotations

import time

import common

METHODS = (("dpo", {"loss": "dpo"}), ("ld_dpo", {"loss": "dpo", "hparam.modifiers.ld_alpha": 0.5}),
           ("simpo", {"loss": "simpo"}))


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/length").parse_args(argv)
    started = time.time()
    results = common.run_methods(METHODS, common.seeds_of(args), args.out, args.quick, shared={"task": "graded"})
    text = [common.table(results, ["reward", "length", "kl", "preference_accuracy"]), ""]
    checks = []
    for method in ("ld_dpo", "simpo"):
        length = common.paired(results, "dpo", method, "length")
        reward = common.paired(results, "dpo", method, "reward")
        text.append(f"{method} - dpo: length {common.interval(length)} (95% CI {common.ci_text(length)}), "
                    f"reward {common.interval(reward)}")
        up = common.upper(length)
        checks.append((f"{method} shorter than DPO (CI of the length difference below 0)", None if up is None else up < 0))
        checks.append((f"{method} reward within 0.05 of DPO's (mean difference)", abs(reward["mean"]) <= 0.05))
    text.append(common.verdict(checks))
    return common.finish("length", args, results, "\n".join(text), started)


if __name__ == "__main__":
    main()
