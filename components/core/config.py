"""Typed pipeline configuration: YAML in `configs/`, validated by pydantic.

Every knob lives here once, with its default; nothing reads raw dicts. Errors name the file and the
key path (`finetune.optim.lr: expected a number, got 'fast'`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from components.core.jsonl import DEFAULT_MAX_LINE_BYTES


class ConfigError(ValueError):
    """A configuration problem, already phrased for the user (file, key path, what was wrong)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------- model


class RandomVision(Strict):
    """A randomly initialised CLIP vision tower (the embedded default; real runs name a checkpoint)."""

    image_size: int = Field(56, gt=0)
    patch_size: int = Field(14, gt=0)
    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 128


class VisionConfig(Strict):
    name_or_path: str | None = None  # HF name, local path or s3:// path of a CLIPVisionModel checkpoint
    random_init: RandomVision | None = None
    # Resolution fed to the tower; defaults to the checkpoint's own. `auto`: the sweep's best resolution
    # (its image_size, and its tower when the sweep entry names one).
    image_size: int | Literal["auto"] | None = None
    feature_layer: int = -2  # hidden state taken from the tower (LLaVA-1.5: penultimate)
    feature_select: Literal["patch", "cls_patch"] = "patch"  # patch drops CLS (LLaVA-1.5)

    @model_validator(mode="after")
    def _one_source(self) -> VisionConfig:
        if (self.name_or_path is None) == (self.random_init is None):
            raise ValueError("set exactly one of name_or_path or random_init")
        return self


class RandomLLM(Strict):
    """A randomly initialised Llama-architecture LLM."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    num_kv_heads: int | None = None
    intermediate_size: int = 256
    max_position_embeddings: int = 2048


class LLMConfig(Strict):
    name_or_path: str | None = None  # e.g. lmsys/vicuna-7b-v1.5
    random_init: RandomLLM | None = None

    @model_validator(mode="after")
    def _one_source(self) -> LLMConfig:
        if (self.name_or_path is None) == (self.random_init is None):
            raise ValueError("set exactly one of name_or_path or random_init")
        return self


class TokenizerConfig(Strict):
    name_or_path: str | None = None  # None: train a Llama-style SentencePiece tokenizer on the corpus
    vocab_size: int = 512  # only for a locally trained tokenizer


class ModelConfig(Strict):
    vision: VisionConfig
    llm: LLMConfig
    tokenizer: TokenizerConfig = TokenizerConfig()
    connector: str = "mlp2x_gelu"  # linear | mlp{N}x_gelu | identity | auto (from the sweep)

    @field_validator("connector")
    @classmethod
    def _connector(cls, value: str) -> str:
        if value != "auto" and not CONNECTOR_SPEC.match(value):
            raise ValueError(f"{value!r} is not a connector (linear, mlp{{N}}x_gelu, identity, or auto)")
        return value


# ---------------------------------------------------------------- data


class DataSource(Strict):
    """One annotation file (LLaVA JSON list or JSONL) and the folder its `image` paths are relative to."""

    annotations: str
    image_root: str | None = None  # default: the annotation file's folder
    name: str | None = None  # per-source counts in stats; defaults to the file name
    # A trusted dataset whose `image` fields are absolute paths or URLs; otherwise every image must resolve
    # (symlinks included) under image_root, and a record that points elsewhere is rejected.
    allow_absolute_paths: bool = False


def fill_synth(path: str, synth_root: str | None, what: str) -> str:
    """`path` with `{synth}` replaced by the synthetic world's folder; `what` names the setting in errors."""
    if "{synth}" not in path:
        return path
    if synth_root is None:
        raise ValueError(f"{what} uses {{synth}} but the config has no data.synth section")
    return path.replace("{synth}", synth_root)


class SynthConfig(Strict):
    size: Literal["micro", "tiny", "small", "medium"] = "tiny"  # micro: smoke tests (mechanics, not learning)
    seed: int = 0


class DataConfig(Strict):
    synth: SynthConfig | None = None  # generate the synthetic world; `{synth}` in paths points at it
    pretrain: list[DataSource] = []
    finetune: list[DataSource] = []


class PrepareConfig(Strict):
    over_length: Literal["truncate", "reject"] = "truncate"
    max_image_pixels: int = 178_956_970  # decompression-bomb guard (PIL's default limit)
    max_image_bytes: int = Field(256 * 1024 * 1024, gt=0)  # an image file is read only up to this size
    # Training pads an image to a square of its longest side: a huge or thin image would cost gigabytes there.
    max_image_side: int = Field(8192, gt=0)
    max_aspect_ratio: float = Field(20.0, ge=1)
    max_line_bytes: int = Field(DEFAULT_MAX_LINE_BYTES, gt=0)  # a longer JSONL line is rejected unparsed
    duplicate_ids: Literal["keep", "reject"] = "keep"  # repeated ids are counted in stats.json either way
    # More rejected than this fraction fails the stage (after writing stats.json and rejected.jsonl): a bug
    # or a wrong image_root must not pass as a dataset that is mostly bad records.
    max_rejected_fraction: float = Field(0.5, ge=0, le=1)
    rows_per_shard: int = 4096
    cpus_per_task: float = 0.5


# ---------------------------------------------------------------- training


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
    num_workers: int = Field(1, gt=0)  # data-parallel world size
    use_gpu: bool = True
    cpus_per_worker: float = 1.0
    # Intra-op CPU threads per worker (torch.set_num_threads). Default: Ray's, one per reserved CPU. More than
    # reserved lets a CPU-only run use the cores Ray Data's light streaming map leaves idle most of the time.
    threads_per_worker: int | None = Field(None, gt=0)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = None  # cap on optimizer steps (proxy runs, tests)
    max_length: int = Field(2048, gt=0)
    precision: Literal["bf16", "fp32"] = "bf16"
    gradient_checkpointing: bool = True
    group_by_modality_length: bool = False
    # Padding-free batches: a micro-batch's samples back to back in one row with per-sample positions and
    # attention (flex attention on GPU). auto = on with use_gpu (a CPU gains nothing); YAML's on/off work too.
    packing: bool | Literal["auto"] = "auto"
    # torch.compile of the language model (inductor). Off until the device benchmark shows it pays: a first
    # step compiles for tens of seconds, and every new sequence length can recompile until shapes go dynamic.
    compile_llm: bool = False
    deepspeed: str  # path of the DeepSpeed JSON, relative to the repo's configs/ folder or absolute
    optim: OptimConfig
    schedule: ScheduleConfig = ScheduleConfig()
    lora: LoraConfig | None = None
    checkpoint_every: int = Field(0, ge=0)  # optimizer steps between checkpoints; 0 = only at the end
    keep_checkpoints: int = Field(0, ge=0)  # Ray Train checkpoints kept once the stage's outputs are committed
    max_failures: int = 1
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


# ---------------------------------------------------------------- evaluate, export, tracking


class EvaluateConfig(Strict):
    benchmarks: list[str] = []  # registry names; each one is its own job in the DAG
    root: str = "{synth}/eval"  # folder holding one sub-folder per benchmark (LLaVA's eval.zip layout)
    template: Literal["plain", "vicuna_v1"] = "vicuna_v1"
    batch_size: int = Field(16, gt=0)
    num_actors: int = Field(1, gt=0)  # model replicas (one per GPU, or CPU workers)
    use_gpu: bool = True
    cpus_per_actor: float = 1.0
    limit: int | None = None  # first N questions per benchmark (smoke runs)
    parity_sample: int = 0  # questions re-answered at batch 1 to check batched decoding
    blank_image_check: list[str] = []  # benchmarks also scored with blank images (image-dependence check)
    concurrency: int = Field(1, gt=0)  # benchmark jobs run at once
    # A saved LLaVA model to evaluate instead of training one (a folder, s3:// URL or Hub name, e.g. a released
    # checkpoint). The pipeline is then the evaluate jobs alone (and synth, for a {synth} root).
    model: str | None = None


class ExportConfig(Strict):
    enabled: bool = True
    registered_model_name: str | None = None  # MLflow Model Registry name (default: the config name)
    parity_sample: int = 8  # questions answered by plain transformers and by our path; must match
    allow_custom_connector: bool = False  # export non-transformers connectors (needs our loader)


class TrackingConfig(Strict):
    tracking_uri: str | None = None  # default: MLFLOW_TRACKING_URI, else sqlite under the storage root
    experiment: str = "llava-pipeline"


# ---------------------------------------------------------------- sweep

AUTO = "auto"
CONNECTOR_SPEC = re.compile(r"^(linear|identity|mlp[1-9]\d*x_gelu)$")


class Resolution(Strict):
    """One resolution of the sweep: the image size fed to the tower and, optionally, the tower trained for it
    (LLaVA-1.5: 224 px = openai/clip-vit-large-patch14, 336 px = openai/clip-vit-large-patch14-336). Without
    a tower the model's own is used at this size (random-init towers are built for it; a checkpoint's
    position embeddings are interpolated). A bare number in YAML means {image_size: N}."""

    image_size: int = Field(gt=0)
    name_or_path: str | None = None

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
    root: str | None = None
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
    resources: SweepResources = SweepResources()
    max_concurrent_trials: int = Field(1, gt=0)

    @model_validator(mode="after")
    def _checks(self) -> SweepConfig:
        if self.metric in ("train_loss", "pretrain_loss") and self.mode != "min":
            raise ValueError(f"metric {self.metric} is a loss: set mode: min")
        return self


# ---------------------------------------------------------------- whole pipeline


class PipelineConfig(Strict):
    name: str
    storage: str = "./runs/{name}"  # storage root: local path or s3://bucket/prefix
    seed: int = 0
    model: ModelConfig
    data: DataConfig
    prepare: PrepareConfig = PrepareConfig()
    pretrain: TrainStageConfig
    finetune: TrainStageConfig
    evaluate: EvaluateConfig = EvaluateConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    sweep: SweepConfig = SweepConfig()


def _config_dir() -> Path:
    """The packaged configs/ folder: a package of its own, so a non-editable install ships it too."""
    import configs

    return Path(configs.__file__).resolve().parent


CONFIG_DIR = _config_dir()


def _describe(value: Any) -> str:
    return repr(value) if isinstance(value, str) else f"{value!r} ({type(value).__name__})"


_EXPECTED = {
    "float_parsing": "expected a number",
    "float_type": "expected a number",
    "int_parsing": "expected an integer",
    "int_type": "expected an integer",
    "int_from_float": "expected an integer",
    "bool_parsing": "expected true or false",
    "bool_type": "expected true or false",
    "string_type": "expected a string",
    "missing": "required key is missing",
    "extra_forbidden": "unknown key",
}


def _blame(source: str, path: str, overrides: Sequence[str]) -> str:
    """Where a key's value came from: the `--set` that wrote it (or below it), else the config file."""
    for item in reversed(overrides):
        key = item.split("=", 1)[0].strip()
        if path and (key == path or key.startswith(path + ".") or path.startswith(key + ".")):
            return f"--set {item}"
    return source


def _format_errors(source: str, err: ValidationError, overrides: Sequence[str] = ()) -> str:
    lines = []
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        source_of = _blame(source, path, overrides)
        kind = e["type"]
        if kind in ("missing", "extra_forbidden"):
            lines.append(f"{source_of}: {path}: {_EXPECTED[kind]}")
        elif kind in _EXPECTED:
            lines.append(f"{source_of}: {path}: {_EXPECTED[kind]}, got {_describe(e['input'])}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source_of}: {path or '(top level)'}: {msg}")
    return "\n".join(lines)


def _parse_scalar(text: str) -> Any:
    """`--set` values are YAML scalars: 1e-5, true, null, [a, b] all mean what they look like."""
    value = yaml.safe_load(text) if text else ""
    # YAML 1.1 reads "1e-5" as a string; a user typing a number means a number.
    if isinstance(value, str):
        try:
            f = float(value)
            if math.isfinite(f):
                return f
        except ValueError:
            pass
    return value


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply `key.path=value` overrides to a raw config mapping (a copy)."""
    out = yaml.safe_load(yaml.safe_dump(raw))
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key.path=value")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        node = out
        for i, part in enumerate(parts[:-1]):
            child = node.get(part)
            if child is None:
                child = node[part] = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {key}: {'.'.join(parts[: i + 1])} is not a section")
            node = child
        node[parts[-1]] = _parse_scalar(text)
    return out


def _yaml_floats(node: Any) -> Any:
    """YAML 1.1 leaves `1e-3` (no dot) a string; read such strings as the numbers they are."""
    if isinstance(node, dict):
        return {k: _yaml_floats(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_yaml_floats(v) for v in node]
    if isinstance(node, str):
        try:
            if any(c.isdigit() for c in node) and ("e" in node.lower()) and not node.strip().isalpha():
                return float(node)
        except ValueError:
            return node
    return node


def resolve_path(path: str | Path) -> Path:
    """A config file: a path (relative to the working directory), else a packaged config by name from any
    directory: `tiny`, `tiny.yaml` and `configs/tiny.yaml` all name configs/tiny.yaml."""
    p = Path(path).expanduser()
    if p.is_file():
        return p.resolve()
    name = p.relative_to("configs") if p.parts[:1] == ("configs",) else p
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.yaml"):
        if candidate.is_file():
            return candidate
    raise ConfigError(f"config {str(path)!r} not found (looked in {Path.cwd()} and the packaged {CONFIG_DIR})")


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key, anything else (lists included) replaces."""
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_raw(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """A config file as a mapping. `extends: other.yaml` (relative to the file, or a config name) starts from
    that config and applies this file's keys on top."""
    p = resolve_path(path)
    try:
        raw = yaml.safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping at the top level")
    raw = _yaml_floats(raw)
    base = raw.pop("extends", None)
    if base is None:
        return raw
    if not isinstance(base, str):
        raise ConfigError(f"{p}: extends: expected a config file name, got {_describe(base)}")
    target = p.parent / base if (p.parent / base).exists() else base
    try:
        base_path = resolve_path(target).resolve()
    except ConfigError as e:
        raise ConfigError(f"{p}: extends: {e}") from None
    if base_path in (*_seen, p.resolve()):
        raise ConfigError(f"{p}: extends: {base} leads back to itself")
    return _merge(load_raw(base_path, (*_seen, p.resolve())), raw)


def model_for_prepare(cfg: PipelineConfig) -> ModelConfig:
    """The model the prepared dataset is built for. Shards keep one compact `<image>` id (expanded per
    resolution when batches are made), but rows are cut so the image block fits max_length: with
    model.vision.image_size `auto` they are cut for the sweep's largest resolution, so every candidate fits."""
    model = cfg.model
    if model.vision.image_size != AUTO:
        return model
    largest = max(cfg.sweep.space.resolution, key=lambda r: r.image_size)
    vision = {"image_size": largest.image_size}
    if largest.name_or_path:
        vision["name_or_path"] = largest.name_or_path
    return model.model_copy(update={"vision": model.vision.model_copy(update=vision)})


def sweep_problems(cfg: PipelineConfig) -> list[str]:
    """`key.path: problem` for what only the whole config can tell: `auto` without a sweep to fill it,
    sweep entries that do not fit the model."""
    sweep, vision = cfg.sweep, cfg.model.vision
    problems = []
    autos = {"model.connector": (cfg.model.connector == AUTO, "connector"),
             "model.vision.image_size": (vision.image_size == AUTO, "resolution")}
    for path, (is_auto, dim) in autos.items():
        if not is_auto:
            continue
        if not sweep.enabled:
            problems.append(f"{path}: 'auto' takes the sweep's best value, but sweep.enabled is false")
        elif not getattr(sweep.space, dim):
            problems.append(f"{path}: 'auto' needs candidates in sweep.space.{dim}, which is empty")
    if not sweep.enabled:
        return problems
    for i, res in enumerate(sweep.space.resolution):
        if res.name_or_path and vision.random_init is not None:
            problems.append(f"sweep.space.resolution.{i}.name_or_path: the model's vision tower is random_init; "
                            "a sweep entry cannot switch it to a checkpoint")
        if vision.random_init is not None and res.image_size % vision.random_init.patch_size:
            problems.append(f"sweep.space.resolution.{i}.image_size: {res.image_size} is not a multiple of the "
                            f"patch size {vision.random_init.patch_size}")
    r = sweep.resources
    for stage in ("pretrain", "finetune"):
        sc = getattr(cfg, stage)
        workers = r.num_workers or sc.num_workers
        if sc.global_batch % (sc.per_device_batch * workers):
            problems.append(f"sweep.resources.num_workers: {workers} workers do not divide {stage}.global_batch "
                            f"{sc.global_batch} into micro-batches of {stage}.per_device_batch {sc.per_device_batch}")
    if sweep.proxy.finetune_steps is not None and sweep.proxy.finetune_steps < sweep.rungs:
        problems.append(f"sweep.rungs: {sweep.rungs} rungs need at least as many finetune steps, but "
                        f"sweep.proxy.finetune_steps is {sweep.proxy.finetune_steps}")
    return problems


def validate(raw: dict[str, Any], source: str = "<config>", overrides: Sequence[str] = ()) -> PipelineConfig:
    """A validated config; an error at a key an override set is blamed on that `--set`, not the file."""
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(source, e, overrides)) from None
    problems = sweep_problems(cfg)
    if problems:
        raise ConfigError("\n".join(f"{source}: {p}" for p in problems))
    return cfg


def load_config(path: str | Path = "tiny", overrides: list[str] | None = None,
                cwd: Path | None = None) -> PipelineConfig:
    """Read, override and validate a pipeline config; local paths come back absolute, resolved against `cwd`
    (default: the working directory), see `components.core.paths`."""
    from .paths import PathError, resolve_local_paths

    p = resolve_path(path)
    raw = apply_overrides(load_raw(p), overrides or [])
    cfg = validate(raw, str(p), overrides or [])
    try:
        return resolve_local_paths(cfg, (cwd or Path.cwd()).resolve(), CONFIG_DIR)
    except PathError as e:
        raise ConfigError(f"{p}: {e}") from None


def deepspeed_config_path(stage: TrainStageConfig) -> Path:
    """The stage's DeepSpeed JSON on this node: a local file (absolute once the config went through
    `load_config`), or a packaged file (a name) in this process's own copy of the configs."""
    from .paths import find_deepspeed_file

    return find_deepspeed_file(stage.deepspeed, Path.cwd(), CONFIG_DIR, "deepspeed")
