"""MCTS-DPO rounds end to end on the arithmetic task with a tiny model: search from the current policy,
step pairs from the trees, step-level DPO, the reference kept as configured."""

import json
import os

import pytest
import torch

from dpokit.config import from_dict
from dpokit.errors import ConfigError
from dpokit.online.loop import OnlineLoop
from dpokit.tasks.arithmetic import ArithmeticSearchTask, ArithmeticTask

TASK = "dpokit.tasks.arithmetic:search_task"


@pytest.fixture(scope="module")
def arithmetic_policy(tmp_path_factory):
    from dpokit.tiny import tiny_llama, train_tokenizer
    from dpokit.train.sft import sft_train

    task = ArithmeticTask(n_ops=1)
    train, _ = task.split(60, 1)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, max_position_embeddings=64,
                       seed=0, tokenizer=tokenizer)
    sft_train(model, tokenizer, task.demonstrations(train, 0.3), steps=40, seed=0)
    path = tmp_path_factory.mktemp("arith-policy")
    model.save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    prompts = path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": task.prompt(p)}) + "\n" for p in train[:4]))
    return str(path), str(prompts)


class SpyLoop(OnlineLoop):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.references, self.starts = [], []

    def make_trainer(self, config, callbacks=(), **options):
        trainer = super().make_trainer(config, callbacks, **options)
        self.references.append({k: v.detach().clone() for k, v in trainer.reference.model.named_parameters()})
        self.starts.append({k: v.detach().clone() for k, v in self.policy.named_parameters()})
        return trainer


def raw_config(policy_dir, prompts, out, **options):
    return {
        "model": {"name_or_path": policy_dir, "dtype": "float32"},
        "data": {"max_length": 64},
        "loss": {"name": "step_dpo", "beta": 0.5, "conservative": True},
        "train": {"output_dir": str(out), "lr": 5e-3, "batch_size": 4, "epochs": 1, "report_to": [],
                  "progress_bar": False, "mixed_precision": "no", "warmup_ratio": 0.0, "scheduler": "constant",
                  "seed": 0},
        "online": {"strategy": "mcts_dpo", "rounds": 2, "prompts_per_round": 2, "prompts": prompts,
                   "options": {"task": TASK, "evaluator": "verifier", "n_iters": 2, "root_iters_factor": 2,
                               "depth_limit": 3, "include_gold": True, "max_step_tokens": 10,
                               "max_completion_tokens": 20, **options}},
    }


def same(a, b):
    return all(torch.allclose(a[k], b[k]) for k in a)


@pytest.mark.parametrize("reference", ["initial", "previous"])
def test_rounds_search_train_and_keep_the_reference(arithmetic_policy, tmp_path, reference):
    policy_dir, prompts = arithmetic_policy
    loop = SpyLoop(from_dict(raw_config(policy_dir, prompts, tmp_path / "run", reference=reference)))
    initial = {k: v.detach().clone() for k, v in loop.policy.named_parameters()}
    summary = loop.run()
    assert summary["status"] == "completed"
    rounds = summary["metrics"]
    assert [m["round"] for m in rounds] == [0, 1]
    for r, m in enumerate(rounds):
        assert m["search/trees"] == 2 and m["search/expansions"] > 0 and m["search/generated_tokens"] > 0
        rows = [json.loads(line) for line in open(tmp_path / "run" / "rounds" / f"round-{r:03d}" / "train.jsonl")]
        assert len(rows) == m["search/step_pairs"] == m["pairs"]
        assert all("chosen_visits" in row and "rejected_visits" in row and row["chosen_ids"] != row["rejected_ids"]
                   for row in rows)
        info = [json.loads(line) for line in open(tmp_path / "run" / "rounds" / f"round-{r:03d}" / "pairs.jsonl")]
        assert all(row["tree_correct"] for row in info)  # filter_correct (the released --filter)
    assert len(loop.references) == 2, "both rounds trained (the gold candidate makes correct trees)"
    assert same(loop.references[0], initial)
    assert not same(loop.starts[1], initial)  # round 2 starts from round 1's policy
    if reference == "initial":
        assert same(loop.references[1], initial)  # the official recipe: fixed to the starting model
    else:
        assert same(loop.references[1], loop.starts[1])  # the policy round 2 starts from
    assert os.path.exists(tmp_path / "run" / "final" / "config.json")


def test_the_default_reference_is_the_initial_model():
    from dpokit.online.catalog import STRATEGIES

    assert STRATEGIES["mcts_dpo"].OPTIONS["reference"] == "initial"


@pytest.mark.parametrize("change, message", [
    ({"loss": {"name": "dpo", "beta": 0.1}}, "step-level loss"),
    ({"online": {"options": {"task": TASK, "evaluator": "verifier", "reference": "frozen"}}}, "online.options.reference"),
    ({"online": {"options": {}}}, "online.options.task"),
    ({"online": {"options": {"task": TASK, "evaluator": "self"}}}, "evaluator"),
])
def test_bad_settings_are_named(arithmetic_policy, tmp_path, change, message):
    policy_dir, prompts = arithmetic_policy
    raw = raw_config(policy_dir, prompts, tmp_path / "run")
    for section, values in change.items():
        raw[section] = {**raw[section], **values} if section == "online" else values
    with pytest.raises(ConfigError, match=message):
        OnlineLoop(from_dict(raw))


def test_search_task_of_the_arithmetic_task():
    task = ArithmeticTask(n_ops=2)
    problem = task.split(1, 0)[0][0]
    prompt, hooks = task.prompt(problem), ArithmeticSearchTask()
    gold = problem.gold()
    assert hooks.gold(prompt) == gold and hooks.outcome(prompt, gold)
    assert hooks.check(prompt, gold[:1]) == 1.0
    wrong = gold[0].rsplit("=", 1)[0] + "= 0"
    assert hooks.check(prompt, [wrong]) == (1.0 if wrong == gold[0] else 0.0)
