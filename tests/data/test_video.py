"""Video preference records: clips from frame folders, .npy, frame lists, Parquet columns; segment labels;
errors that name the file, line and field."""

import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from dpokit.data.video import collate_videos, load_clip, load_video_examples
from dpokit.errors import DataError


def frames_dir(folder, colors, size=(8, 8)):
    os.makedirs(folder, exist_ok=True)
    for i, color in enumerate(colors):  # frame_10 must come after frame_2 (name order, numbers as numbers)
        Image.new("RGB", size, color).save(os.path.join(folder, f"frame_{[0, 2, 10, 11][i]}.png"))
    return os.path.basename(folder)


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def png_bytes(color, size=(8, 8)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


RED, GREEN, BLUE, BLACK = (255, 0, 0), (0, 255, 0), (0, 0, 255), (0, 0, 0)


def test_frame_folders_load_in_name_order(tmp_path):
    a = frames_dir(str(tmp_path / "a"), [RED, GREEN, BLUE, BLACK])
    b = frames_dir(str(tmp_path / "b"), [BLACK] * 4)
    path = write(tmp_path / "pairs.jsonl", [{"caption": "x", "chosen": a, "rejected": b}])
    (example,), report = load_video_examples(path)
    assert report["records"] == 1 and example.images.shape == (2, 3, 4, 8, 8)
    # frame order 0, 2, 10, 11: red, green, blue, black (channel values at pixel 0)
    torch.testing.assert_close(example.images[0, :, :, 0, 0], torch.tensor(
        [[1., -1., -1., -1.], [-1., 1., -1., -1.], [-1., -1., 1., -1.]]))
    assert example.segments is None


def test_npy_uint8_and_float_and_grey(tmp_path):
    clip = np.random.default_rng(0).integers(0, 256, (3, 4, 5, 3), dtype=np.uint8)
    np.save(tmp_path / "a.npy", clip)
    np.save(tmp_path / "b.npy", clip.astype(np.float32) / 127.5 - 1)
    np.save(tmp_path / "g.npy", clip[..., :1])
    a = load_clip("a.npy", str(tmp_path), "f:1", "chosen")
    assert a.shape == (3, 3, 4, 5)
    np.testing.assert_allclose(a.permute(1, 2, 3, 0).numpy(), clip / 127.5 - 1, atol=1e-6)
    torch.testing.assert_close(load_clip("b.npy", str(tmp_path), "f:1", "chosen"), a)
    grey = load_clip("g.npy", str(tmp_path), "f:1", "chosen")
    torch.testing.assert_close(grey[0], grey[2])
    assert load_clip("a.npy", str(tmp_path), "f:1", "chosen", size=8).shape == (3, 3, 8, 8)
    np.save(tmp_path / "bad.npy", np.full((2, 4, 4, 3), 3.0, dtype=np.float32))
    with pytest.raises(DataError, match=r"f:1, field 'chosen': float clip values must be finite and in \[-1, 1\]"):
        load_clip("bad.npy", str(tmp_path), "f:1", "chosen")
    np.save(tmp_path / "flat.npy", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError, match="expected a clip array"):
        load_clip("flat.npy", str(tmp_path), "f:1", "chosen")


def test_parquet_columns_of_frame_bytes_and_npy_bytes(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    buffer = io.BytesIO()
    np.save(buffer, np.zeros((2, 8, 8, 3), dtype=np.uint8))
    rows = [{"caption": "p", "chosen": [{"bytes": png_bytes(RED), "path": None}, {"bytes": png_bytes(BLUE), "path": None}],
             "rejected": buffer.getvalue()}]
    pd.DataFrame(rows).to_parquet(tmp_path / "v.parquet")
    (example,), _ = load_video_examples(str(tmp_path / "v.parquet"))
    assert example.images.shape == (2, 3, 2, 8, 8)
    assert float(example.images[0, 0, 0, 0, 0]) == 1.0 and float(example.images[1].max()) == -1.0


def test_segment_labels_ranges_and_length(tmp_path):
    a = frames_dir(str(tmp_path / "a"), [RED] * 4)
    b = frames_dir(str(tmp_path / "b"), [BLUE] * 4)
    path = write(tmp_path / "dense.jsonl", [
        {"caption": "x", "video_a": a, "video_b": b, "segments": [[0, 1], [2, 4]], "segment_labels": ["a", "tie"]},
        {"caption": "y", "video_a": a, "video_b": b, "segment_length": 3, "segment_labels": [-1, 1]},
        {"caption": "z", "chosen": a, "rejected": b},
    ])
    examples, _ = load_video_examples(path)
    assert examples[0].segments == [(0, 1), (2, 4)] and examples[0].segment_labels == [1, 0]
    assert examples[1].segments == [(0, 3), (3, 4)] and examples[1].segment_labels == [-1, 1]
    batch = collate_videos(examples, [0, 0, 0], lambda captions: {})
    assert batch.images.shape == (3, 2, 3, 4, 8, 8)
    assert batch.frame_segments.tolist() == [[0, -1, 1, 1], [0, 0, 0, 1], [0, 0, 0, 0]]
    assert batch.extras["segment_labels"].tolist() == [[1, 0], [-1, 1], [1, 0]]  # a plain pair: chosen wins all
    assert collate_videos(examples[2:], [0], lambda c: {}).frame_segments is None
    moved = batch.to("cpu")
    assert moved.frame_segments is not None and type(moved).__name__ == "VideoBatch"


@pytest.mark.parametrize("change, field, message", [
    ({"segments": [[0, 5]]}, "segments[0]", r"frame range \[0, 5\) is not inside the clip's 4 frames"),
    ({"segments": [[0, 3], [2, 4]], "segment_labels": [1, 1]}, "segments", "segments overlap at frame 2"),
    ({"segments": [[0, 2], [2, 4]], "segment_labels": [1]}, "segment_labels", "expected 2 labels"),
    ({"segments": [[0, 4]], "segment_labels": [2]}, "segment_labels[0]", "expected 1 / 'a'"),
    ({"segments": [[0, 4]], "segment_labels": [True]}, "segment_labels[0]", "expected 1 / 'a'"),
    ({"segments": "0-4"}, "segments", "non-empty list"),
    ({"segments": None, "segment_length": 0}, "segment_length", "positive integer"),
    ({"segments": None, "segment_labels": None}, "segment_labels", "need per-segment labels"),
    ({"caption": None}, "caption", "expected a string caption"),
    ({"video_b": "missing"}, "video_b", "clip not found: missing"),
])
def test_bad_segment_records_name_line_and_field(tmp_path, change, field, message):
    a = frames_dir(str(tmp_path / "a"), [RED] * 4)
    b = frames_dir(str(tmp_path / "b"), [BLUE] * 4)
    record = {"caption": "x", "video_a": a, "video_b": b, "segments": [[0, 4]], "segment_labels": [1]}
    record.update(change)
    record = {k: v for k, v in record.items() if v is not None or k == "caption"}
    path = write(tmp_path / "dense.jsonl", [{"caption": "ok", "chosen": a, "rejected": b}, record])
    with pytest.raises(DataError, match=message) as err:
        load_video_examples(path)
    assert err.value.location == "dense.jsonl:2" and err.value.field == field


def test_size_and_frame_count_mismatches_name_the_field(tmp_path):
    four = frames_dir(str(tmp_path / "four"), [RED] * 4)
    three = frames_dir(str(tmp_path / "three"), [RED] * 3)
    big = frames_dir(str(tmp_path / "big"), [RED] * 4, size=(16, 16))
    mixed = str(tmp_path / "mixed")
    frames_dir(mixed, [RED] * 2)
    Image.new("RGB", (4, 4), RED).save(os.path.join(mixed, "frame_9.png"))
    cases = [
        ({"chosen": four, "rejected": three}, "rejected", "clip of 3 frames of .* differs from chosen's 4 frames"),
        ({"chosen": four, "rejected": big}, "rejected", r"\(16, 16\) differs"),
        ({"chosen": "mixed", "rejected": four}, "chosen (mixed/frame_9.png)", r"frame size \(4, 4\) differs"),
    ]
    for fields, field, message in cases:
        path = write(tmp_path / "v.jsonl", [{"caption": "x", **fields}])
        with pytest.raises(DataError, match=message) as err:
            load_video_examples(path)
        assert err.value.location == "v.jsonl:1" and err.value.field == field
    path = write(tmp_path / "v.jsonl", [{"caption": "x", "chosen": four, "rejected": four}])
    with pytest.raises(DataError, match=r"the clip has 4 frames, expected 2 \(diffusion.num_frames\)") as err:
        load_video_examples(path, num_frames=2)
    assert err.value.field == "chosen"
    # resizing makes different sizes agree; across records the batch names the record
    path = write(tmp_path / "v.jsonl", [{"caption": "x", "chosen": four, "rejected": big}])
    assert load_video_examples(path, size=8)[0][0].images.shape == (2, 3, 4, 8, 8)
    path = write(tmp_path / "v.jsonl", [{"caption": "x", "chosen": four, "rejected": four},
                                        {"caption": "y", "chosen": three, "rejected": three}])
    examples, _ = load_video_examples(path)
    with pytest.raises(DataError, match="v.jsonl:2, field 'images'"):
        collate_videos(examples, [0, 0], lambda c: {})


def test_video_files_need_a_reader(tmp_path):
    (tmp_path / "clip.mp4").write_bytes(b"not a video")
    try:
        import imageio.v3  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match="f:1, field 'chosen': clip.mp4 is a video file, and reading one needs "
                                            "imageio"):
            load_clip("clip.mp4", str(tmp_path), "f:1", "chosen")
    else:
        with pytest.raises(DataError, match="unreadable video clip.mp4"):
            load_clip("clip.mp4", str(tmp_path), "f:1", "chosen")
    (tmp_path / "clip.txt").write_text("x")
    with pytest.raises(DataError, match="not a frame folder, .npy array or video file"):
        load_clip("clip.txt", str(tmp_path), "f:1", "chosen")
    os.makedirs(tmp_path / "empty")
    with pytest.raises(DataError, match="no frame images"):
        load_clip("empty", str(tmp_path), "f:1", "chosen")
