"""Tiny models and tokenizers built in-process (no downloads): for the demo, tests and benchmarks.

The tokenizer is a byte-level BPE trained on the given texts and wrapped as a
``PreTrainedTokenizerFast`` with BOS/EOS/PAD, so it behaves like a real hub tokenizer
(``save_pretrained`` / ``AutoTokenizer.from_pretrained`` round-trip, chat template included).
"""

from __future__ import annotations

from typing import Iterable, Optional

import torch

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]

# A minimal chat template (ChatML-like) so conversational data can be rendered.
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}</s>\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)



def seeded_model(model_class, config, seed: int):
    """``model_class(config)`` with weights drawn from ``seed``; the global random state is left as it was."""
    state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return model_class(config)
    finally:
        torch.random.set_rng_state(state)

def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, word_level: bool = False):
    """Train a tokenizer on ``texts``: byte-level BPE (any text) or word-level (whitespace words)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    if word_level:
        tokenizer = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
        tokenizer.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
        trainer = trainers.WordLevelTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    else:
        tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        unk_token="<unk>",
    )
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


ARCHITECTURES = ("llama", "qwen2")


def tiny_llama(
    vocab_size: int,
    hidden_size: int = 64,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: Optional[int] = None,
    max_position_embeddings: int = 1024,
    seed: int = 0,
    tokenizer=None,
    num_kv_heads: Optional[int] = None,
    arch: str = "llama",
):
    """A small causal LM with random weights (seeded): Llama (no biases) or, with ``arch="qwen2"``,
    Qwen2 (biases on the q/k/v projections, full attention on every layer). ``num_kv_heads``:
    grouped-query attention with that many key/value heads (default: one per attention head);
    ``vocab_size`` may exceed the tokenizer's (real models pad their vocabularies)."""
    from transformers import LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    kv_heads = num_kv_heads or num_heads
    if num_heads % kv_heads:
        raise ValueError(f"{num_heads} attention heads cannot share {kv_heads} key/value heads "
                         "(the number of heads must be a multiple of the number of key/value heads)")
    if tokenizer is not None and vocab_size < len(tokenizer):
        raise ValueError(f"model vocabulary {vocab_size} is smaller than the tokenizer's ({len(tokenizer)})")
    config_class, model_class = (LlamaConfig, LlamaForCausalLM) if arch == "llama" else (Qwen2Config, Qwen2ForCausalLM)
    config = config_class(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=max_position_embeddings,
        tie_word_embeddings=False,
    )
    if tokenizer is not None:
        config.bos_token_id = tokenizer.bos_token_id
        config.eos_token_id = tokenizer.eos_token_id
        config.pad_token_id = tokenizer.pad_token_id
    return seeded_model(model_class, config, seed)


# ---- vision-language -------------------------------------------------------------------------

IMAGE_TOKEN = "<image>"

# ChatML-like like CHAT_TEMPLATE, with structured content: an {"type": "image"} block renders as
# the processor's <image> placeholder (expanded to one token per image patch by the processor).
VLM_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for block in message['content'] %}{% if block['type'] == 'image' %}<image>"
    "{% elif block['type'] == 'text' %}{{ block['text'] }}{% endif %}{% endfor %}{% endif %}</s>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def tiny_vlm_processor(texts: Iterable[str], vocab_size: int = 512, image_size: int = 16, patch_size: int = 4,
                       word_level: bool = False):
    """A Llava processor built in code: a tokenizer trained on ``texts`` with an ``<image>`` token, a
    CLIP image processor resizing to ``image_size`` (PIL backend, no torchvision needed) and the
    structured-content chat template. Each image becomes ``(image_size / patch_size) ** 2`` tokens."""
    from transformers import LlavaProcessor

    try:
        from transformers import CLIPImageProcessorPil as ImageProcessor
    except ImportError:  # older transformers: the one CLIP image processor
        from transformers import CLIPImageProcessor as ImageProcessor

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, word_level=word_level)
    tokenizer.add_special_tokens({"additional_special_tokens": [IMAGE_TOKEN]})
    tokenizer.chat_template = VLM_CHAT_TEMPLATE
    image_processor = ImageProcessor(size={"shortest_edge": image_size},
                                     crop_size={"height": image_size, "width": image_size})
    # num_additional_image_tokens=1: the CLS position the "default" feature strategy drops
    return LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=patch_size,
                          vision_feature_select_strategy="default", num_additional_image_tokens=1,
                          chat_template=VLM_CHAT_TEMPLATE, image_token=IMAGE_TOKEN)


def tiny_llava(processor, hidden_size: int = 64, num_layers: int = 2, num_heads: int = 4, vision_hidden: int = 32,
               vision_layers: int = 2, seed: int = 0):
    """A small Llava (CLIP vision tower, two-layer projector, Llama) with random weights (seeded),
    sized to ``processor`` (its vocabulary, image size and patch size). Saved with ``save_pretrained``
    next to ``processor.save_pretrained``, the directory loads back with
    ``AutoModelForImageTextToText`` and ``AutoProcessor``."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

    tokenizer = processor.tokenizer
    crop = processor.image_processor.crop_size
    image_size = int(crop["height"] if isinstance(crop, dict) else crop.height)
    patch = int(processor.patch_size)
    vision = CLIPVisionConfig(hidden_size=vision_hidden, intermediate_size=2 * vision_hidden,
                              num_hidden_layers=vision_layers, num_attention_heads=4, image_size=image_size,
                              patch_size=patch, projection_dim=vision_hidden)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=4 * hidden_size,
                       num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                       max_position_embeddings=1024, tie_word_embeddings=False,
                       bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                       pad_token_id=tokenizer.pad_token_id)
    config = LlavaConfig(vision_config=vision, text_config=text,
                         image_token_index=tokenizer.convert_tokens_to_ids(processor.image_token),
                         image_seq_length=(image_size // patch) ** 2, vision_feature_layer=-1,
                         vision_feature_select_strategy="default")
    model = seeded_model(LlavaForConditionalGeneration, config, seed)
    model.config.use_cache = False
    return model


# Qwen2-VL: each image renders as <|vision_start|><|image_pad|><|vision_end|> (the pad expanded
# to one token per merged patch by the processor).
QWEN_VISION_TOKENS = ["<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|video_pad|>"]
QWEN_VLM_CHAT_TEMPLATE = VLM_CHAT_TEMPLATE.replace("<image>", "<|vision_start|><|image_pad|><|vision_end|>")


def tiny_qwen2_vl_processor(texts: Iterable[str], vocab_size: int = 512, patch_size: int = 2, merge_size: int = 2,
                            min_pixels: int = 16 * 16, max_pixels: int = 16 * 32, word_level: bool = False):
    """A Qwen2-VL processor built in code: a tokenizer trained on ``texts`` with the vision tokens, and
    Qwen2-VL's image processor (PIL backend) with ``patch_size`` patches merged ``merge_size`` x
    ``merge_size`` (a 16 x 16 image: ``(16 / patch / merge) ** 2`` tokens; images are resized to
    between ``min_pixels`` and ``max_pixels``). Without ``torchvision`` (which ``Qwen2VLProcessor``'s
    video half needs) this is a :class:`~dpokit.data.grid_processor.GridImageProcessor`; saved
    with ``save_pretrained``, :func:`dpokit.models.load_processor` loads it back."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from .data.grid_processor import GridImageProcessor

    tokenizer = train_tokenizer(texts, vocab_size=vocab_size, word_level=word_level)
    tokenizer.add_special_tokens({"additional_special_tokens": QWEN_VISION_TOKENS})
    tokenizer.chat_template = QWEN_VLM_CHAT_TEMPLATE
    image_processor = Qwen2VLImageProcessorPil(patch_size=patch_size, temporal_patch_size=1, merge_size=merge_size,
                                               min_pixels=min_pixels, max_pixels=max_pixels)
    return GridImageProcessor(image_processor, tokenizer, QWEN_VLM_CHAT_TEMPLATE, "<|image_pad|>")


def tiny_qwen2_vl(processor, hidden_size: int = 32, num_layers: int = 2, num_heads: int = 4, vision_dim: int = 16,
                  vision_layers: int = 2, seed: int = 0, arch: str = "qwen2_vl"):
    """A small Qwen2-VL (``arch="qwen2_5_vl"``: Qwen2.5-VL) with random weights (seeded), sized to
    ``processor``: its vision tower's patch and merge sizes, multimodal rotary positions split over
    (temporal, height, width). Loads back with ``AutoModelForImageTextToText``."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLConfig,
                              Qwen2VLForConditionalGeneration)

    config_class, model_class = {"qwen2_vl": (Qwen2VLConfig, Qwen2VLForConditionalGeneration),
                                 "qwen2_5_vl": (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration)}[arch]
    tokenizer, images = processor.tokenizer, processor.image_processor
    half = hidden_size // num_heads // 2  # rotary frequencies per head, split over t / h / w
    section = [half - 2 * (half // 4), half // 4, half // 4]
    text = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, intermediate_size=2 * hidden_size,
                num_hidden_layers=num_layers, num_attention_heads=num_heads, num_key_value_heads=num_heads,
                rope_parameters={"rope_type": "default", "mrope_section": section, "rope_theta": 10000.0},
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=False)
    vision = dict(depth=vision_layers, hidden_size=hidden_size, num_heads=2, patch_size=int(images.patch_size),
                  spatial_merge_size=int(images.merge_size), temporal_patch_size=1, in_channels=3)
    vision.update({"embed_dim": vision_dim} if arch == "qwen2_vl" else
                  {"hidden_size": vision_dim, "intermediate_size": 2 * vision_dim, "out_hidden_size": hidden_size,
                   "fullatt_block_indexes": [vision_layers - 1], "window_size": 8})
    ids = {name: tokenizer.convert_tokens_to_ids(token) for name, token in
           zip(("vision_start_token_id", "image_token_id", "vision_end_token_id", "video_token_id"),
               QWEN_VISION_TOKENS)}
    config = config_class(text_config=text, vision_config=vision, tie_word_embeddings=False, **ids)
    model = seeded_model(model_class, config, seed)
    model.config.use_cache = False
    return model
