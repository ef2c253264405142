"""`dpokit train` with data.kind expert: the expert image reader and the Diffusion-DRO loop from a config."""

import json
import os

import pytest
import torch

from dpokit.data.experts import load_expert_images
from dpokit.errors import ConfigError, DataError


def write_experts(folder, n=4, size=8, captions=("a red square", "a blue circle")):
    from dpokit.data.images import to_pil

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for i in range(n):
        name = f"images/{i:03d}.png"
        to_pil(torch.rand((3, size, size), generator=generator) * 2 - 1).save(os.path.join(folder, name))
        rows.append({"caption": captions[i % len(captions)], "image": name})
    path = os.path.join(folder, "experts.jsonl")
    with open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    return path, rows


def rewrite(path, rows):
    with open(path, "w") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)


def test_reader_loads_experts_in_unit_range(tmp_path):
    path, rows = write_experts(str(tmp_path), n=3)
    examples, report = load_expert_images(path)
    assert report == {"records": 3} and [ex.index for ex in examples] == [0, 1, 2]
    assert [ex.caption for ex in examples] == [r["caption"] for r in rows]
    assert all(ex.images.shape == (1, 3, 8, 8) for ex in examples)
    assert all(-1.0 <= float(ex.images.min()) and float(ex.images.max()) <= 1.0 for ex in examples)
    resized, _ = load_expert_images(path, size=4, limit=2)
    assert len(resized) == 2 and resized[0].images.shape == (1, 3, 4, 4)


def test_reader_reads_parquet(tmp_path):
    pd = pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    path, rows = write_experts(str(tmp_path), n=2)
    parquet = tmp_path / "experts.parquet"
    pd.DataFrame(rows).to_parquet(parquet)
    examples, _ = load_expert_images(str(parquet))
    assert len(examples) == 2 and examples[1].caption == rows[1]["caption"]


@pytest.mark.parametrize("change, field, words", [
    (lambda r: r.pop("caption"), "caption", "missing caption"),
    (lambda r: r.update(caption=3), "caption", "string caption"),
    (lambda r: r.pop("image"), "image", "missing image"),
    (lambda r: r.update(image="images/nope.png"), "image", "not found"),
    (lambda r: r.update(image="broken.png"), "image", "unreadable"),
])
def test_reader_errors_name_file_line_and_field(tmp_path, change, field, words):
    path, rows = write_experts(str(tmp_path), n=3)
    (tmp_path / "broken.png").write_bytes(b"not a png")
    change(rows[1])
    rewrite(path, rows)
    with pytest.raises(DataError) as info:
        load_expert_images(path)
    message = str(info.value)
    assert "experts.jsonl:2" in message and f"'{field}'" in message and words in message


def test_reader_refuses_mixed_sizes_without_image_size(tmp_path):
    from dpokit.data.images import to_pil

    path, rows = write_experts(str(tmp_path), n=2)
    to_pil(torch.zeros(3, 4, 4)).save(tmp_path / "small.png")
    rows.append({"caption": "x", "image": "small.png"})
    rewrite(path, rows)
    with pytest.raises(DataError, match=r"experts.jsonl:3.*'image'.*differs"):
        load_expert_images(path)
    assert len(load_expert_images(path, size=8)[0]) == 3


@pytest.fixture(scope="module")
def tiny_pipe(tmp_path_factory):
    from dpokit.tasks.tiny_pipeline import save_tiny_pipeline

    return save_tiny_pipeline(str(tmp_path_factory.mktemp("pipe")), "unet", captions=("a red square", "a blue circle"))


def dro_config(model_dir, data, out, **sections):
    raw = {
        "model": {"name_or_path": str(model_dir), "kind": "diffusion", "dtype": "float32"},
        "data": {"train": str(data), "kind": "expert"},
        "loss": {"name": "diffusion_dro", "margin": 0.001},
        "diffusion": {"dro": {"buffer_size": 2, "buffer_batch_size": 2, "buffer_update_steps": 2,
                              "buffer_num_inference_steps": 3}},
        "train": {"output_dir": str(out), "lr": 1e-3, "batch_size": 2, "max_steps": 3, "seed": 0,
                  "report_to": [], "progress_bar": False, "mixed_precision": "no"},
    }
    for section, values in sections.items():
        raw[section] = {**raw.get(section, {}), **values}
    return raw


@pytest.mark.parametrize("change, words", [
    ({"loss": {"name": "dpo"}}, "trains loss diffusion_dro"),
    ({"train": {"max_steps": None}}, "train.max_steps"),
    ({"train": {"grad_accum": 2}}, "grad_accum"),
    ({"data": {"eval_fraction": 0.25}}, "no evaluation pass"),
    ({"diffusion": {"dro": {"lr": 0.1}}}, "set train.lr instead"),
    ({"diffusion": {"dro": {"buffer_sizes": 2}}}, "unknown option"),
    ({"diffusion": {"dro": {"buffer_update_steps": 0}}}, "buffer_update_steps must be >= 1"),
    ({"train": {"save_every": 2}}, "writes no checkpoints"),
    ({"reference": {"kind": "lora_disabled"}, "lora": {"enabled": True}}, "frozen copy"),
])
def test_config_refusals(tmp_path, tiny_pipe, change, words):
    from dpokit.preflight import checked_config

    data, _ = write_experts(str(tmp_path / "data"))
    raw = dro_config(tiny_pipe, data, tmp_path / "run")
    for section, values in change.items():
        raw[section] = values if section == "loss" else {**raw.get(section, {}), **values}
    with pytest.raises(ConfigError, match=words):
        checked_config(raw)


def test_the_trainer_refuses_expert_data(tmp_path, tiny_pipe):
    from dpokit.config import from_dict
    from dpokit.train import Trainer

    data, _ = write_experts(str(tmp_path / "data"))
    with pytest.raises(ConfigError, match="dro_run"):
        Trainer(from_dict(dro_config(tiny_pipe, data, tmp_path / "run")))


def test_dpokit_train_runs_diffusion_dro_and_writes_final(tmp_path, tiny_pipe, capsys):
    import yaml
    from diffusers import UNet2DConditionModel

    from dpokit.cli import main

    model_dir = tiny_pipe
    data, _ = write_experts(str(tmp_path / "data"))
    config = tmp_path / "dro.yaml"
    config.write_text(yaml.safe_dump(dro_config(model_dir, data, tmp_path / "run")))
    assert main(["train", str(config)]) == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["status"] == "completed" and result["step"] == 3
    rows = [json.loads(line) for line in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["step"] for r in rows] == [1, 2, 3] and all(torch.isfinite(torch.tensor(r["loss"])) for r in rows)
    assert rows[-1]["lagged_refreshes"] == 1 and rows[0]["buffer_size"] == 2
    summary = json.load(open(tmp_path / "run" / "dro_run.json"))
    assert summary["experts"] == 4 and summary["lagged_refreshes"] == [2]
    assert summary["settings"]["buffer_num_inference_steps"] == 3 and summary["settings"]["lr"] == 1e-3
    final = tmp_path / "run" / "final"
    assert {"unet", "scheduler", "text_encoder", "tokenizer", "model_index.json"} <= set(os.listdir(final))
    trained = UNet2DConditionModel.from_pretrained(str(final / "unet"), use_safetensors=True)
    initial = UNet2DConditionModel.from_pretrained(os.path.join(model_dir, "unet"), use_safetensors=True)
    assert any(not torch.equal(a, b) for a, b in zip(trained.state_dict().values(), initial.state_dict().values()))
    # --resume is refused with its reason (the loop writes no checkpoints)
    assert main(["train", str(config), "--resume"]) == 2
    assert "writes no checkpoints" in capsys.readouterr().err


def test_latent_pipeline_with_lora_trains_on_vae_latents(tmp_path):
    from diffusers import UNet2DConditionModel

    from dpokit.config import from_dict
    from dpokit.online.dro_run import run
    from dpokit.preflight import checked_config
    from dpokit.tasks.tiny_pipeline import save_tiny_pipeline

    model_dir = save_tiny_pipeline(str(tmp_path / "pipe"), "unet", vae=True, captions=("a red square", "a blue circle"))
    data, _ = write_experts(str(tmp_path / "data"))
    raw = dro_config(model_dir, data, tmp_path / "run", train={"max_steps": 2},
                     lora={"enabled": True, "r": 4, "alpha": 4, "dropout": 0.0})
    config = checked_config(raw)
    assert run(config)["status"] == "completed"
    summary = json.load(open(tmp_path / "run" / "dro_run.json"))
    assert summary["latents"]["encoded"] == 4  # four distinct expert images, each encoded once
    final = tmp_path / "run" / "final"
    assert {"unet", "vae", "adapter"} <= set(os.listdir(final))
    trained = UNet2DConditionModel.from_pretrained(str(final / "unet"), use_safetensors=True)
    assert trained.config.in_channels == 4
    with pytest.raises(ConfigError, match="writes no checkpoints"):
        run(from_dict(raw), resume=True)
