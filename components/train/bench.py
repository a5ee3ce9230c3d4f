"""`llava-pipeline bench train`: our finetune step (build_model, collate, DeepSpeed engine, bf16) on the
anchor's shape — CLIP ViT-L/14-336 + a TinyLlama-1.1B-shaped LLM, batch 16 × 1024 tokens — measured the
way ../shared/bench/hf_llava_anchor.py measures plain transformers, so the two can be run side by side.

Single process, one device (DeepSpeed's engine without Ray Train around it: Ray adds no per-step work).
FLOPs use the anchor's formula so MFU figures are comparable; the peak is a measured bf16 matmul.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

ANCHOR = {  # the anchor's model shape
    "vision": {"image_size": 336, "patch_size": 14, "hidden_size": 1024, "num_layers": 24, "num_heads": 16,
               "intermediate_size": 4096},
    "llm": {"hidden_size": 2048, "num_layers": 22, "num_heads": 32, "num_kv_heads": 4, "intermediate_size": 5632,
            "max_position_embeddings": 4096},
    "vocab": 32000, "batch": 16, "text": 448,
}
TINY = {"vision": {"image_size": 56, "patch_size": 14, "hidden_size": 64, "num_layers": 2, "num_heads": 4,
                   "intermediate_size": 128},
        "llm": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 4, "intermediate_size": 128,
                "max_position_embeddings": 512},
        "vocab": 1000, "batch": 2, "text": 32}


def word_tokenizer(vocab: int) -> Any:
    """A real (tokenizers-backed) tokenizer with exactly `vocab` entries plus the LLaVA tokens."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from components.models.tokenizer import add_llava_tokens

    words = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"w{i}": i for i in range(3, vocab - 2)}}
    tok = Tokenizer(models.WordLevel(words, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    return add_llava_tokens(fast)


def measured_peak_tflops(device: str) -> float | None:
    if device != "cuda":
        return None
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 2 * 8192**3 * 10 / (time.time() - t) / 1e12


def bench_train(*, tiny: bool = False, zero_stage: int = 2, steps: int = 10, device: str = "auto") -> dict[str, Any]:
    import deepspeed

    from components.core.config import load_config
    from components.models.assembly import build_model, num_image_tokens
    from components.models.tokenizer import image_token_id
    from components.models.trainable import param_groups, set_trainable
    from components.train.collate import CollateSpec, collate
    from components.train.engine import deepspeed_config

    device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
    shape = TINY if tiny else ANCHOR
    bf16 = device == "cuda"
    B, text = shape["batch"], shape["text"]
    v, llm = shape["vision"], shape["llm"]
    overrides = [f"model.vision.random_init.{k}={x}" for k, x in v.items()]
    overrides += [f"model.llm.random_init.{k}={x}" for k, x in llm.items()]
    overrides += ["finetune.num_workers=1", f"finetune.per_device_batch={B}", f"finetune.global_batch={B}",
                  f"finetune.precision={'bf16' if bf16 else 'fp32'}", "finetune.gradient_checkpointing=false",
                  f"finetune.deepspeed=deepspeed/zero{zero_stage}.json", f"finetune.use_gpu={str(bf16).lower()}",
                  "finetune.optim.lr=1e-5"]
    cfg = load_config("tiny", overrides)
    stage = cfg.finetune
    for k, x in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", "127.0.0.1"),
                 ("MASTER_PORT", os.environ.get("MASTER_PORT", "29517"))):
        os.environ.setdefault(k, x)
    deepspeed.init_distributed(dist_backend="nccl" if device == "cuda" else "gloo")

    tok = word_tokenizer(shape["vocab"])
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = build_model(cfg.model, tok, dtype=dtype, seed=0)
    set_trainable(model, "connector+llm")
    optimizer = torch.optim.AdamW(param_groups(model, stage.optim), lr=stage.optim.lr, fused=device == "cuda")
    engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer,
                                      config=deepspeed_config(stage, 1, llm["hidden_size"]))
    engine.train()

    # Rows as the prepare stage stores them (one <image> id), expanded and padded by our collate.
    n_img = num_image_tokens(cfg.model)
    rng = np.random.default_rng(0)
    image_id = image_token_id(tok)
    ids = [[tok.bos_token_id, image_id, *rng.integers(3, shape["vocab"] - 2, text - 1).tolist()] for _ in range(B)]
    labels = [[-100, -100, *row[2:]] for row in ids]
    pixels = [rng.integers(0, 256, (3, v["image_size"], v["image_size"]), dtype=np.uint8).tobytes()
              for _ in range(B)]
    spec = CollateSpec(image_id=image_id, num_image_tokens=n_img, max_length=n_img + text + 8,
                       pad_id=tok.pad_token_id, image_size=v["image_size"])

    def step() -> None:
        inputs = collate(ids, labels, pixels, spec, device=engine.device)
        engine.backward(engine(**inputs).loss)
        engine.step()

    for _ in range(2):
        step()
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    t = time.time()
    for _ in range(steps):
        step()
    sync()
    dt = (time.time() - t) / steps
    S = n_img + text
    inner = model.model
    n_llm = sum(p.numel() for p in inner.language_model.parameters()) + sum(p.numel() for p in model.lm_head.parameters())
    n_vis = sum(p.numel() for p in inner.vision_tower.parameters())
    if zero_stage == 3:  # partitioned parameters report numel 0; use DeepSpeed's own counts
        n_llm = sum(getattr(p, "ds_numel", p.numel()) for p in inner.language_model.parameters()) + sum(
            getattr(p, "ds_numel", p.numel()) for p in model.lm_head.parameters())
        n_vis = sum(getattr(p, "ds_numel", p.numel()) for p in inner.vision_tower.parameters())
    attn = 6 * 2 * llm["num_layers"] * S * S * llm["hidden_size"] / 2
    flops = B * (6 * n_llm * S + attn + 2 * n_vis * (n_img + 1))
    peak = measured_peak_tflops(device)
    tflops = flops / dt / 1e12
    return {"device": torch.cuda.get_device_name() if device == "cuda" else "cpu", "zero_stage": zero_stage,
            "batch": B, "seq": S, "train_step_s": dt, "train_tokens_per_s": B * S / dt, "train_tflops": tflops,
            "peak_tflops": peak, "mfu_vs_peak": tflops / peak if peak else None,
            "max_mem_gb": torch.cuda.max_memory_allocated() / 1e9 if device == "cuda" else None}


if __name__ == "__main__":  # python -m components.train.bench [--tiny] [--zero 2|3]
    import json
    import sys

    zero = int(sys.argv[sys.argv.index("--zero") + 1]) if "--zero" in sys.argv else 2
    print(json.dumps(bench_train(tiny="--tiny" in sys.argv, zero_stage=zero)))
