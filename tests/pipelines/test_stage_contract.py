"""The stage contract on the default config, key by key: a key reaches exactly the stages this file says (their
arguments change, so they and what is downstream of them rerun); a scheduling key (typed SCHEDULING) reaches a
stage but reruns nothing (`plan` says cached for every stage); no key is dead."""

import json
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from components.core.fields import field_type, is_scheduling, metadata
from components.core.fingerprint import flatten, materialize
from pipelines.config import PipelineConfig, load_config, sweep_problems
from pipelines.engine.attempts import MANIFEST
from pipelines.engine.executor import downstream, make_plan
from pipelines.llava15 import build_stages, config_problems

# Keys of the pipeline itself: where things live, what is tracked, the DAG's shape.
PIPELINE_KEYS = ("storage", "tracking", "evaluate.benchmarks", "evaluate.model", "sweep.enabled", "export.enabled")


def contract(cfg: PipelineConfig) -> dict[str, set[str]]:
    """Which stages' arguments each config key reaches, written by hand (the longest matching prefix wins)."""
    evaluate = {f"evaluate.{b}" for b in cfg.evaluate.benchmarks}
    return {
        "name": {"export"},  # the registered model's name (export.registered_model_name unset) and its tag
        "seed": {"pretrain", "finetune"},  # the model's random init
        "model.vision": {"prepare", "pretrain", "finetune"},  # prepare sizes image blocks by the tower
        "model.llm": {"pretrain", "finetune"},
        "model.connector": {"pretrain", "finetune"},
        "model.tokenizer": {"prepare"},  # training reads the tokenizer prepare wrote
        "data.synth.size": {"synth"},
        "data.synth.seed": {"synth"},
        "data.pretrain": {"prepare"},
        "data.finetune": {"prepare"},
        "prepare": {"prepare"},
        "pretrain": {"pretrain"},
        "pretrain.template": {"prepare", "pretrain"},
        "pretrain.max_length": {"prepare", "pretrain"},
        "finetune": {"finetune"},
        "finetune.template": {"prepare", "finetune"},
        "finetune.max_length": {"prepare", "finetune"},
        "evaluate": evaluate,  # generation settings: every benchmark job
        "evaluate.root": evaluate | {"export"},  # export's parity prompts come from the benchmark folders
        "evaluate.template": evaluate | {"export"},
        "export": {"export"},
    }


# How and where work runs, never what it computes (each field's comment in its spec says why).
SCHEDULING_KEYS = {
    *(f"{stage}.{key}" for stage in ("pretrain", "finetune") for key in (
        "num_workers", "use_gpu", "cpus_per_worker", "threads_per_worker", "gradient_checkpointing", "packing",
        "compile_llm", "checkpoint_every", "checkpoint_every_minutes", "keep_checkpoints", "max_failures")),
    "prepare.cpus_per_task", "export.use_gpu", "export.cpus",
    "evaluate.num_actors", "evaluate.cpus_per_actor", "evaluate.concurrency",
    "sweep.resources", "sweep.max_concurrent_trials",
}


def expected_readers(cfg: PipelineConfig, other: PipelineConfig, path: str) -> set[str]:
    if path == "evaluate.blank_image_check":  # a benchmark's own setting: only the benchmarks it adds or drops
        return {f"evaluate.{b}" for b in set(cfg.evaluate.blank_image_check) ^ set(other.evaluate.blank_image_check)}
    table = contract(cfg)
    key = max((k for k in table if path == k or path.startswith(k + ".")), key=len, default=None)
    return table[key] if key else set()


def scheduling_keys(model: type[BaseModel] = PipelineConfig, prefix: str = "") -> set[str]:
    """Key paths the schema types as scheduling (a whole section typed so: every key under it)."""
    found = set()
    for name, info in model.model_fields.items():
        path, annotation = f"{prefix}{name}", field_type(info)
        if is_scheduling(metadata(annotation)):
            found.add(path)
            continue
        for option in (info.annotation, *get_args(info.annotation)):
            if isinstance(option, type) and issubclass(option, BaseModel):
                found |= scheduling_keys(option, path + ".")
    return found


def _under(key: str, paths: tuple[str, ...] | set[str]) -> bool:
    return any(key == p or key.startswith(p + ".") for p in paths)


def _annotation(path: str) -> Any:
    model: Any = PipelineConfig
    ann: Any = None
    for part in path.split("."):
        ann = model.model_fields[part].annotation
        models = [a for a in (ann, *get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = models[0] if models else None
    return ann


def _alternatives(ann: Any) -> tuple[list[Any], list[type]]:
    """(literal values, plain types) an annotation allows."""
    if get_origin(ann) is Annotated:
        return _alternatives(get_args(ann)[0])
    if get_origin(ann) is Literal:
        return list(get_args(ann)), []
    if get_origin(ann) in (Union, UnionType):
        lits, types = [], []
        for a in get_args(ann):
            more_lits, more_types = _alternatives(a)
            lits += more_lits
            types += more_types
        return lits, types
    return [], [ann] if isinstance(ann, type) else []


def candidates(path: str, value: Any) -> list[Any]:
    literals, types = _alternatives(_annotation(path))
    out: list[Any] = [v for v in literals if v != value]
    if isinstance(value, bool):
        out.append(not value)
    elif isinstance(value, int):
        out += [value + 1, value * 2, value // 2, value - 1]
    elif isinstance(value, float):
        out += [value * 2, value / 2, value + 0.5]
    elif isinstance(value, str) and path.endswith(".deepspeed"):  # must name an existing file
        out.append(value.replace("zero2", "zero3") if "zero2" in value else value.replace("zero3", "zero2"))
    elif isinstance(value, str):
        out += [value + "x", "linear"]  # "linear": a connector, the one free-form string with a validator
    elif isinstance(value, list):
        out += [[value[0] * 0.5, *value[1:]]] if value and isinstance(value[0], float) else []
        out += [value[:-1], []] if value else [["gqa"], [56]]
    for t in types:
        if isinstance(t, type) and issubclass(t, BaseModel):
            out.append({})
        elif t is bool:
            out += [True, False]
        elif t in (int, float):
            out.append(t(1))
        elif t is str:
            out.append("x")
    return [v for v in out if v != value]


def perturbed(cfg: PipelineConfig, path: str) -> PipelineConfig | None:
    """`cfg` with one leaf changed to the first different value the schema and `plan` accept."""
    for value in candidates(path, flatten(cfg.model_dump(mode="json"))[path]):
        raw = cfg.model_dump(mode="json")
        node = raw
        *parents, leaf = path.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
        try:
            other = PipelineConfig.model_validate(raw)
        except ValidationError:
            continue
        if not config_problems(other) and not sweep_problems(other):  # valid as a whole, as load and plan check
            return other
    return None


def planned(cfg: PipelineConfig, root: str) -> dict[str, Any]:
    return {p.stage.name: p for p in make_plan(build_stages(cfg), root)}


def reached(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """Stages whose own arguments differ (what they compute from, or only how they are scheduled), or how many
    of their fan-out group run at once."""
    def seen(p: Any) -> tuple[str, int]:
        return repr(materialize(p.args)), p.stage.concurrency

    return {n for n in a if seen(a[n]) != seen(b[n])}


def computed(a: dict[str, Any], b: dict[str, Any]) -> set[str]:
    """Stages whose fingerprinted arguments (values and file digests, not upstream fingerprints) differ."""
    part = ("args", "files")
    return {n for n in a if [a[n].inputs[k] for k in part] != [b[n].inputs[k] for k in part]}


def test_every_key_reaches_exactly_its_stages_scheduling_reruns_nothing_and_none_is_dead(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAVA_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("LLAVA_JUDGE_MODEL", raising=False)
    cfg = load_config("tiny")
    stages = build_stages(cfg)
    inactive = () if cfg.sweep.enabled else ("sweep",)  # the settings of a stage this config does not run
    scheduling = scheduling_keys()
    root = str(tmp_path / "store")
    base = planned(cfg, root)
    for p in base.values():  # every stage's output committed: a plan that reruns nothing says "cached" throughout
        Path(p.out).mkdir(parents=True)
        (Path(p.out) / MANIFEST).write_text(json.dumps({"stage": p.stage.name, "fingerprint": p.fingerprint}))
    dead, unperturbable, wrong, checked_scheduling = [], [], [], []
    for path in flatten(cfg.model_dump(mode="json")):
        other = perturbed(cfg, path)
        if other is None:
            unperturbable.append(path)
            continue
        after = planned(other, root)
        if after.keys() != base.keys():  # the DAG's shape changed: only the pipeline's own keys may do that
            if not _under(path, PIPELINE_KEYS):
                wrong.append((path, "changes the DAG's stages"))
            continue
        reran = {n for n, p in after.items() if p.action != "cached"}
        if _under(path, scheduling):
            if reran:
                wrong.append((path, f"a scheduling key reruns {sorted(reran)}"))
            if not reached(base, after) and not _under(path, inactive):
                dead.append(path)
            checked_scheduling.append(path)
            continue
        direct = computed(base, after)
        if _under(path, PIPELINE_KEYS + inactive):
            if direct:
                wrong.append((path, f"a pipeline key is in the arguments of {sorted(direct)}"))
            continue
        expected = expected_readers(cfg, other, path)
        if not expected:
            dead.append(path)
        elif direct != expected or reran != downstream(stages, expected):
            wrong.append((path, {"reaches": sorted(direct), "contract": sorted(expected), "reruns": sorted(reran)}))
    assert wrong == []
    assert dead == [], f"config keys no stage reads: {dead}"
    # The schema types exactly these as scheduling, and each was changed here (but the one it ties to another).
    assert scheduling == SCHEDULING_KEYS
    assert {k for k in SCHEDULING_KEYS if not k.startswith("sweep.")} - set(checked_scheduling) <= {
        "finetune.num_workers"}
    # Only keys the schema ties to another cannot change alone: a checkpoint instead of random_init, LoRA
    # (needs trainable: connector+llm) in the connector-only pretrain stage, a second finetune worker (needs
    # a smaller per_device_batch to keep global_batch).
    assert set(unperturbable) <= {"model.vision.name_or_path", "model.llm.name_or_path", "pretrain.lora",
                                  "finetune.num_workers"}


def test_the_sweeps_settings_reach_the_sweep_and_its_resources_rerun_nothing(tmp_path, monkeypatch):
    """With the sweep on: its resources and concurrency are scheduling; its space, dev set and budget are not."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_config("tiny_sweep")
    base = planned(cfg, str(tmp_path))
    for override, reruns_sweep in (("sweep.resources.driver_cpus=2", False), ("sweep.max_concurrent_trials=2", False),
                                   ("sweep.resources.cpus_per_worker=1", False), ("sweep.rungs=3", True),
                                   ("sweep.dev.limit=50", True), ("sweep.proxy.data_fraction=0.2", True)):
        after = planned(load_config("tiny_sweep", [override]), str(tmp_path))
        assert (base["sweep"].fingerprint != after["sweep"].fingerprint) is reruns_sweep, override
        assert all(base[n].fingerprint == after[n].fingerprint for n in base if n != "sweep"), override
