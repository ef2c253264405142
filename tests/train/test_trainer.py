"""End-to-end training on a tiny local model: learning, accumulation, resume, final model, LoRA, the reference
cache, and ranked lists (listwise losses, pairs built from lists, MODPO)."""

import os

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import from_dict
from dpokit.data import load_examples
from dpokit.data.build import pairs_from_lists
from dpokit.eval.preference import evaluate_pairs
from dpokit.reference import ModelReference
from dpokit.train import Trainer
from dpokit.train.logging import read_metrics

from conftest import lists_config, make_lists, train_config, write_jsonl

pytestmark = pytest.mark.slow  # training runs end to end


def final_weights(run_dir):
    return load_file(os.path.join(run_dir, "final", "model.safetensors"))


def assert_same_weights(a, b, atol=1e-6):
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], atol=atol, rtol=1e-5, msg=key)


def test_dpo_loss_falls_and_training_accuracy_rises(tiny_model_dir, pairs_file, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"epochs": 6, "lr": 5e-3})
    trainer = Trainer(from_dict(raw))
    examples = trainer.train_examples
    reference = ModelReference(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    before = evaluate_pairs(trainer.model, reference, examples, tokenizer.pad_token_id)
    result = trainer.fit()
    assert result["status"] == "completed" and result["step"] == 48
    after = evaluate_pairs(trainer.model, reference, examples, tokenizer.pad_token_id)
    metrics = read_metrics(tmp_path / "run" / "metrics.jsonl")
    first, last = metrics[:8], metrics[-8:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)
    assert mean(last, "loss") < mean(first, "loss") - 0.1
    assert before["preference_accuracy"] == 0.5  # policy == reference: all ties
    assert after["preference_accuracy"] > 0.9
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies",
                "logps/chosen", "logps/rejected", "grad_norm", "lr", "step"):
        assert key in metrics[0], key
    run = tmp_path / "run"
    assert (run / "config.yaml").exists() and (run / "final" / "config.json").exists()
    assert [p for p in os.listdir(run / "checkpoints") if p.startswith("step-")] == ["step-000048"]


def test_gradient_accumulation_matches_larger_batch(tiny_model_dir, pairs_file, tmp_path):
    common = {"max_steps": 3, "lr": 1e-2}
    big = train_config(tiny_model_dir, pairs_file, tmp_path / "big", train={**common, "batch_size": 8, "grad_accum": 1})
    small = train_config(tiny_model_dir, pairs_file, tmp_path / "small", train={**common, "batch_size": 4, "grad_accum": 2})
    Trainer(from_dict(big)).fit()
    Trainer(from_dict(small)).fit()
    a, b = read_metrics(tmp_path / "big" / "metrics.jsonl"), read_metrics(tmp_path / "small" / "metrics.jsonl")
    assert [round(r["loss"], 5) for r in a] == [round(r["loss"], 5) for r in b]
    assert_same_weights(final_weights(tmp_path / "big"), final_weights(tmp_path / "small"), atol=1e-5)


def test_resume_reaches_the_same_weights(tiny_model_dir, pairs_file, tmp_path):
    train = {"epochs": 2, "save_every": 3, "lr": 1e-2}
    Trainer(from_dict(train_config(tiny_model_dir, pairs_file, tmp_path / "full", train=train))).fit()

    def stop_at_step_5(trainer, step):
        if step == 5:
            trainer.stop_requested = True  # what SIGINT/SIGTERM do

    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "cut", train=train)
    result = Trainer(from_dict(raw), callbacks=[stop_at_step_5]).fit()
    assert result["status"] == "interrupted" and result["step"] == 5
    assert not os.path.exists(tmp_path / "cut" / "final")
    resumed = Trainer(from_dict(raw)).fit(resume=True)
    assert resumed["status"] == "completed" and resumed["step"] == 16
    assert_same_weights(final_weights(tmp_path / "full"), final_weights(tmp_path / "cut"))
    steps = [r["step"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert steps == list(range(1, 17))  # no duplicated or missing log lines across the resume
    full = [r["loss"] for r in read_metrics(tmp_path / "full" / "metrics.jsonl") if "loss" in r]
    cut = [r["loss"] for r in read_metrics(tmp_path / "cut" / "metrics.jsonl") if "loss" in r]
    assert full == pytest.approx(cut, abs=1e-5)


def test_final_model_loads_with_plain_transformers(tiny_model_dir, pairs_file, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trainer = Trainer(from_dict(train_config(tiny_model_dir, pairs_file, tmp_path / "run", train={"max_steps": 2})))
    trainer.fit()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    AutoTokenizer.from_pretrained(tmp_path / "run" / "final")
    trained = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for name, value in loaded.state_dict().items():
        torch.testing.assert_close(value, trained[name], msg=name)


def test_lora_run_writes_adapter_and_merged_model(tiny_model_dir, pairs_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "lora", train={"max_steps": 3, "lr": 5e-2},
                       lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
                       reference={"kind": "lora_disabled"})
    trainer = Trainer(from_dict(raw))
    trainer.fit()
    final = tmp_path / "lora" / "final"
    assert (final / "adapter" / "adapter_config.json").exists()
    merged = AutoModelForCausalLM.from_pretrained(final)
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with_adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), final / "adapter")
    ids = torch.tensor([[1, 5, 9, 12, 7]])
    torch.testing.assert_close(merged(ids).logits, with_adapter(ids).logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(merged(ids).logits, base(ids).logits)


def test_precomputed_reference_is_cached_and_gives_the_same_run(tiny_model_dir, pairs_file, tmp_path):
    cache = tmp_path / "cache"
    train = {"max_steps": 3}
    plain = train_config(tiny_model_dir, pairs_file, tmp_path / "plain", train=train)
    cached = train_config(tiny_model_dir, pairs_file, tmp_path / "cached", train=train,
                          reference={"precompute": True, "cache_dir": str(cache)})
    Trainer(from_dict(plain)).fit()
    trainer = Trainer(from_dict(cached))
    assert trainer.reference.has_model is False
    trainer.fit()
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].startswith("reference-")
    again = Trainer(from_dict(dict(cached, train=dict(cached["train"], output_dir=str(tmp_path / "again")))))
    assert again.reference.path == os.path.join(cache, files[0]) and len(os.listdir(cache)) == 1
    a = read_metrics(tmp_path / "plain" / "metrics.jsonl")
    b = read_metrics(tmp_path / "cached" / "metrics.jsonl")
    assert [r["loss"] for r in a] == pytest.approx([r["loss"] for r in b], abs=1e-5)


def test_reference_sync_hard_update_copies_the_policy(tiny_model_dir, pairs_file, tmp_path):
    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "sync", train={"max_steps": 2},
                       reference={"sync_every": 2, "sync_alpha": 1.0})
    trainer = Trainer(from_dict(raw))
    trainer.fit()
    policy = trainer.accelerator.unwrap_model(trainer.model).state_dict()
    for name, value in trainer.reference.model.state_dict().items():
        torch.testing.assert_close(value, policy[name], msg=name)


def test_eval_split_and_periodic_evaluation(tiny_model_dir, pairs_file, tmp_path):
    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "ev", data={"eval_fraction": 0.25},
                       train={"max_steps": 4, "eval_every": 2})
    trainer = Trainer(from_dict(raw))
    assert len(trainer.eval_examples) == 8 and len(trainer.train_examples) == 24
    trainer.fit()
    evals = [r for r in read_metrics(tmp_path / "ev" / "metrics.jsonl") if "eval/loss" in r]
    assert [r["step"] for r in evals] == [2, 4]
    assert "eval/rewards/accuracies" in evals[0]


def test_precomputed_reference_with_eval_set_matches_the_model(tiny_model_dir, pairs_file, tmp_path, tokenizer):
    from transformers import AutoModelForCausalLM

    from dpokit.data import collate

    raw = train_config(tiny_model_dir, pairs_file, tmp_path / "run", data={"eval_fraction": 0.25},
                       reference={"precompute": True, "cache_dir": str(tmp_path / "cache")})
    trainer = Trainer(from_dict(raw))
    model = ModelReference(AutoModelForCausalLM.from_pretrained(tiny_model_dir))
    for examples in (trainer.train_examples[:4], trainer.eval_examples[:4]):
        batch = collate(examples)
        cached = trainer.reference.token_logprobs(trainer.scorer, batch)
        direct = model.token_logprobs(trainer.scorer, batch)
        torch.testing.assert_close(cached.sums, direct.sums, atol=1e-4, rtol=1e-5)


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
