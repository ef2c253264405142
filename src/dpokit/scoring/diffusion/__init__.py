"""Diffusion models on the scorer seam: the denoising surrogate fills ``LossInputs``.

:mod:`.noise` draws the shared timestep and noise of each example and the regression target;
:mod:`.scorer` computes policy and reference denoising errors and writes ``lp = -e_pi``,
``lr = -e_ref`` into the fields every loss reads. Registered as the scorer kind ``"diffusion"``.
"""

from .. import register_scorer
from .noise import draw_noise, example_seed, flow_sigma, model_timesteps, noised_and_target
from .scorer import DiffusionScorer, diffusion_scorer, per_sample_error, predict, refuse_unservable

def _check_diffusion(config, needs) -> None:
    if config.model.kind != "diffusion":
        raise ValueError("'diffusion' scores denoisers: it is model.kind: diffusion's own scorer (leave train.scorer unset)")


register_scorer("diffusion", check=_check_diffusion)(diffusion_scorer)

__all__ = ["DiffusionScorer", "diffusion_scorer", "draw_noise", "example_seed", "flow_sigma", "model_timesteps",
           "noised_and_target",
           "per_sample_error", "predict", "refuse_unservable"]
