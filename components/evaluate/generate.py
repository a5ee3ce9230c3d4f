"""Batched greedy decoding for evaluation: `Generator` wraps a LlavaForConditionalGeneration and its tokenizer.

The reference decodes one question at a time (model_vqa_loader asserts batch size 1). Here prompts are
left-padded into batches and decoded with HF `generate` (greedy, KV cache): left padding keeps every
prompt's last token in the last column, so all rows start generating at the same step, and position
ids come from the attention mask, so a prompt's answer does not depend on its batch neighbours.
`parity_differences` checks exactly that on a sample.

Pure: no Ray. The evaluate stage runs one `Generator` per actor.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from transformers import LlavaForConditionalGeneration, PreTrainedTokenizerBase

from components.core import datafiles
from components.core.conversation import RecordError
from components.core.images import REJECTION_REASONS, ImageError, blank_pixels, decode_image, pixel_values
from components.core.templates import TemplateName
from components.core.tokenize import tokenize_prompt
from components.models.assembly import model_image_settings

ImageRef = Image.Image | bytes | str | Path | None  # decoded, encoded bytes, a path/URL, or text-only
ImageMode = Literal["pad", "square"]


class GenerationError(ValueError):
    """A prompt that cannot be generated for (unreadable image, prompt too long); names the item."""


class QuestionRejected(ValueError):
    """A question whose own data is unusable (image outside its root, not a file, corrupt; special-token
    text): `reason` is a rejection reason, as in `prepare`, and the message names the question and file."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class GenItem:
    """One prompt to answer: `key` names it in errors and results (the benchmark's question id)."""

    key: str
    prompt: str  # the question text, without "<image>" (the template places the image)
    image: ImageRef = None


def resolve_dtype(dtype: str | torch.dtype, device: str | torch.device) -> torch.dtype:
    """'auto' is fp16 on CUDA (as the reference evaluates) and fp32 on CPU (no fast half kernels)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise ValueError(f"dtype {dtype!r}: expected auto, fp32, fp16 or bf16")
    return table[dtype]


def resolve_device(device: str) -> str:
    """'auto' is cuda when a GPU is visible, else cpu."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r}: no CUDA GPU is visible here")
    return device


class Generator:
    """Greedy batched answers from a LLaVA model, prompts built by the training template code.

    `generate_batch` takes prompts that either all have an image or all have none (Llava checks that the
    image blocks in input_ids match the images given); `answer` groups any list that way itself.
    """

    def __init__(
        self,
        model: LlavaForConditionalGeneration,
        tokenizer: PreTrainedTokenizerBase,
        *,
        template: TemplateName = "vicuna_v1",
        image_mode: ImageMode = "pad",
        max_new_tokens: int = 128,
        image_root: str | Path | None = None,
        blank_images: bool = False,
    ) -> None:
        if tokenizer.pad_token_id is None:
            raise ValueError("tokenizer has no pad token; call add_llava_tokens(tokenizer) first")
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.template: TemplateName = template
        self.image_mode: ImageMode = image_mode
        self.max_new_tokens = max_new_tokens
        self.image_root = image_root
        # Image-dependence check: every image becomes the blank (mean-colour) input, the prompt keeps its
        # image block; a model that really looks at images should score clearly worse this way.
        self.blank_images = blank_images
        self.image_size, self.num_image_tokens = model_image_settings(model)
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype

    @classmethod
    def from_dir(
        cls, model_dir: str | Path, *, device: str = "auto", dtype: str | torch.dtype = "auto", **kwargs: Any
    ) -> Generator:
        """Load a saved model folder (weights + tokenizer, local or s3://) onto `device`."""
        from components.models.assembly import load_llava
        from components.models.tokenizer import load_tokenizer

        device = resolve_device(device)
        model = load_llava(model_dir, dtype=resolve_dtype(dtype, device)).to(device)
        return cls(model, load_tokenizer(str(model_dir)), **kwargs)

    # ------------------------------------------------------------ inputs

    def prompt_ids(self, prompt: str, has_image: bool) -> list[int]:
        return tokenize_prompt(prompt, self.tokenizer, template=self.template,
                               num_image_tokens=self.num_image_tokens, has_image=has_image)

    def load_image(self, item: GenItem) -> Image.Image:
        try:
            return self._image(item, self.image_root)
        except (ImageError, datafiles.DataFileError) as e:
            raise GenerationError(f"question {item.key}: {e}") from None

    def _image(self, item: GenItem, root: str | Path | None) -> Image.Image:
        ref = item.image
        if isinstance(ref, Image.Image):
            return ref
        if isinstance(ref, bytes):
            return decode_image(ref, source=f"question {item.key} (embedded image)")
        if isinstance(ref, str | Path):
            # A question file names its image: read it the guarded way, under its root when there is one.
            path, data = (datafiles.read(datafiles.DataRoot(str(root)), str(ref)) if root is not None
                          else (str(ref), datafiles.read_checked(str(ref))))
            return decode_image(data, source=path)
        raise GenerationError(f"question {item.key}: no image to load (image is {type(ref).__name__})")

    def prepare_item(self, item: GenItem, image_root: str | Path | None = None) -> GenItem:
        """`item` with its image decoded (under `image_root`, else the generator's) and its prompt checked;
        QuestionRejected when the question's own data is unusable, so that it costs only itself."""
        try:
            self.prompt_ids(item.prompt, item.image is not None)
            if item.image is None:
                return item
            return GenItem(item.key, item.prompt, self._image(item, image_root or self.image_root))
        except (RecordError, datafiles.DataFileError) as e:
            raise QuestionRejected(e.reason, f"question {item.key}: {e}") from None
        except ImageError as e:
            raise QuestionRejected(REJECTION_REASONS[e.reason], f"question {item.key}: {e}") from None

    def _pixels(self, items: Sequence[GenItem]) -> torch.Tensor:
        if self.blank_images:
            arrays = [blank_pixels(self.image_size) for _ in items]
        else:
            arrays = [pixel_values(self.load_image(it), self.image_mode, self.image_size) for it in items]
        return torch.stack([torch.from_numpy(a) for a in arrays]).to(self.device, self.dtype)

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = int(self.tokenizer.pad_token_id)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
            mask[i, width - len(r):] = 1
        return ids.to(self.device), mask.to(self.device)

    # ------------------------------------------------------------ decoding

    @torch.inference_mode()
    def generate_batch(self, items: Sequence[GenItem], max_new_tokens: int | None = None) -> list[str]:
        """Answers for one batch, in order. All items must have an image, or none may."""
        if not items:
            return []
        has_image = {it.image is not None for it in items}
        if len(has_image) > 1:
            raise ValueError("a batch mixes image and text-only prompts; use Generator.answer to group them")
        with_image = has_image.pop()
        rows = [self.prompt_ids(it.prompt, with_image) for it in items]
        input_ids, attention_mask = self._left_pad(rows)
        inputs: dict[str, torch.Tensor] = {"input_ids": input_ids, "attention_mask": attention_mask}
        if with_image:
            inputs["pixel_values"] = self._pixels(items)
        out = self.model.generate(
            **inputs,
            do_sample=False,
            num_beams=1,
            use_cache=True,
            max_new_tokens=max_new_tokens or self.max_new_tokens,
            eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.tokenizer.pad_token_id,
            # Greedy: sampling knobs a checkpoint's generation_config may carry must not warn or apply.
            temperature=None,
            top_p=None,
            top_k=None,
        )
        new_tokens = out[:, input_ids.shape[1]:].cpu()
        texts = self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)
        return [t.strip() for t in texts]

    def answer(
        self, items: Sequence[GenItem], *, batch_size: int, max_new_tokens: int | None = None
    ) -> list[str]:
        """Answers for any list, in input order: image and text-only prompts go in separate batches."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        answers: list[str | None] = [None] * len(items)
        for with_image in (True, False):
            group = [i for i, it in enumerate(items) if (it.image is not None) == with_image]
            for start in range(0, len(group), batch_size):
                chunk = group[start:start + batch_size]
                texts = self.generate_batch([items[i] for i in chunk], max_new_tokens)
                for i, text in zip(chunk, texts, strict=True):
                    answers[i] = text
        return [a if a is not None else "" for a in answers]


def compare_answers(reference: Mapping[str, str], candidate: Mapping[str, str]) -> list[dict[str, Any]]:
    """Keys where two answer sets differ: [{key, reference, candidate}] (a missing answer is None)."""
    keys = list(dict.fromkeys([*reference, *candidate]))
    return [
        {"key": k, "reference": reference.get(k), "candidate": candidate.get(k)}
        for k in keys
        if reference.get(k) != candidate.get(k)
    ]


def parity_differences(
    generator: Generator, items: Sequence[GenItem], *, batch_size: int, max_new_tokens: int | None = None
) -> list[dict[str, Any]]:
    """Batch-1 answers (the reference's way) vs batched answers on `items`; [] when they all agree.

    Each difference is {key, reference (batch 1), candidate (batched)}.
    """
    single = {it.key: generator.generate_batch([it], max_new_tokens)[0] for it in items}
    batched = generator.answer(items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    return compare_answers(single, dict(zip([it.key for it in items], batched, strict=True)))


def timed_answer(
    generator: Generator, items: Sequence[GenItem], *, batch_size: int, max_new_tokens: int | None = None
) -> tuple[list[str], float]:
    """`answer` plus its wall time in seconds (CUDA work included: synchronised before reading the clock)."""
    sync = torch.cuda.synchronize if generator.device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    texts = generator.answer(items, batch_size=batch_size, max_new_tokens=max_new_tokens)
    sync()
    return texts, time.perf_counter() - start
