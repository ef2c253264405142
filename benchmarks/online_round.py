"""The online round, generate -> judge -> train: dpokit's online loop against TRL's OnlineDPOTrainer.

    python benchmarks/online_round.py --out benchmarks/results/online-round.json
    python benchmarks/online_round.py --steps 8 --batch-size 8 --max-new-tokens 16 --clock cpu

Both sides get the same tiny Llama (random weights, seeded) and word-level tokenizer of the parity
task (:mod:`dpokit.tasks.parity`), the same prompts, 2 samples per prompt, the same sampling
(temperature 1, no top-k), ``max_new_tokens``, DPO sigmoid loss (beta 0.1), AdamW at the same
learning rate, the same batch size and the same number of optimizer steps, and the same callable
judge: the parity reward plus a tie-break below its resolution (a hash of the response), so that
two different samples never tie and every prompt gives one pair on both sides.

* dpokit: :class:`dpokit.online.loop.OnlineLoop`, strategy ``online_dpo``: one round over
  ``steps x batch_size`` prompts (sample all, judge all, then train one epoch), and with
  ``--refresh`` also ``online.refresh_every: 1`` (fresh samples every optimizer step, as TRL).
* TRL: ``OnlineDPOTrainer`` (``trl.experimental.online_dpo``) with the judge as ``reward_funcs``,
  ``max_steps = steps``: each step samples its batch's prompts twice, judges and trains.

Reported: generated samples per second and trained pairs per second of the whole round (each
side's generate, judge and train, with the loop's own bookkeeping), the time in generation, and
the ratios dpokit / TRL. ``--clock cpu`` (the process's CPU time) for shared machines.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import zlib
from typing import Any, Dict, List


def judge(prompt: str, response: str) -> float:
    """The parity reward (0 or 1) plus a deterministic tie-break in [0, 1e-3) from the response text."""
    from dpokit.tasks.parity import parity_reward

    return parity_reward(prompt, response) + 1e-3 * zlib.crc32(response.encode()) / 2 ** 32


class Clock:
    """Accumulates time spent in wrapped functions, by phase."""

    def __init__(self, name: str):
        self.now = time.process_time if name == "cpu" else time.perf_counter
        self.phases: Dict[str, float] = {}

    def wrap(self, obj, attr: str, phase: str) -> None:
        inner = getattr(obj, attr)

        def timed(*args, **kwargs):
            start = self.now()
            try:
                return inner(*args, **kwargs)
            finally:
                self.phases[phase] = self.phases.get(phase, 0.0) + self.now() - start
        setattr(obj, attr, timed)


def build_model(workdir: str, seed: int, hidden: int, layers: int) -> str:
    from dpokit.tasks.parity import ParityTask
    from dpokit.tiny import tiny_llama, train_tokenizer

    task = ParityTask(seed=seed)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=hidden, num_layers=layers, max_position_embeddings=128, seed=seed,
                       tokenizer=tokenizer)
    path = os.path.join(workdir, "model")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def prompts_for(n: int, seed: int) -> List[str]:
    from dpokit.tasks.parity import ParityTask

    task = ParityTask(seed=seed)
    numbers, _ = task.split_numbers(n, 1)
    return [task.prompt(x) for x in numbers[:n]]


def run_dpokit(args, path: str, prompts: List[str], workdir: str, refresh: bool) -> Dict[str, Any]:
    from dpokit.config import from_dict
    from dpokit.io import write_jsonl
    from dpokit.online.loop import OnlineLoop

    os.makedirs(workdir, exist_ok=True)
    prompts_path = os.path.join(workdir, "prompts.jsonl")
    write_jsonl(prompts_path, [{"prompt": p} for p in prompts])

    raw = {
        "model": {"name_or_path": path},
        "data": {"max_length": 128},
        "loss": {"name": "dpo", "beta": 0.1},
        "train": {"output_dir": os.path.join(workdir, "dpokit" + ("-refresh" if refresh else "")), "seed": args.seed,
                  "epochs": 1, "batch_size": args.batch_size, "lr": args.lr, "scheduler": "constant",
                  "warmup_ratio": 0.0, "log_every": 1000, "report_to": [], "progress_bar": False,
                  "mixed_precision": "no"},
        "online": {"strategy": "online_dpo", "rounds": 1, "samples_per_prompt": 2, "prompts": prompts_path,
                   "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_k": 0,
                   "generation_batch_size": args.batch_size if refresh else args.generation_batch_size,
                   "judge": {"kind": "callable", "function": "dpokit.tasks.online_demo:parity_reward"}},
    }
    if refresh:
        raw["online"]["refresh_every"] = 1
    config = from_dict(raw)
    clock = Clock(args.clock)
    start = clock.now()
    loop = OnlineLoop(config, judge=judge, log=lambda *a: None)
    generated = []
    sample = loop.sample

    def counted(*a, **k):
        out = sample(*a, **k)
        generated.append(sum(len(group) for group in out[0]))
        return out
    loop.sample = counted
    clock.wrap(loop, "sample", "generate")
    clock.wrap(loop.judge, "score", "judge")
    result = loop.run()
    seconds = clock.now() - start
    metrics = result["metrics"][0]
    steps = metrics["steps"]
    return {"seconds": seconds, "phases": clock.phases, "samples": sum(generated),
            "pairs": steps * args.batch_size, "optimizer_steps": steps, "metrics": metrics}


def run_trl(args, path: str, prompts: List[str], workdir: str) -> Dict[str, Any]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl.experimental.online_dpo import OnlineDPOConfig, OnlineDPOTrainer

    def reward(prompts, completions, completion_ids=None, **kwargs):
        return [judge(p, c) for p, c in zip(prompts, completions)]

    clock = Clock(args.clock)
    start = clock.now()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    reference = AutoModelForCausalLM.from_pretrained(path, use_safetensors=True)
    config = OnlineDPOConfig(
        output_dir=os.path.join(workdir, "trl"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        max_new_tokens=args.max_new_tokens, max_length=128, temperature=1.0, top_k=0, beta=0.1, loss_type="sigmoid",
        learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        report_to=[], save_strategy="no", logging_steps=1000, use_cpu=True, bf16=False, fp16=False, seed=args.seed,
        dataloader_num_workers=0, disable_tqdm=True, gradient_checkpointing=False)
    trainer = OnlineDPOTrainer(model=model, ref_model=reference, reward_funcs=reward, args=config,
                               train_dataset=Dataset.from_list([{"prompt": p} for p in prompts]),
                               processing_class=tokenizer)
    clock.wrap(trainer, "_generate", "generate")
    clock.wrap(trainer, "_calculate_rewards_from_functions", "judge")
    trainer.train()
    seconds = clock.now() - start
    steps = trainer.state.global_step
    return {"seconds": seconds, "phases": clock.phases, "samples": 2 * args.batch_size * steps,
            "pairs": args.batch_size * steps, "optimizer_steps": steps}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="optimizer steps on each side")
    parser.add_argument("--batch-size", type=int, default=8, help="prompts (pairs) per optimizer step")
    parser.add_argument("--generation-batch-size", type=int, default=64, help="dpokit's prompts per generate call")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--hidden-size", type=int, default=64)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="cpu")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, interleaved; the fastest is kept")
    parser.add_argument("--refresh", action="store_true", help="also dpokit with fresh samples every step")
    parser.add_argument("--out", default=None, help="write the JSON here")
    args = parser.parse_args(argv)

    import torch
    from dpokit.bench.workers import quiet

    torch.set_num_threads(args.threads)
    quiet()
    workdir = tempfile.mkdtemp(prefix="online-round-")
    path = build_model(workdir, args.seed, args.hidden_size, args.layers)
    prompts = prompts_for(args.steps * args.batch_size, args.seed)
    sides = {"dpokit": lambda d: run_dpokit(args, path, prompts, d, refresh=False)}
    if args.refresh:
        sides["dpokit_refresh_every_step"] = lambda d: run_dpokit(args, path, prompts, d, refresh=True)
    sides["trl"] = lambda d: run_trl(args, path, prompts, d)
    runs: Dict[str, List[Dict[str, Any]]] = {label: [] for label in sides}
    for repeat in range(args.repeats):  # interleaved; the first pays one-off costs (imports), so keep the fastest
        for label, side in sides.items():
            runs[label].append(side(os.path.join(workdir, f"run-{repeat}")))
    results = {label: dict(min(measured, key=lambda r: r["seconds"]), seconds_runs=[r["seconds"] for r in measured])
               for label, measured in runs.items()}
    for r in results.values():
        r["samples_per_s"] = r["samples"] / r["seconds"]
        r["pairs_per_s"] = r["pairs"] / r["seconds"]
        generate = r["phases"].get("generate")
        r["generation_samples_per_s"] = r["samples"] / generate if generate else None
    trl = results["trl"]
    ratios = {label: {"samples_per_s": r["samples_per_s"] / trl["samples_per_s"],
                      "pairs_per_s": r["pairs_per_s"] / trl["pairs_per_s"],
                      "generation_samples_per_s": (r["generation_samples_per_s"] / trl["generation_samples_per_s"]
                                                   if r["generation_samples_per_s"] else None)}
              for label, r in results.items() if label != "trl"}
    import trl as trl_module
    import transformers

    report = {"machine": {"processor": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
                          "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
                          "transformers": transformers.__version__, "trl": trl_module.__version__,
                          "load_average": os.getloadavg()[0] if hasattr(os, "getloadavg") else None},
              "setup": {k: getattr(args, k) for k in ("steps", "batch_size", "generation_batch_size", "max_new_tokens",
                                                      "hidden_size", "layers", "lr", "seed", "clock", "repeats")},
              "results": results, "ratios": ratios}
    text = json.dumps(report, indent=2)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text)
    print(f"{'':<28}{'samples/s':>10}{'pairs/s':>9}{'gen samples/s':>15}{'steps':>7}{'seconds':>9}")
    for label, r in results.items():
        gen = r["generation_samples_per_s"]
        print(f"{label:<28}{r['samples_per_s']:>10.1f}{r['pairs_per_s']:>9.1f}{(gen or float('nan')):>15.1f}"
              f"{r['optimizer_steps'] or 0:>7}{r['seconds']:>9.1f}")
    for label, ratio in ratios.items():
        print(f"{label} / TRL: samples/s {ratio['samples_per_s']:.2f}x, pairs/s {ratio['pairs_per_s']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
