"""Claims: step-level reasoning in miniature (MCTS-DPO step pairs vs outcome pairs; OREO's value-guided beam search).

Per seed, on the arithmetic task (``dpokit demo --task arithmetic``: 2-operation problems, a word-level
tokenizer, a tiny Llama warmed up on solutions whose steps are wrong 30% of the time; 300 training and 150
held-out problems):

(a) **Step-level DPO from search beats outcome-level DPO at the same number of generated tokens**
    (Xie et al. 2024, MCTS-DPO, arXiv 2405.00451). Step pairs: MCTS-DPO trees of the warm-up policy on the
    first 150 training problems (``n_iters 4``, the step verifier as evaluator: the programmatic-checker
    ablation; the rest of the gold solution joins the candidates where the prefix follows it, the
    released ``include_gt`` default; the tokens of the gold candidates are not generated and not counted),
    ``step_dpo`` with visit-count smoothing, trained from the step-pair file through
    ``train.scorer: steps``. Outcome pairs: solutions sampled from the warm-up policy (2 per problem,
    round-robin over the training problems) until they hold as many generated tokens as the search
    generated (every token of every expansion counts, EOS included), then the demo's outcome pairs (a
    right sample, or the gold solution when none is right, against a wrong one), ``dpo``. Both: beta 0.1,
    lr 2e-4, 2 epochs, batch 16, the warm-up model as reference.
    Criterion: per seed ``d = greedy answer accuracy (step_dpo) - greedy answer accuracy (dpo)`` on the
    held-out problems; holds when the 95% t-interval of ``d`` over seeds lies above 0. Sampled step and
    answer accuracy are reported, not judged.

(b) **Value-guided beam search beats greedy decoding with the same policy** (Wang et al. 2024, OREO, arXiv
    2412.16145). The policy and a value model (the warm-up trunk with a zero head) trained jointly with
    ``oreo`` (token level, the paper's beta 0.03 and alpha 0.01, lr 2e-4, 2 epochs) on the outcome samples
    of (a) grouped by problem (reward 1 for a right answer, else 0). On the held-out problems: greedy
    decoding vs step-level beam search, B = 3 beams x 3 sampled steps each (temperature 1), top B by value.
    Criterion: per seed ``d = answer accuracy (beam) - answer accuracy (greedy)``; holds when the 95%
    t-interval of ``d`` lies above 0.

    python benchmarks/claims/steps.py [--seeds 0 1 2] [--out runs/claims/steps] [--quick]
"""

from __future__ import annotations

import json
import os
import time

import common


class Settings:
    """The run's sizes (a plain class: the claim tests load this script without registering it as a module)."""

    def __init__(self, n_train=300, n_eval=150, warmup_steps=600, search_problems=150, n_iters=4, epochs=2,
                 lr=2e-4, beta=0.1, beam=3):
        self.n_train, self.n_eval, self.warmup_steps = n_train, n_eval, warmup_steps
        self.search_problems, self.n_iters, self.epochs = search_problems, n_iters, epochs
        self.lr, self.beta, self.beam = lr, beta, beam

    @classmethod
    def quick(cls):
        return cls(n_train=100, n_eval=30, warmup_steps=200, search_problems=10, n_iters=4, epochs=1)


def train(out, model_dir, data_path, loss, seed, s: Settings, data_kind="pairs", extra_train=None, **trainer):
    from dpokit.config import from_dict
    from dpokit.train import Trainer

    config = from_dict({
        "model": {"name_or_path": model_dir},
        "data": {"train": data_path, "max_length": 96, "kind": data_kind},
        "loss": loss,
        "reference": {"kind": "copy"},
        "train": {"output_dir": out, "seed": seed, "epochs": s.epochs, "batch_size": 16, "lr": s.lr,
                  "scheduler": "cosine", "warmup_ratio": 0.05, "log_every": 1000, "report_to": [],
                  "progress_bar": False, "mixed_precision": "no", **(extra_train or {})},
    })
    trainer_ = Trainer(config, **trainer)
    trainer_.fit()
    return trainer_.model


def search_pairs(model, tokenizer, task, problems, seed, s: Settings):
    from dpokit.scoring.steps import separator_ids
    from dpokit.steps import MCTS, SearchConfig, SearchTask, StepSampler
    from dpokit.tasks.arithmetic import STEP_SEPARATOR, ArithmeticSearchTask

    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    decode = lambda ids: tokenizer.decode([i for i in ids if i not in sep], skip_special_tokens=True).strip()  # noqa: E731
    hooks = ArithmeticSearchTask(task)
    search_task = SearchTask(evaluate=hooks.check, outcome=hooks.outcome, decode=decode, gold=hooks.gold)
    sampler = StepSampler(model, sep, tokenizer.eos_token_id, max_step_tokens=12, seed=seed)
    config = SearchConfig(n_iters=s.n_iters, depth_limit=task.n_ops + 2, include_gold=True, seed=seed)
    search = MCTS(sampler, search_task, tokenizer, config)
    pairs = []
    for problem in problems:
        pairs += search.pairs(search.search(task.prompt(problem)))
    return pairs, sampler.stats.generated_tokens


def sample_to_budget(model, tokenizer, task, problems, budget, seed):
    """Solutions (2 per problem, round-robin) until their generated tokens reach ``budget``; per problem."""
    from dpokit.sampling import HFSampler, SamplingConfig
    from dpokit.tasks.arithmetic import split_steps

    sampler = HFSampler(model, tokenizer, SamplingConfig(max_new_tokens=40, seed=seed, top_k=0))
    samples = {i: [] for i in range(len(problems))}
    used, start, chunk = 0, 0, 50
    while used < budget:
        index = [(start + j) % len(problems) for j in range(chunk)]
        got = sampler.sample_tokens([task.prompt(problems[i]) for i in index], 2)
        for i, texts, ids in zip(index, got.texts, got.completion_ids):
            for text, row in zip(texts, ids):
                if used >= budget:
                    break
                samples[i].append(split_steps(text))
                used += len(row)
        start += chunk
    return samples, used


def run_seed(seed, out, s: Settings, log=print):
    import torch

    from dpokit.io import write_jsonl
    from dpokit.scoring.steps import separator_ids
    from dpokit.steps.beam import value_beam_search
    from dpokit.steps.expand import StepSampler
    from dpokit.steps.value import ValueModel, ValueScorer, oreo_param_groups
    from dpokit.tasks.arithmetic import STEP_SEPARATOR, ArithmeticTask, join_steps, split_steps
    from dpokit.tasks.arithmetic_demo import evaluate, outcome_pairs
    from dpokit.tiny import tiny_llama, train_tokenizer
    from dpokit.train.sft import sft_train

    directory = os.path.join(out, f"seed-{seed}")
    done = os.path.join(directory, "result.json")
    if os.path.exists(done):
        with open(done) as handle:
            return json.load(handle)
    os.makedirs(directory, exist_ok=True)
    started = time.time()
    torch.manual_seed(seed)
    task = ArithmeticTask(n_ops=2, seed=seed)
    train_problems, eval_problems = task.split(s.n_train, s.n_eval)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=64, num_layers=2, max_position_embeddings=96, seed=seed,
                       tokenizer=tokenizer)
    sft_train(model, tokenizer, task.demonstrations(train_problems, 0.3), steps=s.warmup_steps, seed=seed)
    warmup = os.path.join(directory, "warmup")
    model.save_pretrained(warmup, safe_serialization=True)
    tokenizer.save_pretrained(warmup)
    result = {"seed": seed, "warmup": evaluate(model, tokenizer, task, eval_problems, seed + 2)}

    # (a) step pairs from search vs outcome pairs from as many generated tokens
    pairs, tokens = search_pairs(model, tokenizer, task, train_problems[:s.search_problems], seed, s)
    samples, used = sample_to_budget(model, tokenizer, task, train_problems, tokens, seed + 1)
    nonempty = [i for i in samples if samples[i]]
    rows = outcome_pairs(task, [train_problems[i] for i in nonempty], [samples[i] for i in nonempty], seed)
    if not pairs or not rows:
        raise RuntimeError(f"seed {seed}: {len(pairs)} step pairs, {len(rows)} outcome pairs: nothing to train on "
                           "(more warm-up steps or search problems)")
    write_jsonl(os.path.join(directory, "step_pairs.jsonl"), [p.as_record() for p in pairs])
    write_jsonl(os.path.join(directory, "outcome_pairs.jsonl"), rows)
    result["a"] = {"search_tokens": tokens, "sampled_tokens": used, "step_pairs": len(pairs), "outcome_pairs": len(rows)}
    log(f"seed {seed}: search {tokens} tokens -> {len(pairs)} step pairs; sampling {used} tokens -> {len(rows)} pairs")
    step_model = train(os.path.join(directory, "step_dpo"), warmup, os.path.join(directory, "step_pairs.jsonl"),
                       {"name": "step_dpo", "beta": s.beta, "conservative": True}, seed, s,
                       extra_train={"scorer": "steps", "step_separator": STEP_SEPARATOR, "layout": "prompt_shared"})
    result["a"]["step_dpo"] = evaluate(step_model, tokenizer, task, eval_problems, seed + 2)
    dpo_model = train(os.path.join(directory, "dpo"), warmup, os.path.join(directory, "outcome_pairs.jsonl"),
                      {"name": "dpo", "beta": s.beta}, seed, s)
    result["a"]["dpo"] = evaluate(dpo_model, tokenizer, task, eval_problems, seed + 2)

    # (b) OREO on the same samples; greedy vs value-guided beam search with the trained policy
    lists = [{"prompt": task.prompt(train_problems[i]), "responses": [join_steps(x) for x in samples[i]],
              "scores": [float(task.verify(train_problems[i], x).outcome) for x in samples[i]]}
             for i in nonempty if len(samples[i]) >= 2]
    write_jsonl(os.path.join(directory, "oreo_lists.jsonl"), lists)
    sep = separator_ids(tokenizer, STEP_SEPARATOR)
    value = ValueModel.from_policy(model)
    policy = train(os.path.join(directory, "oreo"), warmup, os.path.join(directory, "oreo_lists.jsonl"),
                   {"name": "oreo", "beta": 0.03, "alpha": 0.01, "level": "token"}, seed, s, data_kind="lists",
                   scorer_wrapper=lambda scorer: ValueScorer(scorer, value, sep),
                   param_groups=oreo_param_groups(value)).eval()
    value.eval()
    greedy = evaluate(policy, tokenizer, task, eval_problems, seed + 2)["greedy_answer_accuracy"]
    sampler = StepSampler(policy, sep, tokenizer.eos_token_id, max_step_tokens=12, seed=seed + 3)
    right = 0
    for problem in eval_problems:
        prompt_ids = tokenizer(task.prompt(problem))["input_ids"]
        best = value_beam_search(sampler, value.state_values, prompt_ids, beam_width=s.beam, max_steps=task.n_ops + 2)[0]
        text = tokenizer.decode(best.ids[len(prompt_ids):], skip_special_tokens=True)
        right += task.verify(problem, split_steps(text)).outcome
    result["b"] = {"lists": len(lists), "greedy": greedy, "beam": right / len(eval_problems),
                   "beam_generated_tokens": sampler.stats.generated_tokens}
    result["seconds"] = round(time.time() - started, 1)
    log(f"seed {seed}: (a) greedy answer step_dpo {result['a']['step_dpo']['greedy_answer_accuracy']:.3f} "
        f"dpo {result['a']['dpo']['greedy_answer_accuracy']:.3f}; (b) greedy {greedy:.3f} beam {result['b']['beam']:.3f} "
        f"({result['seconds']} s)")
    with open(done, "w") as handle:
        json.dump(result, handle, indent=2)
    return result


def main(argv=None):
    args = common.parser(__doc__.splitlines()[0], "runs/claims/steps").parse_args(argv)
    common.quiet_logs()
    started = time.time()
    s = Settings.quick() if args.quick else Settings()
    seeds = common.seeds_of(args)
    per_seed = {seed: run_seed(seed, args.out, s) for seed in seeds}
    d, iv = common.describe_values, common.interval
    a = lambda m, k: d([per_seed[x]["a"][m][k] for x in seeds])  # noqa: E731
    lines = ["(a) held-out accuracy after training (mean ± 95% half-width over seeds)", "",
             "| method | pairs | generated tokens | greedy answer | sampled answer | sampled step |", "|---|---|---|---|---|---|"]
    for label, key, pairs, tok in (("warm-up", None, None, None), ("step_dpo (search pairs)", "step_dpo", "step_pairs", "search_tokens"),
                                   ("dpo (outcome pairs)", "dpo", "outcome_pairs", "sampled_tokens")):
        get = (lambda k: d([per_seed[x]["warmup"][k] for x in seeds])) if key is None else (lambda k, key=key: a(key, k))
        lines.append(f"| {label} | {'' if pairs is None else iv(d([per_seed[x]['a'][pairs] for x in seeds]))} | "
                     f"{'' if tok is None else iv(d([per_seed[x]['a'][tok] for x in seeds]))} | "
                     f"{iv(get('greedy_answer_accuracy'))} | {iv(get('answer_accuracy'))} | {iv(get('step_accuracy'))} |")
    diff_a = d([per_seed[x]["a"]["step_dpo"]["greedy_answer_accuracy"] - per_seed[x]["a"]["dpo"]["greedy_answer_accuracy"]
                for x in seeds])
    diff_b = d([per_seed[x]["b"]["beam"] - per_seed[x]["b"]["greedy"] for x in seeds])
    lines += ["", f"(a) step_dpo - dpo, greedy answer accuracy, paired: {iv(diff_a)} (95% CI {common.ci_text(diff_a)}); "
              f"per seed " + " / ".join(f"{per_seed[x]['a']['step_dpo']['greedy_answer_accuracy'] - per_seed[x]['a']['dpo']['greedy_answer_accuracy']:+.3f}" for x in seeds),
              "", "(b) OREO policy: greedy vs value-guided beam search (B = 3)", "",
              "| decoding | answer accuracy | per seed |", "|---|---|---|"]
    for label, key in (("greedy", "greedy"), ("value beam, B = 3", "beam")):
        lines.append(f"| {label} | {iv(d([per_seed[x]['b'][key] for x in seeds]))} | "
                     + " / ".join(f"{per_seed[x]['b'][key]:.3f}" for x in seeds) + " |")
    lines += ["", f"(b) beam - greedy, paired: {iv(diff_b)} (95% CI {common.ci_text(diff_b)})", ""]
    checks = [("(a) step_dpo from search beats dpo from outcome samples at equal generated tokens (CI above 0)",
               None if common.lower(diff_a) is None else common.lower(diff_a) > 0),
              ("(b) value-guided beam search beats greedy decoding with the same OREO policy (CI above 0)",
               None if common.lower(diff_b) is None else common.lower(diff_b) > 0)]
    text = "\n".join(lines) + "\n" + common.verdict(checks)
    results = {"steps": {x: {"seconds": per_seed[x]["seconds"]} for x in seeds}}
    record = common.finish("steps", args, results, text, started, sweep=False)
    record["per_seed"] = per_seed
    with open(os.path.join(args.out, "claim.json"), "w") as handle:
        json.dump(record, handle, indent=2)
    return record


if __name__ == "__main__":
    main()
