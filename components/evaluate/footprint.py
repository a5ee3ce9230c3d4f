"""What one generation replica holds: the model in its evaluation dtype, the KV cache of a batch, the logits.

Evaluation runs fp16 on a GPU (as the reference) and fp32 on a CPU (generate.py: resolve_dtype). A batch of
`batch_size` prompts (the image block plus the question's text) grows to prompt + max_new_tokens positions,
each keeping keys and values of every layer (kv_heads × head size each); the forward pass over the prompt
keeps one layer's activations, and each step's logits are fp32 over the vocabulary for the last position.
"""

from __future__ import annotations

from components.models.sizes import ModelSizes

PROMPT_TEXT_TOKENS = 128  # the question, the system prompt and the roles around the image block (an allowance)


def replica_bytes(sizes: ModelSizes, *, batch_size: int, max_new_tokens: int, use_gpu: bool) -> dict[str, int]:
    """Bytes one replica holds on its device (the GPU, or the actor's host memory on a CPU), by part."""
    dtype = 2 if use_gpu else 4
    prompt = sizes.image_tokens + PROMPT_TEXT_TOKENS
    head_dim = sizes.hidden // sizes.heads
    kv = batch_size * (prompt + max_new_tokens) * sizes.layers * 2 * sizes.kv_heads * head_dim * dtype
    prefill = batch_size * prompt * (4 * sizes.hidden + 2 * sizes.intermediate) * dtype
    vision = batch_size * sizes.vision_positions * 6 * sizes.vision_hidden * dtype
    return {"weights": sizes.total * dtype, "kv_cache": kv, "activations": max(prefill, vision),
            "logits": batch_size * sizes.vocab * 4}
