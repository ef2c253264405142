"""The vision-language scorer: the LM log-prob engine with image features in the prompt.

A VLM of the Llava kind runs ``vision tower -> projector`` on each image and writes the resulting
``[tokens_per_image, hidden]`` features into the token embeddings at the image placeholder positions
of the prompt; the language model then runs on those embeddings with ordinary 1D positions. The
scorer reproduces exactly that, so every LM layout runs unchanged:

* the collate (:func:`dpokit.data.vision.collate_vision`) replaces the ``k``-th image placeholder
  token of a batch by the *virtual id* ``-(k + 1)``;
* :meth:`VisionLogProbEngine.hidden` encodes the batch's images **once** (one vision-tower pass over
  all images of the batch), flattens the features to a table ``[K, hidden]``, and hands the layout
  a backbone (:class:`ImageEmbeddingBackbone`) whose embedding of id ``-(k + 1)`` is row ``k`` of that
  table and of any id ``>= 0`` the language model's own token embedding.

The layouts only move ids around, so ``padded`` (chosen and rejected rows both read the same feature
rows: one image encoding per pair, two language-model passes over the prompt), ``packed`` and
``prompt_shared`` (the prompt, image tokens included, runs once per pair) give the same log-probs,
and gradients reach the projector (and the vision tower, when it trains) through the table.
``tests/scoring/vlm/test_engine.py`` checks every layout against ``padded`` and the padded scorer
against the model's own forward.

Supported families (:data:`SUPPORTED`) are those whose forward is exactly "scatter the image
features into the embeddings, then the decoder": with 1D positions (Llava), or with the
multimodal rotary positions of Qwen2-VL / Qwen2.5-VL, which :mod:`.positions` derives from the
layout's 1D positions and the images' grids (``image_grid_thw``), so prompt sharing still holds.
Others are refused with the reason (:data:`UNSUPPORTED`) when the scorer is built.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ...data.collate import Batch
from ...data.vision import collate_vision
from ...errors import ConfigError
from ...losses import Needs
from ..lm.engine import LogProbEngine
from ..lm.projection import RowGroup, split_model
from .positions import MROPE_FAMILIES, rope_positions

SUPPORTED = ("llava",) + MROPE_FAMILIES
UNSUPPORTED = {
    "qwen3_vl": "multimodal rotary positions (3D position ids per image patch), not 1D positions",
    "gemma3": "bidirectional attention among the image tokens (token_type_ids), not a causal mask",
    "paligemma": "bidirectional attention over the image + prefix, not a causal mask",
    "mllama": "cross-attention layers read the images, not placeholder embeddings",
}


def _base(model):
    base = getattr(model, "_orig_mod", model)
    if hasattr(base, "get_base_model"):  # peft.PeftModel
        base = base.get_base_model()
    return getattr(base, "module", base)  # DDP


def check_vision_model(model) -> None:
    """Refuse a model this scorer cannot reproduce, naming why."""
    model_type = getattr(getattr(_base(model), "config", None), "model_type", None)
    if model_type in UNSUPPORTED:
        raise ConfigError(f"model.kind: vlm: {model_type} is not supported: {UNSUPPORTED[model_type]}")
    if model_type not in SUPPORTED:
        raise ConfigError(f"model.kind: vlm: model type {model_type!r} is not one of the supported vision-language "
                          f"families ({', '.join(SUPPORTED)}); for a causal LM use model.kind: causal_lm")


def image_features(model, pixel_values: torch.Tensor, image_sizes: Optional[torch.Tensor] = None,
                   image_grid_thw: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``[total image tokens, hidden]``: the projected features of every image, in image order."""
    base = _base(model)
    kwargs = {key: value for key, value in (("image_sizes", image_sizes), ("image_grid_thw", image_grid_thw))
              if value is not None}
    out = base.get_image_features(pixel_values=pixel_values, return_dict=True, **kwargs)
    features = getattr(out, "pooler_output", out)
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features], dim=0)
    return features.reshape(-1, features.shape[-1])


class ImageEmbeddingBackbone(torch.nn.Module):
    """The language model with ids ``-(k + 1)`` embedded as row ``k`` of ``features``; with
    ``positions`` (a :class:`~.positions.MultimodalRopePositions`) the layout's 1D position ids
    become the model's 3D ones."""

    def __init__(self, decoder: torch.nn.Module, features: torch.Tensor, positions=None):
        super().__init__()
        self.decoder = decoder
        self.features = features
        self.positions = positions
        self.config = decoder.config

    def forward(self, input_ids: torch.Tensor, **kwargs):
        is_image = input_ids < 0
        embeds = self.decoder.get_input_embeddings()(input_ids.clamp(min=0))
        rows = -input_ids[is_image] - 1
        used = int(rows.unique().numel())
        if used != self.features.shape[0] or (used and int(rows.max()) >= used):
            raise ValueError(f"the batch has {used} distinct image token(s) but its images give "
                             f"{self.features.shape[0]} feature rows: placeholders and images do not match")
        if used:
            image = self.features.index_select(0, rows).to(embeds.dtype)
            embeds = embeds.masked_scatter(is_image.unsqueeze(-1), image)
        if self.positions is not None:
            kwargs["position_ids"] = self.positions(input_ids, kwargs.get("position_ids"))
        return self.decoder(inputs_embeds=embeds, **kwargs)


class VisionLogProbEngine(LogProbEngine):
    """:class:`~dpokit.scoring.lm.LogProbEngine` for batches of :class:`~dpokit.data.vision.VisionBatch`.
    ``collate``: how batches of its examples are built (what the reference cache uses)."""

    collate = staticmethod(collate_vision)

    def __init__(self, needs: Needs, pad_token_id: int, layout: str = "padded", chunk_size: int = 1024):
        if needs.prompt_logps:
            raise ConfigError("model.kind: vlm: this loss reads the prompt's own log-probs, which are not "
                              "defined at image positions; choose a loss without prompt log-probs")
        super().__init__(needs, pad_token_id, layout, chunk_size)
        self._images: Optional[tuple] = None  # (pixel_values, image_sizes) of the batch being scored

    def loss_inputs(self, policy, batch: Batch, reference=None):
        self._images = _images_of(batch)
        try:
            return super().loss_inputs(policy, batch, reference)
        finally:
            self._images = None

    def hidden(self, model, groups: Sequence[RowGroup]):
        images = _images_of(groups) or self._images
        backbone, lm_head = split_model(model)
        device = lm_head.weight.device
        grid = None
        if images is None or images[0] is None:
            features = lm_head.weight.new_zeros(0, backbone.config.hidden_size)
        else:
            pixel_values, sizes, grid = images
            features = image_features(model, pixel_values.to(device, lm_head.weight.dtype),
                                      None if sizes is None else sizes.to(device),
                                      None if grid is None else grid.to(device))
        wrapped = ImageEmbeddingBackbone(backbone, features, rope_positions(_base(model), grid))
        hidden, targets, lengths = self.layout(wrapped, groups, self.pad_token_id, device)
        return hidden, targets, lengths, lm_head


def _images_of(source: Any) -> Optional[tuple]:
    pixel_values = getattr(source, "pixel_values", None)
    if pixel_values is None:
        return None
    return pixel_values, getattr(source, "image_sizes", None), getattr(source, "image_grid_thw", None)
