"""The evaluation harness with its MLflow server down (tests/faults/mlflow_server.py): the benchmarks finish on
time with the same results, and every metric, tag and artifact reaches MLflow once the server is back.

The cheapest real path: two benchmarks answered in this process (no Ray), once with the server up (the
reference) and once with it stopped before the harness starts and started again while it runs. The outage is
a few seconds (a restart's time) rather than the issue's 60 s: the harness's MLflow calls only append to a local journal whatever
the outage's length, and the sender's backoff tops out at 10 s, so a longer outage only adds retry cycles
(the finetune test in tests/components/train/test_train_e2e.py keeps the server down 60 s).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from components.core.mlflow_sender import FLUSH_TIMEOUT_S, sender
from components.core.mlflow_target import MlflowTarget
from components.evaluate.benchmarks import get_benchmark
from components.evaluate.harness import evaluate_benchmarks
from components.synth.evalsets import write_eval_sets
from components.synth.files import Writer
from components.synth.scene import COLORS

pytestmark = pytest.mark.e2e
BENCHES = ("gqa", "pope")
FILES = {"answers.jsonl", "categories.csv", "chart.png", "metrics.json", "rejected.jsonl"}


def _answers(folder: Path) -> list[tuple[str, str]]:
    return [(a["question_id"], a["text"]) for a in map(json.loads, (folder / "answers.jsonl").read_text().splitlines())]


def test_evaluate_through_an_mlflow_outage(mlflow_restartable, model_dir, tmp_path, caplog):
    from mlflow.tracking import MlflowClient

    root = tmp_path / "synth"
    write_eval_sets(Writer(root), 0, 1.0, sorted(COLORS))
    folders = {name: root / "eval" / get_benchmark(name).folder for name in BENCHES}
    spool = str(tmp_path / "spool")
    client = MlflowClient(mlflow_restartable.url)
    experiment = client.create_experiment("eval-outage")
    runs = {k: client.create_run(experiment).info.run_id for k in ("reference", "outage")}

    def evaluate(kind: str) -> tuple[list[dict], float]:
        t0 = time.monotonic()
        results = evaluate_benchmarks(folders, model_dir=model_dir, out_dir=tmp_path / kind, batch_size=4, limit=8,
                                      max_new_tokens=6, in_process=True,
                                      mlflow=MlflowTarget(mlflow_restartable.url, runs[kind], spool=spool))
        return results, time.monotonic() - t0

    reference, reference_s = evaluate("reference")
    mlflow_restartable.stop()
    restart = threading.Timer(0.5, mlflow_restartable.start)  # a start takes seconds: back while the harness flushes
    restart.start()
    down_at = time.monotonic()
    results, outage_s = evaluate("outage")
    print(f"harness {reference_s:.1f} s with the server up, {outage_s:.1f} s with it down; longest log call "
          f"{sender(spool).longest_put_s * 1000:.1f} ms")
    restart.join()
    # no MLflow retries on the harness's path (about four minutes a call): at most the stage end's bounded flush
    assert outage_s < reference_s + FLUSH_TIMEOUT_S + 30
    assert sender(spool).longest_put_s < 0.5
    assert sender(spool).flush(120) == 0
    said = [r.getMessage() for r in caplog.records if r.name == "components.core.mlflow_sender"]
    assert any("unreachable" in m for m in said) and any("answers again" in m for m in said)  # it was down
    print(f"server down {time.monotonic() - down_at:.1f} s in all")

    # the results do not depend on the outage
    for ref, got in zip(reference, results, strict=True):
        assert (got["benchmark"], got["value"], got["n_missing"]) == (ref["benchmark"], ref["value"], 0)
        name = got["benchmark"]
        assert _answers(tmp_path / "outage" / name) == _answers(tmp_path / "reference" / name)
    # and MLflow holds the same for both runs: metrics (timings aside), tags, artifacts
    ref_run, out_run = (client.get_run(runs[k]) for k in ("reference", "outage"))

    def scores(run) -> dict[str, float]:
        return {k: v for k, v in run.data.metrics.items() if "/timing/" not in k}

    assert scores(out_run) == scores(ref_run) and len(scores(ref_run)) > 10
    assert out_run.data.metrics.keys() == ref_run.data.metrics.keys()
    for name in BENCHES:
        assert out_run.data.tags[f"eval.{name}.status"] == "ok"
        listed = {Path(a.path).name for a in client.list_artifacts(runs["outage"], f"eval/{name}")}
        assert listed == FILES
        got = client.download_artifacts(runs["outage"], f"eval/{name}/metrics.json", str(tmp_path / "dl"))
        assert Path(got).read_text() == (tmp_path / "outage" / name / "metrics.json").read_text()
