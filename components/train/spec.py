"""A training stage's settings (`pretrain:` and `finetune:` in a config), and where its DeepSpeed JSON is.

Fields typed `Annotated[..., SCHEDULING]` say where or how fast the stage runs, not what it computes: they
never enter its fingerprint (components/core/fields.py), so raising `max_failures` after a crash, or giving
the stage more CPUs, resumes it instead of starting over. Each says below why it cannot change the result.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, model_validator

from components.core.config import Strict
from components.core.fields import SCHEDULING, DeepSpeedFile
from components.core.paths import locate


class OptimConfig(Strict):
    lr: float = Field(gt=0)
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    connector_lr: float | None = None  # own lr for the connector (LoRA recipe: 2e-5)
    # Clip the global gradient L2 norm to this (0 = off); written as DeepSpeed's gradient_clipping. 1.0 is
    # DeepSpeed's own default since 0.19.3 and HF's; the reference's DeepSpeed 0.12.6 defaulted to off.
    max_grad_norm: float = Field(1.0, ge=0)


class ScheduleConfig(Strict):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.03, ge=0, lt=1)


class LoraConfig(Strict):
    r: int = Field(128, gt=0)
    alpha: int = 256
    dropout: float = 0.05


class TrainStageConfig(Strict):
    template: Literal["plain", "vicuna_v1"]
    image_mode: Literal["pad", "square"]
    trainable: Literal["connector", "connector+llm"]
    global_batch: int = Field(gt=0)
    per_device_batch: int = Field(gt=0)
    # Data-parallel world size. Scheduling: the samples of every optimizer step are fixed by global_batch and
    # per_device_batch (the data order is cut into global/per-device chunks, whatever the world); only the
    # order of float additions differs. A resume at another world size is refused (ZeRO shards the state).
    num_workers: Annotated[int, SCHEDULING] = Field(1, gt=0)
    # Scheduling: the device. Precision is its own result setting, below.
    use_gpu: Annotated[bool, SCHEDULING] = True
    cpus_per_worker: Annotated[float, SCHEDULING] = 1.0
    # Intra-op CPU threads per worker (torch.set_num_threads). Default: Ray's, one per reserved CPU. More than
    # reserved lets a CPU-only run use the cores Ray Data's light streaming map leaves idle most of the time.
    threads_per_worker: Annotated[int | None, SCHEDULING] = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = None  # cap on optimizer steps (proxy runs, tests)
    max_length: int = Field(2048, gt=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    # Scheduling: recomputes activations in the backward pass instead of keeping them (memory for time);
    # the same losses and gradients (tests/components/train/test_compile.py).
    gradient_checkpointing: Annotated[bool, SCHEDULING] = True
    group_by_modality_length: bool = False
    # Padding-free batches: a micro-batch's samples back to back in one row with per-sample positions and
    # attention (flex attention on GPU). auto = on with use_gpu (a CPU gains nothing); YAML's on/off work too.
    # Scheduling: the same samples per step, the same loss and gradients (tests/components/train/test_packing.py).
    packing: Annotated[bool | Literal["auto"], SCHEDULING] = "auto"
    # torch.compile of the language model (inductor). Off until the device benchmark shows it pays: a first
    # step compiles for tens of seconds, and every new sequence length can recompile until shapes go dynamic.
    # Scheduling: the same losses and gradients as eager (tests/components/train/test_compile.py).
    compile_llm: Annotated[bool, SCHEDULING] = False
    deepspeed: DeepSpeedFile  # the DeepSpeed JSON: a file, or a packaged one by name (deepspeed/zero2.json)
    optim: OptimConfig
    schedule: ScheduleConfig = ScheduleConfig()
    lora: LoraConfig | None = None
    # Scheduling, all four: when state is saved, how much of it is kept, how often a failed worker group is
    # restarted; a resumed run continues exactly where the saved one stopped.
    checkpoint_every: Annotated[int, SCHEDULING] = Field(0, ge=0)  # optimizer steps; 0 = only at the end
    # Also save once this many minutes passed since the last save (0 = off): bounds the work a failure costs
    # whatever the hardware's speed (the paper configs: 30).
    checkpoint_every_minutes: Annotated[float, SCHEDULING] = Field(0.0, ge=0)
    keep_checkpoints: Annotated[int, SCHEDULING] = Field(0, ge=0)  # Ray Train checkpoints kept after commit
    max_failures: Annotated[int, SCHEDULING] = 1
    seed: int = 42

    @property
    def gradient_accumulation(self) -> int:
        """Micro-batches per optimizer step so that per-device × accumulation × world = global."""
        per_step = self.per_device_batch * self.num_workers
        return self.global_batch // per_step

    @property
    def packed(self) -> bool:
        """Whether batches use the packed layout (`packing`, with auto resolved by use_gpu)."""
        return self.use_gpu if self.packing == "auto" else self.packing

    @model_validator(mode="after")
    def _batch_arithmetic(self) -> TrainStageConfig:
        per_step = self.per_device_batch * self.num_workers
        if self.global_batch % per_step:
            raise ValueError(
                f"global_batch {self.global_batch} is not a multiple of per_device_batch "
                f"{self.per_device_batch} × num_workers {self.num_workers} = {per_step}; "
                "change per_device_batch or num_workers so gradient accumulation is a whole number"
            )
        if self.lora is not None and self.trainable != "connector+llm":
            raise ValueError("lora needs trainable: connector+llm")
        return self


def deepspeed_config_path(stage: TrainStageConfig) -> Path:
    """The stage's DeepSpeed JSON on this node: a local file (absolute once the config went through
    `load_config`), or a packaged file (a name) in this process's own copy of the configs."""
    return Path(locate("deepspeed", stage.deepspeed))
