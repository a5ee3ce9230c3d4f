import json

from pipelines.engine.cli import main

SAMPLE = {"id": "x", "image": "a.jpg", "conversations": [
    {"from": "human", "value": "What colour is the shape?\n<image>"}, {"from": "gpt", "value": "red"},
    {"from": "human", "value": "Where is it?"}, {"from": "gpt", "value": "top left"}]}


def test_inspect_json(tmp_path, tokenizer, capsys):
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    (tmp_path / "s.json").write_text(json.dumps([SAMPLE]))
    assert main(["inspect", str(tmp_path / "s.json"), "--config", "tiny", "--stage", "finetune",
                 "--tokenizer", str(tok_dir), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prompt"].endswith("USER: <image>\nWhat colour is the shape? ASSISTANT: red</s>"
                                   "USER: Where is it? ASSISTANT: top left</s>")
    assert len(info["input_ids"]) == len(info["labels"])
    assert info["supervised_text"] == "red</s>top left</s>"
    assert info["num_image_tokens"] == 16  # tiny: 56 px / patch 14 → 4×4, CLS dropped
    assert "<image×16>" in info["marked"] and "⟦red</s>⟧" in info["marked"]


def test_inspect_pretrain_plain(tmp_path, tokenizer, capsys):
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    rec = {"id": "c", "image": "a.jpg", "conversations": [
        {"from": "human", "value": "Describe the image briefly.\n<image>"}, {"from": "gpt", "value": "a red circle"}]}
    (tmp_path / "s.jsonl").write_text(json.dumps(SAMPLE) + "\n" + json.dumps(rec) + "\n")
    assert main(["inspect", str(tmp_path / "s.jsonl"), "--index", "1", "--stage", "pretrain",
                 "--tokenizer", str(tok_dir)]) == 0
    out = capsys.readouterr().out
    assert "template plain" in out and "<image×16>⟦a red circle\n⟧" in out


def test_bad_record_is_one_clear_line(tmp_path, tokenizer, capsys):
    tok_dir = tmp_path / "tok"
    tokenizer.save_pretrained(tok_dir)
    (tmp_path / "bad.json").write_text(json.dumps({"id": "b", "conversations": [{"from": "gpt", "value": "x"}]}))
    assert main(["inspect", str(tmp_path / "bad.json"), "--tokenizer", str(tok_dir)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "bad.json record 0" in err and "conversations[0].from" in err


def test_config_error_is_one_clear_line(tmp_path, capsys):
    (tmp_path / "s.json").write_text(json.dumps(SAMPLE))
    assert main(["inspect", str(tmp_path / "s.json"), "--set", "finetune.optim.lr=fast"]) == 2
    err = capsys.readouterr().err
    assert "finetune.optim.lr: expected a number, got 'fast'" in err


def test_synth_command_is_deterministic(tmp_path, capsys):
    assert main(["synth", "--out", str(tmp_path / "a"), "--seed", "3"]) == 0
    assert main(["synth", "--out", str(tmp_path / "b"), "--seed", "3"]) == 0
    a = json.loads((tmp_path / "a" / "manifest.json").read_text())
    b = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert a == b and len(a["files"]) > 100
    assert "eval_questions" in capsys.readouterr().out


def test_score_command_on_a_synthetic_benchmark(tmp_path, capsys):
    """`llava-pipeline score` on GQA-format files: ground truth scores 100, a wrong answer costs its share."""
    from components.synth.world import generate_world

    generate_world(tmp_path / "world", seed=1)
    root = tmp_path / "world" / "eval" / "gqa"
    questions = root / "llava_gqa_testdev_balanced.jsonl"
    truth = json.loads((root / "testdev_balanced_questions.json").read_text())
    lines = [json.loads(x) for x in questions.read_text().splitlines()]
    answers = [{"question_id": q["question_id"], "prompt": q["text"], "text": truth[q["question_id"]]["answer"] + ".",
                "answer_id": str(i), "model_id": "truth", "metadata": {}} for i, q in enumerate(lines)]
    answers[0]["text"] = "definitely not an answer"
    pred = tmp_path / "answers.jsonl"
    pred.write_text("".join(json.dumps(a) + "\n" for a in answers))
    assert main(["score", "gqa", "--predictions", str(pred), "--questions", str(questions), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["metric"] == "accuracy" and result["n_questions"] == len(lines) and result["n_missing"] == 0
    assert abs(result["value"] - 100.0 * (len(lines) - 1) / len(lines)) < 1e-6


def test_score_help_explains_its_arguments_and_lists_the_benchmarks(capsys):
    import pytest

    from components.evaluate.benchmarks import BENCHMARKS

    with pytest.raises(SystemExit) as e:
        main(["score", "--help"])
    assert e.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert "answers JSONL in the reference format" in text and "the benchmark's question file" in text
    assert all(name in text for name in BENCHMARKS)


def test_a_bad_set_is_blamed_on_the_set(capsys):
    assert main(["plan", "--set", "nosuch.key=1"]) == 2
    assert capsys.readouterr().err.strip() == "llava-pipeline plan: error: --set nosuch.key=1: nosuch: unknown key"
