"""The `export:` section: whether the finetuned model is exported and registered, and how it is checked."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from components.core.config import Strict
from components.core.fields import SCHEDULING


class ExportConfig(Strict):
    enabled: bool = True
    registered_model_name: str | None = None  # MLflow Model Registry name (default: the config name)
    parity_sample: int = 8  # questions answered by plain transformers and by our path; must match
    allow_custom_connector: bool = False  # export non-transformers connectors (needs our loader)
    # Where the export runs: a Ray task with these resources, never the job's driver (the head has no GPU and
    # little memory). A 7B/13B model wants a GPU (its parity check then runs in bf16 there).
    use_gpu: Annotated[bool, SCHEDULING] = False
    cpus: Annotated[float, SCHEDULING] = Field(1.0, gt=0)


class ExportResources(Strict):
    """Where the export stage's work runs (scheduling only): a Ray task with `cpus` CPUs and, with `use_gpu`,
    one GPU, on whatever node Ray places it. `start_timeout_s` bounds the wait for such a node: an autoscaler
    may take many minutes to add one, but a cluster that never has one must not hang the run."""

    use_gpu: bool = False
    cpus: float = Field(1.0, gt=0)
    start_timeout_s: float = Field(3600.0, gt=0)
