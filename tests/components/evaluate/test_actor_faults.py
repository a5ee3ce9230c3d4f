"""A generation replica killed mid-benchmark (components/evaluate/pool.py): Ray restarts it, the batch it held
is answered again, the benchmark's answers equal an undisturbed run's and the run's next benchmark is answered
by the same pool; a replica past its restart budget fails the pass with an error naming the benchmark.

The kill lands mid-batch by construction: the pool's replica holds the pass's first batch back
`DELAY_S` seconds after answering it (the pool's test knob), and the kill comes `KILL_AFTER_S` into the pass.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from components.evaluate.benchmarks import get_benchmark
from components.evaluate.generate import GenerationError
from components.evaluate.harness import evaluate_benchmarks
from components.evaluate.outputs import mlflow_metrics
from components.evaluate.pool import GenerationPool, PoolSpec, close_warm_pools, warm_pool
from components.synth.evalsets import write_eval_sets
from components.synth.files import Writer
from components.synth.scene import COLORS

LIMIT = 8  # two batches of 4 per benchmark
DELAY_S = 4.0  # the first batch of a pass is held this long after it is answered
KILL_AFTER_S = 1.0  # well after the first batch was handed out (ms), well before it returns (>= DELAY_S)
PASS_TIMEOUT_S = 120.0  # a hang is a failure, not a stuck suite


@pytest.fixture(scope="module")
def eval_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("world") / "synth"
    write_eval_sets(Writer(root), 0, 0.1, sorted(COLORS), names=("gqa", "pope"))
    return root / "eval"


def _folder(eval_root: Path, name: str) -> dict[str, Path]:
    return {name: eval_root / get_benchmark(name).folder}


def _answers(folder: Path, name: str) -> list[tuple[Any, str]]:
    lines = (folder / name / "answers.jsonl").read_text(encoding="utf-8").splitlines()
    return [(a["question_id"], a["text"]) for a in map(json.loads, lines)]


def _kill_mid_pass(pool: GenerationPool, call: Callable[[], Any]) -> Any:
    """Run `call` (one pass over `pool`, one replica) and SIGKILL the replica's process while its first batch
    is out; the call's result, or its exception re-raised."""
    import ray

    pid = ray.get(pool.actors[0].pid.remote(), timeout=PASS_TIMEOUT_S)  # loaded and idle before the pass
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["result"] = call()
        except BaseException as e:  # handed to the test's thread
            box["error"] = e

    thread = threading.Thread(target=target, daemon=True)  # daemon: a hung pass cannot hold the suite
    thread.start()
    time.sleep(KILL_AFTER_S)
    assert thread.is_alive(), "the pass ended before the kill: the first batch was not held back"
    os.kill(pid, signal.SIGKILL)
    thread.join(PASS_TIMEOUT_S)
    assert not thread.is_alive(), f"the pass did not end within {PASS_TIMEOUT_S} s of the kill"
    if "error" in box:
        raise box["error"]
    return box["result"]


@pytest.mark.e2e
def test_a_replica_killed_mid_benchmark_is_restarted_and_the_benchmark_answers_as_undisturbed(
        ray_local, eval_root, model_dir, tmp_path):
    spec = PoolSpec(str(model_dir), "vicuna_v1", batch_size=4, num_actors=1, use_gpu=False,
                    delay_first_batch_s=DELAY_S)
    common = dict(model_dir=model_dir, batch_size=4, limit=LIMIT, max_new_tokens=6)
    try:
        pool = warm_pool(spec)  # the run's pool, as every evaluate job of a run gets it
        actor, killed = pool.actors[0], ray_local.get(pool.actors[0].pid.remote(), timeout=PASS_TIMEOUT_S)
        (gqa,) = _kill_mid_pass(pool, lambda: evaluate_benchmarks(
            _folder(eval_root, "gqa"), out_dir=tmp_path / "run", pool=pool, **common))
        # The run's next benchmark job: the same pool, the same (restarted) replica.
        (pope,) = evaluate_benchmarks(_folder(eval_root, "pope"), out_dir=tmp_path / "run",
                                      pool=warm_pool(spec), **common)
        assert warm_pool(spec) is pool and pool.actors == [actor]
        assert ray_local.get(actor.pid.remote(), timeout=PASS_TIMEOUT_S) != killed  # a new process
    finally:
        close_warm_pools()

    # Undisturbed: the same rows answered by the same GeneratorActor code in this process.
    reference = {r["benchmark"]: r for r in evaluate_benchmarks(
        {**_folder(eval_root, "gqa"), **_folder(eval_root, "pope")}, out_dir=tmp_path / "ref", in_process=True,
        **common)}
    for r in (gqa, pope):
        name = r["benchmark"]
        assert r["status"] == "ok" and r["n_questions"] == LIMIT and r["n_missing"] == 0, name
        assert r["timing"]["pass_questions"] == LIMIT, name  # the retried batch replaced, not added
        assert _answers(tmp_path / "run", name) == _answers(tmp_path / "ref", name), name
        assert len(_answers(tmp_path / "run", name)) == LIMIT and r["value"] == reference[name]["value"], name
    assert gqa["timing"]["actor_restarts"] == 1 and pope["timing"]["actor_restarts"] == 0
    # The count reaches MLflow with the benchmark's other metrics.
    assert mlflow_metrics(gqa)["gqa/timing/actor_restarts"] == 1.0
    assert mlflow_metrics(pope)["pope/timing/actor_restarts"] == 0.0


@pytest.mark.e2e
def test_a_replica_past_its_restart_budget_fails_the_pass_naming_the_benchmark(
        ray_local, eval_root, model_dir, tmp_path):
    """No restart allowed: the first death already spends the budget; a clear error, not a hang or a retry."""
    spec = PoolSpec(str(model_dir), "vicuna_v1", batch_size=4, num_actors=1, use_gpu=False,
                    delay_first_batch_s=DELAY_S, max_restarts=0)
    pool = GenerationPool(spec)
    try:
        with pytest.raises(GenerationError, match=r"^gqa: generation replica 1 of 1 for .* died with all 0 of its "
                                                  r"restart\(s\) used; its last death: The actor died"):
            _kill_mid_pass(pool, lambda: evaluate_benchmarks(
                _folder(eval_root, "gqa"), model_dir=model_dir, out_dir=tmp_path, batch_size=4, limit=LIMIT,
                max_new_tokens=6, pool=pool))
    finally:
        pool.close()
    assert not (tmp_path / "gqa" / "answers.jsonl").exists()  # nothing scored from a partial pass


def test_a_negative_restart_budget_is_refused(ray_local, model_dir):
    with pytest.raises(ValueError, match="max_restarts must be >= 0, got -1"):
        GenerationPool(PoolSpec(str(model_dir), "vicuna_v1", batch_size=4, num_actors=1, use_gpu=False,
                                max_restarts=-1))


@pytest.mark.e2e
def test_a_replica_whose_model_does_not_load_fails_at_once_not_after_restarts(ray_local, eval_root, tmp_path):
    """A constructor that raises is no death to restart (Ray does not restart it): the pass fails with the
    loading error."""
    with pytest.raises(GenerationError, match=r"a generation replica for .*absent failed: .*creation task"):
        evaluate_benchmarks(_folder(eval_root, "gqa"), model_dir=tmp_path / "absent", out_dir=tmp_path,
                            batch_size=4, limit=LIMIT)
