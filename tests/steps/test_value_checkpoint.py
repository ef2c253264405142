"""The OREO value model is saved with the policy: every checkpoint and final/ hold value.safetensors, a
resumed run ends with the same policy and value weights as an uninterrupted one, and value-guided beam
search loads the saved value model."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file

from dpokit.config import from_dict
from dpokit.errors import CheckpointError
from dpokit.scoring.steps import separator_ids
from dpokit.steps.beam import value_beam_search
from dpokit.steps.expand import StepSampler
from dpokit.steps.value import VALUE_FILE, ValueModel, ValueScorer, oreo_param_groups
from dpokit.tasks.arithmetic import ArithmeticTask, join_steps
from dpokit.train import Trainer

from conftest import train_config


@pytest.fixture(scope="module")
def oreo_setup(tmp_path_factory):
    from dpokit.tiny import tiny_llama, train_tokenizer

    task = ArithmeticTask(n_ops=2)
    problems, _ = task.split(8, 1)
    tokenizer = train_tokenizer(task.vocabulary_corpus(), vocab_size=64, word_level=True)
    model = tiny_llama(len(tokenizer), hidden_size=16, num_layers=1, num_heads=2, max_position_embeddings=64,
                       seed=0, tokenizer=tokenizer)
    root = tmp_path_factory.mktemp("oreo-ckpt")
    model.save_pretrained(root / "model", safe_serialization=True)
    tokenizer.save_pretrained(root / "model")
    import random

    rng = random.Random(0)
    rows = []
    for p in problems:
        responses = [join_steps(task.trajectory(p, 0.5, rng)) for _ in range(3)]
        rows.append({"prompt": task.prompt(p), "responses": responses,
                     "scores": [float(task.verify_text(task.prompt(p), r).outcome) for r in responses]})
    path = root / "lists.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(root / "model"), str(path), tokenizer, task, problems


def oreo_trainer(model_dir, data, out, tokenizer, callbacks=()):
    from transformers import AutoModelForCausalLM

    raw = train_config(model_dir, data, out, data={"kind": "lists", "train": data, "max_length": 64},
                       loss={"name": "oreo", "beta": 0.03, "alpha": 0.01, "level": "step"},
                       train={"epochs": 2, "batch_size": 2, "save_every": 3, "lr": 1e-2})
    value = ValueModel.from_policy(AutoModelForCausalLM.from_pretrained(model_dir))
    sep = separator_ids(tokenizer, ";")
    return Trainer(from_dict(raw), scorer_wrapper=lambda s: ValueScorer(s, value, sep),
                   param_groups=oreo_param_groups(value), callbacks=list(callbacks)), value


def test_resume_continues_the_value_model_exactly(oreo_setup, tmp_path):
    model_dir, data, tokenizer, _, _ = oreo_setup
    full, full_value = oreo_trainer(model_dir, data, tmp_path / "full", tokenizer)
    assert full.fit()["status"] == "completed"

    def stop_at_step_5(trainer, step):
        if step == 5:
            trainer.stop_requested = True

    cut, _ = oreo_trainer(model_dir, data, tmp_path / "cut", tokenizer, [stop_at_step_5])
    assert cut.fit()["status"] == "interrupted"
    checkpoint = tmp_path / "cut" / "checkpoints" / "step-000005"
    saved = load_file(str(checkpoint / VALUE_FILE))
    manifest = json.load(open(checkpoint / "manifest.json"))
    assert VALUE_FILE in manifest  # verified like the rest of the checkpoint
    assert float(saved["head.weight"].abs().sum()) > 0  # the head has moved from its zero start
    resumed, resumed_value = oreo_trainer(model_dir, data, tmp_path / "cut", tokenizer)
    assert float(resumed_value.head.weight.detach().abs().sum()) == 0  # a fresh value model ...
    assert resumed.fit(resume=True)["status"] == "completed"
    for name, value in full_value.state_dict().items():  # ... continued exactly from the checkpoint
        torch.testing.assert_close(resumed_value.state_dict()[name], value, atol=1e-6, rtol=1e-5, msg=name)
    a, b = load_file(str(tmp_path / "full" / "final" / "model.safetensors")), \
        load_file(str(tmp_path / "cut" / "final" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)
    final = load_file(str(tmp_path / "cut" / "final" / VALUE_FILE))
    for name, value in resumed_value.state_dict().items():
        assert torch.equal(final[name], value.detach().cpu()), name


def test_beam_search_loads_the_saved_value_model(oreo_setup, tmp_path):
    from transformers import AutoModelForCausalLM

    model_dir, data, tokenizer, task, problems = oreo_setup
    trainer, value = oreo_trainer(model_dir, data, tmp_path / "run", tokenizer)
    trainer.fit()
    policy = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final").eval()
    loaded = ValueModel.from_checkpoint(policy, str(tmp_path / "run" / "final")).eval()
    prompt_ids = tokenizer(task.prompt(problems[0]))["input_ids"]
    value.eval()
    assert loaded.state_values([prompt_ids], [False]) == pytest.approx(value.state_values([prompt_ids], [False]))
    sep = separator_ids(tokenizer, ";")

    def search(v):
        sampler = StepSampler(policy, sep, tokenizer.eos_token_id, max_step_tokens=8, seed=3)
        return [b.ids for b in value_beam_search(sampler, v.state_values, prompt_ids, beam_width=2, max_steps=3)]

    assert search(loaded) == search(value)


def test_a_missing_or_mismatched_value_file_is_named(oreo_setup, tmp_path):
    from dpokit.tiny import tiny_llama

    model_dir, _, tokenizer, _, _ = oreo_setup
    from transformers import AutoModelForCausalLM

    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    with pytest.raises(CheckpointError, match="no value model saved there"):
        ValueModel.from_checkpoint(policy, str(tmp_path))
    other = tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, num_heads=2, seed=0, tokenizer=tokenizer)
    path = ValueModel.from_policy(other).save(str(tmp_path))
    assert os.path.basename(path) == VALUE_FILE
    with pytest.raises(CheckpointError, match="does not fit this value model"):
        ValueModel.from_checkpoint(policy, str(tmp_path))


def test_a_sharded_engine_refuses_the_value_scorer_before_training():
    """FSDP / DeepSpeed checkpoints do not hold the value model: such a run stops at setup."""
    from types import SimpleNamespace

    from dpokit.errors import ConfigError
    from dpokit.train.checkpointing import CheckpointingMixin

    class WithValue:
        def checkpoint_state(self):
            return {}

    trainer = SimpleNamespace(sharded_state=True, engine_kind="fsdp", scorer=WithValue())
    with pytest.raises(ConfigError, match="fsdp checkpoints do not hold"):
        CheckpointingMixin._check_scorer_engine(trainer)
    CheckpointingMixin._check_scorer_engine(SimpleNamespace(sharded_state=False, engine_kind="ddp", scorer=WithValue()))
    CheckpointingMixin._check_scorer_engine(SimpleNamespace(sharded_state=True, engine_kind="fsdp", scorer=object()))
