"""A processor for patch-grid image processors (Qwen2-VL style) composed of its two saved parts.

``transformers``' ``Qwen2VLProcessor`` (and ``Qwen2_5_VLProcessor``) also hold a video processor,
which needs ``torchvision``; without it neither the class nor ``AutoProcessor`` can be built, even
for image-only data. :class:`GridImageProcessor` does the image half of that processor's job from
the tokenizer and the image processor saved in the same directory (``AutoTokenizer`` /
``AutoImageProcessor``): it turns images into ``pixel_values`` + ``image_grid_thw``, expands each
image token of the text into ``grid.prod() // merge_size ** 2`` tokens, and returns
``mm_token_type_ids`` (1 at image tokens), the keys the model's forward reads.
:func:`dpokit.models.load_processor` uses it only when ``AutoProcessor`` gives no processor with
both parts; where ``torchvision`` is installed the model's own processor class is used.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

from transformers import ProcessorMixin

DEFAULT_IMAGE_TOKEN = "<|image_pad|>"


class GridImageProcessor(ProcessorMixin):
    """``processor(images=..., text=[...], add_special_tokens=..., return_tensors="pt")`` for
    image processors that return ``image_grid_thw`` (and have ``merge_size``). A ``ProcessorMixin``,
    so trainers that type-check their processing class (TRL's) take it."""

    def __init__(self, image_processor, tokenizer, chat_template: Optional[str] = None,
                 image_token: Optional[str] = None):
        if not hasattr(image_processor, "merge_size"):
            raise ValueError(f"{type(image_processor).__name__} has no merge_size: not a patch-grid image processor")
        super().__init__(image_processor, tokenizer, chat_template=chat_template or tokenizer.chat_template)
        self.image_token = image_token or getattr(tokenizer, "image_token", None) or DEFAULT_IMAGE_TOKEN
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        if self.image_token_id is None or self.image_token_id == tokenizer.unk_token_id:
            raise ValueError(f"the tokenizer has no image token {self.image_token!r}")
        self.chat_template = chat_template or getattr(tokenizer, "chat_template", None)

    def apply_chat_template(self, messages, **kwargs):
        kwargs.setdefault("chat_template", self.chat_template)
        return self.tokenizer.apply_chat_template(messages, **kwargs)

    def _expand(self, texts: Sequence[str], counts: List[int]) -> List[str]:
        counts = iter(counts)
        out = []
        for text in texts:
            pieces = text.split(self.image_token)
            expanded = pieces[0]
            for piece in pieces[1:]:
                try:
                    n = next(counts)
                except StopIteration:
                    raise ValueError("the text has more image tokens than there are images") from None
                expanded += self.image_token * n + piece
            out.append(expanded)
        if next(counts, None) is not None:
            raise ValueError("there are more images than image tokens in the text")
        return out

    def __call__(self, images: Optional[Sequence[Any]] = None, text: Any = None, return_tensors: str = "pt",
                 **kwargs):
        texts = [text] if isinstance(text, str) else list(text or [])
        image_inputs = {}
        counts: List[int] = []
        if images:
            flat = [im for item in images for im in (item if isinstance(item, (list, tuple)) else [item])]
            image_inputs = dict(self.image_processor(images=flat, return_tensors=return_tensors))
            merge = int(self.image_processor.merge_size)
            counts = [int(n) for n in (image_inputs["image_grid_thw"].prod(-1) // merge ** 2).tolist()]
        encoded = self.tokenizer(self._expand(texts, counts), return_tensors=return_tensors, **kwargs)
        out = dict(encoded)
        out["mm_token_type_ids"] = (encoded["input_ids"] == self.image_token_id).int()
        out.update(image_inputs)
        return out

    def save_pretrained(self, directory: str, **kwargs) -> None:
        """The tokenizer and image processor only (what :meth:`from_pretrained` reads back)."""
        self.tokenizer.save_pretrained(directory)
        self.image_processor.save_pretrained(directory)

    @classmethod
    def from_pretrained(cls, directory: str, **kwargs) -> "GridImageProcessor":
        from transformers import AutoImageProcessor, AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(directory, **kwargs)
        return cls(AutoImageProcessor.from_pretrained(directory, **kwargs), tokenizer)
