"""Ranked lists through the trainer: listwise losses, pairs built for pairwise losses, layouts,
the reference cache, config checks, and the Curry-DPO curriculum's reference updates."""

import random

import pytest
import torch

from dpokit.config import ConfigError, from_dict
from dpokit.preflight import checked_config
from dpokit.data import collate, load_examples, tokenize_examples
from dpokit.data.build import pairs_from_lists
from dpokit.scoring.lm.engine import LogProbEngine
from dpokit.losses import Needs
from dpokit.train import Trainer
from dpokit.train.logging import read_metrics

from conftest import WORDS, train_config, write_jsonl


def make_lists(n, seed=0, ks=(2, 3, 4)):
    """Lists of 2-4 responses; the score is the share of 'good' words (WORDS[:10]), so ties occur."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        prompt = "Question: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 6))) + "\nAnswer:"
        k = rng.choice(ks)
        responses, scores = [], []
        for _ in range(k):
            words = [rng.choice(WORDS) for _ in range(rng.randint(1, 4))]
            responses.append(" " + " ".join(words))
            scores.append(round(sum(w in WORDS[:10] for w in words) / len(words), 2))
        rows.append({"prompt": prompt, "responses": responses, "scores": scores})
    return rows


@pytest.fixture
def lists_file(tmp_path):
    return write_jsonl(tmp_path / "lists.jsonl", make_lists(24))


def lists_config(model_dir, path, out, **sections):
    data_section = {"kind": "lists", **sections.pop("data", {})}
    return train_config(model_dir, path, out, data=data_section, **sections)


def test_listwise_loss_trains_on_lists(tiny_model_dir, lists_file, tmp_path):
    raw = lists_config(tiny_model_dir, lists_file, tmp_path / "pl", loss={"name": "plackett_luce", "beta": 0.5},
                       train={"epochs": 3, "lr": 5e-3})
    trainer = Trainer(from_dict(raw))
    assert {len(ex.completions) for ex in trainer.train_examples} == {2, 3, 4}
    batch = trainer._batch(range(4), trainer.train_examples)
    assert batch.kind == "lists" and batch.scores.shape == (4, max(len(g[1]) for g in batch.groups))
    trainer.fit()
    metrics = [r for r in read_metrics(tmp_path / "pl" / "metrics.jsonl") if "loss" in r]
    assert len(metrics) == 18
    first, last = metrics[:6], metrics[-6:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    assert mean(last, "loss") < mean(first, "loss")
    assert mean(last, "rewards/accuracies") > mean(first, "rewards/accuracies")
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins", "logps/chosen", "grad_norm"):
        assert key in metrics[0], key


def test_pairwise_loss_on_lists_trains_on_built_pairs(tiny_model_dir, lists_file, tmp_path):
    raw = lists_config(tiny_model_dir, lists_file, tmp_path / "pairs", data={"pair_builder": "all_pairs"},
                       loss={"name": "dpo", "modifiers": {"madpo": True}}, train={"max_steps": 2})
    trainer = Trainer(from_dict(raw))
    expected = pairs_from_lists(load_examples(lists_file, kind="lists"), "all_pairs")
    assert len(trainer.train_examples) == len(expected) and trainer.data_plan.pairs_built == len(expected)
    assert all(len(ex.completions) == 2 and ex.extras["rm_margin"] > 0 for ex in trainer.train_examples)
    assert trainer.fit()["status"] == "completed"


def test_multi_objective_lists_train_modpo(tiny_model_dir, tmp_path):
    rows = make_lists(12, seed=3)
    for row in rows:
        row["scores_short"] = [-len(r.split()) for r in row["responses"]]
    path = write_jsonl(tmp_path / "mo.jsonl", rows)
    raw = lists_config(tiny_model_dir, path, tmp_path / "modpo", loss={"name": "modpo", "weights": [0.6, 0.4]},
                       train={"max_steps": 2})
    trainer = Trainer(from_dict(raw))
    assert all(len(ex.extras["modpo_chosen_scores"]) == 1 for ex in trainer.train_examples)
    assert trainer.fit()["status"] == "completed"
    weighted = lists_config(tiny_model_dir, path, tmp_path / "pl", loss={"name": "lipo_lambda"},
                            data={"objective_weights": {"scores": 1.0, "short": 0.1}}, train={"max_steps": 1})
    assert Trainer(from_dict(weighted)).fit()["status"] == "completed"


def test_layouts_agree_on_lists(tiny_model, tokenizer):
    from dpokit.data.formats import parse_list

    rows = make_lists(6, seed=5)
    parsed = [parse_list(f"r{i}", r) for i, r in enumerate(rows)]
    batch = collate(tokenize_examples(parsed, tokenizer, max_length=64)[0], "lists")
    outputs = {}
    for layout in ("padded", "packed", "prompt_shared"):
        engine = LogProbEngine(Needs(reference=False, data="lists"), tokenizer.pad_token_id, layout=layout)
        inputs = engine.loss_inputs(tiny_model, batch)
        outputs[layout] = inputs
        assert inputs.list_mask.sum().item() == sum(len(g[1]) for g in batch.groups)
        torch.testing.assert_close(inputs.list_scores, batch.scores)
    for layout in ("packed", "prompt_shared"):
        torch.testing.assert_close(outputs[layout].list_policy_logps, outputs["padded"].list_policy_logps,
                                   atol=2e-5, rtol=1e-5)


def test_precomputed_reference_serves_lists(tiny_model_dir, lists_file, tmp_path):
    common = {"loss": {"name": "lipo_lambda"}, "train": {"max_steps": 2}}
    plain = lists_config(tiny_model_dir, lists_file, tmp_path / "plain", **common)
    cached = lists_config(tiny_model_dir, lists_file, tmp_path / "cached", **common,
                          reference={"precompute": True, "cache_dir": str(tmp_path / "cache")})
    Trainer(from_dict(plain)).fit()
    Trainer(from_dict(cached)).fit()
    a = [r["loss"] for r in read_metrics(tmp_path / "plain" / "metrics.jsonl")]
    b = [r["loss"] for r in read_metrics(tmp_path / "cached" / "metrics.jsonl")]
    assert a == pytest.approx(b, abs=1e-5)


@pytest.mark.parametrize("change, message", [
    ({"data": {"kind": "pairs"}, "loss": {"name": "plackett_luce"}}, "set data.kind: lists"),
    ({"data": {"pair_builder": "margin"}}, "min_margin > 0"),
    ({"data": {"label_noise": 0.7}}, "label_noise"),
    ({"data": {"curriculum": {"stages": 0}}}, "curriculum.stages"),
    ({"data": {"curriculum": {"stage": 2}}}, "unknown key"),
    ({"data": {"curriculum": {"stages": 2}}, "loss": {"name": "plackett_luce"}}, "pairwise loss"),
    ({"data": {"curriculum": {"stages": 2}}, "reference": {"precompute": True}}, "separate reference"),
    ({"data": {"pair_builder": "random"}}, "pair_builder"),
])
def test_list_config_errors(tiny_model_dir, lists_file, tmp_path, change, message):
    raw = lists_config(tiny_model_dir, lists_file, tmp_path / "bad")
    for section, values in change.items():
        raw[section] = {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError, match=message):
        checked_config(raw)


def test_curriculum_reference_is_the_previous_stage_policy(tiny_model_dir, tmp_path):
    rows = make_lists(16, seed=7, ks=(4,))
    path = write_jsonl(tmp_path / "c.jsonl", rows)
    raw = lists_config(tiny_model_dir, path, tmp_path / "curry",
                       data={"pair_builder": "best_vs_each", "curriculum": {"stages": 3}},
                       reference={"kind": "copy"}, train={"lr": 2e-2, "batch_size": 4})
    snapshots = []

    def record(trainer, step):  # runs before the curriculum callback of the same step
        policy = trainer.accelerator.unwrap_model(trainer.model)
        snapshots.append((step, {k: v.detach().clone() for k, v in policy.state_dict().items()},
                          {k: v.detach().clone() for k, v in trainer.reference.model.state_dict().items()}))

    trainer = Trainer(from_dict(raw), callbacks=[record])
    order = trainer.order
    stages = [order.stage_of[b[0]] for b in order.batches(0)]
    assert stages == sorted(stages) and set(stages) == {0, 1, 2}  # easy to hard, never mixed
    for batch in order.batches(0):
        assert len({order.stage_of[i] for i in batch}) == 1
    gaps = [abs(trainer.train_examples[i].extras["rm_margin"]) for b in order.batches(0) for i in b]
    stage_gaps = [[g for g, s in zip(gaps, [order.stage_of[i] for b in order.batches(0) for i in b]) if s == k]
                  for k in range(3)]
    assert min(stage_gaps[0]) >= max(stage_gaps[1]) and min(stage_gaps[1]) >= max(stage_gaps[2])
    initial = {k: v.detach().clone() for k, v in trainer.reference.model.state_dict().items()}
    trainer.fit()
    ends = order.stage_ends(0)
    callback = trainer.callbacks[-1]
    assert callback.updates == ends  # one optimizer step per batch: stage k ends at step ends[k]
    policy_at = {step: policy for step, policy, _ in snapshots}

    def same(a, b):
        return all(torch.equal(a[k], b[k]) for k in a)

    for step, policy, reference in snapshots:
        finished = [end for end in ends if end < step]
        if not finished:
            assert same(reference, initial), step
        else:
            assert same(reference, policy_at[finished[-1]]), step
            assert not same(reference, initial)
    final_policy = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    assert same(dict(trainer.reference.model.state_dict()), final_policy)  # the last stage ended too
