"""Step-annotated trajectories and step pairs: parsing, errors naming file/line/field, pair conversion."""

import json

import pytest

from dpokit.data.step_pairs import pair_records, step_pair_as_pair
from dpokit.data.steps import StepPair, load_step_pairs, load_trajectories, steps_text
from dpokit.errors import DataError
from dpokit.tasks.arithmetic import STEP_SEPARATOR, ArithmeticTask
from dpokit.tiny import train_tokenizer


def write(tmp_path, rows, name="data.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


TRAJ = {"prompt": "problem : 3 + 4 .", "steps": ["3 + 4 = 7", "answer 7"], "step_labels": [True, True],
        "outcome": True, "weight": 2}
PAIR = {"prompt": "problem : 3 + 4 * 2 .", "prefix_steps": ["4 * 2 = 8"], "chosen_step": "3 + 8 = 1 1",
        "rejected_step": "3 + 8 = 1 2", "chosen_visits": 5, "rejected_visits": 1}


def test_trajectories_parse(tmp_path):
    rows = [TRAJ, {"prompt": "p", "steps": ["a", "b"], "step_rewards": [0.5, -1]}, {"prompt": "p", "steps": "a"}]
    out = load_trajectories(write(tmp_path, rows))
    assert out[0].steps == ["3 + 4 = 7", "answer 7"] and out[0].step_labels == [True, True]
    assert out[0].outcome == 1.0 and out[0].extras == {"weight": 2.0}
    assert out[1].step_rewards == [0.5, -1.0] and out[1].step_labels is None
    assert out[2].steps == ["a"] and out[2].outcome is None


@pytest.mark.parametrize("bad, line_field, words", [
    ({"prompt": "p"}, "field 'steps'", "missing"),
    ({"prompt": "p", "steps": []}, "field 'steps'", "empty"),
    ({"prompt": "p", "steps": ["a", 3]}, "field 'steps[1]'", "string"),
    ({"prompt": "p", "steps": ["a", " "]}, "field 'steps[1]'", "empty"),
    ({"prompt": "p", "steps": ["a"], "step_labels": [True, False]}, "field 'step_labels'", "1 steps"),
    ({"prompt": "p", "steps": ["a"], "step_labels": ["yes"]}, "field 'step_labels[0]'", "true/false"),
    ({"prompt": "p", "steps": ["a"], "step_rewards": [float("nan")]}, "field 'step_rewards[0]'", "nan"),
    ({"prompt": "p", "steps": ["a"], "step_rewards": [1], "step_labels": [True]}, "field 'step_rewards'", "together"),
    ({"prompt": "p", "steps": ["a"], "outcome": "yes"}, "field 'outcome'", "number"),
])
def test_bad_trajectory_names_file_line_field(tmp_path, bad, line_field, words):
    path = write(tmp_path, [TRAJ, bad])
    with pytest.raises(DataError) as err:
        load_trajectories(path)
    message = str(err.value)
    assert message.startswith("data.jsonl:2") and line_field in message and words in message.lower()


def test_step_pairs_parse(tmp_path):
    rows = [PAIR, {"prompt": "p", "chosen_step": ["a", "b"], "rejected_step": "c", "chosen_final": True}]
    out = load_step_pairs(write(tmp_path, rows))
    assert out[0].prefix_steps == ["4 * 2 = 8"] and out[0].chosen == ["3 + 8 = 1 1"]
    assert out[0].extras == {"chosen_visits": 5.0, "rejected_visits": 1.0}
    assert out[1].prefix_steps == [] and out[1].chosen == ["a", "b"] and out[1].chosen_final


@pytest.mark.parametrize("bad, line_field", [
    ({"prompt": "p", "chosen_step": "a"}, "field 'rejected_step'"),
    ({"prompt": "p", "chosen_step": "a", "rejected_step": "a"}, "field 'rejected_step'"),
    ({"prompt": "p", "prefix_steps": "x", "chosen_step": "", "rejected_step": "a"}, "field 'chosen_step[0]'"),
    ({"prompt": "p", "prefix_steps": [1], "chosen_step": "b", "rejected_step": "a"}, "field 'prefix_steps[0]'"),
    ({"prompt": "p", "chosen_step": "b", "rejected_step": "a", "chosen_final": "no"}, "field 'chosen_final'"),
    ({"prompt": "p", "chosen_step": "b", "rejected_step": "a", "chosen_visits": float("inf")}, "field 'chosen_visits'"),
])
def test_bad_step_pair_names_file_line_field(tmp_path, bad, line_field):
    with pytest.raises(DataError) as err:
        load_step_pairs(write(tmp_path, [PAIR, bad]))
    assert str(err.value).startswith("data.jsonl:2") and line_field in str(err.value)


def test_empty_file_is_an_error(tmp_path):
    with pytest.raises(DataError, match="no step pairs"):
        load_step_pairs(write(tmp_path, []))


def test_step_pair_is_a_pair_with_the_prefix_in_the_prompt():
    tokenizer = train_tokenizer(ArithmeticTask().vocabulary_corpus(), vocab_size=64, word_level=True)
    pair = StepPair("problem : 3 + 4 * 2 .", ["4 * 2 = 8"], ["3 + 8 = 1 1"], ["3 + 8 = 1 2", "answer 1 2"],
                    rejected_final=True)
    out = step_pair_as_pair(pair, tokenizer, STEP_SEPARATOR)
    assert out.prompt == "problem : 3 + 4 * 2 . 4 * 2 = 8 ;"
    assert out.chosen == " 3 + 8 = 1 1 ;" and out.rejected == " 3 + 8 = 1 2 ; answer 1 2"
    sep, eos = tokenizer.convert_tokens_to_ids(STEP_SEPARATOR), tokenizer.eos_token_id
    assert out.chosen_ids[-1] == sep and eos not in out.chosen_ids  # a non-final step: no EOS
    assert out.rejected_ids[-1] == eos
    assert out.prompt_ids[0] == tokenizer.bos_token_id and out.prompt_ids[-1] == sep
    # the prompt + completion ids equal the whole trajectory tokenized at once (word-level tokenizer)
    whole = tokenizer(pair.prompt + steps_text(["4 * 2 = 8", "3 + 8 = 1 2", "answer 1 2"], ";", True))["input_ids"]
    assert out.prompt_ids + out.rejected_ids == whole + [eos]
    rows = pair_records([pair], tokenizer, STEP_SEPARATOR)
    assert rows[0]["chosen_ids"] == out.chosen_ids
