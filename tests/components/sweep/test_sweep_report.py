"""best.json, the ablation table and the heatmap, built from trial records alone (no Ray)."""

import csv
import io
import math

import pytest

from components.sweep.report import best_json, heatmap_png, select_best, table_rows, to_csv, to_markdown


def trial(connector, size, values, status=None, wall=None, error=None, rungs=3):
    reported = [{"accuracy": v, "train_loss": 5.0 - (v or 0) / 100, "rung": i + 1,
                 "wall_s": (wall or 10.0) * (i + 1), "pretrain_steps": 4, "finetune_steps": 2 * (i + 1)}
                for i, v in enumerate(values)]
    return {"key": f"{connector}-{size}px", "trial_id": f"t-{connector}-{size}", "connector": connector,
            "resolution": {"image_size": size, "name_or_path": None}, "label": f"{size}px",
            "status": status or ("error" if error else "completed" if len(values) == rungs else "stopped"),
            "rungs": reported, "error": error, "mlflow_run_id": f"run-{connector}-{size}"}


TRIALS = [
    trial("linear", 56, [20.0, 30.0, 41.0]),
    trial("linear", 84, [35.0]),  # stopped early with a higher rung-1 value than anyone's final
    trial("mlp2x_gelu", 56, [25.0, 38.0, 44.0]),
    trial("mlp2x_gelu", 84, [28.0, 40.0, 44.0], wall=8.0),  # ties mlp2x_gelu-56px, cheaper
    trial("mlp3x_gelu", 56, [], error="RuntimeError: out of memory"),
    trial("mlp3x_gelu", 84, [10.0, 12.0]),
]


def test_best_compares_trials_at_the_deepest_rung_and_breaks_ties_by_cost():
    best = select_best(TRIALS, "accuracy", "max")
    assert best["key"] == "mlp2x_gelu-84px"  # linear-84px (35 at rung 1) trained less; ties go to the cheaper
    assert select_best(TRIALS, "accuracy", "min")["key"] == "linear-56px"
    assert select_best(TRIALS, "train_loss", "min")["key"] == "mlp2x_gelu-84px"
    equal = [trial("linear", 56, [1.0]), trial("mlp2x_gelu", 56, [1.0])]
    assert select_best(equal, "accuracy", "max")["key"] == "linear-56px"  # full tie: the earlier grid point


def test_best_needs_a_finite_metric():
    with pytest.raises(RuntimeError, match="no sweep trial reported a finite 'accuracy'.*out of memory"):
        select_best([trial("linear", 56, [math.nan]), TRIALS[4]], "accuracy", "max")
    with pytest.raises(ValueError, match="mode"):
        select_best(TRIALS, "accuracy", "best")


def test_best_json_has_the_values_auto_reads_and_every_trial():
    out = best_json(TRIALS, "accuracy", "max", 3, {"wall_s": 12.5})
    assert out["best"]["connector"] == "mlp2x_gelu"
    assert out["best"]["resolution"] == {"image_size": 84, "name_or_path": None}
    assert out["best"]["value"] == 44.0 and out["best"]["rungs"] == 3 and out["best"]["label"] == "84px"
    assert out["counts"] == {"trials": 6, "completed": 3, "stopped_early": 2, "errors": 1}
    assert len(out["trials"]) == 6 and out["wall_s"] == 12.5 and out["metric"] == "accuracy"
    assert out["tied_with_best"] == ["mlp2x_gelu-56px", "mlp2x_gelu-84px"]


def test_ablation_table_rows_and_csv():
    rows = table_rows(TRIALS, "accuracy")
    assert [r["connector"] + "@" + r["resolution"] for r in rows][:2] == ["linear@56px", "linear@84px"]
    stopped = rows[1]
    assert stopped["accuracy"] == 35.0 and stopped["rungs"] == 1 and stopped["status"] == "stopped"
    assert stopped["wall_s"] == 10.0 and stopped["finetune_steps"] == 2
    assert rows[4]["accuracy"] is None and rows[4]["status"] == "error"
    parsed = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert len(parsed) == 6 and parsed[2]["accuracy"] == "44.0" and parsed[0]["mlflow_run_id"] == "run-linear-56"


def test_markdown_grid_marks_best_and_stopped_trials():
    md = to_markdown(TRIALS, "accuracy", "max", select_best(TRIALS, "accuracy", "max"), 3)
    lines = md.splitlines()
    assert "Best: **mlp2x_gelu @ 84px** (accuracy 44.00)" in md
    assert "| connector | 56px | 84px |" in lines
    assert "| linear | 41.00 | 35.00† |" in lines
    assert "| mlp2x_gelu | 44.00 | **44.00** |" in lines
    assert "| mlp3x_gelu | error | 12.00† |" in lines  # two of three rungs: stopped
    assert "| linear | 84px | 35.00 | 1/3 | stopped | 10.0 | 4 | 2 |" in lines


def test_heatmap_is_a_png():
    from PIL import Image

    png = heatmap_png(TRIALS, "accuracy", "max", 3)
    image = Image.open(io.BytesIO(png))
    assert image.format == "PNG" and image.width > 300 and image.height > 200
    single = heatmap_png([trial("linear", 56, [0.0])], "accuracy", "max", 1)  # one cell, one value: no crash
    assert single[:4] == b"\x89PNG"
