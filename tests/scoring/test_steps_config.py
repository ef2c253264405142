"""`train.scorer: steps` from a config file: step-pair records train step_dpo through `dpokit train`;
mistakes in the scorer keys stop at the config check."""

import json

import pytest
import yaml

from dpokit.cli import main
from dpokit.data.build import load_run_data
from dpokit.config import from_dict
from dpokit.errors import ConfigError, DataError
from dpokit.preflight import check_run
from dpokit.tasks.arithmetic import ArithmeticTask
from dpokit.tiny import tiny_llama, train_tokenizer

RECORDS = [
    {"prompt": "problem : 3 + 4 * 2 .", "prefix_steps": ["4 * 2 = 8"], "chosen_step": ["3 + 8 = 1 1", "answer 1 1"],
     "rejected_step": ["3 + 8 = 1 2", "answer 1 2"], "chosen_final": True, "rejected_final": True},
    {"prompt": "problem : 5 * 2 - 1 .", "prefix_steps": [], "chosen_step": "5 * 2 = 1 0",
     "rejected_step": ["5 * 2 = 9", "9 - 1 = 8"]},
    {"prompt": "problem : 2 + 2 .", "chosen_step": "2 + 2 = 4", "rejected_step": "2 + 2 = 5"},
    {"prompt": "problem : 6 - 1 * 2 .", "prefix_steps": ["1 * 2 = 2"], "chosen_step": "6 - 2 = 4",
     "rejected_step": "6 - 2 = 3"},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny")
    tokenizer = train_tokenizer(ArithmeticTask().vocabulary_corpus(), vocab_size=64, word_level=True)
    tiny_llama(len(tokenizer), hidden_size=32, num_layers=1, seed=0, tokenizer=tokenizer).save_pretrained(
        path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    return path


def raw_config(tmp_path, model_dir, data, **train):
    return {"model": {"name_or_path": str(model_dir)}, "data": {"train": str(data), "max_length": 64},
            "loss": {"name": "step_dpo", "beta": 0.5, "discount": 0.5},
            "train": {"output_dir": str(tmp_path / "run"), "scorer": "steps", "step_separator": ";",
                      "layout": "prompt_shared", "batch_size": 2, "max_steps": 2, "lr": 1e-3, "report_to": [],
                      "progress_bar": False, "mixed_precision": "no", **train}}


@pytest.fixture
def data(tmp_path):
    path = tmp_path / "step_pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in RECORDS))
    return path


@pytest.mark.slow
def test_dpokit_train_runs_step_dpo_on_step_pairs(tmp_path, model_dir, data):
    config_path = tmp_path / "run.yaml"
    config_path.write_text(yaml.safe_dump(raw_config(tmp_path, model_dir, data)))
    assert main(["train", str(config_path)]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 2 and all(v == v for v in losses)
    assert (tmp_path / "run" / "final" / "config.json").exists()


def test_step_pairs_become_token_id_pairs_with_step_boundaries(tmp_path, model_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpokit.scoring import build_scorer

    config = from_dict(raw_config(tmp_path, model_dir, data))
    plan = check_run(config)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    scorer = build_scorer(config, plan.needs, tokenizer, model, kind="steps")
    assert type(scorer).__name__ == "StepScorer"

    def tokenize(examples):
        from dpokit.data import tokenize_examples

        return tokenize_examples(examples, tokenizer, 64)

    train, _, _, _ = load_run_data(config.data, 0, "pairs", tokenize, prepare=scorer.prepare_examples)
    sep = tokenizer.convert_tokens_to_ids(";")
    first = train[0]
    chosen, rejected = first.completions
    # a final completion: "3 + 8 = 1 1 ;" then "answer 1 1" and EOS: two steps, one separator
    assert chosen.count(sep) == 1 and chosen[-1] == tokenizer.eos_token_id
    assert first.prompt_ids[-1] == sep  # the prefix step ends with its separator
    second = train[1]
    assert second.completions[0][-1] == sep and tokenizer.eos_token_id not in second.completions[0]


def test_step_pairs_without_the_step_scorer_are_refused(tmp_path, model_dir, data):
    config = from_dict(raw_config(tmp_path, model_dir, data, scorer="causal_lm"))
    with pytest.raises(DataError, match=r"step_pairs.jsonl:1.*chosen_step.*train.scorer: steps"):
        load_run_data(config.data, 0, "pairs", lambda ex: (ex, None))


@pytest.mark.parametrize("change, message", [
    ({"scorer": "stepz"}, r"train.scorer: 'stepz' is not one of .*steps"),
    ({"step_separator": ""}, r"train.step_separator: must not be empty"),
])
def test_scorer_key_mistakes(tmp_path, model_dir, data, change, message):
    with pytest.raises(ConfigError, match=message):
        check_run(from_dict(raw_config(tmp_path, model_dir, data, **change)))


def test_steps_scorer_refuses_a_loss_that_is_not_pairwise(tmp_path, model_dir, data):
    raw = raw_config(tmp_path, model_dir, data)
    raw["loss"] = {"name": "kto"}
    raw["data"]["kind"] = "unpaired"
    with pytest.raises(ConfigError, match=r"train.scorer: 'steps' scores step pairs: it needs a pairwise loss"):
        check_run(from_dict(raw))


def test_a_separator_outside_the_vocabulary_is_named(tmp_path, model_dir, data):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from dpokit.scoring import build_scorer

    config = from_dict(raw_config(tmp_path, model_dir, data, step_separator="|"))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with pytest.raises(ConfigError, match=r"train.step_separator: no token of the tokenizer contains"):
        build_scorer(config, check_run(config).needs, tokenizer, model, kind="steps")
