"""The `evaluate:` section: which benchmarks run (one job each), where they are, how answers are generated.

Each benchmark job gets its own arguments from it (pipelines/llava15.py): a setting of one benchmark (its
blank-image check) is that job's only. Scheduling fields never enter a fingerprint (components/core/fields.py).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from components.core.config import Strict
from components.core.fields import SCHEDULING, ModelPath, StoragePath


class EvaluateConfig(Strict):
    benchmarks: list[str] = []  # registry names; each one is its own job in the DAG
    # The folder holding one sub-folder per benchmark (LLaVA's eval.zip layout); each job is fingerprinted on
    # its own benchmark's folder, by content.
    root: StoragePath = "{synth}/eval"
    template: Literal["plain", "vicuna_v1"] = "vicuna_v1"
    # A result setting: batched greedy decoding equals batch 1 only as far as the parity check shows (on a
    # GPU in bf16, left padding can change an answer), so another batch size is another evaluation.
    batch_size: int = Field(16, gt=0)
    # Scheduling: batches are cut before they reach a replica, so the replica count changes no batch.
    num_actors: Annotated[int, SCHEDULING] = Field(1, gt=0)  # model replicas (one per GPU, or CPU workers)
    # A result setting: the device sets the dtype (fp16 on a GPU, as the reference; fp32 on a CPU), and so
    # the answers.
    use_gpu: bool = True
    cpus_per_actor: Annotated[float, SCHEDULING] = 1.0
    limit: int | None = None  # first N questions per benchmark (smoke runs)
    parity_sample: int = 0  # questions re-answered at batch 1 to check batched decoding
    blank_image_check: list[str] = []  # benchmarks also scored with blank images (image-dependence check)
    concurrency: Annotated[int, SCHEDULING] = Field(1, gt=0)  # benchmark jobs run at once
    # A saved LLaVA model to evaluate instead of training one (a folder, s3:// URL or Hub name, e.g. a released
    # checkpoint). The pipeline is then the evaluate jobs alone (and synth, for a {synth} root).
    model: ModelPath | None = None


class Replicas(Strict):
    """How many generation replicas a benchmark job uses, and their CPUs: scheduling only."""

    num_actors: int = Field(1, gt=0)
    cpus_per_actor: float = 1.0
