"""Image preference records: loading, Pick-a-Pic labels, and errors that name file, line and field."""

import io
import json

import pytest
import torch
from PIL import Image

from dpokit.data.images import collate_images, load_image_examples, to_pil
from dpokit.errors import DataError


def png(path, color, size=(8, 8)):
    Image.new("RGB", size, color).save(path)
    return path.name


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def images(tmp_path):
    return {"red": png(tmp_path / "red.png", (255, 0, 0)), "blue": png(tmp_path / "blue.png", (0, 0, 255)),
            "big": png(tmp_path / "big.png", (0, 255, 0), (16, 16))}


def test_pairs_load_as_tensors_in_unit_range(tmp_path, images):
    path = write(tmp_path / "pairs.jsonl", [{"caption": "a", "chosen": "red.png", "rejected": "blue.png"},
                                             {"prompt": "b", "chosen": "blue.png", "rejected": "red.png"}])
    examples, report = load_image_examples(path)
    assert report == {"records": 2, "ties_dropped": 0}
    assert [e.caption for e in examples] == ["a", "b"] and [e.index for e in examples] == [0, 1]
    red = examples[0].images[0]
    assert red.shape == (3, 8, 8)
    torch.testing.assert_close(red[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))
    torch.testing.assert_close(examples[1].images[1], red)
    assert examples[0].location == "pairs.jsonl:1"
    batch = collate_images(examples, [0, 0], lambda caps: {"class_labels": torch.arange(len(caps))})
    assert batch.images.shape == (2, 2, 3, 8, 8) and batch.indices.tolist() == [0, 1]
    assert to_pil(red).getpixel((0, 0)) == (255, 0, 0)


def test_pick_a_pic_labels_order_the_pair_and_ties_are_dropped(tmp_path, images):
    path = write(tmp_path / "pap.jsonl", [{"caption": "x", "jpg_0": "red.png", "jpg_1": "blue.png", "label_0": 0},
                                           {"caption": "y", "jpg_0": "red.png", "jpg_1": "blue.png", "label_0": 0.5},
                                           {"caption": "z", "jpg_0": "red.png", "jpg_1": "blue.png", "label_0": 1}])
    examples, report = load_image_examples(path)
    assert report["ties_dropped"] == 1 and [e.caption for e in examples] == ["x", "z"]
    assert examples[0].images[0][2, 0, 0] == 1.0  # label_0 = 0: jpg_1 (blue) is chosen
    assert examples[1].images[0][0, 0, 0] == 1.0  # label_0 = 1: jpg_0 (red) is chosen


def test_bytes_in_parquet_and_resizing(tmp_path, images):
    import pyarrow as pa
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (0, 255, 0)).save(buffer, format="PNG")
    pq.write_table(pa.table({"caption": ["g"], "chosen": [buffer.getvalue()], "rejected": [{"bytes": buffer.getvalue(),
                                                                                           "path": None}]}),
                   tmp_path / "pairs.parquet")
    examples, _ = load_image_examples(str(tmp_path / "pairs.parquet"), size=8)
    assert examples[0].images.shape == (2, 3, 8, 8)


def test_lists_with_scores(tmp_path, images):
    path = write(tmp_path / "lists.jsonl", [{"caption": "a", "images": ["red.png", "blue.png", "red.png"],
                                              "scores": [1, 0, 2]}])
    examples, _ = load_image_examples(path, kind="lists")
    batch = collate_images(examples, [0], lambda caps: {})
    assert batch.images.shape == (1, 3, 3, 8, 8) and batch.list_scores.tolist() == [[1.0, 0.0, 2.0]]


@pytest.mark.parametrize("record, field, problem", [
    ({"chosen": "red.png", "rejected": "blue.png"}, "caption", "missing caption"),
    ({"caption": 3, "chosen": "red.png", "rejected": "blue.png"}, "caption", "string caption"),
    ({"caption": "a", "chosen": "red.png"}, "rejected", "missing image"),
    ({"caption": "a", "chosen": "red.png", "rejected": "nowhere.png"}, "rejected", "not found"),
    ({"caption": "a", "chosen": "broken.png", "rejected": "red.png"}, "chosen", "unreadable image"),
    ({"caption": "a", "chosen": "red.png", "rejected": "big.png"}, "rejected", "differs"),
    ({"caption": "a", "jpg_0": "red.png", "jpg_1": "blue.png", "label_0": 2}, "label_0", "expected 1, 0 or 0.5"),
    ({"caption": "a", "chosen": 5, "rejected": "red.png"}, "chosen", "image path or bytes"),
    ({"caption": "a", "images": ["red.png"], "scores": [1]}, "images", "at least 2"),
])
def test_bad_records_name_file_line_and_field(tmp_path, images, record, field, problem):
    (tmp_path / "broken.png").write_bytes(b"not an image at all")
    kind = "lists" if "images" in record else "pairs"
    good = {"caption": "ok", "chosen": "red.png", "rejected": "blue.png"} if kind == "pairs" else \
        {"caption": "ok", "images": ["red.png", "blue.png"], "scores": [1, 0]}
    path = write(tmp_path / "data.jsonl", [good, record])
    with pytest.raises(DataError) as info:
        load_image_examples(path, kind=kind)
    assert info.value.location == "data.jsonl:2" and info.value.field == field
    assert problem in str(info.value) and "data.jsonl:2" in str(info.value)


def test_mixed_sizes_in_a_batch_name_the_record(tmp_path, images):
    path = write(tmp_path / "pairs.jsonl", [{"caption": "a", "chosen": "red.png", "rejected": "blue.png"},
                                             {"caption": "b", "chosen": "big.png", "rejected": "big.png"}])
    examples, _ = load_image_examples(path)
    with pytest.raises(DataError, match="pairs.jsonl:2"):
        collate_images(examples, [0, 0], lambda caps: {})
