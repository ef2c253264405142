"""`dpokit demo --task arithmetic`: step-level against outcome-level preference training.

1. a word-level tokenizer and a tiny Llama built in-process;
2. supervised warm-up on noisy solutions (each step wrong with probability ``step_error_rate``);
3. preference pairs on the training problems:

   * ``--method step_dpo`` (default): step pairs. ``pairs="verifier"``: the warm-up model's own
     solutions are checked step by step; at a sample's first wrong step the pair is (the gold steps
     before it as prefix, the gold step as chosen, the sampled step as rejected). ``pairs="search"``:
     MCTS-DPO trees (:mod:`dpokit.steps.search`) on the first ``search_problems`` problems, with the
     verifier as the step evaluator (the programmatic-checker ablation of the method, not its
     self-evaluation) and visit-count smoothing (``conservative``);
   * ``--method dpo``: outcome-level pairs from the same samples: a right solution (the gold one
     when no sample is right) against a wrong one;

4. training through the regular trainer (warm-up model as reference; for ``step_dpo`` the step
   scorer wraps the LM scorer, layout ``prompt_shared``);
5. before/after table on held-out problems: step accuracy (share of steps right, up to the first
   error) and final-answer accuracy, of sampled solutions (temperature 1), plus greedy answer accuracy.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Dict, List, Sequence

from ..data.step_pairs import pair_records
from ..data.steps import StepPair, steps_text
from ..io import write_jsonl
from ..sampling import HFSampler, SamplingConfig
from ..scoring.steps import StepScorer, separator_ids
from .arithmetic import STEP_SEPARATOR, ArithmeticTask, Problem, split_steps
from .experiment import DemoRun, load_models, run_trainer, sft_warm_up, tiny_text_model, train_section

METHODS = ("step_dpo", "dpo")
PAIR_SOURCES = ("verifier", "search")


@dataclass
class ArithmeticDemoSettings:
    output_dir: str = "runs/demo-arithmetic"
    method: str = "step_dpo"
    pairs: str = "verifier"  # verifier | search (step_dpo only)
    seed: int = 0
    n_ops: int = 2
    n_train_problems: int = 600
    n_eval_problems: int = 150
    step_error_rate: float = 0.3
    warmup_steps: int = 1000
    samples_per_problem: int = 4
    search_problems: int = 60
    beta: float = 0.1
    epochs: int = 2
    lr: float = 2e-4
    batch_size: int = 16
    hidden_size: int = 64
    layers: int = 2
    max_new_tokens: int = 40


def _sample_steps(model, tokenizer, prompts: Sequence[str], n: int, seed: int, temperature: float = 1.0):
    sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=40, seed=seed, top_k=0, temperature=temperature))
    texts, _ = sampler.sample(list(prompts), n)
    return [[split_steps(t) for t in group] for group in texts]


def evaluate(model, tokenizer, task: ArithmeticTask, problems: Sequence[Problem], seed: int) -> Dict[str, float]:
    prompts = [task.prompt(p) for p in problems]
    sampled = _sample_steps(model, tokenizer, prompts, 2, seed)
    greedy = _sample_steps(model, tokenizer, prompts, 1, seed, temperature=0.0)
    verdicts = [task.verify(p, s) for p, group in zip(problems, sampled) for s in group]
    gold_len = [len(p.gold()) for p in problems for _ in range(2)]
    return {
        "step_accuracy": sum(sum(v.steps[:g]) / g for v, g in zip(verdicts, gold_len)) / len(verdicts),
        "answer_accuracy": sum(v.outcome for v in verdicts) / len(verdicts),
        "greedy_answer_accuracy": sum(task.verify(p, g[0]).outcome for p, g in zip(problems, greedy)) / len(problems),
    }


def verifier_step_pairs(task: ArithmeticTask, problems, samples) -> List[StepPair]:
    """At each sample's first wrong step: gold prefix, gold step (chosen), sampled step (rejected)."""
    pairs, seen = [], set()
    for problem, group in zip(problems, samples):
        gold = problem.gold()
        for steps in group:
            verdict = task.verify(problem, steps)
            k = verdict.first_error
            if k is None or k >= len(gold) or k >= len(steps):
                continue
            key = (problem, k, steps[k])
            if key in seen or steps[k] == gold[k]:
                continue
            seen.add(key)
            last = k == len(gold) - 1
            pairs.append(StepPair(task.prompt(problem), gold[:k], [gold[k]], [steps[k]], last, task.is_terminal(steps[k])))
    return pairs


def outcome_pairs(task: ArithmeticTask, problems, samples, seed: int) -> List[dict]:
    """A right solution (the gold one when no sample is right) against a wrong sampled one."""
    rng = random.Random(seed)
    rows = []
    for problem, group in zip(problems, samples):
        right = sorted({tuple(s) for s in group if task.verify(problem, s).outcome})
        wrong = sorted({tuple(s) for s in group if s and not task.verify(problem, s).outcome})
        if not wrong:
            continue
        chosen = list(rng.choice(right)) if right else problem.gold()
        rows.append({"prompt": task.prompt(problem), "chosen": steps_text(chosen, STEP_SEPARATOR, True),
                     "rejected": steps_text(list(rng.choice(wrong)), STEP_SEPARATOR, True)})
    return rows


def search_step_pairs(model, tokenizer, task: ArithmeticTask, problems, seed: int) -> List[StepPair]:
    from ..steps import MCTS, SearchConfig, SearchTask, StepSampler

    from .arithmetic import ArithmeticSearchTask

    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    decode = lambda ids: tokenizer.decode([i for i in ids if i not in sep], skip_special_tokens=True).strip()  # noqa: E731
    hooks = ArithmeticSearchTask(task)
    search_task = SearchTask(evaluate=hooks.check, outcome=hooks.outcome, decode=decode, gold=hooks.gold)
    config = SearchConfig(n_iters=4, depth_limit=task.n_ops + 2, seed=seed)
    search = MCTS(StepSampler(model, sep, tokenizer.eos_token_id, max_step_tokens=12, seed=seed), search_task,
                  tokenizer, config)
    pairs: List[StepPair] = []
    for problem in problems:
        pairs += search.pairs(search.search(task.prompt(problem)))
    return pairs


def run_arithmetic_demo(settings: ArithmeticDemoSettings, log=print) -> Dict[str, Any]:
    from transformers import AutoModelForCausalLM

    if settings.method not in METHODS:
        raise ValueError(f"method: one of {', '.join(METHODS)}, got {settings.method!r}")
    if settings.pairs not in PAIR_SOURCES:
        raise ValueError(f"pairs: one of {', '.join(PAIR_SOURCES)}, got {settings.pairs!r}")
    run = DemoRun.start(settings.output_dir, settings.seed, log)
    task = ArithmeticTask(n_ops=settings.n_ops, seed=settings.seed)
    train_problems, eval_problems = task.split(settings.n_train_problems, settings.n_eval_problems)

    log(f"[1/5] tokenizer and tiny Llama ({settings.layers} layers, hidden {settings.hidden_size})")
    tokenizer, model = tiny_text_model(task.vocabulary_corpus(), settings.hidden_size, settings.layers, 96,
                                       settings.seed)

    log(f"[2/5] supervised warm-up on solutions whose steps are wrong {settings.step_error_rate:.0%} of the time")
    demos = task.demonstrations(train_problems, settings.step_error_rate)
    nll, warmup_dir = sft_warm_up(run, model, tokenizer, demos, settings.warmup_steps)
    log(f"      warm-up NLL {nll:.3f}")
    before = evaluate(model, tokenizer, task, eval_problems, settings.seed + 2)

    source = settings.pairs if settings.method == "step_dpo" else "samples"
    log(f"[3/5] {settings.method} pairs from {source}")
    prompts = [task.prompt(p) for p in train_problems]
    if settings.method == "step_dpo" and settings.pairs == "search":
        step_pairs = search_step_pairs(model, tokenizer, task, train_problems[:settings.search_problems], settings.seed)
        rows = pair_records(step_pairs, tokenizer, STEP_SEPARATOR)
    else:
        samples = _sample_steps(model, tokenizer, prompts, settings.samples_per_problem, settings.seed + 1)
        if settings.method == "step_dpo":
            rows = pair_records(verifier_step_pairs(task, train_problems, samples), tokenizer, STEP_SEPARATOR)
        else:
            rows = outcome_pairs(task, train_problems, samples, settings.seed)
    if not rows:
        raise RuntimeError("no preference pairs: every sample was right (raise step_error_rate)")
    pairs_path = run.path("pairs.jsonl")
    write_jsonl(pairs_path, rows)
    log(f"      {len(rows)} training pairs")

    log(f"[4/5] preference training with {settings.method!r} (reference = warm-up model)")
    loss: Dict[str, Any] = {"name": settings.method, "beta": settings.beta}
    if settings.method == "step_dpo" and settings.pairs == "search":
        loss["conservative"] = True
    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    run_trainer({
        "model": {"name_or_path": warmup_dir},
        "data": {"train": pairs_path, "max_length": 96},
        "loss": loss,
        "reference": {"kind": "copy"},
        "train": train_section(run.path("train"), settings.seed, settings.epochs, settings.batch_size, settings.lr,
                               10, layout="prompt_shared"),
    }, scorer_wrapper=(lambda scorer: StepScorer(scorer, sep)) if settings.method == "step_dpo" else None)

    log("[5/5] evaluating before and after on held-out problems")
    aligned, = load_models(AutoModelForCausalLM, run.path("train", "final"))
    after = evaluate(aligned, tokenizer, task, eval_problems, settings.seed + 2)
    return run.finish({"task": "arithmetic", "method": settings.method, "pairs": source, "before": before,
                       "after": after, "train_pairs": len(rows)}, TABLE_ROWS)


TABLE_ROWS = (("step accuracy (sampled)", "step_accuracy"), ("answer accuracy (sampled)", "answer_accuracy"),
              ("answer accuracy (greedy)", "greedy_answer_accuracy"))
