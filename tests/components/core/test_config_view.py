"""A stage's config view: declared keys read as usual, anything else is a loud error (pickling included)."""

import pickle

import pytest

from components.core.config import load_config
from components.core.config_view import UndeclaredConfigRead, unwrap, view


@pytest.fixture(scope="module")
def cfg():
    return load_config("tiny")


def test_declared_keys_read_as_usual(cfg):
    v = view(cfg, ("seed", "pretrain", "model.vision.image_size"), "pretrain")
    assert v.seed == cfg.seed
    assert v.pretrain is cfg.pretrain  # a whole declared section is the real model
    assert v.pretrain.optim.lr == cfg.pretrain.optim.lr
    assert v.model.vision.image_size == cfg.model.vision.image_size


@pytest.mark.parametrize("read", [
    lambda v: v.finetune,
    lambda v: v.model.connector,
    lambda v: v.model.vision.name_or_path,
    lambda v: v.evaluate.root,
    lambda v: v.model_dump(),
    lambda v: v.model.model_dump(),
])
def test_undeclared_reads_fail_naming_key_and_stage(cfg, read):
    v = view(cfg, ("seed", "pretrain", "model.vision.image_size"), "pretrain")
    with pytest.raises(UndeclaredConfigRead, match="stage pretrain"):
        read(v)


def test_the_error_names_the_key(cfg):
    v = view(cfg, ("seed", "model.vision"), "synth")
    with pytest.raises(UndeclaredConfigRead, match="`model.connector`"):
        _ = v.model.connector


def test_view_is_read_only_and_copies_stay_views(cfg):
    v = view(cfg, ("pretrain.epochs", "model"), "sweep")
    with pytest.raises(AttributeError):
        v.seed = 3
    copy = v.model_copy(update={"model": v.model.model_copy(update={"connector": "linear"})})
    assert copy.model.connector == "linear" and unwrap(copy).model.connector == "linear"
    assert unwrap(v) is cfg  # the original is untouched
    with pytest.raises(UndeclaredConfigRead):
        _ = copy.pretrain.max_steps


def test_a_view_crosses_processes_as_a_view(cfg):
    v = pickle.loads(pickle.dumps(view(cfg, ("seed",), "pretrain")))
    assert v.seed == cfg.seed
    with pytest.raises(UndeclaredConfigRead):
        _ = v.model


def test_fields_a_copy_sets_become_readable(cfg):
    v = view(cfg, ("model.vision",), "sweep")
    copy = v.model_copy(update={"model": v.model.model_copy(update={"connector": "linear"})})
    assert copy.model.connector == "linear" and copy.model.vision.image_size == cfg.model.vision.image_size
    with pytest.raises(UndeclaredConfigRead):
        _ = copy.model.llm
