"""Export stage: plain-transformers folder, parity with our evaluation path, MLflow registry, connector refusal.

Every export runs as the pipeline runs it: the work in a Ray task (the session's local Ray), this process
only its driver."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image, ImageDraw
from transformers.utils.chat_template_utils import render_jinja_template

from components.core.conversation import parse_record
from components.core.mlflow_target import MlflowTarget
from components.core.stage_run import StageRun
from components.core.templates import generation_segments, render_segments, render_text
from components.export.chat_template import VICUNA_V1_CHAT_TEMPLATE, chat_template
from components.export.package import ExportError
from components.export.parity import ParityError
from components.export.registry import read_eval_results
from components.export.samples import FIXED_PROMPTS, parity_items
from components.export.spec import ExportResources
from components.export.stage import run_export
from components.models.assembly import build_model
from pipelines.config import load_config

NEW_TOKENS = 8  # parity answers this long keep the file fast and still compare several decoding steps


def _save_model(tokenizer, path: Path, connector: str) -> str:
    model_cfg = load_config("tiny").model.model_copy(update={"connector": connector})
    model = build_model(model_cfg, tokenizer, seed=1)
    # A random LM mostly picks byte-fallback pieces, which all decode to "\ufffd": silence them so answers
    # are words and two different token sequences cannot decode to the same text.
    byte_ids = [i for t, i in tokenizer.get_vocab().items() if t.startswith("<0x")]
    with torch.no_grad():
        model.lm_head.weight[byte_ids] = 0.0
    model.save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return str(path)


def _export(model: str, out: str, *, evaluations: dict[str, str] | None = None,
            benchmark_folders: dict[str, str] | None = None, parity_sample: int = 8,
            allow_custom_connector: bool = False, registered_name: str = "tiny", fingerprint: str = "fp",
            mlflow: MlflowTarget | None = None, parity_max_new_tokens: int | None = None,
            resources: ExportResources | None = None) -> dict:
    """run_export with the arguments the tiny config's export job gets (see pipelines/llava15.export_args)."""
    return run_export(model=model, evaluations=evaluations or {}, benchmark_folders=benchmark_folders or {},
                      template="vicuna_v1", parity_sample=parity_sample,
                      allow_custom_connector=allow_custom_connector, registered_name=registered_name,
                      pipeline="tiny", parity_max_new_tokens=parity_max_new_tokens,
                      resources=resources or ExportResources(),
                      run=StageRun(stage="export", out=out, storage=out, fingerprint=fingerprint, mlflow=mlflow))


def _image(w: int, h: int, fill: tuple[int, int, int]) -> Image.Image:
    img = Image.new("RGB", (w, h), (190, 190, 180))
    ImageDraw.Draw(img).ellipse((4, 4, 4 + min(w, h) // 2, 4 + min(w, h) // 2), fill=fill)
    return img


@pytest.fixture(scope="module")
def model_dir(tokenizer, tmp_path_factory) -> str:
    return _save_model(tokenizer, tmp_path_factory.mktemp("finetune") / "model", "mlp2x_gelu")


@pytest.fixture(scope="module")
def linear_dir(tokenizer, tmp_path_factory) -> str:
    return _save_model(tokenizer, tmp_path_factory.mktemp("finetune_linear") / "model", "linear")


@pytest.fixture(scope="module")
def mlflow_target(tmp_path_factory) -> MlflowTarget:
    from mlflow.tracking import MlflowClient

    root = tmp_path_factory.mktemp("mlflow")
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("export-test", artifact_location=str(root / "artifacts"))
    return MlflowTarget(uri, client.create_run(exp).info.run_id)


@pytest.fixture(scope="module")
def eval_outputs(tmp_path_factory) -> dict[str, str]:
    """Two evaluate-stage outputs as run_evaluate leaves them: <out>/<bench>/metrics.json (+ answers)."""
    root = tmp_path_factory.mktemp("evals")
    gqa, pope = root / "evaluate.gqa", root / "evaluate.pope"
    (gqa / "gqa").mkdir(parents=True)
    (pope / "pope").mkdir(parents=True)
    (gqa / "gqa" / "metrics.json").write_text(json.dumps({"benchmark": "gqa", "metric": "accuracy",
                                                          "value": 71.5, "status": "ok"}))
    (pope / "pope" / "metrics.json").write_text(json.dumps({"benchmark": "pope", "metric": "f1",
                                                            "value": 83.25, "status": "ok"}))
    answers = [{"question_id": i, "prompt": f"Is the {c} shape on the left?\nAnswer the question using a single "
                "word or phrase.", "text": "yes"} for i, c in enumerate(["red", "blue", "green"])]
    (gqa / "gqa" / "answers.jsonl").write_text("".join(json.dumps(a) + "\n" for a in answers))
    return {"gqa": str(gqa), "pope": str(pope)}


@pytest.fixture(scope="module")
def exported(ray_local, model_dir, eval_outputs, mlflow_target, tmp_path_factory) -> tuple[dict, Path]:
    out = tmp_path_factory.mktemp("export")
    metrics = _export(model_dir, str(out), evaluations=eval_outputs, parity_sample=4, registered_name="tiny-llava",
                      fingerprint="fp-1234", mlflow=mlflow_target, parity_max_new_tokens=NEW_TOKENS)
    return metrics, out


# ---------------------------------------------------------------- the exported folder


def test_folder_is_plain_transformers(exported):
    _, out = exported
    model = out / "model"
    names = {p.name for p in model.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "processor_config.json",
            "chat_template.jinja", "tokenizer.json", "tokenizer_config.json", "README.md"} <= names
    config = json.loads((model / "config.json").read_text())
    assert config["architectures"] == ["LlavaForConditionalGeneration"] and "auto_map" not in config
    processor = json.loads((model / "processor_config.json").read_text())
    assert processor["image_processor"]["do_pad"] is True
    assert processor["image_processor"]["crop_size"] == {"height": 56, "width": 56}
    assert (processor["patch_size"], processor["vision_feature_select_strategy"],
            processor["num_additional_image_tokens"]) == (14, "default", 1)
    gen = json.loads((model / "generation_config.json").read_text())
    assert gen["do_sample"] is False and gen["max_new_tokens"] == 128
    assert json.loads((model / "tokenizer_config.json").read_text())["padding_side"] == "left"


def test_reloaded_with_plain_transformers_answers_like_our_path(exported, model_dir):
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    from components.evaluate.generate import Generator, GenItem

    _, out = exported
    processor = AutoProcessor.from_pretrained(out / "model", backend="pil")
    hf = LlavaForConditionalGeneration.from_pretrained(out / "model").eval()
    ours = Generator.from_dir(model_dir, device="cpu", max_new_tokens=NEW_TOKENS)
    prompts = [("What colour is the shape?", _image(90, 60, (220, 40, 40))),
               ("Describe the image briefly.", _image(50, 100, (40, 80, 225))),
               ("Name a shape with three sides.", None)]
    answers = []
    for q, img in prompts:
        content = [{"type": "image", "image": img}] if img is not None else []
        messages = [{"role": "user", "content": [*content, {"type": "text", "text": q}]}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                               return_dict=True, return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == ours.prompt_ids(q, img is not None)
        # The other common flow: render the template, then call the processor on text + image.
        rendered = processor.apply_chat_template(messages, add_generation_prompt=True)
        direct = processor(text=rendered, images=img, return_tensors="pt")
        assert direct["input_ids"][0].tolist() == inputs["input_ids"][0].tolist()
        with torch.inference_mode():
            gen = hf.generate(**inputs, max_new_tokens=NEW_TOKENS)
        theirs = processor.decode(gen[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True).strip()
        mine = ours.generate_batch([GenItem(q, q, img)])[0]
        assert theirs == mine
        answers.append(mine)
    assert all(a and "\ufffd" not in a for a in answers)  # real words were compared, not empty strings


def test_parity_report(exported):
    metrics, out = exported
    assert metrics["parity_ok"] is True and metrics["parity_checked"] == 4 and metrics["parity_mismatches"] == 0
    report = json.loads((out / "parity.json").read_text())
    assert report["ok"] is True and report["loader"] == "transformers.LlavaForConditionalGeneration"
    items = report["items"]
    assert all(r["match"] and r["input_ids_match"] and r["answer_match"] for r in items)
    assert [r["has_image"] for r in items].count(False) == 1  # a text-only prompt is always among them
    assert {r["source"] for r in items if r["has_image"]} == {"gqa:answers"}  # the evaluated prompts
    assert all(r["pixel_max_abs_diff"] == 0.0 for r in items if r["has_image"])


def test_registry_entry(exported, mlflow_target):
    metrics, out = exported
    assert metrics["registered_version"] == 1 and metrics["registry"] == "registered"
    client = mlflow_target.client()
    version = client.get_model_version("tiny-llava", "1")
    assert version.run_id == mlflow_target.run_id
    assert version.source == f"runs:/{mlflow_target.run_id}/model"
    assert version.tags["eval.gqa.accuracy"] == "71.5" and version.tags["eval.pope.f1"] == "83.25"
    assert version.tags["pipeline_fingerprint"] == "fp-1234" and version.tags["pipeline"] == "tiny"
    assert version.tags["mm_projector_type"] == "mlp2x_gelu" and version.tags["parity_ok"] == "True"
    logged = {a.path for a in client.list_artifacts(mlflow_target.run_id, "model")}
    assert "model/MLmodel" in logged  # an MLflow model, not just files
    inner = {a.path for a in client.list_artifacts(mlflow_target.run_id, "model/artifacts/model")}
    assert {"config.json", "model.safetensors", "processor_config.json"} <= {p.rsplit("/", 1)[1] for p in inner}
    run = client.get_run(mlflow_target.run_id)
    assert run.data.metrics["parity_ok"] == 1.0 and run.data.metrics["parity_checked"] == 4.0
    assert {a.path for a in client.list_artifacts(mlflow_target.run_id, "export")} == {"export/parity.json"}
    assert json.loads((out / "export.json").read_text())["eval_tags"]["eval.gqa.accuracy"] == "71.5"


# ---------------------------------------------------------------- connectors and failures


def test_refuses_a_connector_transformers_cannot_represent(linear_dir, tmp_path):
    with pytest.raises(ExportError) as err:
        _export(linear_dir, str(tmp_path / "out"))
    message = str(err.value)
    assert "'linear'" in message and "model.connector" in message
    assert "export.allow_custom_connector" in message
    assert not (tmp_path / "out").exists()  # refused before anything was written


def test_custom_connector_opt_in(ray_local, linear_dir, tmp_path):
    from components.models.assembly import load_llava
    from components.models.connectors import connector_spec_of

    metrics = _export(linear_dir, str(tmp_path / "out"), allow_custom_connector=True, parity_sample=2,
                      parity_max_new_tokens=4)
    assert metrics["custom_connector"] is True and metrics["parity_ok"] is True
    assert metrics["registered_version"] is None and metrics["registry"].startswith("skipped")
    model = tmp_path / "out" / "model"
    assert json.loads((model / "config.json").read_text())["mm_projector_type"] == "linear"
    assert "components.models.assembly.load_llava" in (model / "README.md").read_text()
    assert json.loads((tmp_path / "out" / "parity.json").read_text())["loader"].endswith("load_llava")
    assert connector_spec_of(load_llava(model)) == "linear"


def test_parity_mismatch_fails_the_stage(ray_local, model_dir, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient

    # llava_v1's system prompt ("curious human") instead of vicuna_v1's: the reference's classic mix-up. The
    # driver resolves the template the folder ships and hands its text to the worker.
    wrong = VICUNA_V1_CHAT_TEMPLATE.replace("curious user", "curious human")
    monkeypatch.setattr("components.export.chat_template.chat_template", lambda template: wrong)
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("mismatch", artifact_location=str(tmp_path / "artifacts"))
    target = MlflowTarget(uri, client.create_run(exp).info.run_id)
    with pytest.raises(ParityError) as err:
        _export(model_dir, str(tmp_path / "out"), parity_sample=1, parity_max_new_tokens=2, mlflow=target,
                registered_name="mismatch")
    assert "1 of 1 prompts differ" in str(err.value) and "prompt_text" in str(err.value)
    assert "input_ids" in str(err.value)
    report = json.loads((tmp_path / "out" / "parity.json").read_text())
    assert report["ok"] is False and report["items"][0]["text_transformers"].startswith(
        "A chat between a curious human")
    # parity.json is logged where the run's MLflow shows it; nothing is registered.
    assert {a.path for a in client.list_artifacts(target.run_id, "export")} == {"export/parity.json"}
    assert client.get_run(target.run_id).data.metrics["parity_ok"] == 0.0
    assert client.search_registered_models() == [] and client.search_model_versions("name='mismatch'") == []


# ---------------------------------------------------------------- pure parts


def _render(messages, generation: bool) -> str:
    (text,), _ = render_jinja_template(conversations=[messages], chat_template=chat_template("vicuna_v1"),
                                       add_generation_prompt=generation, eos_token="</s>", bos_token="<s>")
    return text


def test_chat_template_renders_our_templates():
    q = "What is in the picture?\nAnswer the question using a single word or phrase."
    image_turn = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}]
    assert _render(image_turn, True) == render_text(generation_segments(q, "vicuna_v1", has_image=True))
    text_turn = [{"role": "user", "content": q}]
    assert _render(text_turn, True) == render_text(generation_segments(q, "vicuna_v1", has_image=False))

    sample = parse_record({"id": "x", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "<image>\nWhat colour?"}, {"from": "gpt", "value": "Red."},
        {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "A circle."}]})
    messages = [{"role": "user", "content": [{"type": "text", "text": "What colour?"}, {"type": "image"}]},
                {"role": "assistant", "content": "Red."}, {"role": "user", "content": "And the shape?"},
                {"role": "assistant", "content": [{"type": "text", "text": "A circle."}]}]
    assert _render(messages, False) == render_text(render_segments(sample, "vicuna_v1"))
    assert _render([{"role": "system", "content": "Be brief."}, *text_turn], True) == f"Be brief. USER: {q} ASSISTANT:"
    with pytest.raises(ValueError, match="evaluate.template='plain'"):
        chat_template("plain")


def test_parity_items_sources(eval_outputs, tmp_path):
    assert parity_items(eval_outputs, 0) == []
    items = parity_items(eval_outputs, 3)
    assert [it.source for it in items] == ["gqa:answers", "gqa:answers", "fixed"]
    assert items[-1].image is None and items[0].prompt.startswith("Is the red shape")
    fixed = parity_items({}, 6)
    assert [it.prompt for it in fixed[:5]] == list(FIXED_PROMPTS) and fixed[-1].image is None
    assert all(it.image is not None and it.image.size[0] > 0 for it in fixed[:5])
    one = parity_items({}, 1)
    assert len(one) == 1 and one[0].image is not None


def test_parity_items_read_each_benchmark_from_its_own_folder(eval_outputs, tmp_path):
    from components.synth.evalsets import write_eval_sets
    from components.synth.files import Writer
    from components.synth.scene import COLORS

    write_eval_sets(Writer(tmp_path / "synth"), 0, 0.05, sorted(COLORS), names=("gqa",))
    folder = str(tmp_path / "synth" / "eval" / "gqa")
    items = parity_items(eval_outputs, 3, benchmark_folders={"gqa": folder})
    assert [it.source for it in items[:2]] == ["gqa", "gqa"] and items[0].key.startswith("gqa:")
    assert all(it.image is not None and it.image.size[0] > 0 for it in items[:2])
    # Keyed by benchmark name: a folder given for another benchmark is not this one's.
    other = parity_items(eval_outputs, 3, benchmark_folders={"pope": folder})
    assert [it.source for it in other] == ["gqa:answers", "gqa:answers", "fixed"]
    # An unreadable folder (another machine's path) falls back to the answers file.
    absent = parity_items(eval_outputs, 3, benchmark_folders={"gqa": str(tmp_path / "absent")})
    assert [it.source for it in absent] == ["gqa:answers", "gqa:answers", "fixed"]


def test_bad_metrics_file_is_named(tmp_path):
    (tmp_path / "gqa").mkdir()
    (tmp_path / "gqa" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"gqa/metrics\.json: not valid JSON"):
        read_eval_results({"gqa": str(tmp_path)})


def test_s3_model_dir_and_output(ray_local, s3_server, model_dir, tmp_path, monkeypatch):
    import s3fs

    monkeypatch.setenv("LLAVA_PIPELINE_CACHE", str(tmp_path / "cache"))
    fs = s3fs.S3FileSystem()
    fs.mkdir("export-bucket")
    fs.put(model_dir + "/", "export-bucket/finetune/model/", recursive=True)
    metrics = _export("s3://export-bucket/finetune/model", "s3://export-bucket/export", parity_sample=1,
                      parity_max_new_tokens=2)
    assert metrics["parity_checked"] == 1 and metrics["parity_ok"] is True
    # This process is only the driver: it read config.json and copied none of the model to its node (the Ray
    # task fetched it on its own node, into that worker's cache).
    assert not (tmp_path / "cache").exists()
    fs.invalidate_cache()
    assert {"config.json", "model.safetensors", "processor_config.json", "chat_template.jinja", "README.md"} <= {
        Path(p).name for p in fs.ls("export-bucket/export/model")}
    assert {"export.json", "parity.json"} <= {Path(p).name for p in fs.ls("export-bucket/export")}
    summary = json.loads(fs.cat("export-bucket/export/export.json"))
    assert summary["model"] == "s3://export-bucket/export/model" and summary["parity_ok"] is True


def test_parity_sample_0_checks_nothing(ray_local, model_dir, tmp_path):
    metrics = _export(model_dir, str(tmp_path / "out"), parity_sample=0)
    assert metrics["parity_checked"] == 0 and "parity_ok" not in metrics
    assert json.loads((tmp_path / "out" / "export.json").read_text())["parity_ok"] is None


def test_registered_version_loads_and_answers_through_mlflow(exported, mlflow_target, model_dir, monkeypatch):
    """MLflow's own loader: `models:/NAME/N` is a pyfunc that answers as our evaluation path does."""
    import io

    import mlflow
    import pandas as pd

    from components.evaluate.generate import Generator, GenItem

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_target.tracking_uri)
    model = mlflow.pyfunc.load_model("models:/tiny-llava/1")
    img = _image(90, 60, (220, 40, 40))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    questions = pd.DataFrame({"question": ["What colour is the shape?", "Name a shape with three sides."],
                              "image": [buf.getvalue(), None]})
    answers = model.predict(questions, params={"max_new_tokens": NEW_TOKENS})
    ours = Generator.from_dir(model_dir, device="cpu", max_new_tokens=NEW_TOKENS)
    expected = ours.generate_batch([GenItem("a", "What colour is the shape?", img)])
    expected += ours.generate_batch([GenItem("b", "Name a shape with three sides.", None)])
    assert list(answers) == expected and all(expected)
