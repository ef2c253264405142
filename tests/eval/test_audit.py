"""`dpokit audit`: separability probes, length and source confounds, duplicates, label noise, bad input."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch

from dpokit.cli import main
from dpokit.errors import DataError
from dpokit.eval import audit as A
from dpokit.eval import audit_features as F
from tests.conftest import make_pairs, write_jsonl

FAST = A.AuditSettings(hash_dim=128, folds=3)
WORDS = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu".split()
STYLE_A, STYLE_B = "cats dogs mice bird fish frog".split(), "blue gray pink teal gold rose".split()  # 4 letters each


def same_source_rows(n, seed=0):
    """Chosen and rejected drawn from one distribution: nothing tells them apart."""
    rng = random.Random(seed)
    text = lambda: " " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))
    return [{"prompt": f"q{i} " + text(), "chosen": text(), "rejected": text()} for i in range(n)]


def audit_rows(rows, tmp_path, settings=FAST, name="d.jsonl"):
    pairs, skipped = A.read_audit_pairs(write_jsonl(tmp_path / name, rows))
    return A.audit_pairs(pairs, settings, skipped=skipped)


def test_wilson_interval_matches_closed_form():
    # 8 of 10: centre (0.8 + z^2/20) / (1 + z^2/10), known value [0.4902, 0.9433]
    low, high = F.wilson(8, 10)
    assert low == pytest.approx(0.4902, abs=1e-4) and high == pytest.approx(0.9433, abs=1e-4)
    assert F.wilson(0, 0) is None and F.wilson(0, 5)[0] == 0.0


def test_length_cue_gives_a_warning(tmp_path):
    rng = random.Random(0)
    rows = [{"prompt": f"p{i}", "chosen": " " + " ".join(rng.choice(WORDS) for _ in range(8)),
             "rejected": " " + " ".join(rng.choice(WORDS) for _ in range(3))} for i in range(60)]
    result = audit_rows(rows, tmp_path)
    assert result["length"]["chosen_longer"] == 1.0
    assert result["length"]["length_rule_accuracy"] == 1.0 and result["length"]["length_rule"] == "longer"
    assert result["length"]["chosen_longer_ci95"][0] > 0.9
    assert result["separability"]["length"]["accuracy"] > 0.95
    assert any(w.startswith("length alone separates") for w in result["warnings"])


def test_style_cue_without_length_cue(tmp_path):
    """Chosen in one vocabulary, rejected in another, equal lengths: the surface probe flags it, length does not."""
    rng = random.Random(1)
    rows = [{"prompt": f"p{i}", "chosen": " " + " ".join(rng.choice(STYLE_A) for _ in range(5)),
             "rejected": " " + " ".join(rng.choice(STYLE_B) for _ in range(5))} for i in range(60)]
    result = audit_rows(rows, tmp_path)
    assert result["length"]["ties"] == 1.0 and result["length"]["length_rule_accuracy"] == 0.5
    assert result["separability"]["surface"]["accuracy"] > 0.9
    assert result["ranking"]["surface"]["accuracy"] > 0.9
    assert not any(w.startswith("length") for w in result["warnings"])
    assert any(w.startswith("surface features separate") for w in result["warnings"])


def test_indistinguishable_pairs_give_no_warning(tmp_path):
    result = audit_rows(same_source_rows(120), tmp_path)
    for probe in ("length", "surface"):
        assert 0.3 < result["separability"][probe]["accuracy"] < 0.7
    assert result["warnings"] == []
    assert "no superficial cue" in A.format_audit(result)


def test_duplicates_contradictions_and_near_duplicates(tmp_path):
    rows = same_source_rows(40, seed=2)
    long = " ".join(WORDS * 3)
    rows += [dict(rows[0]), dict(rows[0]),  # two extra copies of pair 0
             {"prompt": rows[1]["prompt"], "chosen": rows[1]["rejected"], "rejected": rows[1]["chosen"]},  # swapped
             {"prompt": "near " + long, "chosen": " " + long + " x", "rejected": " " + long + " y"},
             {"prompt": "near " + long, "chosen": " " + long + " x", "rejected": " " + long + " z"}]
    dup = audit_rows(rows, tmp_path)["duplicates"]
    assert dup["exact_duplicate_pairs"] == 3 and dup["exact_duplicate_extra_copies"] == 2
    assert dup["contradicting_pairs"] == 2  # pair 1 and its swap
    # the last two are near-duplicates; the three copies of pair 0 are near-duplicates too
    assert dup["near_duplicate_groups"] == 2 and dup["near_duplicate_pairs"] == 5
    assert dup["shared_prompt_pairs"] == 3 + 2 + 2


def test_minhash_finds_every_similar_pair_it_should():
    """Against the exact all-pairs Jaccard on a small set: every pair at >= 0.8 is found (LSH recall at
    s = 0.8 with 16 bands x 4 rows is 0.99 per pair; these are well above), none below is reported."""
    rng = random.Random(3)
    base = [[rng.choice(WORDS) for _ in range(30)] for _ in range(12)]
    texts = [" ".join(b) for b in base] + [" ".join(b[:-1] + ["omega"]) for b in base[:6]]
    groups, _ = F.near_duplicate_groups(texts, 0.8)
    sets = [F.shingles(t) for t in texts]
    expected = {(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts)) if F.jaccard(sets[i], sets[j]) >= 0.8}
    found = {(min(a, b), max(a, b)) for g in groups for a in g for b in g if a != b}
    assert expected and expected <= found


def test_label_noise_flags_flipped_pairs(tmp_path):
    """A strong cue with 10% of the labels flipped: the cross-validated scorer's confident disagreements
    are mostly the flipped pairs."""
    rng = random.Random(4)
    rows, flipped = [], set()
    for i in range(150):
        good = " " + " ".join(rng.choice(WORDS[:6]) for _ in range(5))
        bad = " " + " ".join(rng.choice(WORDS[6:]) for _ in range(5))
        if i % 10 == 0:
            good, bad = bad, good
            flipped.add(f"d.jsonl:{i + 1}")
        rows.append({"prompt": f"p{i}", "chosen": good, "rejected": bad})
    noise = audit_rows(rows, tmp_path, A.AuditSettings(hash_dim=128, folds=3, confidence=0.8))["label_noise"]["surface"]
    flagged = {d["location"] for d in noise["most_confident_disagreements"]}
    assert 0.05 <= noise["confident_disagreement"] <= 0.2
    assert len(flagged & flipped) >= 0.8 * len(flagged) and flagged


def test_sources_and_model_win_rates(tmp_path):
    rows = same_source_rows(60, seed=5)
    for i, row in enumerate(rows):
        row["source"] = "a" if i % 2 else "b"
        row["chosen_model"], row["rejected_model"] = ("big", "small") if i % 3 else ("small", "small")
    sources = audit_rows(rows, tmp_path)["sources"]
    assert sources["sources"]["a"]["num_pairs"] == 30 and sources["sources"]["b"]["num_pairs"] == 30
    assert sources["models"]["big"] == {"wins": 40, "appearances": 40, "win_rate": 1.0,
                                        "win_rate_ci95": F.wilson(40, 40)}
    assert sources["models"]["small"]["wins"] == 0  # same-model pairs count for neither
    assert sources["mixed_model_share"] == pytest.approx(40 / 60)
    result = audit_rows(rows, tmp_path)
    assert any("'big' wins 100.0%" in w for w in result["warnings"])


def test_model_features_probe(tmp_path, tiny_model_dir, tokenizer):
    from dpokit.config import ModelConfig
    from dpokit.models import load_causal_lm

    model = load_causal_lm(tiny_model_dir, ModelConfig(name_or_path=tiny_model_dir)).eval()
    pairs, _ = A.read_audit_pairs(write_jsonl(tmp_path / "p.jsonl", make_pairs(40)))
    feats = F.model_features(model, tokenizer, [p.prompt for p in pairs], [p.chosen for p in pairs], batch_size=7)
    assert feats.shape == (40, 32) and torch.isfinite(feats).all()
    # the mean over response positions of the last hidden state, computed row by row
    ids = tokenizer(pairs[3].prompt)["input_ids"]
    resp = tokenizer(pairs[3].chosen, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hidden = model(torch.tensor([ids + resp]), output_hidden_states=True).hidden_states[-1][0]
    assert torch.allclose(feats[3].float(), hidden[len(ids):].mean(0), atol=1e-5)
    result = A.audit_pairs(pairs, FAST, model, tokenizer)
    assert result["separability"]["model"]["accuracy"] is not None and "model" in result["label_noise"]


def test_cli_table_json_and_report(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(40))
    out = tmp_path / "audit"
    assert main(["audit", path, "--json", "--output", str(out), "--folds", "3"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["num_pairs"] == 40 and json.loads((out / "audit.json").read_text())["num_pairs"] == 40
    assert "Data audit" in (out / "audit.md").read_text()
    assert main(["audit", path, "--folds", "3"]) == 0
    table = capsys.readouterr().out
    assert "separability probe, surface features" in table and "WARNING: surface features separate" in table
    assert main(["audit", path, "--folds", "3", "--strict"]) == 1


@pytest.mark.parametrize("line, message", [
    ('{"chosen": "a"', "bad.jsonl:2: invalid JSON"),
    ('{"prompt": "p", "chosen": "a"}', "bad.jsonl:2, field 'rejected': is missing"),
    ('{"prompt": "p", "chosen": 3, "rejected": "b"}', "bad.jsonl:2, field 'chosen'"),
    ('{"prompt": "p", "chosen": "a", "rejected": "b", "source": {"x": 1}}', "bad.jsonl:2, field 'source'"),
])
def test_bad_input_names_file_line_and_field(tmp_path, capsys, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "p", "chosen": "a", "rejected": "b"}\n' + line + "\n")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace("'", "'")):
        A.read_audit_pairs(str(path))
    assert main(["audit", str(path)]) == 2
    assert message in capsys.readouterr().err


def test_cli_rejects_bad_options_and_missing_files(tmp_path, capsys):
    path = write_jsonl(tmp_path / "pairs.jsonl", make_pairs(10))
    assert main(["audit", path, "--threshold", "1.5"]) == 2
    assert "--threshold must lie in (0, 1)" in capsys.readouterr().err
    assert main(["audit", str(tmp_path / "missing.jsonl")]) == 2
    assert "data file not found" in capsys.readouterr().err
    empty = write_jsonl(tmp_path / "same.jsonl", [{"prompt": "p", "chosen": "a", "rejected": "a"}])
    assert main(["audit", empty]) == 2
    assert "no usable preference pair" in capsys.readouterr().err


def test_probe_accuracy_interval_is_over_pairs():
    """Two rows per pair, pairs as units: a probe right on exactly one row of every pair scores 0.5 with
    a zero-width interval (every pair scores 1/2)."""
    assert F.mean_interval([0.5] * 10) == [0.5, 0.5]
    assert math.isclose(F.mean_interval([0.0, 1.0] * 50)[1] - 0.5, 1.959964 * math.sqrt(0.25 * 100 / 99 / 100))
