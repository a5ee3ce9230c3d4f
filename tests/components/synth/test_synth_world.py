import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest
from PIL import Image

from components.synth import world as world_module
from components.synth.prompts import CAPTION_INSTRUCTIONS, CHOICE_SUFFIX, SHORT_SUFFIX, UNANSWERABLE_HINT
from components.synth.scene import HEIGHT_RANGE, WIDTH_RANGE
from components.synth.world import generate_world

ROLES = {
    "pretrain_annotations",
    "finetune_annotations",
    "images",
    "eval_questions",
    "eval_annotations",
    "eval_images",
    "dev_questions",
    "dev_annotations",
    "dev_images",
    "eval_marker",
    "dev_marker",
    "scene_metadata",
}


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_tiny_generation_is_fast(world):
    # CPU time of the generator (wall time also counts other jobs on a shared 2-core machine).
    assert world.cpu_s < 20, f"tiny world took {world.cpu_s:.1f} s of CPU"
    assert world.wall_s < 120


def test_same_seed_gives_byte_identical_files(world, tmp_path):
    again = generate_world(tmp_path / "again", seed=0, size="tiny")
    assert again == world.manifest
    first, second = _files(world.root), _files(tmp_path / "again")
    assert first.keys() == second.keys()
    assert [k for k in first if first[k] != second[k]] == []


def test_different_seed_gives_different_data(world, tmp_path, monkeypatch):
    monkeypatch.setitem(world_module.SCALES, "tiny", 0.1)  # the first tenth of a tiny world is enough here
    other = generate_world(tmp_path / "other", seed=1, size="tiny")
    assert other["seed"] == 1
    hashes = {f["path"]: f["sha256"] for f in world.manifest["files"]}
    other_hashes = {f["path"]: f["sha256"] for f in other["files"]}
    common = [p for p in other_hashes if p in hashes and p.endswith((".jpg", ".png"))]
    assert len(common) > 100
    assert sum(hashes[p] != other_hashes[p] for p in common) > 0.95 * len(common)
    first = world.json(world.root / "pretrain/captions.json")[:150]
    assert first != world.json(tmp_path / "other/pretrain/captions.json")


def test_manifest_lists_every_file_with_its_hash_and_counts(world):
    on_disk = _files(world.root)
    listed = {f["path"]: f for f in world.manifest["files"]}
    assert set(on_disk) == set(listed) | {"manifest.json"}
    assert json.loads(on_disk["manifest.json"]) == world.manifest
    for path, entry in listed.items():
        data = on_disk[path]
        assert entry["sha256"] == hashlib.sha256(data).hexdigest() and entry["bytes"] == len(data)
        assert entry["role"] in ROLES, entry
        assert entry["role"].startswith(("eval", "dev")) == ("benchmark" in entry), entry
        if entry["format"] in ("jsonl", "tsv", "txt"):
            lines = data.decode().count("\n")
            assert entry["records"] == lines - (entry["format"] == "tsv"), path
        elif entry["format"] in ("json", "llava_json"):
            obj = json.loads(data)
            wrapped = [len(v) for v in obj.values() if isinstance(v, list)] if isinstance(obj, dict) else []
            assert entry["records"] in (len(obj), *wrapped), path  # {"annotations": [...]} counts its list
        else:
            assert entry["format"] in ("jpeg", "png") and path.rsplit(".", 1)[1] in ("jpg", "png"), path


def test_manifest_states_seed_size_facts_and_eval_entry_points(world):
    m = world.manifest
    assert m["seed"] == 0 and m["size"] == "tiny"
    facts = m["facts"]
    assert len(facts["colors"]) >= 6 and facts["kinds"] == ["circle", "square", "triangle"]
    assert len(facts["positions"]) == 4 and facts["labels"]
    assert set(m["eval"]) == {
        "vqav2",
        "gqa",
        "vizwiz",
        "textvqa",
        "pope",
        "sqa",
        "mme",
        "mmbench",
        "mmbench_cn",
        "seed",
        "llava_bench",
        "mmvet",
    }
    for name, entry in m["eval"].items():
        assert (world.root / entry["questions"]).is_file(), name
        assert all((world.root / a).exists() for a in entry["annotations"]), name
        assert entry["images"] is None or (world.root / entry["images"]).is_dir(), name
        assert 60 <= entry["n_questions"] <= 250, (name, entry["n_questions"])
    counts = m["counts"]
    assert counts["pretrain_captions"] == 1500 and counts["finetune_samples"] == 6000


def test_pretrain_captions_follow_the_lcs558k_shape(world):
    records = world.json(world.root / "pretrain/captions.json")
    assert len(records) == 1500 and len({r["id"] for r in records}) == 1500
    after = 0
    for r in records:
        assert set(r) == {"id", "image", "conversations"}
        assert (world.root / "images" / r["image"]).is_file()
        human, gpt = r["conversations"]
        assert human["from"] == "human" and gpt["from"] == "gpt"
        instruction = human["value"].replace("<image>", "").strip()
        assert instruction in CAPTION_INSTRUCTIONS and human["value"].count("<image>") == 1
        after += human["value"].endswith("<image>")
        scene = world.scenes[f"images/{r['image']}"]
        for shape in scene["shapes"]:  # the caption names every shape's colour, kind and quadrant
            assert f"{shape['color']} {shape['kind']} in the {shape['position']}" in gpt["value"]
    assert 0.3 < after / len(records) < 0.7


def test_finetune_mix_follows_the_mix665k_formats(world):
    records = world.json(world.root / "finetune/mix.json")
    assert len(records) == 6000 and len({r["id"] for r in records}) == 6000
    text_only = [r for r in records if "image" not in r]
    assert 0.04 <= len(text_only) / len(records) <= 0.06
    styles = Counter()
    for r in records:
        turns = r["conversations"]
        assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2) and turns
        humans = [t["value"] for t in turns if t["from"] == "human"]
        if "image" in r:
            assert (world.root / "images" / r["image"]).is_file()
            assert humans[0].startswith("<image>\n") or humans[0].endswith("\n<image>")
            assert humans[0].count("<image>") == 1
        else:
            assert humans[0].count("<image>") == 0
        assert all("<image>" not in h for h in humans[1:])
        rounds = len(turns) // 2
        if rounds > 1:
            styles["multi"] += 1
            assert rounds <= 3
        for h, g in zip(humans, [t["value"] for t in turns if t["from"] == "gpt"], strict=True):
            if h.endswith(CHOICE_SUFFIX):
                styles["choice"] += 1
                n_options = sum(line[:3] in ("A. ", "B. ", "C. ", "D. ") for line in h.split("\n"))
                assert g in "ABCD"[:n_options] and len(g) == 1
            elif UNANSWERABLE_HINT in h:
                styles["vizwiz"] += 1
                styles["unanswerable"] += g == "Unanswerable"
            elif "Reference OCR token: " in h:
                styles["ocr"] += 1
                assert g in h.split("Reference OCR token: ")[1]
            elif h.endswith(SHORT_SUFFIX):
                styles["short"] += 1
                assert len(g.split()) <= 2
    assert styles["multi"] > 300 and styles["choice"] > 200 and styles["short"] > 1000
    assert styles["ocr"] > 50 and 0 < styles["unanswerable"] < styles["vizwiz"]


def test_images_are_mostly_jpeg_some_png_and_never_square(world):
    images = [f for f in world.manifest["files"] if f["role"] in ("images", "eval_images")]
    png = sum(f["format"] == "png" for f in images) / len(images)
    assert 0.08 < png < 0.3
    for f in images[::50]:
        with Image.open(world.root / f["path"]) as im:
            assert im.format == {"jpeg": "JPEG", "png": "PNG"}[f["format"]]
            w, h = im.size
            assert (
                w != h and WIDTH_RANGE[0] <= w <= WIDTH_RANGE[1] and HEIGHT_RANGE[0] <= h <= HEIGHT_RANGE[1]
            )


def test_regenerating_replaces_an_earlier_world_and_refuses_foreign_folders(tmp_path, monkeypatch):
    monkeypatch.setitem(world_module.SCALES, "tiny", 0.03)  # a few dozen files: this test is about folders
    monkeypatch.setitem(world_module.SCALES, "small", 0.06)
    out = tmp_path / "w"
    generate_world(out, size="small")
    generate_world(out, size="tiny")
    listed = {f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]}
    assert set(_files(out)) == listed | {"manifest.json"}  # nothing left over from the larger world

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="not part of a synthetic world"):
        generate_world(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"

    (out / "notes.txt").write_text("mine")  # a user file beside a world: nothing is deleted
    with pytest.raises(ValueError, match="not part of a synthetic world"):
        generate_world(out)
    assert (out / "manifest.json").is_file() and (out / "notes.txt").is_file()


def test_a_manifest_pointing_outside_the_folder_is_refused(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    out = tmp_path / "w"
    out.mkdir()
    (out / "manifest.json").write_text(json.dumps({"files": [{"path": "../keep.txt"}]}))
    with pytest.raises(ValueError, match="outside"):
        generate_world(out)
    assert (tmp_path / "keep.txt").exists()


def test_bad_arguments_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unknown world size 'huge'"):
        generate_world(tmp_path / "a", size="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="seed must be an integer"):
        generate_world(tmp_path / "b", seed="0")  # type: ignore[arg-type]
