"""Learning-rate schedules: HF get_*_schedule_with_warmup values, warmup = ceil(ratio × total)."""

import math

import pytest

from components.train.schedule import lr_lambda, warmup_steps


def test_warmup_is_ceiling_of_ratio():
    assert warmup_steps(100, 0.03) == 3
    assert warmup_steps(10, 0.03) == 1  # ceil(0.3)
    assert warmup_steps(10, 0.0) == 0


def test_cosine_with_warmup_matches_hf_formula():
    total, warm = 100, 3
    assert lr_lambda(0, total, 0.03, "cosine") == 0.0
    assert lr_lambda(1, total, 0.03, "cosine") == pytest.approx(1 / 3)
    assert lr_lambda(warm, total, 0.03, "cosine") == pytest.approx(1.0)
    mid = warm + (total - warm) / 2
    assert lr_lambda(int(mid), total, 0.03, "cosine") == pytest.approx(
        0.5 * (1 + math.cos(math.pi * (int(mid) - warm) / (total - warm))))
    assert lr_lambda(total, total, 0.03, "cosine") == pytest.approx(0.0, abs=1e-12)
    values = [lr_lambda(s, total, 0.03, "cosine") for s in range(warm, total + 1)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


def test_linear_and_constant():
    assert lr_lambda(5, 10, 0.0, "linear") == pytest.approx(0.5)
    assert lr_lambda(10, 10, 0.0, "linear") == 0.0
    assert lr_lambda(0, 10, 0.2, "constant") == 0.0
    assert lr_lambda(1, 10, 0.2, "constant") == pytest.approx(0.5)
    assert lr_lambda(7, 10, 0.2, "constant") == 1.0


def test_no_warmup_starts_at_full_lr():
    assert lr_lambda(0, 10, 0.0, "cosine") == 1.0


def test_bad_arguments():
    with pytest.raises(ValueError, match="total_steps"):
        lr_lambda(0, 0, 0.03, "cosine")
    with pytest.raises(ValueError, match="schedule kind"):
        lr_lambda(5, 10, 0.0, "step")  # type: ignore[arg-type]
