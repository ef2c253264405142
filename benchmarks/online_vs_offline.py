"""Online rounds vs one offline DPO pass on the built-in parity task, at the same sample budget.

    python benchmarks/online_vs_offline.py --out runs/online-vs-offline
    python benchmarks/online_vs_offline.py --out runs/online-vs-offline --strategies online_dpo apo --rounds 4

Runs the offline demo once (``dpokit demo``: warm-up, 8 samples for each of 800 prompts, one DPO run), then
``dpokit demo --online`` for each strategy from the same saved warm-up model, with the same number of
generated training samples (800 prompts x 8 samples, spread over the rounds), and prints a markdown table
of held-out task reward, preference accuracy, KL to the warm-up model and response length. Finished runs
(a ``summary.json`` in their directory) are reused.
"""

from __future__ import annotations

import argparse
import json
import os
import sys


def main(argv=None) -> int:
    from dpokit.tasks.demo import DemoSettings, run_demo
    from dpokit.tasks.online_demo import run_online_demo

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/online-vs-offline")
    parser.add_argument("--strategies", nargs="+", default=["online_dpo", "iterative_dpo"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    def summary(path, run):
        file = os.path.join(path, "summary.json")
        if not os.path.exists(file):
            run()
        with open(file) as handle:
            return json.load(handle)

    offline_dir = os.path.join(args.out, "offline")
    rows = [("offline DPO (1 pass)", summary(offline_dir, lambda: run_demo(DemoSettings(output_dir=offline_dir,
                                                                                          seed=args.seed))))]
    base = DemoSettings(seed=args.seed)
    for strategy in args.strategies:
        path = os.path.join(args.out, strategy)
        settings = DemoSettings(output_dir=path, seed=args.seed)
        rows.append((f"{strategy} ({args.rounds} rounds)", summary(path, lambda: run_online_demo(
            settings, strategy, args.rounds, warmup_dir=os.path.join(offline_dir, "warmup")))))
    budget = base.n_train_prompts * base.samples_per_prompt
    print("| run | held-out reward | preference accuracy | KL to warm-up | length | training samples | pairs |")
    print("|---|---|---|---|---|---|---|")
    before = rows[0][1]["before"]
    print(f"| warm-up model (start) | {before['reward']:.3f} | {before['preference_accuracy']:.3f} | "
          f"{before['kl']:.3f} | {before['length']:.2f} | - | - |")
    for name, result in rows:
        after = result["after"]
        samples = result.get("generated_samples", budget)
        print(f"| {name} | {after['reward']:.3f} | {after['preference_accuracy']:.3f} | {after['kl']:.3f} | "
              f"{after['length']:.2f} | {samples} | {result['train_pairs']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
