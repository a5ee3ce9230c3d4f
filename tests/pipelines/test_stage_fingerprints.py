"""Each change reruns exactly the stages that read it (and, through their fingerprints, what is downstream of
them): the seed, a DeepSpeed JSON, an annotation file, a checkpoint folder, the training-time pixel code, one
benchmark's setting, the judge; a scheduling setting or an unrelated key reruns nothing, nor does an edit of the
evaluation code rerun training. Plans of the real DAG on an empty storage root (no Ray)."""

import json
import shutil
from pathlib import Path

import pytest

from components.core import fingerprint as fp
from pipelines.config import load_config
from pipelines.engine.executor import downstream, make_plan
from pipelines.llava15 import build_stages


@pytest.fixture(autouse=True)
def _digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("LLAVA_JUDGE_BASE_URL", raising=False)
    monkeypatch.delenv("LLAVA_JUDGE_MODEL", raising=False)


def plan_of(cfg, root):
    return make_plan(build_stages(cfg), str(root))


def fingerprints(cfg, root) -> dict[str, str]:
    return {p.stage.name: p.fingerprint for p in plan_of(cfg, root)}


def changed(a: dict[str, str], b: dict[str, str]) -> set[str]:
    assert a.keys() == b.keys()
    return {name for name in a if a[name] != b[name]}


def readers_and_below(cfg, *readers: str) -> set[str]:
    return downstream(build_stages(cfg), set(readers))


def test_seed_reruns_the_training_stages(tmp_path):
    base = load_config("tiny")
    seeded = load_config("tiny", ["seed=1"])
    assert changed(fingerprints(base, tmp_path), fingerprints(seeded, tmp_path)) == \
        readers_and_below(base, "pretrain", "finetune")


def test_scheduling_settings_and_unrelated_keys_rerun_nothing(tmp_path):
    """As a user raising a retry count after a crash, or giving a stage more CPUs, would type them."""
    base = fingerprints(load_config("tiny"), tmp_path)
    for override in ("tracking.experiment=other", "evaluate.concurrency=1", "prepare.cpus_per_task=1",
                     "finetune.keep_checkpoints=2", "evaluate.num_actors=2", "finetune.max_failures=3",
                     "finetune.cpus_per_worker=2", "finetune.checkpoint_every=50", "pretrain.num_workers=1",
                     "finetune.threads_per_worker=1", "finetune.compile_llm=true", "pretrain.use_gpu=true"):
        assert changed(base, fingerprints(load_config("tiny", [override]), tmp_path)) == set(), override


def test_a_blank_image_check_reruns_only_its_benchmark(tmp_path):
    cfg = load_config("tiny")
    more = load_config("tiny", ["evaluate.blank_image_check=[gqa, vqav2]"])
    # The export tags the registered model with every benchmark's metrics: it follows.
    assert changed(fingerprints(cfg, tmp_path), fingerprints(more, tmp_path)) == {"evaluate.vqav2", "export"}


def test_an_edited_deepspeed_json_reruns_the_stage_that_uses_it(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    for stage in ("pretrain", "finetune"):
        shutil.copy(fp.REPO_ROOT / "configs" / "deepspeed" / "zero2.json", ds / f"{stage}.json")
    cfg = load_config("tiny", [f"pretrain.deepspeed={ds / 'pretrain.json'}",
                               f"finetune.deepspeed={ds / 'finetune.json'}"])
    before = fingerprints(cfg, tmp_path)
    text = json.loads((ds / "finetune.json").read_text())
    text["gradient_clipping"] = 0.5
    (ds / "finetune.json").write_text(json.dumps(text))
    assert changed(before, fingerprints(cfg, tmp_path)) == readers_and_below(cfg, "finetune")


def test_an_edited_annotation_file_reruns_prepare(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ann = data / "captions.json"
    ann.write_text(json.dumps([{"id": "1", "image": "a.png", "conversations": [
        {"from": "human", "value": "<image>"}, {"from": "gpt", "value": "a red square"}]}]))
    cfg = load_config("tiny", [f"data.pretrain=[{{annotations: {ann}, image_root: {data}}}]"])
    before = fingerprints(cfg, tmp_path)
    ann.write_text(ann.read_text().replace("red", "blue"))  # same size, edited in place
    assert changed(before, fingerprints(cfg, tmp_path)) == readers_and_below(cfg, "prepare")


def _code_copy(tmp_path, monkeypatch):
    """A copy of the project's code that fingerprints read (fp.REPO_ROOT); edits there change no real file."""
    code = tmp_path / "code"
    for package in ("components", "pipelines"):
        shutil.copytree(fp.REPO_ROOT / package, code / package, ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.setattr(fp, "REPO_ROOT", code)
    return code


def test_edited_pixel_code_reruns_the_training_stages(tmp_path, monkeypatch):
    code = _code_copy(tmp_path, monkeypatch)
    cfg = load_config("tiny")
    before = fingerprints(cfg, tmp_path)
    pixels = code / "components" / "train" / "pixels.py"
    pixels.write_text(pixels.read_text() + "\n# an edit\n")
    assert changed(before, fingerprints(cfg, tmp_path)) == readers_and_below(cfg, "pretrain", "finetune")


def test_edited_evaluation_code_leaves_the_training_stages_alone(tmp_path, monkeypatch):
    """Every file of the evaluate room edited: the evaluate jobs rerun (and export, which checks parity with
    the evaluation's generation), nothing that trains or prepares does."""
    code = _code_copy(tmp_path, monkeypatch)
    cfg = load_config("tiny")
    before = fingerprints(cfg, tmp_path)
    for f in (code / "components" / "evaluate").rglob("*.py"):
        f.write_text(f.read_text() + "\n# an edit\n")
    assert changed(before, fingerprints(cfg, tmp_path)) == readers_and_below(
        cfg, *(f"evaluate.{b}" for b in cfg.evaluate.benchmarks), "export")


def test_a_judge_configured_later_reruns_the_judged_benchmarks(tmp_path, monkeypatch):
    cfg = load_config("tiny")
    plan = {p.stage.name: p for p in plan_of(cfg, tmp_path)}
    assert "skipped: no judge configured" in plan["evaluate.mmvet"].why
    assert "skipped: no judge configured" not in plan["evaluate.gqa"].why
    before = {name: p.fingerprint for name, p in plan.items()}
    monkeypatch.setenv("LLAVA_JUDGE_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("LLAVA_JUDGE_MODEL", "judge-model")
    monkeypatch.setenv("LLAVA_JUDGE_API_KEY", "secret-key-never-fingerprinted")
    after_plan = plan_of(cfg, tmp_path)
    assert changed(before, {p.stage.name: p.fingerprint for p in after_plan}) == \
        readers_and_below(cfg, "evaluate.llava_bench", "evaluate.mmvet")
    assert "secret-key" not in json.dumps([p.inputs for p in after_plan])
    monkeypatch.setenv("LLAVA_JUDGE_MODEL", "another-judge")
    assert changed(before, fingerprints(cfg, tmp_path)) == \
        readers_and_below(cfg, "evaluate.llava_bench", "evaluate.mmvet")


def test_an_unreadable_manifest_is_absent_not_a_crash(tmp_path):
    from pipelines.engine.executor import MANIFEST

    cfg = load_config("tiny")
    plan = plan_of(cfg, tmp_path)
    out = Path(plan[0].out)
    out.mkdir(parents=True)
    (out / MANIFEST).write_text('{"stage": "synth", "finger')  # a torn write from an older version
    again = plan_of(cfg, tmp_path)
    assert again[0].action == "run"


def test_checkpoints_given_as_paths_are_fingerprinted_by_content(tmp_path):
    """Weights replaced in place at the same path rerun the stages that load them; a Hub name stays a name."""
    llm, tower = tmp_path / "vicuna", tmp_path / "clip"
    for folder in (llm, tower):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights-1")
    cfg = load_config("tiny", ["model.llm.random_init=null", f"model.llm.name_or_path={llm}",
                               "model.vision.random_init=null", f"model.vision.name_or_path={tower}"])
    before = fingerprints(cfg, tmp_path)
    (llm / "model.safetensors").write_bytes(b"weights-2")  # same size, same path
    assert changed(before, fingerprints(cfg, tmp_path)) == readers_and_below(cfg, "pretrain", "finetune")
    before = fingerprints(cfg, tmp_path)
    (tower / "model.safetensors").write_bytes(b"weights-2")
    assert changed(before, fingerprints(cfg, tmp_path)) == readers_and_below(cfg, "prepare")  # and all below
    hub = load_config("tiny", ["model.llm.random_init=null", "model.llm.name_or_path=lmsys/vicuna-7b-v1.5"])
    pretrain = next(p for p in plan_of(hub, tmp_path) if p.stage.name == "pretrain")
    assert set(pretrain.inputs["files"]) == {"pretrain.deepspeed"}  # a Hub name is fingerprinted by its name
    assert pretrain.inputs["args"]["model.llm.name_or_path"] == "lmsys/vicuna-7b-v1.5"


def test_a_given_model_to_evaluate_is_fingerprinted_by_content(tmp_path):
    model = tmp_path / "released"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"weights-1")
    cfg = load_config("tiny", [f"evaluate.model={model}", "evaluate.benchmarks=[gqa,pope]"])
    before = fingerprints(cfg, tmp_path)
    assert set(before) == {"synth", "evaluate.gqa", "evaluate.pope"}  # nothing to train, nothing to export
    (model / "model.safetensors").write_bytes(b"weights-2")
    assert changed(before, fingerprints(cfg, tmp_path)) == {"evaluate.gqa", "evaluate.pope"}
