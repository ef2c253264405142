"""Claim: online DPO beats one offline DPO pass at an equal number of generated samples.

On the parity demo task (``dpokit demo`` and ``dpokit demo --online``): per seed, one warm-up model; the
offline run samples 8 answers for each of 800 training prompts once from it and trains DPO for 3 epochs;
each online run spends the same 6,400 generated samples over 4 rounds (200 new prompts x 8 answers per
round, sampled from the current policy, judged by the task reward, 3 epochs on that round's pairs), so
both see every prompt once and take about the same number of optimizer steps. Strategies: ``online_dpo``
(reference fixed to the warm-up model) and ``iterative_dpo`` (the reference moves to the policy each round).

Criteria (fixed before running), differences paired by seed, held-out task reward:
* online_dpo - offline: 95% interval above 0 ("beats");
* iterative_dpo - offline: reported alongside, not part of the verdict.

    python benchmarks/claims/online.py [--seeds 0 1 2] [--out runs/claims/online] [--quick]
"""

from __future__ import annotations

import os
import time

import common

OFFLINE = "offline dpo (1 pass)"
STRATEGIES = ("online_dpo", "iterative_dpo")
ROUNDS = 4


def _metrics(summary: dict) -> dict:
    after, before = summary["after"], summary["before"]
    return {"reward": after["reward"], "reward_gain": after["reward"] - before["reward"], "kl": after["kl"],
            "preference_accuracy": after["preference_accuracy"], "length": after["length"],
            "train_pairs": summary["train_pairs"], "seconds": summary["seconds"]}


def main(argv=None):
    from dpokit.tasks.demo import DemoSettings, run_demo
    from dpokit.tasks.online_demo import run_online_demo

    args = common.parser(__doc__.splitlines()[0], "runs/claims/online").parse_args(argv)
    started = time.time()
    quiet = common.quiet_logs()
    settings = {k: int(v) for k, v in common.QUICK.items()} if args.quick else {}
    results = {OFFLINE: {}, **{f"{s} ({ROUNDS} rounds)": {} for s in STRATEGIES}}
    for seed in common.seeds_of(args):
        offline_dir = os.path.join(args.out, f"seed{seed}", "offline")
        offline = common.cached_summary(
            offline_dir, lambda: run_demo(DemoSettings(output_dir=offline_dir, seed=seed, **settings), log=quiet))
        results[OFFLINE][seed] = _metrics(offline)
        print(f"   seed {seed}: offline reward {offline['after']['reward']:.3f} ({offline['seconds']:.0f} s)")
        for strategy in STRATEGIES:
            directory = os.path.join(args.out, f"seed{seed}", strategy)
            run_settings = DemoSettings(output_dir=directory, seed=seed, **settings)
            summary = common.cached_summary(directory, lambda: run_online_demo(
                run_settings, strategy, ROUNDS, log=quiet, warmup_dir=os.path.join(offline_dir, "warmup")))
            results[f"{strategy} ({ROUNDS} rounds)"][seed] = {**_metrics(summary),
                                                              "generated_samples": summary["generated_samples"]}
            print(f"   seed {seed}: {strategy} reward {summary['after']['reward']:.3f} "
                  f"({summary['generated_samples']} samples, {summary['seconds']:.0f} s)")
    text = [common.table(results, ["reward", "reward_gain", "kl", "train_pairs"]), ""]
    checks = []
    for strategy in STRATEGIES:
        label = f"{strategy} ({ROUNDS} rounds)"
        reward = common.paired(results, OFFLINE, label, "reward")
        text.append(f"{label} - offline: reward {common.interval(reward)} (95% CI {common.ci_text(reward)})")
        if strategy == "online_dpo":
            low = common.lower(reward)
            checks.append(("online_dpo beats one offline pass (CI of the difference above 0)",
                           None if low is None else low > 0))
    text.append(common.verdict(checks))
    return common.finish("online", args, results, "\n".join(text), started, sweep=False)


if __name__ == "__main__":
    main()
