"""VAE latents: scaling, the seeded posterior draw, and the cache (the encoder runs once per unique
image; cached latents equal fresh ones; another VAE or image gives new keys)."""

import os

import pytest
import torch

from dpokit.data.images import ImageExample
from dpokit.errors import ConfigError
from dpokit.scoring.diffusion.latents import (CACHE_DIR, check_latent_channels, check_scaling, encode_examples,
                                              image_key, posterior_latent, scale_latents, unscale_latents,
                                              vae_fingerprint)
from dpokit.tasks.tiny_latent import tiny_autoencoder


def vae(seed=0, **config):
    torch.manual_seed(seed)
    model = tiny_autoencoder()
    for key, value in config.items():
        model.register_to_config(**{key: value})
    return model.eval().requires_grad_(False)


class Counting:
    """Counts the images ``vae.encode`` sees."""

    def __init__(self, model):
        self.model, self.images, self.calls = model, 0, 0
        self._encode = model.encode

        def encode(x, *args, **kwargs):
            self.images += x.shape[0]
            self.calls += 1
            return self._encode(x, *args, **kwargs)

        model.encode = encode


def examples(seed=0, n=3, size=16):
    """n pairs; the rejected image of example i is the chosen image of example i+1 (shared images)."""
    g = torch.Generator().manual_seed(seed)
    pool = [torch.rand(3, size, size, generator=g) * 2 - 1 for _ in range(n + 1)]
    return [ImageExample(f"c{i}", torch.stack([pool[i].clone(), pool[i + 1].clone()]), index=i, location=f"f:{i + 1}")
            for i in range(n)]


def fresh(model, image, key, seed, mode):
    with torch.no_grad():
        dist = model.encode(image.unsqueeze(0)).latent_dist
    return posterior_latent(dist.mean[0], dist.std[0], key, seed, mode, model)


@pytest.mark.parametrize("mode", ["sample", "mean"])
def test_each_unique_image_is_encoded_once_and_cached_equals_fresh(tmp_path, mode):
    model = vae()
    counter = Counting(model)
    first = examples()
    report = encode_examples(first, model, str(tmp_path), seed=3, mode=mode, batch_size=3)
    assert report == {"images": 6, "unique": 4, "encoded": 4, "cached": 0}
    assert counter.images == 4 and counter.calls == 2  # batches of 3: 3 + 1
    assert first[0].images.shape == (2, 4, 8, 8)
    assert torch.equal(first[0].images[1], first[1].images[0])  # the same image, the same latent
    # a second epoch / a resumed run: new examples of the same images, a VAE loaded with the same weights
    again = Counting(vae())
    second = examples()
    assert encode_examples(second, again.model, str(tmp_path), seed=3, mode=mode)["encoded"] == 0
    assert again.images == 0
    pixels = examples()
    for a, b, p in zip(first, second, pixels):
        assert torch.equal(a.images, b.images)
        for latent, image in zip(a.images, p.images):
            torch.testing.assert_close(latent, fresh(vae(), image, image_key(image), 3, mode), atol=1e-5, rtol=1e-5)
    folders = os.listdir(tmp_path / CACHE_DIR)
    assert len(folders) == 1 and os.listdir(tmp_path / CACHE_DIR / folders[0]) == ["shard-00000.safetensors"]


def test_a_fill_writes_shards_of_shard_size(tmp_path, monkeypatch):
    import dpokit.scoring.diffusion.latents as latents

    monkeypatch.setattr(latents, "SHARD_SIZE", 3)
    encode_examples(examples(n=4), vae(), str(tmp_path), 0)  # 5 unique images: shards of 3 and 2
    (folder,) = os.listdir(tmp_path / CACHE_DIR)
    assert sorted(os.listdir(tmp_path / CACHE_DIR / folder)) == ["shard-00000.safetensors", "shard-00001.safetensors"]
    counter = Counting(vae())
    assert encode_examples(examples(n=4), counter.model, str(tmp_path), 0)["cached"] == 5 and counter.images == 0


def test_the_draw_is_seeded_per_image(tmp_path):
    model = vae()
    image = examples()[0].images[0]
    key = image_key(image)
    with torch.no_grad():
        dist = model.encode(image.unsqueeze(0)).latent_dist
    mean, std = dist.mean[0], dist.std[0]
    a = posterior_latent(mean, std, key, 0, "sample", model)
    assert torch.equal(a, posterior_latent(mean, std, key, 0, "sample", model))
    assert not torch.allclose(a, posterior_latent(mean, std, key, 1, "sample", model))
    torch.testing.assert_close(posterior_latent(mean, std, key, 0, "mean", model), mean * 0.18215)
    # a seeded draw of N(mean, std^2): over many seeds its average and spread match the posterior
    draws = torch.stack([posterior_latent(mean, std, key, s, "sample", model) for s in range(400)]) / 0.18215
    assert (draws.mean(0) - mean).abs().max() < 5 * std.max() / 20
    torch.testing.assert_close(draws.std(0), std, rtol=0.25, atol=1e-3)


def test_shift_and_scaling_factor_as_the_sd3_scripts():
    model = vae(shift_factor=0.0609, scaling_factor=1.5305)
    raw = torch.randn(2, 4, 8, 8)
    torch.testing.assert_close(scale_latents(raw, model), (raw - 0.0609) * 1.5305)
    torch.testing.assert_close(unscale_latents(scale_latents(raw, model), model), raw)
    plain = vae()
    torch.testing.assert_close(scale_latents(raw, plain), raw * 0.18215)  # SD1.5/SDXL: no shift


def test_another_vae_or_image_gets_new_keys(tmp_path):
    a, b, c = vae(0), vae(1), vae(0, scaling_factor=0.5)
    assert vae_fingerprint(a) == vae_fingerprint(vae(0))
    assert len({vae_fingerprint(a), vae_fingerprint(b), vae_fingerprint(c)}) == 3
    image = examples()[0].images[0]
    assert image_key(image) != image_key(image + 1e-3) and image_key(image) != image_key(image[:, :8, :8])
    encode_examples(examples(), a, str(tmp_path), 0)
    counter = Counting(b)
    assert encode_examples(examples(), b, str(tmp_path), 0)["encoded"] == 4 and counter.images == 4
    assert len(os.listdir(tmp_path / CACHE_DIR)) == 2


def test_refusals():
    with pytest.raises(ConfigError, match="latents_mean"):
        check_scaling(vae(latents_mean=[0.0] * 4, latents_std=[1.0] * 4))
    from dpokit.tasks.tiny_pipeline import tiny_unet2d_condition

    with pytest.raises(ConfigError, match="4-channel latents but the denoiser takes 3"):
        check_latent_channels(vae(), tiny_unet2d_condition(8, 3))
    with pytest.raises(ConfigError, match="latent_sample"):
        encode_examples(examples(), vae(), "/nonexistent", 0, mode="mode")


def test_a_vae_or_controlnet_folder_of_another_class_is_refused(tmp_path):
    from dpokit.diffusion_control import load_controlnet
    from dpokit.errors import ConfigError
    from dpokit.scoring.diffusion.latents import load_vae

    assert load_vae(str(tmp_path)) is None and load_controlnet(str(tmp_path)) is None  # no folder: none
    for folder in ("vae", "controlnet"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text('{"_class_name": "VQModel"}')
    with pytest.raises(ConfigError, match=r"vae/config.json names 'VQModel'; dpokit loads AutoencoderKL there"):
        load_vae(str(tmp_path))
    with pytest.raises(ConfigError, match=r"controlnet/config.json names 'VQModel'; dpokit loads ControlNetModel"):
        load_controlnet(str(tmp_path))
