"""The stage contract on the default config: perturb every leaf key in turn; the stages whose fingerprint
changes are exactly the stages that declare reading that key and the stages downstream of them. Every key
is read by some stage, or by the pipeline itself (`PIPELINE_KEYS`): none is dead."""

from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from components.core.config import PipelineConfig, load_config
from components.core.fingerprint import flatten
from pipelines.engine.executor import downstream, make_plan
from pipelines.llava15 import PIPELINE_KEYS, build_stages, config_problems


def _under(key: str, paths: tuple[str, ...]) -> bool:
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
        if not config_problems(other):  # valid as a whole, as `plan` checks it
            return other
    return None


def fingerprints(cfg: PipelineConfig, root: str) -> dict[str, str]:
    return {p.stage.name: p.fingerprint for p in make_plan(cfg, build_stages(cfg), root)}


def test_every_leaf_key_changes_exactly_its_readers_and_none_is_dead(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = load_config("tiny")
    stages = build_stages(cfg)
    inactive = () if cfg.sweep.enabled else ("sweep",)  # the settings of a stage this config does not run
    base = fingerprints(cfg, str(tmp_path))
    leaves = flatten(cfg.model_dump(mode="json"))
    dead, unperturbable, wrong = [], [], []
    for path in leaves:
        readers = {s.name for s in stages if _under(path, s.reads) and not _under(path, s.resources)}
        scheduling = {s.name for s in stages if _under(path, s.resources)}
        if not readers and not scheduling and not _under(path, PIPELINE_KEYS + inactive):
            dead.append(path)
        other = perturbed(cfg, path)
        if other is None:
            unperturbable.append(path)
            continue
        after = fingerprints(other, str(tmp_path))
        if after.keys() != base.keys():  # the DAG's shape changed: only the pipeline's own keys may do that
            if not _under(path, PIPELINE_KEYS):
                wrong.append((path, "changes the DAG's stages"))
            continue
        expected = downstream(stages, readers)
        if {name for name in base if base[name] != after[name]} != expected:
            # The code may have been edited meanwhile: compare afresh.
            base, after = fingerprints(cfg, str(tmp_path)), fingerprints(other, str(tmp_path))
            changed = {name for name in base if base[name] != after[name]}
            if changed != expected:
                wrong.append((path, sorted(changed ^ expected)))
    assert dead == [], f"dead config: {dead}"
    assert wrong == []
    # Only keys the schema ties to another cannot change alone: a checkpoint instead of random_init, LoRA
    # (needs trainable: connector+llm) in the connector-only pretrain stage, a second finetune worker (needs
    # a smaller per_device_batch to keep global_batch).
    assert set(unperturbable) <= {"model.vision.name_or_path", "model.llm.name_or_path", "pretrain.lora",
                                  "finetune.num_workers"}
