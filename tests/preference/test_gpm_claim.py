"""The GPM claim in miniature (benchmarks/claims/gpm_cyclic.py): its data, and one seed end to end."""

import random

import pytest

from conftest import load_claim


def load():
    return load_claim("gpm_cyclic")


def test_cyclic_data_is_balanced_and_cyclic():
    claim = load()
    rng = random.Random(0)
    pairs = claim.cyclic_pairs(claim.prompts_of(["t1", "t2"], rng, 5), 20, rng)
    relations = [p.extras["relation"] for p in pairs]
    assert sorted(set(relations)) == ["paper>rock", "rock>scissors", "scissors>paper"]
    assert all(relations.count(r) == 20 for r in set(relations))
    for p in pairs:  # the chosen response carries the winning class, the rejected one the losing class
        winner, loser = p.extras["relation"].split(">")
        assert winner in p.chosen.split() and loser in p.rejected.split()


@pytest.mark.slow
def test_one_seed_gpm_fits_the_cycle_bt_cannot(tmp_path):
    record = load().main(["--seeds", "0", "--out", str(tmp_path), "--hh", ""])
    bt, gpm = record["cyclic"][0]["bt"], record["cyclic"][0]["gpm"]
    assert bt["accuracy"] <= 2 / 3 + 0.05
    assert min(v for k, v in gpm.items() if k.startswith("acc[")) >= 0.9
    assert record["cyclic_holds"] and (tmp_path / "claim.json").exists()
