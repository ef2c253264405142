"""The measured tries of docs/steps.md ("Why the demo shows no gain"), on the arithmetic demo (seed 0).

    python benchmarks/arithmetic_tries.py demo '{"n_train_problems": 3000}' runs/tries/more
        the demo with these settings; held-out and training-problem accuracy of the warm-up and the result
    python benchmarks/arithmetic_tries.py loss runs/tries/more runs/tries/sft 3000 '{"name": "sft"}'
        another loss on a finished demo run's pairs, from its warm-up (e.g. step_dpo + sft components)
    python benchmarks/arithmetic_tries.py mcts runs/tries/base/warmup runs/tries/mcts 3 60
        online.strategy mcts_dpo from a demo's warm-up: held-out accuracy after every round

Each prints one JSON line.
"""

import json
import os
import sys
import time

import torch


def demo(settings_json, out):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpokit.tasks.arithmetic import ArithmeticTask
    from dpokit.tasks.arithmetic_demo import ArithmeticDemoSettings, evaluate, run_arithmetic_demo

    kw = json.loads(settings_json)
    s = ArithmeticDemoSettings(output_dir=out, **kw)
    started = time.time()
    summary = run_arithmetic_demo(s, log=lambda message: None)
    task = ArithmeticTask(n_ops=s.n_ops, seed=s.seed)
    train, _ = task.split(s.n_train_problems, s.n_eval_problems)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(out, "warmup"))
    result = {"settings": kw, "before": summary["before"], "after": summary["after"], "train_pairs": summary["train_pairs"]}
    for name in ("warmup", os.path.join("train", "final")):
        model = AutoModelForCausalLM.from_pretrained(os.path.join(out, name)).eval()
        result["train_" + os.path.basename(name)] = evaluate(model, tokenizer, task, train[:150], s.seed + 2)
    result["seconds"] = round(time.time() - started, 1)
    return result


def other_loss(run, out, n_train, loss_json):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpokit.config import from_dict
    from dpokit.scoring.steps import StepScorer, separator_ids
    from dpokit.tasks.arithmetic import STEP_SEPARATOR, ArithmeticTask
    from dpokit.tasks.arithmetic_demo import evaluate
    from dpokit.train import Trainer

    loss = json.loads(loss_json)
    task = ArithmeticTask(n_ops=2, seed=0)
    train, held = task.split(int(n_train), 150)
    tokenizer = AutoTokenizer.from_pretrained(os.path.join(run, "warmup"))
    config = from_dict({
        "model": {"name_or_path": os.path.join(run, "warmup")},
        "data": {"train": os.path.join(run, "pairs.jsonl"), "max_length": 96},
        "loss": loss, "reference": {"kind": "none" if loss.get("name") == "sft" else "copy"},
        "train": {"output_dir": out, "seed": 0, "epochs": 2, "batch_size": 16, "lr": 2e-4, "scheduler": "cosine",
                  "warmup_ratio": 0.05, "log_every": 10, "report_to": [], "progress_bar": False,
                  "mixed_precision": "no", "layout": "prompt_shared"}})
    started = time.time()
    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    Trainer(config, scorer_wrapper=lambda scorer: StepScorer(scorer, sep)).fit()
    model = AutoModelForCausalLM.from_pretrained(os.path.join(out, "final")).eval()
    return {"loss": loss, "after": evaluate(model, tokenizer, task, held, 2),
            "train_after": evaluate(model, tokenizer, task, train[:150], 2), "seconds": round(time.time() - started, 1)}


def mcts_rounds(warmup, out, rounds, per_round):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpokit.config import from_dict
    from dpokit.online.loop import OnlineLoop
    from dpokit.tasks.arithmetic import ArithmeticTask
    from dpokit.tasks.arithmetic_demo import evaluate

    task = ArithmeticTask(n_ops=2, seed=0)
    train, held = task.split(600, 150)
    os.makedirs(out, exist_ok=True)
    prompts = os.path.join(out, "prompts.jsonl")
    with open(prompts, "w") as handle:
        handle.writelines(json.dumps({"prompt": task.prompt(p)}) + "\n" for p in train)
    tokenizer = AutoTokenizer.from_pretrained(warmup)
    hook = lambda model, r: evaluate(model, tokenizer, task, held, 2)  # noqa: E731
    options = {"task": "dpokit.tasks.arithmetic:search_task", "evaluator": "verifier", "n_iters": 4,
               "depth_limit": 4, "include_gold": True, "max_step_tokens": 12}
    raw = {"model": {"name_or_path": warmup}, "data": {"max_length": 96},
           "loss": {"name": "step_dpo", "beta": 0.1, "conservative": True},
           "train": {"output_dir": os.path.join(out, "run"), "lr": 2e-4, "batch_size": 16, "epochs": 2,
                     "report_to": [], "progress_bar": False, "mixed_precision": "no", "scheduler": "cosine",
                     "warmup_ratio": 0.05, "seed": 0, "layout": "prompt_shared"},
           "online": {"strategy": "mcts_dpo", "rounds": int(rounds), "prompts": prompts,
                      "prompts_per_round": int(per_round), "options": options}}
    started = time.time()
    before = hook(AutoModelForCausalLM.from_pretrained(warmup).eval(), -1)
    summary = OnlineLoop(from_dict(raw), eval_hook=hook).run()
    keep = ("eval/", "search/", "pairs", "round", "train/")
    return {"before": before, "rounds": [{k: v for k, v in m.items() if k.startswith(keep)} for m in summary["metrics"]],
            "seconds": round(time.time() - started, 1)}


COMMANDS = {"demo": demo, "loss": other_loss, "mcts": mcts_rounds}

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in COMMANDS:
        sys.exit(__doc__)
    torch.set_num_threads(1)
    print(json.dumps(COMMANDS[sys.argv[1]](*sys.argv[2:])))
