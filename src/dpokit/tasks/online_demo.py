"""`dpokit demo --online [--strategy NAME] [--rounds N]`: the built-in experiment with online rounds.

Same task, tokenizer, tiny Llama and warm-up as ``dpokit demo`` (same seed: the same warm-up model),
then instead of one DPO pass on pairs sampled once from the warm-up model, ``--rounds`` rounds of
the online loop (:mod:`dpokit.online.loop`): each round samples the current policy on a new slice
of the training prompts, judges the samples with the task's verifiable reward (a Python callable
judge, ``dpokit.tasks.online_demo:parity_reward``), builds pairs and trains with the same trainer.
The total number of generated training samples equals the offline demo's
(``n_train_prompts x samples_per_prompt``): each round gets ``n_train_prompts / rounds`` prompts.

With a group strategy (``--strategy grpo|copo|rloo|reinforce``) each prompt's samples are one group
trained with that policy-gradient loss (:mod:`dpokit.online.groups`); COPO reads the extracted answer
of :func:`parity_answer`.

Writes the same ``summary.json`` (``before``/``after``: reward, preference_accuracy, kl, length) as
the offline demo, plus ``rounds`` (each round's metrics, including held-out reward).
"""

from __future__ import annotations

from typing import Any, Dict, List

from ..sampling import HFSampler, SamplingConfig
from ..io import write_jsonl
from .demo import DemoSettings, evaluate_policy, write_heldout_pairs
from .experiment import DemoRun, load_models, sft_warm_up, tiny_text_model, train_section
from .parity import ParityTask, build_pairs, parity_reward  # noqa: F401  (parity_reward: the demo's judge)

# Loss settings per strategy for this task (the task is small and sharp; see docs/online.md).
STRATEGY_LOSS: Dict[str, Dict[str, Any]] = {
    "sppo": {"name": "sppo", "beta": 0.1},
    # group strategies (dpokit.online.groups): the K samples of a prompt are one group
    "grpo": {"name": "grpo", "beta": 0.04},
    "copo": {"name": "copo"},
    "rloo": {"name": "rloo"},
    "reinforce": {"name": "reinforce"},
    "oprl": {"name": "oprl"},
}
STRATEGY_OPTIONS: Dict[str, Dict[str, Any]] = {
    "sppo": {"win_prob": "hard"},
    "apo": {"alpha": 0.3},
    "xpo": {"alpha": 1e-5},
    "hypo": {"lam": 0.05},
    "copo": {"answer": "dpokit.tasks.online_demo:parity_answer"},
}


def parity_answer(prompt: str, response: str) -> str:
    """The extracted final answer of a parity response (COPO's answer entropy): its last ``even``/``odd``
    word, or ``""`` when it has none."""
    words = [w for w in response.split() if w in ("even", "odd")]
    return words[-1] if words else ""


def run_online_demo(settings: DemoSettings, strategy: str = "online_dpo", rounds: int = 4, log=print,
                    options: Dict[str, Any] = None, warmup_dir: str = None) -> Dict[str, Any]:
    """``warmup_dir``: start from this saved warm-up model (e.g. ``runs/demo/warmup`` of an offline demo
    with the same settings) instead of training it again."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from ..config import from_dict
    from ..online.loop import OnlineLoop, STRATEGIES

    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(sorted(STRATEGIES))}")
    run = DemoRun.start(settings.output_dir, settings.seed, log)
    task = ParityTask(warmup_accuracy=settings.warmup_accuracy, seed=settings.seed)
    train_numbers, eval_numbers = task.split_numbers(settings.n_train_prompts, settings.n_eval_prompts)

    if warmup_dir:
        log(f"[1-2/4] the warm-up model of {warmup_dir}")
        tokenizer = AutoTokenizer.from_pretrained(warmup_dir)
        model, = load_models(AutoModelForCausalLM, warmup_dir)
    else:
        log(f"[1/4] tokenizer and tiny Llama ({settings.layers} layers, hidden {settings.hidden_size})")
        tokenizer, model = tiny_text_model(task.vocabulary_corpus(), settings.hidden_size, settings.layers, 64,
                                           settings.seed)
        log(f"[2/4] supervised warm-up on demonstrations that are right {settings.warmup_accuracy:.0%} of the time")
        _, warmup_dir = sft_warm_up(run, model, tokenizer, task.demonstrations(train_numbers), settings.warmup_steps)

    train_prompts = [task.prompt(n) for n in train_numbers]
    eval_prompts = [task.prompt(n) for n in eval_numbers]
    sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=8, seed=settings.seed + 1, top_k=0))
    heldout_rows = build_pairs(task, eval_prompts, sampler.sample(eval_prompts, settings.samples_per_prompt)[0],
                               settings.seed + 1)
    heldout = write_heldout_pairs(run.path("heldout_pairs.jsonl"), heldout_rows, tokenizer)
    before = evaluate_policy(model, model, tokenizer, task, eval_prompts, heldout, settings.seed + 2)
    prompts_path = run.path("prompts.jsonl")
    write_jsonl(prompts_path, [{"prompt": p} for p in train_prompts])

    loss = dict(STRATEGY_LOSS.get(strategy, {"name": settings.loss, "beta": settings.reference_beta}))
    loss.update(settings.loss_hparams)
    data: Dict[str, Any] = {"max_length": 64}
    per_round = max(1, settings.n_train_prompts // rounds)
    samples = settings.samples_per_prompt
    if STRATEGIES[strategy].offline_pairs:  # HyPO: offline pairs from the warm-up model + online KL samples
        offline = build_pairs(task, train_prompts, sampler.sample(train_prompts, samples)[0], settings.seed)
        data["train"] = run.path("offline_pairs.jsonl")
        write_jsonl(data["train"], offline)
        samples = 2
    elif "reference" in STRATEGIES[strategy].sources:  # XPO: half the samples from the reference
        samples = max(1, samples // 2)
    raw = {
        "model": {"name_or_path": warmup_dir},
        "data": data,
        "loss": loss,
        "train": train_section(run.path("online"), settings.seed, settings.dpo_epochs, settings.dpo_batch_size,
                               settings.dpo_lr, 5),
        "online": {"strategy": strategy, "rounds": rounds, "prompts": prompts_path, "prompts_per_round": per_round,
                   "samples_per_prompt": samples, "max_new_tokens": 8, "temperature": 1.0, "top_k": 0,
                   "generation_batch_size": 64, "eval_samples_per_prompt": 2,
                   "judge": {"kind": "callable", "function": "dpokit.tasks.online_demo:parity_reward"},
                   "options": {**STRATEGY_OPTIONS.get(strategy, {}), **(options or {})}},
    }
    if STRATEGIES[strategy].offline_pairs:
        raw["online"].pop("prompts")
    config = from_dict(raw)
    judged = ", judged by the task reward" if STRATEGIES[strategy].needs_judge else " (unlabeled)"
    log(f"[3/4] {rounds} online rounds with strategy {strategy!r}: {per_round} prompts x {samples} samples "
        f"per round{judged}")
    loop = OnlineLoop(config, eval_prompts=eval_prompts, log=log)  # loads the warm-up model like `dpokit train`
    result = loop.run()

    log("[4/4] evaluating before and after")
    aligned, reference_model = load_models(AutoModelForCausalLM, result["final"], warmup_dir)
    after = evaluate_policy(aligned, reference_model, tokenizer, task, eval_prompts, heldout, settings.seed + 2)
    per_round_metrics: List[Dict[str, Any]] = result["metrics"]
    generated = sum(m.get("samples/policy", 0) + m.get("samples/reference", 0) for m in per_round_metrics)
    rewards = " ".join(f"{m.get('eval/judge_score', float('nan')):.3f}" for m in per_round_metrics)
    return run.finish({
        "task": "parity",
        "mode": "online",
        "strategy": strategy,
        "rounds": rounds,
        "loss": loss["name"],
        "loss_hparams": config.loss,
        "online_options": config.online.options,
        "before": before,
        "after": after,
        "train_pairs": sum(m.get("pairs", 0) for m in per_round_metrics),
        "generated_samples": generated,
        "per_round": per_round_metrics,
    }, notes=[f"held-out reward after each round: {rewards}"])
