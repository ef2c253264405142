"""Claim: alignment gains with and without a warm-up start (the "Insights into Alignment" protocol).

On the graded demo task: DPO and CPO (two of the paper's variants that train on pairs; IPO is left out to
fit the budget of 2 CPU cores, and KTO trains on unpaired data, which the demo does not build) from two
starts of the same tiny Llama per seed:

* ``sft``: the demo's supervised warm-up, demonstrations right 25% of the time (the SFT start);
* ``base``: the same number of steps on demonstrations with a random digit (right 10% of the time, the
  chance level): the model knows the answer format but not the task, a miniature of a pretrained model
  aligned without SFT.

Each start samples its own on-policy pairs (8 answers per prompt, best vs worst) and is its own reference.
Gain = held-out task reward after training minus the start's.

Criteria (fixed before running), over seeds:
* every loss gains from both starts (95% interval of the gain above 0);
* from the SFT start every loss ends with a higher mean reward than from the base start;
* CPO without SFT matches DPO with SFT (mean reward within 0.05), the paper's "CPO can skip SFT".

    python benchmarks/claims/warmup.py [--seeds 0 1 2] [--out runs/claims/warmup] [--quick]
"""

from __future__ import annotations

import time

import common

LOSSES = ("dpo", "cpo")
STARTS = (("sft", 0.25), ("base", 0.1))


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/warmup").parse_args(argv)
    started = time.time()
    methods = [(f"{loss} / {start}", {"loss": loss, "warmup_accuracy": accuracy})
               for start, accuracy in STARTS for loss in LOSSES]
    results = common.run_methods(methods, common.seeds_of(args), args.out, args.quick, shared={"task": "graded"})
    text = [common.table(results, ["reward_before", "reward", "reward_gain", "kl"]), ""]
    checks = []
    for loss in LOSSES:
        for start, _ in STARTS:
            gain = common.metric(results, f"{loss} / {start}", "reward_gain")
            text.append(f"{loss} from {start}: gain {common.interval(gain)} (95% CI {common.ci_text(gain)})")
            low = common.lower(gain)
            checks.append((f"{loss} gains from the {start} start (CI above 0)", None if low is None else low > 0))
    for loss in LOSSES:
        sft = common.metric(results, f"{loss} / sft", "reward")["mean"]
        base = common.metric(results, f"{loss} / base", "reward")["mean"]
        checks.append((f"{loss}: SFT start ends higher than the base start ({sft:.3f} vs {base:.3f})", sft > base))
    cpo_base = common.metric(results, "cpo / base", "reward")["mean"]
    dpo_sft = common.metric(results, "dpo / sft", "reward")["mean"]
    checks.append((f"CPO without SFT within 0.05 of DPO with SFT ({cpo_base:.3f} vs {dpo_sft:.3f})",
                   abs(cpo_base - dpo_sft) <= 0.05))
    text.append(common.verdict(checks))
    return common.finish("warmup", args, results, "\n".join(text), started)


if __name__ == "__main__":
    main()
