"""The LlavaProcessor every saved model folder ships (finetune output and export), built one way.

Its image processor does what training and evaluation do to an image (`components.core.images.transform_image`
then `normalize`): in 'pad' mode a square with the CLIP-mean colour first (transformers' LLaVA image processor
has `do_pad` for exactly this; CLIPImageProcessor has none), then the shortest-edge bicubic resize, the centre
crop and the CLIP normalisation. patch_size, vision_feature_select_strategy and num_additional_image_tokens
make it expand `<image>` to the model's image token count.
"""

from __future__ import annotations

from typing import Literal

from transformers import (
    LlavaForConditionalGeneration,
    LlavaImageProcessorPil,
    LlavaProcessor,
    PreTrainedTokenizerBase,
)

from components.core.images import CLIP_MEAN, CLIP_STD
from components.models.assembly import model_image_settings


def image_processor(mode: Literal["pad", "square"], size: int) -> LlavaImageProcessorPil:
    """The transformers image processor equal to our `pixel_values(img, mode, size)`."""
    return LlavaImageProcessorPil(
        do_pad=mode == "pad",  # pad colour tuple(int(255 * m) for m in image_mean) = PAD_COLOR
        do_resize=True,
        size={"shortest_edge": size},
        do_center_crop=True,
        crop_size={"height": size, "width": size},
        do_rescale=True,
        do_normalize=True,
        image_mean=list(CLIP_MEAN),
        image_std=list(CLIP_STD),
        do_convert_rgb=True,
    )


def build_processor(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    mode: Literal["pad", "square"],
    chat_template: str | None = None,
) -> LlavaProcessor:
    """A LlavaProcessor that shapes images as `mode` did in training and expands `<image>` for this model."""
    size, n_tokens = model_image_settings(model)
    processor = LlavaProcessor(
        image_processor=image_processor(mode, size),
        tokenizer=tokenizer,
        patch_size=int(model.config.vision_config.patch_size),
        vision_feature_select_strategy=model.config.vision_feature_select_strategy,
        # The CLIP tower emits a CLS token besides the patches; the processor drops it again for "default".
        num_additional_image_tokens=1,
        chat_template=chat_template,
    )
    expands_to = (size // processor.patch_size) ** 2 + processor.num_additional_image_tokens
    expands_to -= 1 if processor.vision_feature_select_strategy == "default" else 0
    if expands_to != n_tokens or getattr(model.config, "image_seq_length", n_tokens) != n_tokens:
        raise ValueError(
            f"the processor would expand <image> to {expands_to} tokens, the model takes {n_tokens} "
            f"(config.image_seq_length={getattr(model.config, 'image_seq_length', None)})"
        )
    return processor
