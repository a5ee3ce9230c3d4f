"""The `sweep:` section: Ray Tune over connector × resolution, and what a trial costs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from components.core.config import Strict
from components.core.fields import SCHEDULING, ModelPath, StoragePath
from components.models.spec import CONNECTOR_SPEC


class Resolution(Strict):
    """One resolution of the sweep: the image size fed to the tower and, optionally, the tower trained for it
    (LLaVA-1.5: 224 px = openai/clip-vit-large-patch14, 336 px = openai/clip-vit-large-patch14-336). Without
    a tower the model's own is used at this size (random-init towers are built for it; a checkpoint's
    position embeddings are interpolated). A bare number in YAML means {image_size: N}."""

    image_size: int = Field(gt=0)
    name_or_path: ModelPath | None = None

    @model_validator(mode="before")
    @classmethod
    def _bare_number(cls, value: Any) -> Any:
        return {"image_size": value} if isinstance(value, int) and not isinstance(value, bool) else value

    @property
    def label(self) -> str:
        return f"{self.image_size}px"


class SweepSpace(Strict):
    """The grid searched: every connector × every resolution. An empty list keeps the model's own value."""

    connector: list[str] = ["linear", "mlp2x_gelu", "mlp3x_gelu"]
    resolution: list[Resolution] = []

    @field_validator("connector")
    @classmethod
    def _connectors(cls, value: list[str]) -> list[str]:
        for i, spec in enumerate(value):
            if not CONNECTOR_SPEC.match(spec):
                raise ValueError(f"entry {i} {spec!r} is not a connector spec (linear, mlp{{N}}x_gelu, identity)")
        if len(set(value)) != len(value):
            raise ValueError(f"connectors listed more than once: {value}")
        return value

    @field_validator("resolution")
    @classmethod
    def _resolutions(cls, value: list[Resolution]) -> list[Resolution]:
        sizes = [r.image_size for r in value]
        if len(set(sizes)) != len(sizes):
            raise ValueError(f"image sizes must be unique (they name the trials), got {sizes}")
        return value


class SweepProxy(Strict):
    """How much of each training stage a trial runs: `data_fraction` of the stage's epochs (a random subset
    of the data, as the stage's own shuffled order), capped at the step counts when given."""

    data_fraction: float = Field(0.1, gt=0, le=1)
    pretrain_steps: int | None = Field(None, gt=0)
    finetune_steps: int | None = Field(None, gt=0)


class SweepDev(Strict):
    """The quick evaluation after each rung: the first `limit` questions of one benchmark, read from `root`
    (a folder holding the benchmark's folder, as evaluate.root does; `{synth}` allowed). Null reads the
    benchmark under evaluate.root itself: then the sweep selects on questions the final evaluation reports."""

    benchmark: str = "gqa"
    root: StoragePath | None = None
    limit: int | None = Field(200, gt=0)
    batch_size: int = Field(16, gt=0)


class SweepAsha(Strict):
    """ASHA early stopping over the rungs (Tune's ASHAScheduler with max_t = sweep.rungs)."""

    enabled: bool = True
    grace_period: int = Field(1, gt=0)  # rungs every trial runs before it can be stopped
    reduction_factor: float = Field(2.0, gt=1)  # keep the top 1/reduction_factor at each milestone


class SweepResources(Strict):
    """Per trial. Proxy training runs with these Train workers (null: the stage's own setting); the trial's
    own Tune function, which only drives Train runs and the dev evaluation, holds `driver_cpus`."""

    num_workers: int | None = Field(None, gt=0)
    use_gpu: bool | None = None
    cpus_per_worker: float | None = Field(None, gt=0)
    driver_cpus: float = Field(1.0, ge=0)


class SweepConfig(Strict):
    """Ray Tune over connector × resolution: each trial a proxy pretrain + finetune and a dev evaluation
    after each of `rungs` finetune segments; the best values feed `auto` in model.connector and
    model.vision.image_size."""

    enabled: bool = False
    space: SweepSpace = SweepSpace()
    proxy: SweepProxy = SweepProxy()
    dev: SweepDev = SweepDev()
    rungs: int = Field(3, gt=0)  # evaluations per trial (ASHA's max_t); the finetune proxy is split evenly
    metric: str | None = None  # a reported key; default: the dev benchmark's own metric (e.g. accuracy)
    mode: Literal["max", "min"] = "max"
    asha: SweepAsha = SweepAsha()
    # Scheduling, both: where trials run and how many at once. With more than one at a time ASHA decides on
    # whichever trials reported first, so such a sweep is one valid outcome of the search, not a function of
    # its settings; a cached one is as good as a new one.
    resources: Annotated[SweepResources, SCHEDULING] = SweepResources()
    max_concurrent_trials: Annotated[int, SCHEDULING] = Field(1, gt=0)

    @model_validator(mode="after")
    def _checks(self) -> SweepConfig:
        if self.metric in ("train_loss", "pretrain_loss") and self.mode != "min":
            raise ValueError(f"metric {self.metric} is a loss: set mode: min")
        return self
