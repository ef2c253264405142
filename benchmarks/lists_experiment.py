"""Lists vs pairs on the built-in parity task (not a timed test).

Per seed: build the tokenizer and tiny Llama of ``dpokit demo``, warm it up on demonstrations that are
right 25% of the time, sample K = 4 responses per training prompt from the warm-up model, score each
with the task's verifiable reward (1 right, 0 wrong) and write them as ranked lists. Then train, from
the same warm-up model and against it as reference, with the same number of optimizer steps, batch
size (examples per step), learning rate and beta:

* ``dpo / best_vs_worst``: one pair per list (``data.pair_builder: best_vs_worst``),
* ``dpo / all_pairs``: every right response over every wrong one (``all_pairs``),
* ``plackett_luce``: the whole list (ties: separate),
* ``lipo_lambda``: the whole list,

and evaluate each on held-out prompts (task reward of the policy's own samples, KL to the reference).
Lists whose K responses all get the same reward carry no preference and are left out for every method
(the pair builders would drop them anyway). Run:

    python benchmarks/lists_experiment.py --seeds 0 1 2 --out runs/lists-experiment

It prints a Markdown table (mean and per-seed values) and writes ``results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Dict, List

import torch

METHODS = [
    ("dpo / best_vs_worst", {"name": "dpo"}, {"pair_builder": "best_vs_worst"}),
    ("dpo / all_pairs", {"name": "dpo"}, {"pair_builder": "all_pairs"}),
    ("plackett_luce", {"name": "plackett_luce"}, {}),
    ("lipo_lambda", {"name": "lipo_lambda"}, {}),
]


def run_seed(seed: int, args, log=print) -> Dict[str, Dict[str, float]]:
    from transformers import AutoModelForCausalLM

    from dpokit.config import from_dict
    from dpokit.data import tokenize_examples
    from dpokit.data.formats import PreferencePair
    from dpokit.sampling import HFSampler, SamplingConfig
    from dpokit.tasks.demo import evaluate_policy
    from dpokit.tasks.parity import ParityTask, build_pairs
    from dpokit.tiny import tiny_llama, train_tokenizer
    from dpokit.train import Trainer
    from dpokit.train.sft import sft_train

    out = os.path.join(args.out, f"seed{seed}")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(seed)
    task = ParityTask(warmup_accuracy=0.25, seed=seed)
    train_numbers, eval_numbers = task.split_numbers(args.n_train, args.n_eval)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=64, num_layers=2, max_position_embeddings=64, seed=seed,
                       tokenizer=tokenizer)
    sft_train(model, tokenizer, task.demonstrations(train_numbers), steps=300, seed=seed)
    warmup_dir = os.path.join(out, "warmup")
    model.save_pretrained(warmup_dir, safe_serialization=True)
    tokenizer.save_pretrained(warmup_dir)

    sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=8, seed=seed + 1))
    train_prompts = [task.prompt(n) for n in train_numbers]
    eval_prompts = [task.prompt(n) for n in eval_numbers]
    samples = sampler.sample(train_prompts, args.k)[0]
    rows, all_tied = [], 0
    for prompt, responses in zip(train_prompts, samples):
        scores = [task.reward(prompt, r) for r in responses]
        if len(set(scores)) < 2:
            all_tied += 1
            continue
        rows.append({"prompt": prompt, "responses": [" " + r for r in responses], "scores": scores})
    lists_path = os.path.join(out, "lists.jsonl")
    with open(lists_path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    heldout_rows = build_pairs(task, eval_prompts, sampler.sample(eval_prompts, 8)[0], seed + 1)
    heldout, _ = tokenize_examples([PreferencePair(r["prompt"], r["chosen"], r["rejected"]) for r in heldout_rows],
                                   tokenizer, max_length=64)
    before = evaluate_policy(model, model, tokenizer, task, eval_prompts, heldout, seed + 2, args.eval_samples)
    log(f"seed {seed}: {len(rows)} lists with a preference ({all_tied} all-tied left out); "
        f"warm-up reward {before['reward']:.3f}")
    results = {"warm-up (before)": {**before, "examples": 0, "responses_per_step": 0, "seconds": 0.0}}
    for label, loss, data in METHODS:
        run_dir = os.path.join(out, label.replace(" / ", "-"))
        config = from_dict({
            "model": {"name_or_path": warmup_dir},
            "data": {"train": lists_path, "kind": "lists", "max_length": 64, **data},
            "loss": {**loss, "beta": args.beta},
            "reference": {"kind": "copy"},
            "train": {"output_dir": run_dir, "seed": seed, "epochs": 1000, "max_steps": args.steps,
                      "batch_size": args.batch_size, "lr": args.lr, "scheduler": "cosine", "warmup_ratio": 0.05,
                      "log_every": 10, "report_to": [], "progress_bar": False, "mixed_precision": "no",
                      "save_every": 0, "keep_last": 1},
        })
        started = time.time()
        trainer = Trainer(config)
        responses = sum(len(ex.completions) for ex in trainer.train_examples) / len(trainer.train_examples)
        trainer.fit()
        seconds = time.time() - started
        aligned = AutoModelForCausalLM.from_pretrained(os.path.join(run_dir, "final"), use_safetensors=True)
        reference = AutoModelForCausalLM.from_pretrained(warmup_dir, use_safetensors=True)
        after = evaluate_policy(aligned, reference, tokenizer, task, eval_prompts, heldout, seed + 2,
                                args.eval_samples)
        results[label] = {**after, "examples": len(trainer.train_examples),
                          "responses_per_step": responses * args.batch_size, "seconds": seconds}
        log(f"  {label:<22} reward {after['reward']:.3f}  kl {after['kl']:.2f}  "
            f"({len(trainer.train_examples)} examples, {seconds:.0f} s)")
    return results


def table(per_seed: Dict[int, Dict[str, Dict[str, float]]]) -> str:
    seeds = sorted(per_seed)
    labels = list(per_seed[seeds[0]])
    head = ("| method | held-out reward (mean) | per seed | KL to reference (mean) | training examples | "
            "responses per step |")
    lines = [head, "|---|---|---|---|---|---|"]
    for label in labels:
        rewards = [per_seed[s][label]["reward"] for s in seeds]
        kls = [per_seed[s][label]["kl"] for s in seeds]
        examples = [per_seed[s][label]["examples"] for s in seeds]
        responses = [per_seed[s][label]["responses_per_step"] for s in seeds]
        lines.append(f"| {label} | {statistics.mean(rewards):.3f} | {' / '.join(f'{r:.3f}' for r in rewards)} | "
                     f"{statistics.mean(kls):.2f} | {statistics.mean(examples):.0f} | "
                     f"{statistics.mean(responses):.0f} |")
    return "\n".join(lines)


def main(argv: List[str] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/lists-experiment")
    parser.add_argument("--n-train", type=int, default=800)
    parser.add_argument("--n-eval", type=int, default=200)
    parser.add_argument("--k", type=int, default=4)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--beta", type=float, default=0.5)
    parser.add_argument("--eval-samples", type=int, default=4)
    args = parser.parse_args(argv)
    import logging

    logging.getLogger("dpokit").setLevel(logging.WARNING)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    started = time.time()
    per_seed = {seed: run_seed(seed, args) for seed in args.seeds}
    text = table(per_seed)
    machine = f"{platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, {platform.python_version()}"
    print(text)
    print(f"\nmachine: {machine}; seeds {args.seeds}; {time.time() - started:.0f} s")
    with open(os.path.join(args.out, "results.json"), "w") as handle:
        json.dump({"args": vars(args), "machine": machine, "results": per_seed}, handle, indent=2)


if __name__ == "__main__":
    main()
