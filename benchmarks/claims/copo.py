"""Claim (COPO, Han et al. 2025, arXiv 2508.04138, in miniature): in online rounds, GRPO's groups whose
answers all agree give no gradient, COPO's give one, and COPO ends with the higher held-out reward.

On the parity demo task (``dpokit demo --online --strategy grpo|copo``): per seed, one warm-up model
(right about 25% of the time); each method runs 4 online rounds from it, each round 200 new training
prompts x 8 answers sampled from the current policy, judged by the task reward (1 right, 0 wrong), one
group per prompt, 3 epochs of batches of 16 groups (the later optimizer steps use the real clipped ratio
against the round's sampling policy). GRPO without a KL term (``beta 0``, as COPO's released script);
COPO with its released defaults (``soft_with_zero``, k 5, b 1, dual clip 3, no KL), extracted answer =
the last parity word of the response.

Measured per round: ``groups/all_equal`` (share of the round's groups whose 8 rewards are all equal: GRPO's
advantage vanishes) and ``groups/vanishing`` (share of groups whose advantages under the method's own loss
all vanish, taken over batches of 16 groups as training sees them); held-out reward (200 prompts x 2
samples) after each round and after the last.

Criteria (fixed before running), paired by seed, 3 seeds:
* vanishing: GRPO - COPO of ``groups/vanishing`` averaged over the 4 rounds, 95% interval above 0;
* reward: COPO - GRPO held-out reward after the rounds, 95% interval above 0.
The claim holds when both hold.

    python benchmarks/claims/copo.py [--seeds 0 1 2] [--out runs/claims/copo] [--quick]
"""

from __future__ import annotations

import os
import time

import common

ROUNDS = 4
METHODS = {"grpo": {"beta": 0.0}, "copo": {}}  # loss hyperparameters on top of the demo's per-strategy loss


def _metrics(summary: dict) -> dict:
    after, before = summary["after"], summary["before"]
    rounds = summary["per_round"]
    out = {"reward": after["reward"], "reward_gain": after["reward"] - before["reward"], "kl": after["kl"],
           "seconds": summary["seconds"]}
    for key, name in (("groups/vanishing", "vanishing"), ("groups/all_equal", "all_equal")):
        values = [m.get(key, 0.0) for m in rounds]
        out[f"{name}_mean"] = sum(values) / len(values)
        out.update({f"{name}_r{r}": v for r, v in enumerate(values)})
    out.update({f"eval_reward_r{r}": m.get("eval/judge_score", float("nan")) for r, m in enumerate(rounds)})
    return out


def _per_round_table(results) -> str:
    lines = ["| method | round | groups all equal | groups with vanishing advantages | held-out reward |",
             "|---|---|---|---|---|"]
    for method in results:
        for r in range(ROUNDS):
            cells = [common.interval(common.metric(results, method, f"{k}_r{r}"))
                     for k in ("all_equal", "vanishing", "eval_reward")]
            lines.append(f"| {method} | {r + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    from dpokit.tasks.demo import DemoSettings
    from dpokit.tasks.online_demo import run_online_demo

    args = common.parser(__doc__.splitlines()[0], "runs/claims/copo").parse_args(argv)
    started = time.time()
    quiet = common.quiet_logs()
    settings = {k: int(v) for k, v in common.QUICK.items()} if args.quick else {}
    results = {m: {} for m in METHODS}
    for seed in common.seeds_of(args):
        warmup = None
        for method, hparams in METHODS.items():
            directory = os.path.join(args.out, f"seed{seed}", method)
            run_settings = DemoSettings(output_dir=directory, seed=seed, loss_hparams=dict(hparams), **settings)
            summary = common.cached_summary(directory, lambda: run_online_demo(
                run_settings, method, ROUNDS, log=quiet, warmup_dir=warmup))
            warmup = warmup or os.path.join(directory, "warmup")  # the second method starts from the same model
            results[method][seed] = _metrics(summary)
            m = results[method][seed]
            print(f"   seed {seed}: {method} reward {m['reward']:.3f}, vanishing per round "
                  + " ".join(f"{m[f'vanishing_r{r}']:.2f}" for r in range(ROUNDS)) + f" ({m['seconds']:.0f} s)")
    text = [common.table(results, ["reward", "reward_gain", "kl", "vanishing_mean", "all_equal_mean"]), "",
            _per_round_table(results), ""]
    vanishing = common.paired(results, "copo", "grpo", "vanishing_mean")  # grpo - copo
    reward = common.paired(results, "grpo", "copo", "reward")  # copo - grpo
    text.append(f"GRPO - COPO share of groups with vanishing advantages (mean over rounds): "
                f"{common.interval(vanishing)} (95% CI {common.ci_text(vanishing)})")
    text.append(f"COPO - GRPO held-out reward after {ROUNDS} rounds: {common.interval(reward)} "
                f"(95% CI {common.ci_text(reward)})")
    low_v, low_r = common.lower(vanishing), common.lower(reward)
    text.append(common.verdict([
        ("COPO leaves fewer groups without gradient than GRPO (CI of GRPO - COPO above 0)",
         None if low_v is None else low_v > 0),
        ("COPO's held-out reward is higher than GRPO's (CI of COPO - GRPO above 0)",
         None if low_r is None else low_r > 0)]))
    return common.finish("copo", args, results, "\n".join(text), started, sweep=False)


if __name__ == "__main__":
    main()
