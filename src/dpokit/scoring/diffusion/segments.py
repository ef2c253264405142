"""Per-segment denoising errors of video samples (DenseDPO's segment-level preferences).

A video sample is ``[C, F, H, W]`` (the layout of diffusers video denoisers such as
``WanTransformer3DModel``), batched ``[N, C, F, H, W]``. A batch with segment labels carries
``frame_segments`` [B, F] (the segment index of each frame, -1 for frames outside every segment)
and ``extras["segment_labels"]`` [B, S]. For segment ``f`` with frame set ``S_f``, on the same
``(x_t, t, eps)`` as the whole-clip error,

    e^f(x) = mean_{elements of the frames in S_f} (eps_hat(x_t, t, c) - target)^2

the mean over the segment's ``C * |S_f| * H * W`` elements, the official Diffusion-DPO scaling (mean,
not sum, over elements) restricted to the segment (``../shared/DIFFUSION.md`` section 5: ``s^f(x) =
mean_{D restricted to S_f}``). Every frame holds the same number of elements, so ``e^f`` is the mean
of the per-frame means over ``S_f``. The scorer writes ``lp^f = -e^f`` and ``lr^f = -e_ref^f`` as
``extras["segment_policy_logps"]`` / ``extras["segment_reference_logps"]`` [B, M, S], the fields the
``dense_segment_dpo`` loss reads. A segment with no frames (padding) gets error 0.

[partial] For latent video models, frames here are the denoiser's (latent) frames: mapping seconds or
pixel frames to latent frames through the VAE's temporal compression is the data's business.
"""

from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch

SEGMENT_POLICY, SEGMENT_REFERENCE, SEGMENT_LABELS = "segment_policy_logps", "segment_reference_logps", "segment_labels"
FRAME_DIM = 2  # [N, C, F, H, W]


def wants_segments(needs) -> bool:
    return SEGMENT_POLICY in tuple(getattr(needs, "extras", ()) or ())


def segment_plan(batch, m: int) -> Tuple[torch.Tensor, int]:
    """``(frame_segments`` repeated for the M samples of each example [B*M, F], ``S)`` of ``batch``."""
    frame_segments = getattr(batch, "frame_segments", None)
    labels = (getattr(batch, "extras", None) or {}).get(SEGMENT_LABELS)
    if frame_segments is None or labels is None:
        raise ValueError("this loss reads per-segment errors: the data need per-segment labels (video records "
                         "with 'segments' or 'segment_length' and 'segment_labels', dpokit.data.video)")
    if batch.images.dim() != 6 or frame_segments.shape != (batch.images.shape[0], batch.images.shape[3]):
        raise ValueError(f"per-segment errors need video samples [B, M, C, F, H, W] and frame_segments [B, F]; got "
                         f"{tuple(batch.images.shape)} and {tuple(frame_segments.shape)}")
    return frame_segments.repeat_interleave(m, dim=0), int(labels.shape[1])


def segment_errors(prediction: torch.Tensor, target: torch.Tensor, frame_segments: torch.Tensor,
                   num_segments: int) -> torch.Tensor:
    """``e^f`` per sample and segment: [N, C, F, H, W] x2, frame_segments [N, F] -> [N, S] (float32 at
    least, as :func:`dpokit.scoring.diffusion.per_sample_error`)."""
    dtype = torch.promote_types(prediction.dtype, torch.float32)
    squared = (prediction.to(dtype) - target.to(dtype)).pow(2)
    per_frame = squared.transpose(1, FRAME_DIM).flatten(2).mean(dim=2)  # [N, F]
    member = (frame_segments.to(per_frame.device).unsqueeze(-1)
              == torch.arange(num_segments, device=per_frame.device)).to(dtype)  # [N, F, S]
    return torch.einsum("nf,nfs->ns", per_frame, member) / member.sum(dim=1).clamp_min(1.0)


def segment_extras(errors: Dict[str, Optional[torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """The ``extras`` of the loss from the per-segment errors ``{"policy": [B, M, S], "reference": ...}``."""
    out = {SEGMENT_POLICY: -errors["policy"]}
    if errors.get("reference") is not None:
        out[SEGMENT_REFERENCE] = -errors["reference"]
    return out
