"""Claim: phi-DPO shows less forgetting than plain DPO on the earlier tasks of a continual sequence.

Setting (``dpokit.tasks.continual``): three number tasks trained one after another on one tiny Llama,
``parity`` -> ``last_digit`` -> ``first_digit``. Per seed, one warm-up model (supervised, on noisy
demonstrations of all three tasks); then for each task, on-policy pairs sampled from the current
model and labelled by that task's reward, trained from the previous task's model with that model as
the reference (re-anchored each task). Both methods use the paper's objective ``NLL(y_w) + L``
(sft_weight 1) with beta 0.1, the same optimizer, steps, prompts and sampling seeds; the only
difference is the loss: DPO, or phi-DPO with gamma 2 (the focal factor ``(1 - sig(beta h))^gamma``).
Task 0's pairs are the same for both; later pairs are sampled from each method's own model (on-policy).

Criteria (fixed before running), differences phi-DPO - DPO paired by seed, 3 seeds:
* the claim: the 95% t-interval of the forgetting difference lies below 0. Forgetting is the mean over
  the earlier tasks j < T-1 of (best held-out reward on task j after learning it - final reward on j);
* reported alongside, not part of the verdict: final average reward, backward transfer, per task;
* setup check (not the claim): phi-DPO with gamma 0 trained on task 0 at the first seed reproduces
  DPO's task-0 model (held-out rewards equal, weights within 1e-5); a failure is printed as such.

    python benchmarks/claims/continual.py [--seeds 0 1 2] [--out runs/claims/continual] [--quick]
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import replace

import common

DPO, PHI, METHODS = common.CONTINUAL_DPO, common.CONTINUAL_PHI, common.CONTINUAL_METHODS
# `--quick`: a few steps on a tiny split; exercises the script end to end, proves nothing
QUICK = {"n_train_prompts": 24, "n_eval_prompts": 8, "samples_per_prompt": 4, "eval_samples_per_prompt": 1,
         "warmup_steps": 10, "epochs": 1}
WEIGHT_TOLERANCE = 1e-5


def _summary(directory: str, run) -> dict:
    """A finished run's ``summary.json``, running it first when it is not there."""
    path = os.path.join(directory, "summary.json")
    if not os.path.exists(path):
        run()
    with open(path) as handle:
        return json.load(handle)


def _max_weight_difference(dir_a: str, dir_b: str) -> float:
    from safetensors.torch import load_file

    a, b = (load_file(os.path.join(d, "model.safetensors")) for d in (dir_a, dir_b))
    if a.keys() != b.keys():
        return float("inf")
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def identity_check(base, seed_dir: str, warmup: str, dpo_summary: dict, quiet) -> tuple:
    """phi-DPO with gamma 0 on the first task, against DPO's first task: (text, passed)."""
    from dpokit.tasks.continual import run_continual

    directory = os.path.join(seed_dir, "phi_dpo_gamma0_task0")
    settings = replace(base, output_dir=directory, tasks=tuple(base.tasks[:1]), loss="phi_dpo",
                       loss_hparams={"gamma": 0.0})
    summary = _summary(directory, lambda: run_continual(settings, log=quiet, warmup_dir=warmup))
    dpo_final = os.path.join(dpo_summary["settings"]["output_dir"], f"task0_{base.tasks[0]}", "train", "final")
    weights = _max_weight_difference(summary["final"], dpo_final)
    rewards = max(abs(a - b) for a, b in zip(summary["matrix"][0], dpo_summary["matrix"][0]))
    passed = weights <= WEIGHT_TOLERANCE and rewards == 0.0
    text = (f"setup check, phi-DPO gamma 0 vs DPO on task 0 (seed {base.seed}): max |weight difference| "
            f"{weights:.2e}, max |reward difference| {rewards:.3f}: {'equal' if passed else 'NOT EQUAL'}")
    return text, passed


def main(argv=None):
    from dpokit.tasks.continual import ContinualSettings, run_continual, warm_up

    args = common.parser(__doc__.splitlines()[0], "runs/claims/continual").parse_args(argv)
    started = time.time()
    quiet = common.quiet_logs()
    results = {label: {} for label, _ in METHODS}
    checks_text = []
    for seed in common.seeds_of(args):
        seed_dir = os.path.join(args.out, f"seed{seed}")
        base = ContinualSettings(seed=seed, beta=0.1, sft_weight=1.0, **(QUICK if args.quick else {}))
        warmup = warm_up(base, os.path.join(seed_dir, "warmup"), log=quiet)
        summaries = {}
        for label, settings in METHODS:
            directory = os.path.join(seed_dir, label.split(" ")[0])
            run_settings = replace(base, output_dir=directory, **settings)
            summaries[label] = _summary(directory, lambda s=run_settings, w=warmup: run_continual(
                s, log=quiet, warmup_dir=w))
            results[label][seed] = {**summaries[label]["metrics"], "seconds": summaries[label]["seconds"],
                                    "train_pairs": summaries[label]["train_pairs"]}
            m = summaries[label]["metrics"]
            print(f"   seed {seed}: {label}: forgetting {m['forgetting']:.3f}, final average reward "
                  f"{m['final_average_reward']:.3f} ({summaries[label]['seconds']:.0f} s)")
        if seed == common.seeds_of(args)[0]:
            checks_text.append(identity_check(base, seed_dir, warmup, summaries[DPO], quiet))
    tasks = list(ContinualSettings().tasks)
    text = common.continual_table(results, tasks) + [common.per_seed_forgetting(results, label)
                                                     for label, _ in METHODS]
    text += [t for t, _ in checks_text]
    text.append(common.continual_verdict(results))
    return common.finish("continual", args, results, "\n".join(text), started, sweep=False)


if __name__ == "__main__":
    main()
