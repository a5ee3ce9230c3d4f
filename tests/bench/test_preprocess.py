"""Smoke test of the preprocessing benchmark: both paths run end to end on tiny data and report rates.

Not a timing assertion: the numbers depend on the machine and on whatever else runs on it.
"""

import json

import pytest
from PIL import Image

from bench.preprocess import bench_preprocess, format_table, write_bench_data

KEYS = {
    "n", "cpus", "size", "image_size", "images", "mean_image_kb",
    "ours_wall_s", "ours_prepare_s", "ours_pixels_s", "reference_wall_s",
    "ours_per_core", "reference_per_core", "ratio",
    "ours_cpu_s", "reference_cpu_s", "ours_per_cpu_s", "reference_per_cpu_s", "ratio_cpu", "load_avg",
    "inline_cpu_s", "inline_per_cpu_s", "ratio_ceiling",
}


def test_bench_data_is_llava_finetune_format(tmp_path):
    info = write_bench_data(tmp_path, 60, (96, 72))
    records = json.loads((tmp_path / "annotations.json").read_text())
    assert len(records) == 60 and info["images"] == sum(1 for r in records if "image" in r)
    sizes = set()
    for r in records:
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and 1 <= len(turns) // 2 <= 3
        has_token = "<image>" in turns[0]["value"]
        assert has_token == ("image" in r)
        if "image" in r:
            with Image.open(tmp_path / "images" / r["image"]) as img:
                assert img.format == "JPEG"
                sizes.add(img.size)
    assert (96, 72) in sizes and len(sizes) > 1  # base size plus larger and portrait ones


@pytest.mark.e2e
def test_bench_preprocess_reports_both_rates(ray_local, tmp_path, capsys):
    result = bench_preprocess(40, work_dir=str(tmp_path), size=56, image_size=(96, 72))
    assert result.keys() >= KEYS
    assert result["n"] == 40 and result["cpus"] >= 1
    assert result["ours_per_core"] > 0 and result["reference_per_core"] > 0 and result["ratio"] > 0
    assert result["reference_cpu_s"] > 0 and result["inline_cpu_s"] > 0 and result["ratio_ceiling"] > 0
    out = capsys.readouterr().out
    assert format_table(result) in out and "ratio ours/reference" in out
    assert (tmp_path / "prepared" / "stats.json").exists()


def test_bench_rejects_non_positive_n():
    with pytest.raises(ValueError, match="n must be positive"):
        bench_preprocess(0)


def test_reference_path_supervises_the_same_text_as_ours(tmp_path):
    """The two paths do the same work: the reference's preprocess_v1 with transformers' slow tokenizer
    supervises exactly the answers (and their </s>) that our batched fast tokenization supervises, with no
    tokenization-mismatch masking. (The ids themselves differ by design: the reference tokenizes the text
    after <image> and after each </s> as a fresh string, which adds a prefix-space piece there; we tokenize
    the rendered prompt as one string, as transformers' LlavaProcessor does at inference.)"""
    from bench.preprocess import SlowTokenizer, reference_tokenize
    from components.core.conversation import normalize_image_token, parse_record
    from components.core.tokenize import IGNORE_INDEX, supervised_spans, tokenize_samples
    from components.models.tokenizer import SPM_FILE, load_tokenizer, train_tokenizer
    from components.prepare.spec import DataSource
    from components.prepare.stage import corpus_texts

    info = write_bench_data(tmp_path / "data", 120, (64, 48))
    train_tokenizer(corpus_texts([DataSource(annotations=info["annotations"])]), 1000, tmp_path / "tok")
    fast, slow = load_tokenizer(str(tmp_path / "tok")), SlowTokenizer(str(tmp_path / "tok" / SPM_FILE))
    records = json.loads((tmp_path / "data" / "annotations.json").read_text())
    samples = [normalize_image_token(parse_record(r, index=i)) for i, r in enumerate(records)]
    ours = tokenize_samples(samples, fast, template="vicuna_v1")
    for record, mine in zip(records, ours, strict=True):
        _, labels = reference_tokenize(slow, record["conversations"], "image" in record)
        assert any(x != IGNORE_INDEX for x in labels), f"{record['id']}: reference masked the whole sample"
        theirs = [fast.decode(span).strip() for span in supervised_spans(labels)]
        assert [fast.decode(span).strip() for span in supervised_spans(mine.labels)] == theirs, record["id"]
        answers = [t["value"] + "</s>" for t in record["conversations"] if t["from"] == "gpt"]
        assert theirs == answers, record["id"]
