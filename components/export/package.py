"""Write a finetuned model as a plain transformers `LlavaForConditionalGeneration` directory.

The directory holds safetensors weights, config.json, generation_config.json (greedy, as every v1.5 eval
script), the tokenizer, and the `LlavaProcessor` of `components.models.processor` in pad mode (a square
with the CLIP-mean colour before the shortest-edge resize and centre crop), plus the vicuna_v1 chat
template. Everything loads with `AutoProcessor` / `LlavaForConditionalGeneration` without trust_remote_code.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

from transformers import AutoConfig, LlavaForConditionalGeneration, PreTrainedTokenizerBase

from components.core import storage
from components.models.connectors import HF_NATIVE, is_hf_native
from components.models.processor import build_processor

GREEDY_MAX_NEW_TOKENS = 128  # model_vqa_loader's default (reference §5.1)
CUSTOM_LOADER = "components.models.assembly.load_llava"


class ExportError(ValueError):
    """The model cannot be exported as asked; the message names the config key to change."""


def _saved_config(model_dir: str) -> Any:
    if not storage.is_remote(model_dir):
        # A local folder, or a Hub name (its config.json alone is fetched).
        return AutoConfig.from_pretrained(model_dir.removeprefix("file://"))
    with tempfile.TemporaryDirectory(prefix="llava-config-") as tmp:
        Path(tmp, "config.json").write_bytes(storage.read_bytes(storage.join(model_dir, "config.json")))
        return AutoConfig.from_pretrained(tmp)


def saved_connector_spec(model_dir: str) -> str:
    """The connector recorded in a saved model's config (mm_projector_type), from its config.json alone: the
    export's driver reads no weights, and copies no remote folder to its node."""
    try:
        config = _saved_config(model_dir)
    except (OSError, ValueError) as e:
        raise ExportError(f"{model_dir}: not a saved transformers model folder ({e})") from None
    if config.model_type != "llava":
        raise ExportError(f"{model_dir}: config.json has model_type {config.model_type!r}, expected 'llava'")
    return str(getattr(config, "mm_projector_type", HF_NATIVE))


def check_connector(spec: str, allow_custom: bool) -> bool:
    """True when `spec` needs our loader; raises unless transformers represents it or the opt-in is set."""
    if is_hf_native(spec):
        return False
    if not allow_custom:
        raise ExportError(
            f"export: the finetuned model's connector is {spec!r} (model.connector), "
            f"which transformers' LlavaForConditionalGeneration cannot represent (it only has {HF_NATIVE}): "
            "plain from_pretrained would load a randomly initialised projector. Train with "
            f"model.connector: {HF_NATIVE}, or set export.allow_custom_connector: true to export anyway "
            f"(the export then records mm_projector_type={spec!r} and must be loaded with {CUSTOM_LOADER})"
        )
    return True


def greedy_generation_config(model: LlavaForConditionalGeneration, tokenizer: PreTrainedTokenizerBase) -> Any:
    """The model's generation config set to greedy decoding with the reference's answer length."""
    gen = copy.deepcopy(model.generation_config)
    gen.do_sample = False
    gen.num_beams = 1
    gen.temperature = None
    gen.top_p = None
    gen.top_k = None
    gen.max_new_tokens = GREEDY_MAX_NEW_TOKENS
    gen.max_length = None
    gen.bos_token_id = tokenizer.bos_token_id
    gen.eos_token_id = tokenizer.eos_token_id
    gen.pad_token_id = tokenizer.pad_token_id
    return gen


def model_card(*, name: str, spec: str, custom: bool, fingerprint: str, eval_tags: dict[str, str]) -> str:
    """README.md for the exported folder: how to load and prompt it, and what it scored."""
    if custom:
        load = (
            f"The connector is `{spec}` (config.mm_projector_type), which transformers cannot represent: "
            f"plain `from_pretrained` would give a randomly initialised projector. Load it with "
            f"`{CUSTOM_LOADER}(path)` from llava-pipeline."
        )
    else:
        load = (
            "```python\n"
            "from transformers import AutoProcessor, LlavaForConditionalGeneration\n"
            "processor = AutoProcessor.from_pretrained(path, backend=\"pil\")\n"
            "model = LlavaForConditionalGeneration.from_pretrained(path)\n"
            "messages = [{\"role\": \"user\", \"content\": [{\"type\": \"image\", \"image\": img},\n"
            "                                          {\"type\": \"text\", \"text\": question}]}]\n"
            "inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,\n"
            "                                       return_dict=True, return_tensors=\"pt\")\n"
            "answer = processor.decode(model.generate(**inputs)[0, inputs[\"input_ids\"].shape[1]:],\n"
            "                          skip_special_tokens=True).strip()\n"
            "```\n\n"
            "`backend=\"pil\"` gives exactly the pixels the model was trained and evaluated on (the export's "
            "parity check uses it); with torchvision installed, AutoProcessor otherwise picks the torchvision "
            "backend, whose resize and normalisation are a separate implementation. The tokenizer pads on the "
            "left for batched generation."
        )
    lines = [
        f"# {name}",
        "",
        "A LLaVA-1.5-style model exported by llava-pipeline as a transformers `LlavaForConditionalGeneration`.",
        "",
        "## Loading",
        "",
        load,
        "",
        "## Prompt",
        "",
        "vicuna_v1 (the chat template renders it): `{system} USER: <image>\\n{question} ASSISTANT:`. Images are "
        "padded to a square with the CLIP-mean colour (122, 116, 104) before the resize (`do_pad`). Decoding "
        f"is greedy (generation_config: do_sample false, max_new_tokens {GREEDY_MAX_NEW_TOKENS}).",
        "",
        f"Pipeline fingerprint: `{fingerprint}`",
    ]
    if eval_tags:
        lines += ["", "## Evaluation", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in sorted(eval_tags.items())]
    return "\n".join(lines) + "\n"


def write_model_dir(
    model: LlavaForConditionalGeneration,
    tokenizer: PreTrainedTokenizerBase,
    out_dir: str | Path,
    *,
    chat_template: str,
    card: str,
) -> list[str]:
    """Save weights, configs, tokenizer, processor (with the Jinja `chat_template`, see chat_template.py) and
    README into local `out_dir`; returns file names."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = copy.deepcopy(tokenizer)  # the caller's tokenizer keeps its training padding side
    tok.padding_side = "left"  # batched generation needs every prompt to end in the last column
    tok.init_kwargs["padding_side"] = "left"  # save_pretrained writes init_kwargs, not the attribute
    try:  # pad: what training did to the images (finetune image_mode) and what evaluation does
        processor = build_processor(model, tok, "pad", chat_template)
    except ValueError as e:
        raise ExportError(f"export: {e}") from None
    model.generation_config = greedy_generation_config(model, tok)
    model.save_pretrained(str(out), max_shard_size="5GB")  # safetensors
    processor.save_pretrained(str(out))  # tokenizer files, processor_config.json, chat_template.jinja
    (out / "README.md").write_text(card, encoding="utf-8")
    return sorted(p.name for p in out.iterdir())
