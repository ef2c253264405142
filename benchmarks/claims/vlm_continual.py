"""Claim: phi-DPO shows less forgetting than plain DPO on the earlier tasks of a continual sequence,
on a vision-language model (the multimodal setting of Truong et al. 2026, in miniature).

Setting (``dpokit.tasks.vlm_continual``): one tiny Llava (CLIP vision tower, Llama with hidden 64) built
in code and three image questions about the colour task's images, learned in order: ``colour`` (the
square's colour) -> ``next`` (the colour after it in red, green, blue, yellow) -> ``previous`` (the one
before). All three answer in the same four words. Per seed: a supervised warm-up on demonstrations of
all three tasks (400 steps, right 80% of the time, vision tower trained); then per task, 128 training
images, pairs chosen = the right colour over the current model's most likely wrong one (on-policy),
3 epochs of ``loss + 1 * NLL(y_w)`` (the paper's Eq. 17), lr 2e-3, batch 16, beta 0.1, vision tower
frozen, the previous task's model as the starting point and the reference. DPO and phi-DPO (gamma 2)
share the warm-up, the images and the batch order; later pairs come from each method's own model.
Held-out reward: the probability of the right colour word on 64 new images per task, after every task.

Criteria (fixed before running), differences phi-DPO - DPO paired by seed, 3 seeds:
* the claim: the 95% t-interval of the forgetting difference lies below 0 (forgetting: the mean over
  the earlier tasks j < T-1 of best held-out reward on j after learning it - final reward on j);
* reported alongside, not part of the verdict: final average reward, backward transfer, per task;
* setup check (not the claim): phi-DPO with gamma 0 on the first task at the first seed gives DPO's
  held-out rewards (within 1e-6).

    python benchmarks/claims/vlm_continual.py [--seeds 0 1 2] [--out runs/claims/vlm_continual] [--quick]
"""

from __future__ import annotations

import os
import time
from dataclasses import replace

import common

DPO, PHI, METHODS = common.CONTINUAL_DPO, common.CONTINUAL_PHI, common.CONTINUAL_METHODS
# `--quick`: a few steps on a tiny split; exercises the script end to end, proves nothing
QUICK = {"n_train": 24, "n_eval": 12, "warmup_steps": 20, "epochs": 1, "hidden_size": 32}
TOLERANCE = 1e-6


def identity_check(base, out: str, dpo_first_row, quiet) -> str:
    from dpokit.tasks.vlm_continual import run_vlm_continual

    settings = replace(base, output_dir=os.path.join(out, "phi_dpo_gamma0_task0"), tasks=tuple(base.tasks[:1]),
                       warmup_tasks=tuple(base.tasks), loss="phi_dpo", loss_hparams={"gamma": 0.0})
    row = run_vlm_continual(settings, log=quiet)["matrix"][0]
    gap = abs(row[0] - dpo_first_row[0])
    return (f"setup check, phi-DPO gamma 0 vs DPO on task 0 (seed {base.seed}): |reward difference| {gap:.2e}: "
            f"{'equal' if gap <= TOLERANCE else 'NOT EQUAL'}")


def main(argv=None):
    from dpokit.tasks.vlm_continual import VLMContinualSettings, run_vlm_continual

    args = common.parser(__doc__.splitlines()[0], "runs/claims/vlm_continual").parse_args(argv)
    started = time.time()
    quiet = common.quiet_logs()
    results = {label: {} for label, _ in METHODS}
    matrices = {label: {} for label, _ in METHODS}
    checks = []
    for seed in common.seeds_of(args):
        base = VLMContinualSettings(seed=seed, **(QUICK if args.quick else {}))
        for label, settings in METHODS:
            directory = os.path.join(args.out, f"seed{seed}", label.split(" ")[0])
            summary = run_vlm_continual(replace(base, output_dir=directory, **settings), log=quiet)
            results[label][seed] = {**summary["metrics"], "seconds": summary["seconds"]}
            matrices[label][seed] = (summary["warmup"], summary["matrix"])
            m = summary["metrics"]
            print(f"   seed {seed}: {label}: forgetting {m['forgetting']:.3f}, final average reward "
                  f"{m['final_average_reward']:.3f} ({summary['seconds']:.0f} s)")
        if seed == common.seeds_of(args)[0]:
            checks.append(identity_check(base, os.path.join(args.out, f"seed{seed}"),
                                         matrices[DPO][seed][1][0], quiet))
    tasks = list(VLMContinualSettings().tasks)
    text = common.continual_table(results, tasks)
    for label, _ in METHODS:
        text.append(common.per_seed_forgetting(results, label))
        for s in sorted(matrices[label]):
            warm, matrix = matrices[label][s]
            rows = " -> ".join("/".join(f"{r:.2f}" for r in row) for row in [warm] + matrix)
            text.append(f"  seed {s} rewards (warm-up -> after each task): {rows}")
    text += checks
    text.append(common.continual_verdict(results))
    return common.finish("vlm_continual", args, results, "\n".join(text), started, sweep=False)


if __name__ == "__main__":
    main()
