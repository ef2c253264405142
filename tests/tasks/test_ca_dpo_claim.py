"""The CA-DPO claim script's --quick mode runs end to end: warm-up, both pair sets, the per-split
accuracies, the table and a verdict; a rerun reuses the finished seed."""

import pytest

from conftest import load_claim


def load():
    return load_claim("ca_dpo")


def test_pair_sets_share_the_plain_pairs_and_add_conflicts():
    from dpokit.tasks import colours

    claim = load()
    items = colours.draw_items(8, seed=0)
    plain = claim.plain_pairs(items, 0)
    extra = claim.conflict_pairs(items, 0)
    assert len(plain) == 8 and all(p["chosen"] != p["rejected"] for p in plain)
    assert 8 <= len(extra) <= 16  # one conflict pair per image, a consistent one for about half
    texts = [r["prompt"][0]["content"][1]["text"] for r in extra]
    assert all(t.startswith("caption: a ") and t.endswith("does the caption match the image?") for t in texts)


@pytest.mark.slow
def test_ca_dpo_claim_quick(tmp_path, capsys):
    record = load().main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert set(record["results"]) == {"warm-up", "plain dpo", "plain + conflict (ca-dpo)"}
    assert "claim: UNDECIDED" in out  # one seed: no interval
    for per_seed in record["results"].values():
        assert set(per_seed["0"]) >= {"conflict_accuracy", "consistent_accuracy", "colour_accuracy"}
        assert all(0.0 <= per_seed["0"][k] <= 1.0 for k in ("conflict_accuracy", "consistent_accuracy"))
    again = load().main(["--quick", "--out", str(tmp_path)])
    assert again["results"] == record["results"] and again["seconds"] < 5
