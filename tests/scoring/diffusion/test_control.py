"""ControlNet conditions: the scorer against a naive loop that calls the ControlNet and passes its
residuals to the UNet; condition-image and BideDPO record errors naming file, record and field."""

import json
import os

import pytest
import torch

from dpokit.data.conditions import CONTROL_KEY, check_bide_uniform, condition_batch, parse_conditioned_record
from dpokit.data.images import ImageBatch, load_image_examples, to_pil
from dpokit.diffusion_control import ControlNetResiduals, check_condition_images
from dpokit.errors import DataError
from dpokit.losses import Needs
from dpokit.scoring.diffusion import DiffusionScorer, draw_noise
from dpokit.tasks.tiny_latent import tiny_controlnet
from dpokit.tasks.tiny_pipeline import tiny_unet2d_condition


def models(seed=0):
    torch.manual_seed(seed)
    unet = tiny_unet2d_condition(8, 3).eval()
    return unet, tiny_controlnet(unet, downsample=1, seed=seed + 1).eval()


def batch(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return ImageBatch(torch.rand(b, 2, 3, 8, 8, generator=g) * 2 - 1,
                      {"encoder_hidden_states": torch.randn(b, 4, 16, generator=g),
                       CONTROL_KEY: torch.rand(b, 3, 8, 8, generator=g)},
                      torch.arange(b), torch.zeros(b, dtype=torch.long), ["a"] * b)


def test_scorer_with_controlnet_matches_a_naive_loop():
    from diffusers import DDPMScheduler

    unet, controlnet = models()
    sched = DDPMScheduler(num_train_timesteps=1000)
    scorer = DiffusionScorer(Needs(reference=True, data="pairs"), sched, seed=4)
    scorer.control = ControlNetResiduals(controlnet, scale=0.8)
    data = batch()
    e_pi, e_ref = scorer.errors(unet, data, reference=unet)
    eps, t = draw_noise((3, 8, 8), [0, 1], [0, 0], 4, (0, 1000))
    expected = torch.zeros(2, 2)
    plain = torch.zeros(2, 2)
    with torch.no_grad():
        for i in range(2):
            c = data.conditions["encoder_hidden_states"][i:i + 1]
            cond = data.conditions[CONTROL_KEY][i:i + 1]
            for j in range(2):
                x_t = sched.add_noise(data.images[i, j:j + 1], eps[i:i + 1], t[i:i + 1])
                down, mid = controlnet(x_t, t[i:i + 1], encoder_hidden_states=c, controlnet_cond=cond,
                                       conditioning_scale=0.8, return_dict=False)
                pred = unet(x_t, t[i:i + 1], encoder_hidden_states=c, down_block_additional_residuals=down,
                            mid_block_additional_residual=mid).sample
                expected[i, j] = (pred - eps[i:i + 1]).pow(2).mean()
                plain[i, j] = (unet(x_t, t[i:i + 1], encoder_hidden_states=c).sample - eps[i:i + 1]).pow(2).mean()
    torch.testing.assert_close(e_pi.detach(), expected, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(e_ref, expected, atol=1e-5, rtol=1e-4)  # the reference sees the same residuals
    assert (expected - plain).abs().max() > 1e-4  # the ControlNet matters


def test_gradient_reaches_the_unet_only():
    from diffusers import DDPMScheduler

    unet, controlnet = models()
    scorer = DiffusionScorer(Needs(reference=False, data="pairs"), DDPMScheduler(num_train_timesteps=1000))
    scorer.control = ControlNetResiduals(controlnet)
    e_pi, _ = scorer.errors(unet.train(), batch())
    e_pi.sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in unet.parameters())
    assert all(p.grad is None and not p.requires_grad for p in controlnet.parameters())


def test_condition_size_mismatch_against_the_controlnet():
    unet, controlnet = models()
    control = ControlNetResiduals(controlnet)
    data = batch()
    data.conditions[CONTROL_KEY] = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="condition images are 3x16x16 but the ControlNet needs 3x8x8"):
        control(torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4]), data.conditions)
    with pytest.raises(ValueError, match="no condition images"):
        control(torch.randn(4, 3, 8, 8), torch.tensor([1, 2, 3, 4]), {"encoder_hidden_states": torch.zeros(4, 4, 16)})


def write(folder, rows, images):
    os.makedirs(folder, exist_ok=True)
    for name, size in images.items():
        to_pil(torch.full((3, size, size), -1.0)).save(os.path.join(folder, name))
    path = os.path.join(folder, "data.jsonl")
    with open(path, "w") as handle:
        for row in rows:
            handle.write(json.dumps(row) + "\n")
    return path


def load(path, size=None):
    return load_image_examples(path, "pairs", size, parse=parse_conditioned_record)[0]


def test_condition_images_load_in_zero_one_and_batch(tmp_path):
    path = write(tmp_path, [{"caption": "x", "chosen": "a.png", "rejected": "b.png", "condition_image": "c.png"}],
                 {"a.png": 8, "b.png": 8, "c.png": 8})
    (ex,) = load(path)
    assert ex.condition_image.shape == (3, 8, 8) and float(ex.condition_image.max()) == 0.0  # black: 0, not -1
    assert condition_batch([ex, ex])[CONTROL_KEY].shape == (2, 3, 8, 8)
    assert condition_batch([load(write(tmp_path / "p", [{"caption": "x", "chosen": "a.png", "rejected": "b.png"}],
                                       {"a.png": 8, "b.png": 8}))[0]]) == {}


def test_condition_image_errors_name_file_record_and_field(tmp_path):
    base = {"caption": "x", "chosen": "a.png", "rejected": "b.png"}
    sizes = {"a.png": 8, "b.png": 8, "c.png": 8, "big.png": 16}
    ok = dict(base, condition_image="c.png")
    path = write(tmp_path / "missing", [ok, dict(base, condition_image="nope.png")], sizes)
    with pytest.raises(DataError, match=r"data.jsonl:2, field 'condition_image': image file not found: nope.png"):
        load(path)
    path = write(tmp_path / "bad", [dict(base, condition_image="junk.png")], sizes)
    with open(tmp_path / "bad" / "junk.png", "wb") as handle:
        handle.write(b"not an image")
    with pytest.raises(DataError, match=r"data.jsonl:1, field 'condition_image': unreadable image junk.png"):
        load(path)
    path = write(tmp_path / "size", [dict(base, condition_image="big.png")], sizes)
    with pytest.raises(DataError, match=r"field 'condition_image': condition image size \(16, 16\) differs"):
        load(path)
    assert load(path, size=8)[0].condition_image.shape == (3, 8, 8)  # resized with the images
    plain = write(tmp_path / "plain", [ok, base], sizes)
    with pytest.raises(DataError, match=r"data.jsonl:2, field 'condition_image': missing condition image"):
        check_condition_images(load(plain), controlled=True)
    with pytest.raises(DataError, match="no controlnet/"):
        check_condition_images(load(plain)[:1], controlled=False)
    with pytest.raises(DataError, match=r"data.jsonl:2, field 'condition_image': missing condition image"):
        condition_batch(load(plain))


def test_bide_records(tmp_path):
    sizes = {n: 8 for n in ("a.png", "b.png", "c.png", "d.png", "e.png", "f.png")}
    rows = [{"caption": "x", "condition_image": "e.png", "text_pair": {"chosen": "a.png", "rejected": "b.png"},
             "condition_pair": {"chosen": "c.png", "rejected": "d.png", "caption": "y", "condition_image": "f.png"}},
            {"caption": "z", "condition_pair": {"chosen": "c.png", "rejected": "d.png"}}]
    examples = load(write(tmp_path / "ok", rows, sizes))
    assert [ex.extras["bide_pair"] for ex in examples] == [0.0, 1.0, 1.0]
    assert [ex.caption for ex in examples] == ["x", "y", "z"]
    assert [ex.index for ex in examples] == [0, 1, 2]
    assert examples[0].condition_image is not None and examples[2].condition_image is None
    assert "text_pair" in examples[0].location and "condition_pair" in examples[1].location
    bad = [({"caption": "x", "text_pair": "a.png"}, r"field 'text_pair': expected an object"),
           ({"caption": "x", "text_pair": {"chosen": "a.png"}}, r"field 'text_pair.rejected': missing image"),
           ({"caption": "x", "text_pair": {"chosen": "a.png", "rejected": "zz.png"}},
            r"field 'text_pair.rejected': image file not found"),
           ({"text_pair": {"chosen": "a.png", "rejected": "b.png"}}, "missing caption"),
           ({"caption": "x", "text_pair": None}, "needs a text_pair and/or a condition_pair")]
    for i, (row, message) in enumerate(bad):
        with pytest.raises(DataError, match=message):
            load(write(tmp_path / f"bad{i}", [row], sizes))
    mixed = write(tmp_path / "mixed", rows + [{"caption": "p", "chosen": "a.png", "rejected": "b.png"}], sizes)
    with pytest.raises(DataError, match=r"data.jsonl:3, field 'text_pair': a plain pair among BideDPO records"):
        load_image_examples(mixed, "pairs", 8, parse=parse_conditioned_record, check=check_bide_uniform)
