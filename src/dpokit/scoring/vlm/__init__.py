"""Vision-language models: the LM scorer with the images' features in the prompt (kind ``"vlm"``).

    engine.py   VisionLogProbEngine, the feature-table embedding that lets every LM layout run on
                image prompts (prompt-shared: the prompt and its image run once per pair)
"""

from __future__ import annotations

from ..lm.layouts import check_layout
from .engine import ImageEmbeddingBackbone, VisionLogProbEngine, check_vision_model, image_features

__all__ = ["ImageEmbeddingBackbone", "VisionLogProbEngine", "check_vision_model", "image_features"]


def _register() -> None:
    from .. import register_scorer

    def check(config, needs) -> None:
        if config.model.kind != "vlm":
            raise ValueError("'vlm' scores image-text models: it is model.kind: vlm's own scorer "
                             "(leave train.scorer unset)")

    @register_scorer("vlm", check=check)
    def _vlm_scorer(config, needs, processor, model):
        """``processor``: the model's processor (its tokenizer gives the pad id)."""
        check_vision_model(model)
        check_layout(model, config.train.layout)
        tokenizer = getattr(processor, "tokenizer", processor)
        return VisionLogProbEngine(needs, tokenizer.pad_token_id, config.train.layout, config.train.chunk_size)


_register()
