"""Claim: DPO's implicit reward loses more pairwise accuracy under distribution shift than an explicit reward model.

Lin et al. (EMNLP 2024, arXiv 2409.03650): from the same start and the same preference data, the implicit
reward ``beta * log pi/pi_ref`` of a DPO policy and a Bradley-Terry reward model rank held-out pairs about
equally well in distribution, and the implicit one does worse under shift. The miniature, per seed, on the
parity demo task (``dpokit demo``: tiny Llama, warm-up on demonstrations right 25% of the time, on-policy
pairs labelled by the verifiable reward):

* DPO: the demo's run (800 prompts x 8 samples, 3 epochs, lr 1e-3, beta 0.5, the warm-up as reference);
* explicit RM: the warm-up model with a fresh linear score head (``load_reward_model``), trained with the
  Bradley-Terry loss on the same training pairs (3 epochs, lr 1e-3, batch 16);
* splits: ``train`` (the training pairs), ``in_distribution`` (the demo's held-out pairs: 200 other
  3-digit prompts, samples of the warm-up model), ``prompt_shift`` (200 five-digit numbers, samples of the
  warm-up model, same labelling), ``response_shift`` (the held-out 3-digit prompts with template answers
  in phrasings the training data never has, e.g. ``i think the number is even``, one right, one wrong).

Criterion (fixed before running): per seed, ``d = (implicit drop) - (RM drop)`` with drop = in-distribution
accuracy - shifted accuracy, averaged over the two shifted splits; the claim holds when the 95% t-interval
of ``d`` over seeds lies above 0. Both shifts are also reported separately.

    python benchmarks/claims/implicit_vs_explicit.py [--seeds 0 1 2] [--out runs/claims/implicit_vs_explicit] [--quick]
"""

from __future__ import annotations

import json
import logging
import os
import platform
import random
import time

import common

SHIFT_PHRASINGS = ("i think the number is {p}", "answer : it is {p}", "number : {p} .", "it is {p} or {q} ? {p}")


def response_shift_pairs(task, numbers, seed):
    from dpokit.data.formats import PreferencePair

    rng = random.Random(seed)
    pairs = []
    for n in numbers:
        right, wrong = ("even", "odd") if n % 2 == 0 else ("odd", "even")
        a, b = rng.sample(SHIFT_PHRASINGS, 2)
        pairs.append(PreferencePair(task.prompt(n), " " + a.format(p=right, q=wrong), " " + b.format(p=wrong, q=right)))
    return pairs


def run_seed(seed, out, quick, log=print):
    import torch
    from transformers import AutoModelForCausalLM

    from dpokit.data import load_examples
    from dpokit.data.formats import PreferencePair
    from dpokit.eval.generalization import reward_generalization
    from dpokit.preference.judges import RewardModelJudge, load_reward_model
    from dpokit.preference.reward_model import train_reward_model
    from dpokit.sampling import HFSampler, SamplingConfig
    from dpokit.tasks.demo import DemoSettings, run_demo
    from dpokit.tasks.parity import ParityTask, build_pairs

    directory = os.path.join(out, f"seed-{seed}")
    settings = DemoSettings(output_dir=directory, seed=seed)
    if quick:
        settings.n_train_prompts, settings.n_eval_prompts, settings.warmup_steps, settings.dpo_epochs = 64, 32, 40, 1
    summary_path = os.path.join(directory, "summary.json")
    if not os.path.exists(summary_path):
        run_demo(settings, log=lambda line: None)
    with open(summary_path) as handle:
        summary = json.load(handle)
    warmup = os.path.join(directory, "warmup")
    policy = AutoModelForCausalLM.from_pretrained(os.path.join(directory, "train", "final"), use_safetensors=True).eval()
    reference = AutoModelForCausalLM.from_pretrained(warmup, use_safetensors=True).eval()
    train = load_examples(os.path.join(directory, "pairs.jsonl"), "pairs")
    heldout = load_examples(os.path.join(directory, "heldout_pairs.jsonl"), "pairs")

    torch.manual_seed(seed)
    rm, tokenizer = load_reward_model(warmup)
    train_reward_model(rm, tokenizer, train, epochs=1 if quick else 3, lr=1e-3, batch_size=16, max_length=64,
                       seed=seed, log_every=0)
    judge = RewardModelJudge(rm.eval(), tokenizer, batch_size=64, max_length=64)

    task = ParityTask(seed=seed)
    _, eval_numbers = task.split_numbers(settings.n_train_prompts, settings.n_eval_prompts)
    wide = ParityTask(digits=5, seed=seed)
    numbers = random.Random(seed + 7).sample(range(10 ** 4, 10 ** 5), settings.n_eval_prompts)
    prompts = [wide.prompt(n) for n in numbers]
    sampler = HFSampler(reference, tokenizer, SamplingConfig(max_new_tokens=8, seed=seed + 11, top_k=0))
    rows = build_pairs(wide, prompts, sampler.sample(prompts, settings.samples_per_prompt)[0], seed + 12)
    prompt_shift = [PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in rows]
    splits = {"train": train, "in_distribution": heldout, "prompt_shift": prompt_shift,
              "response_shift": response_shift_pairs(task, eval_numbers, seed + 13)}
    beta = summary["loss_hparams"].get("beta", 0.5)
    result = reward_generalization(policy, reference, tokenizer, judge, splits, beta, max_length=64, batch_size=64)
    log(f"seed {seed}: " + ", ".join(f"{k} {v['implicit_accuracy']:.3f}/{v['explicit_accuracy']:.3f} (n {v['num_pairs']})"
                                     for k, v in result["splits"].items()) + "  (implicit/explicit)")
    return result


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/implicit_vs_explicit").parse_args(argv)
    logging.getLogger("dpokit").setLevel(logging.WARNING)
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
    except ImportError:
        pass
    started = time.time()
    seeds = common.seeds_of(args)
    per_seed = {s: run_seed(s, args.out, args.quick) for s in seeds}
    splits = list(next(iter(per_seed.values()))["splits"])
    d = common.describe_values
    lines = ["| split | n (seed 0) | implicit (DPO) accuracy | explicit RM accuracy | implicit drop | RM drop | "
             "implicit - RM drop |", "|---|---|---|---|---|---|---|"]
    for name in splits:
        get = lambda key: d([per_seed[s]["splits"][name][key] for s in seeds])
        lines.append(f"| {name} | {per_seed[seeds[0]]['splits'][name]['num_pairs']} | "
                     + " | ".join(common.interval(get(k)) for k in ("implicit_accuracy", "explicit_accuracy",
                                                                     "implicit_drop", "explicit_drop", "drop_difference"))
                     + " |")
    shifts = ("prompt_shift", "response_shift")
    combined = d([sum(per_seed[s]["splits"][k]["drop_difference"] for k in shifts) / len(shifts) for s in seeds])
    text = lines + ["", f"implicit drop - RM drop, mean of the two shifts: {common.interval(combined)} "
                        f"(95% CI {common.ci_text(combined)}; per seed "
                        + " / ".join(f"{v:.3f}" for v in combined["values"]) + ")"]
    low = common.lower(combined)
    text.append(common.verdict([("implicit-reward accuracy drops more than the explicit RM's under shift "
                                 "(CI of the difference above 0)", None if low is None else low > 0)]))
    output = "\n".join(text)
    print(output)
    seconds = time.time() - started
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, {platform.python_version()}"
    print(f"\nimplicit_vs_explicit: seeds {seeds}{' (quick)' if args.quick else ''}; {seconds:.0f} s on {machine}")
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "claim.json"), "w") as handle:
        json.dump({"claim": "implicit_vs_explicit", "seeds": seeds, "quick": args.quick, "seconds": round(seconds, 1),
                   "machine": machine, "results": {str(s): r for s, r in per_seed.items()}, "output": output},
                  handle, indent=2)


if __name__ == "__main__":
    main()
