"""Claim: rDPO beats DPO with 30% of the labels flipped and matches it without; cDPO sits between.

On the graded demo task (``dpokit demo --task graded``): per seed, the same warm-up model and the same
on-policy best-vs-worst pairs; ``data.label_noise`` flips 0% or 30% of the training pairs (seeded);
DPO, cDPO (eps 0.3) and rDPO (eps 0.3) train from the same start. eps is the assumed flip rate and stays
0.3 on clean data too (a user who does not know the rate), so "matches without" tests the price of
assuming noise that is not there.

Criteria (fixed before running), on the held-out task reward, differences paired by seed:
* at 30%: the 95% interval of rDPO - DPO lies above 0;
* at 0%: the 95% interval of rDPO - DPO contains 0 and |mean| <= 0.05;
* at 30%: mean(DPO) <= mean(cDPO) <= mean(rDPO).

    python benchmarks/claims/label_noise.py [--seeds 0 1 2] [--out runs/claims/label_noise] [--quick]
"""

from __future__ import annotations

import time

import common

METHODS = (("dpo", {"loss": "dpo"}), ("cdpo", {"loss": "cdpo", "hparam.eps": 0.3}),
           ("rdpo", {"loss": "rdpo", "hparam.eps": 0.3}))
NOISE = (0.0, 0.3)


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/label_noise").parse_args(argv)
    started = time.time()
    results = {}
    for noise in NOISE:
        methods = [(f"{label} @ {noise:.0%} flipped", settings) for label, settings in METHODS]
        results.update(common.run_methods(methods, common.seeds_of(args), args.out, args.quick,
                                          shared={"task": "graded", "label_noise": noise}))
    text = [common.table(results, ["reward", "kl", "length", "preference_accuracy"]), ""]
    d30 = common.paired(results, "dpo @ 30% flipped", "rdpo @ 30% flipped", "reward")
    d0 = common.paired(results, "dpo @ 0% flipped", "rdpo @ 0% flipped", "reward")
    means = {m: common.metric(results, f"{m} @ 30% flipped", "reward")["mean"] for m, _ in METHODS}
    text.append(f"rDPO - DPO reward, 30% flipped: {common.interval(d30)}  (95% CI {common.ci_text(d30)})")
    text.append(f"rDPO - DPO reward,  0% flipped: {common.interval(d0)}  (95% CI {common.ci_text(d0)})")
    text.append(f"means at 30%: dpo {means['dpo']:.3f}, cdpo {means['cdpo']:.3f}, rdpo {means['rdpo']:.3f}")
    lo30 = common.lower(d30)
    ci0 = d0.get("ci95")
    text.append(common.verdict([
        ("rDPO beats DPO at 30% flipped (CI of the difference above 0)", None if lo30 is None else lo30 > 0),
        ("rDPO matches DPO at 0% (CI contains 0, |mean| <= 0.05)",
         None if ci0 is None else (ci0[0] <= 0 <= ci0[1] and abs(d0["mean"]) <= 0.05)),
        ("cDPO between DPO and rDPO at 30% (means)", means["dpo"] <= means["cdpo"] <= means["rdpo"]),
    ]))
    return common.finish("label_noise", args, results, "\n".join(text), started)


if __name__ == "__main__":
    main()
