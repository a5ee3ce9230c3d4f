"""The sweep section of the config and the pure logic around it: grid, trial configs, rungs, `auto`. No Ray."""

import pytest

from components.core.config import ConfigError, load_raw
from components.models.spec import AUTO
from components.sweep.space import grid, point_for, rung_steps, trial_setup
from pipelines.config import load_config
from pipelines.llava15 import auto_keys, prepared_vision, resolve_auto


def _grid(cfg):
    return grid(cfg.sweep, cfg.model.spec())


def _point(cfg, connector, image_size):
    return point_for(cfg.sweep, cfg.model.spec(), connector, image_size)


def _trial(cfg, point):
    return trial_setup(cfg.sweep, cfg.model.spec(), cfg.pretrain, cfg.finetune, point)


def test_tiny_sweep_extends_tiny():
    cfg, tiny = load_config("tiny_sweep"), load_config("tiny")
    assert cfg.name == "tiny_sweep" and load_raw("tiny_sweep")["storage"] == "./runs/tiny_sweep"
    assert cfg.model.connector == "auto" and cfg.model.vision.image_size == "auto"
    assert cfg.model.vision.random_init == tiny.model.vision.random_init  # merged, not replaced
    assert cfg.finetune == tiny.finetune and cfg.data == tiny.data
    assert cfg.sweep.enabled and [r.image_size for r in cfg.sweep.space.resolution] == [56, 84]
    assert not tiny.sweep.enabled  # the default run stays sweep-free
    assert "extends" not in load_raw("tiny_sweep")


def test_tiny_sweep_ranks_by_dev_accuracy_with_asha():
    from components.sweep.stage import dev_benchmark, sweep_metric

    cfg = load_config("tiny_sweep")
    assert sweep_metric(cfg.sweep, dev_benchmark(cfg.sweep)) == "accuracy" and cfg.sweep.mode == "max"
    assert cfg.sweep.asha.enabled and rung_steps(cfg.sweep.proxy.finetune_steps, cfg.sweep.rungs) == [100, 200]
    with pytest.raises(ValueError, match="sweep.metric: 'f1'"):
        sweep_metric(load_config("tiny_sweep", ["sweep.metric=f1"]).sweep, dev_benchmark(cfg.sweep))


def test_extends_errors_name_the_file(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: b.yaml\nname: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\nname: b\n")
    with pytest.raises(ConfigError, match="a.yaml: extends: b.yaml leads back to itself|b.yaml: extends: a.yaml"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("extends: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="c.yaml: extends: config 'nowhere.yaml' not found"):
        load_config(tmp_path / "c.yaml")


@pytest.mark.parametrize(("overrides", "message"), [
    (["model.connector=auto"], "tiny.yaml: model.connector: 'auto' takes the sweep's best value, but sweep.enabled is false"),
    (["model.vision.image_size=auto", "sweep.enabled=true"],
     "model.vision.image_size: 'auto' needs candidates in sweep.space.resolution, which is empty"),
    (["sweep.space.connector=[linear, mlp_fast]"], "sweep.space.connector: entry 1 'mlp_fast' is not a connector spec"),
    (["sweep.space.connector=[linear, linear]"], "sweep.space.connector: connectors listed more than once"),
    (["sweep.space.resolution=[56, 56]"], "sweep.space.resolution: image sizes must be unique"),
    (["sweep.space.resolution=[{image_size: 0}]"], "sweep.space.resolution.0.image_size"),
    (["sweep.enabled=true", "sweep.space.resolution=[56, 60]"],
     "sweep.space.resolution.1.image_size: 60 is not a multiple of the patch size 14"),
    (["sweep.enabled=true", "sweep.space.resolution=[{image_size: 224, name_or_path: openai/clip-vit-large-patch14}]"],
     "sweep.space.resolution.0.name_or_path: the model's vision tower is random_init"),
    (["sweep.enabled=true", "sweep.resources.num_workers=3"],
     "sweep.resources.num_workers: 3 workers do not divide pretrain.global_batch 32"),
    (["sweep.enabled=true", "sweep.proxy.finetune_steps=2", "sweep.rungs=3"],
     "sweep.rungs: 3 rungs need at least as many finetune steps"),
    (["sweep.metric=train_loss"], "sweep: metric train_loss is a loss: set mode: min"),
    (["sweep.asha.reduction_factor=1"], "sweep.asha.reduction_factor"),
    (["sweep.mode=best"], "sweep.mode"),
    (["sweep.dev.limit=fast"], "sweep.dev.limit: expected an integer, got 'fast'"),
])
def test_sweep_config_errors_name_the_key_path(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", overrides)
    assert message in str(e.value)


def test_paper_space_pairs_resolutions_with_their_towers():
    cfg = load_config("llava15_7b")
    assert not cfg.sweep.enabled
    assert cfg.sweep.space.connector == ["linear", "mlp2x_gelu", "mlp3x_gelu"]
    towers = {r.image_size: r.name_or_path for r in cfg.sweep.space.resolution}
    assert towers == {224: "openai/clip-vit-large-patch14", 336: "openai/clip-vit-large-patch14-336"}
    cfg = load_config("llava15_7b", ["sweep.enabled=true", "model.connector=auto", "model.vision.image_size=auto"])
    points = _grid(cfg)
    assert [p.key for p in points] == ["linear-224px", "linear-336px", "mlp2x_gelu-224px", "mlp2x_gelu-336px",
                                       "mlp3x_gelu-224px", "mlp3x_gelu-336px"]
    small = _trial(cfg, _point(cfg, "mlp3x_gelu", 224))
    assert small.model.connector == "mlp3x_gelu"
    assert (small.model.vision.image_size, small.model.vision.name_or_path) == (224, "openai/clip-vit-large-patch14")
    # the shared prepared data is cut for the largest candidate (its tower included)
    prep = prepared_vision(cfg)
    assert (prep.image_size, prep.name_or_path) == (336, "openai/clip-vit-large-patch14-336")
    assert prepared_vision(load_config("llava15_7b")) == load_config("llava15_7b").model.vision


def test_trial_setup_applies_point_proxy_budget_and_resources():
    cfg = load_config("tiny_sweep", ["pretrain.max_steps=5", "sweep.proxy.pretrain_steps=8",
                                     "sweep.proxy.finetune_steps=12", "sweep.proxy.data_fraction=0.5"])
    t = _trial(cfg, _point(cfg, "linear", 84))
    assert t.model.connector == "linear" and t.model.vision.image_size == 84
    assert t.pretrain.epochs == 0.5 and t.finetune.epochs == 0.8  # tiny: 1 and 1.6 epochs
    assert t.pretrain.max_steps == 5 and t.finetune.max_steps == 12  # the smaller cap wins
    assert t.finetune.num_workers == 1 and t.finetune.cpus_per_worker == 1.0 and t.finetune.gradient_accumulation == 1
    # one worker group trains both stages: pretrain takes the trial's resources too
    assert (t.pretrain.num_workers, t.pretrain.cpus_per_worker) == (t.finetune.num_workers, 1.0)
    assert t.finetune.checkpoint_every == 0 and t.pretrain.checkpoint_every == 0
    assert AUTO not in (t.model.connector, t.model.vision.image_size)  # nothing left for a sweep to choose
    assert auto_keys(cfg) == ["model.connector", "model.vision.image_size"]
    # the settings not cut to the proxy are the config's own
    assert t.finetune.optim == cfg.finetune.optim and t.model.llm == cfg.model.llm
    assert t.model.vision.random_init == cfg.model.vision.random_init


def test_unsearched_dimension_keeps_the_model_value():
    cfg = load_config("tiny", ["sweep.enabled=true", "sweep.space.connector=[linear, mlp3x_gelu]"])
    assert [(p.connector, p.image_size, p.key) for p in _grid(cfg)] == [
        ("linear", None, "linear-model"), ("mlp3x_gelu", None, "mlp3x_gelu-model")]
    assert _trial(cfg, _grid(cfg)[1]).model.vision.image_size is None
    cfg = load_config("tiny", ["sweep.enabled=true", "sweep.space.connector=[]", "sweep.space.resolution=[28, 42]"])
    assert [p.key for p in _grid(cfg)] == ["mlp2x_gelu-28px", "mlp2x_gelu-42px"]


def test_rung_steps_split_the_finetune_evenly():
    assert rung_steps(12, 2) == [6, 12]
    assert rung_steps(10, 3) == [4, 7, 10]
    assert rung_steps(3, 3) == [1, 2, 3]
    assert rung_steps(5, 1) == [5]
    with pytest.raises(ValueError, match="sweep.rungs: 4 rungs need at least 4 finetune steps"):
        rung_steps(3, 4)


def test_resolve_auto_takes_the_best_values():
    cfg = load_config("tiny_sweep")
    best = {"connector": "mlp3x_gelu", "resolution": {"image_size": 84, "name_or_path": None}}
    resolved, choices = resolve_auto(cfg, best)
    assert resolved.model.connector == "mlp3x_gelu" and resolved.model.vision.image_size == 84
    assert choices == {"model.connector": "mlp3x_gelu", "model.vision.image_size": 84}
    assert auto_keys(resolved) == [] and resolved.finetune == cfg.finetune

    fixed = load_config("tiny_sweep", ["model.connector=linear"])
    resolved, choices = resolve_auto(fixed, best)
    assert resolved.model.connector == "linear" and choices == {"model.vision.image_size": 84}

    plain = load_config("tiny")
    assert resolve_auto(plain, best) == (plain, {})
    with pytest.raises(ValueError, match="best.json names no connector"):
        resolve_auto(cfg, {"resolution": {"image_size": 84}}, source="x/best.json")


def test_resolve_auto_switches_the_tower_with_the_resolution():
    cfg = load_config("llava15_7b", ["sweep.enabled=true", "model.vision.image_size=auto"])
    resolved, choices = resolve_auto(cfg, {"connector": "linear", "resolution": {
        "image_size": 224, "name_or_path": "openai/clip-vit-large-patch14"}})
    assert resolved.model.connector == "mlp2x_gelu"  # fixed in the config: untouched
    assert resolved.model.vision.name_or_path == "openai/clip-vit-large-patch14"
    assert choices == {"model.vision.image_size": 224, "model.vision.name_or_path": "openai/clip-vit-large-patch14"}
