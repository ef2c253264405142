"""Multi-objective reward model (`train-rm --kind multi`), DPA directions and RPS selection."""

import json
import math
import random

import pytest
import torch

from dpokit.errors import DataError
from dpokit.preference import multi_objective as MO

WORDS = "good fine nice great bad awful poor ugly the a is it".split()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForSequenceClassification

    from dpokit.tiny import train_tokenizer

    tokenizer = train_tokenizer([" ".join(WORDS)], vocab_size=64, word_level=True)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("mo-init")
    LlamaForSequenceClassification(config).save_pretrained(path, safe_serialization=True)
    tokenizer.save_pretrained(path)
    rng = random.Random(0)
    rows, pairs = [], []
    for _ in range(64):  # quality: share of positive words; verbosity: number of words / 3
        n = rng.randint(1, 3)
        words = [rng.choice(WORDS[:8]) for _ in range(n)]
        rows.append({"prompt": "it is", "response": " " + " ".join(words),
                     "scores_quality": sum(w in WORDS[:4] for w in words) / n, "scores_verbosity": n / 3})
    for _ in range(32):
        pairs.append({"prompt": "it is", "chosen": " " + rng.choice(WORDS[:4]), "rejected": " " + rng.choice(WORDS[4:8])})
    d = tmp_path_factory.mktemp("mo-data")
    (d / "scored.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in pairs))
    return str(path), str(d / "scored.jsonl"), str(d / "pairs.jsonl")


def test_missing_scores_column_names_file_and_line(tmp_path, capsys):
    from dpokit.cli import main

    path = tmp_path / "scored.jsonl"
    rows = [{"prompt": "p", "response": "a", "scores_x": 1.0, "scores_y": 0.0},
            {"prompt": "p", "response": "b", "scores_x": 0.5, "scores_y": 1.0},
            {"prompt": "p", "response": "c", "scores_x": 0.5}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"scored.jsonl:3, field 'scores_y': is missing"):
        MO.load_scored(str(path))
    assert main(["train-rm", "--kind", "multi", "--model", "unused", "--data", str(path), "--output-dir",
                 str(tmp_path / "out")]) == 2
    assert "scored.jsonl:3, field 'scores_y'" in capsys.readouterr().err
    path.write_text(json.dumps({"prompt": "p", "response": "a", "scores_x": "high"}) + "\n")
    with pytest.raises(DataError, match=r"scored.jsonl:1, field 'scores_x': must be a finite number"):
        MO.load_scored(str(path))
    path.write_text(json.dumps({"prompt": "p", "response": "a"}) + "\n")
    with pytest.raises(DataError, match=r"scored.jsonl:1: has no scores_<name> column"):
        MO.load_scored(str(path))


def test_train_rm_multi_then_eval_rm_along_a_direction(setup, tmp_path, capsys):
    from dpokit.cli import main
    from dpokit.preference import rm_train

    init, scored, pairs = setup
    out = tmp_path / "multi"
    assert main(["train-rm", "--kind", "multi", "--model", init, "--data", scored, "--output-dir", str(out),
                 "--epochs", "8", "--lr", "3e-3", "--eval-data", pairs, "--direction", "1,0"]) == 0
    summary = json.loads((out / "rm_summary.json").read_text())
    assert summary["settings"] == {"objectives": ["quality", "verbosity"]}
    assert summary["eval_after"]["accuracy"] >= 0.9  # quality decides these pairs
    model, tokenizer, kind = rm_train.load(str(out))
    assert kind.name == "multi" and MO.objectives_of(model) == ["quality", "verbosity"]
    r = MO.reward_vectors(model, tokenizer, ["it is"] * 2, [" good", " bad bad bad"])
    assert r.shape == (2, 2) and r[0, 0] > r[1, 0] and r[1, 1] > r[0, 1]  # each head learned its objective
    capsys.readouterr()
    assert main(["eval-rm", "--model", str(out), "--data", pairs, "--direction", "1,0"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["kind"] == "multi" and report["n"] == 32 and report["accuracy"] >= 0.9
    with pytest.raises(ValueError, match="3 components"):
        kind.pair_probabilities(model, tokenizer, [], 4, 32, direction=[1, 0, 0])


def test_one_direction_dpa_equals_the_single_objective_run(setup):
    """One objective, direction (1) (any positive length): the multi-objective model's pair probabilities
    are the Bradley-Terry kind's on the same network, and DPA's best-of-n / RSF rows are the
    single-objective best-of-n."""
    from dpokit.data.formats import load_examples
    from dpokit.preference.rm_kinds import KINDS
    from dpokit.preference.rm_train import new_model

    init, _, pairs_path = setup
    pairs = load_examples(pairs_path, "pairs")
    model, tokenizer = new_model(init, KINDS["multi"], {"objectives": ["quality"]})
    p_multi = KINDS["multi"].pair_probabilities(model, tokenizer, pairs, 8, 32, direction=[2.5])
    p_bt = KINDS["bt"].pair_probabilities(model, tokenizer, pairs, 8, 32)
    torch.testing.assert_close(p_multi.double(), p_bt.double(), rtol=1e-6, atol=1e-7)

    def rewards(prompts, responses):
        return MO.reward_vectors(model, tokenizer, prompts, responses)

    candidates = [" good", " bad", " nice great", " ugly poor", " fine"]
    single = [float(x) for x in rewards(["it is"] * 5, candidates)[:, 0]]
    pick = MO.best_of_n("it is", candidates, rewards, [1.0])
    assert pick["index"] == max(range(5), key=single.__getitem__)
    assert pick["values"] == pytest.approx(single)
    rows = MO.rsf_rows(["it is"], [[1.0]], lambda prompt, n: candidates[:n], rewards, ["quality"], n=5)
    assert rows[0]["completion"] == candidates[pick["index"]]
    assert rows[0]["prompt"].startswith("Your response should maximize weighted rating = quality*100.")


def test_directions_prompts_and_rps():
    assert MO.direction_prompt("Hi", MO.angle_direction(45), ["helpfulness", "verbosity"]) == \
        "Your response should maximize weighted rating = helpfulness*71 + verbosity*71.\n\nHi"
    with pytest.raises(ValueError, match="no length"):
        MO.unit_direction([0, 0], 2)
    thetas = [math.degrees(math.atan2(v[1], v[0])) for v in MO.neighbour_directions(30, 5, 10)]
    assert thetas == pytest.approx([20, 25, 30, 35, 40])

    def rewards(prompts, responses):  # r = (helpfulness, verbosity) read off the response
        return torch.tensor([[float(r.count("h")), float(r.count("v"))] for r in responses])

    def sample(prompt, n):  # the direction in the prompt decides the answer: more verbose with more weight
        weight = int(prompt.split("v*")[1].split(".")[0])
        return ["h" * 3 + "v" * (weight // 10)] * n

    base = MO.best_of_n("x", sample(MO.direction_prompt("x", MO.angle_direction(30), ["h", "v"]), 1), rewards,
                        MO.angle_direction(30))
    same = MO.rps_select("x", 30, sample, rewards, ["h", "v"], k=1, delta_degrees=0)
    assert same["response"] == base["response"] and same["value"] == pytest.approx(base["value"])
    wide = MO.rps_select("x", 30, sample, rewards, ["h", "v"], k=5, delta_degrees=15)
    assert wide["value"] >= base["value"] and len(wide["values"]) == 5  # the pool contains theta itself


def test_load_rewarder_reads_a_multi_objective_reward_model(setup, tmp_path):
    """``dpa_rsf``'s ``reward_model`` option: the saved model's objectives and its vectors ``r(x, y)``."""
    from dpokit.preference.directional import load_rewarder
    from dpokit.preference.rm_kinds import KINDS
    from dpokit.preference.rm_train import new_model, save

    init, _, _ = setup
    model, tokenizer = new_model(init, KINDS["multi"], {"objectives": ["quality", "verbosity"]})
    save(model, tokenizer, str(tmp_path / "rm"))
    rewards, names = load_rewarder(reward_model=str(tmp_path / "rm"))
    assert names == ["quality", "verbosity"]
    responses = [" good", " bad bad"]
    expected = MO.reward_vectors(model.eval(), tokenizer, ["it is"] * 2, responses).double()
    torch.testing.assert_close(rewards(["it is"] * 2, responses), expected)
    with pytest.raises(ValueError, match=r"objectives \['a', 'b'\] differ from the reward model's"):
        load_rewarder(reward_model=str(tmp_path / "rm"), objectives=["a", "b"])
    bt, tok = new_model(init, KINDS["bt"], {})
    save(bt, tok, str(tmp_path / "bt"))
    with pytest.raises(ValueError, match="not a multi-objective reward model"):
        load_rewarder(reward_model=str(tmp_path / "bt"))
