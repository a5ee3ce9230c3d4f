"""An `s3://` eval root: the node that reads questions fetches them itself, images stay in the bucket and are
read by whoever opens them (a generation actor, export's parity check), under the folder's URL."""

from __future__ import annotations

from pathlib import Path

import boto3
import pytest

from components.core import storage
from components.evaluate.benchmarks import get_benchmark
from components.evaluate.harness import _BenchmarkRun, _question_rows, local_folder
from components.export.samples import parity_items
from components.synth.evalsets import write_eval_sets
from components.synth.files import Writer
from components.synth.scene import COLORS


@pytest.fixture(scope="module")
def s3_eval_root(s3_server, tmp_path_factory) -> str:
    local = tmp_path_factory.mktemp("evals")
    write_eval_sets(Writer(local), 0, 0.05, sorted(COLORS), names=("gqa",))
    boto3.client("s3", endpoint_url=s3_server).create_bucket(Bucket="remote-evals")
    storage.upload_dir(str(local / "eval"), "s3://remote-evals/eval")
    return "s3://remote-evals/eval"


def test_question_files_come_here_images_stay_remote(s3_eval_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    gqa = get_benchmark("gqa")
    source = f"{s3_eval_root}/{gqa.folder}"  # the benchmark's folder, as the pipeline hands it to its job
    root = local_folder(source, gqa)
    assert root.is_relative_to(tmp_path / "cache")
    assert (root / gqa.questions_file).is_file() and not (root / "images").exists()
    questions = gqa.load_questions(root)
    rows = _question_rows([_BenchmarkRun(gqa, root, source, tmp_path / "out", questions, 8)])
    # What a generation actor gets: a name under the URL, which it reads on its own node.
    assert {r["image_root"] for r in rows} == {source}
    assert all(not str(r["image_path"]).startswith("/") for r in rows)


def test_export_parity_prompts_read_their_images_from_the_bucket(s3_eval_root, tmp_path, monkeypatch):
    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    items = parity_items({"gqa": str(tmp_path / "no-eval-output")}, 3,
                         benchmark_folders={"gqa": f"{s3_eval_root}/gqa"})
    assert [it.source for it in items[:2]] == ["gqa", "gqa"]  # not the answers.jsonl fallback
    assert all(it.image is not None and it.image.size[0] > 0 for it in items[:2])
    assert Path(tmp_path / "cache").is_dir()
