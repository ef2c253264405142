"""Numeric columns of image records travel as extras (what `smpo` reads); a column present in some
records only is an error naming the record and the field."""

import json

import pytest

from dpokit.data.images import collate_images, load_image_examples
from dpokit.errors import DataError
from dpokit.tasks.tiny_pipeline import save_image_pairs


def test_numeric_columns_become_extras_and_must_be_in_every_record(tmp_path):
    path = save_image_pairs(str(tmp_path), 3)
    rows = [json.loads(line) for line in open(path)]
    for i, row in enumerate(rows):
        row.update(chosen_score=0.5 + i, rejected_score=0.25, note="text is ignored")
    good = tmp_path / "scored.jsonl"
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    examples, _ = load_image_examples(str(good))
    assert examples[1].extras == {"chosen_score": 1.5, "rejected_score": 0.25}
    batch = collate_images(examples, [0, 0, 0], lambda captions: {})
    assert batch.extras["chosen_score"].tolist() == [0.5, 1.5, 2.5]
    del rows[2]["rejected_score"]
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=r"bad.jsonl:3.*rejected_score"):
        load_image_examples(str(bad))
