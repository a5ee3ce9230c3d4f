"""Preprocessing throughput, ours vs the reference's per-sample path, on the same synthetic data.

OURS: the `prepare` Ray Data pipeline (validate, tokenize in batches, check that every image decodes, write
shards) followed by the streaming pixel map the training stages run over those shards, consumed to the end.
REFERENCE: what LLaVA's LazySupervisedDataset does per item in one process — PIL open, convert("RGB"),
expand2square with the CLIP mean colour, transformers' PIL CLIPImageProcessor, and preprocess_v1's
tokenization with transformers' slow SentencePiece tokenizer (the whole prompt, then every round and every
instruction part again for the masking lengths).

Both figures are samples/s per CPU core: ours divides by the CPUs Ray used, the reference ran on one. Wall
time is at the mercy of other load on the machine, so samples per CPU-second actually used are reported too.
A third row runs our same per-sample functions in one process without Ray: the ceiling our code allows.

    python -m pipelines.engine.cli bench preprocess --n 2000     # or bench_preprocess(2000)
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from components.core.conversation import IMAGE_TOKEN
from components.core.templates import VICUNA_SYSTEM
from components.prepare.spec import DataSource

DEFAULT_N = 2000
VOCAB_SIZE = 1000
JPEG_QUALITY = 90
TEXT_ONLY_FRACTION = 0.04  # ShareGPT is ~6% of the 665K mix
LARGE_FRACTION = 0.1  # images 1.6x the base size (e.g. 1024x768)
PORTRAIT_FRACTION = 0.1  # base size turned on its side
NOISE_SIGMA = 16.0  # texture strength: ~120-150 KB per 640x480 JPEG at quality 90, about COCO's average
IGNORE_INDEX = -100
PREPARE_BATCH = 128  # records per tokenizer call / actor batch
PIXEL_BATCH = 64  # images per pixel-map task: enough tasks to balance the CPUs, few enough to keep Ray overhead low
IMAGE_TOKEN_INDEX = -200  # the reference's placeholder id in tokenizer_image_token

_SYLLABLES = "ka lo mi ne ru sa ti vo be da fe gi ho ju ly pa qu re so tu wa xe zo an el in or um".split()
_QUESTION_TAILS = ("What is shown in the image?", "Describe the scene in detail.",
                   "Answer the question using a single word or phrase.", "Where is it?")


# ---------------------------------------------------------------- synthetic data


def _word_list(rng: np.random.Generator, count: int = 3000) -> list[str]:
    """Made-up words of 1-4 syllables: enough distinct text for a ~1000-piece BPE vocabulary."""
    return ["".join(rng.choice(_SYLLABLES, size=int(rng.integers(1, 5)))) for _ in range(count)]


def _sentence(rng: np.random.Generator, words: list[str], lo: int, hi: int) -> str:
    picked = [words[i] for i in rng.integers(0, len(words), size=int(rng.integers(lo, hi + 1)))]
    return " ".join(picked).capitalize() + "."


def _conversation(rng: np.random.Generator, words: list[str], has_image: bool) -> list[dict[str, str]]:
    turns = []
    for r in range(int(rng.integers(1, 4))):
        question = _sentence(rng, words, 4, 14) + " " + str(rng.choice(_QUESTION_TAILS))
        if r == 0 and has_image:
            # Real data puts <image> before or after the first question.
            question = f"{IMAGE_TOKEN}\n{question}" if rng.random() < 0.7 else f"{question}\n{IMAGE_TOKEN}"
        short = rng.random() < 0.4  # VQA-style one-word answers vs LLaVA-Instruct-style paragraphs
        answer = _sentence(rng, words, 1, 2) if short else " ".join(
            _sentence(rng, words, 6, 18) for _ in range(int(rng.integers(1, 6))))
        turns += [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]
    return turns


def _texture(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """A photo-like canvas: smooth colour regions plus grain, so JPEGs are as dense as real photos."""
    cells = rng.integers(0, 256, (height // 48 + 2, width // 48 + 2, 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(cells).resize((width, height), Image.Resampling.BICUBIC), np.float32)
    base += rng.normal(0.0, NOISE_SIGMA, base.shape).astype(np.float32)
    return np.clip(base, 0, 255).astype(np.uint8)


def _jpeg(rng: np.random.Generator, texture: np.ndarray, width: int, height: int) -> bytes:
    y = int(rng.integers(0, texture.shape[0] - height + 1))
    x = int(rng.integers(0, texture.shape[1] - width + 1))
    img = Image.fromarray(texture[y : y + height, x : x + width])
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 8))):  # a few solid objects with sharp edges
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        box = [x0, y0, x0 + int(rng.integers(20, width // 2)), y0 + int(rng.integers(20, height // 2))]
        fill = tuple(int(c) for c in rng.integers(0, 256, 3))
        (draw.ellipse if rng.random() < 0.5 else draw.rectangle)(box, fill=fill)
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=JPEG_QUALITY)
    return buf.getvalue()


def write_bench_data(root: Path, n: int, image_size: tuple[int, int], seed: int = 0) -> dict[str, Any]:
    """n LLaVA finetune records (annotations.json) with their JPEGs (images/) under `root`."""
    rng = np.random.default_rng(seed)
    words = _word_list(rng)
    w, h = image_size
    shapes = {"base": (w, h), "large": (w * 8 // 5, h * 8 // 5), "portrait": (h, w)}
    side = max(max(s) for s in shapes.values()) + 64
    texture = _texture(rng, side, side)
    (root / "images").mkdir(parents=True, exist_ok=True)
    records, image_bytes = [], 0
    for i in range(n):
        record: dict[str, Any] = {"id": f"bench-{i:06d}"}
        has_image = rng.random() >= TEXT_ONLY_FRACTION
        if has_image:
            u = rng.random()
            kind = "large" if u < LARGE_FRACTION else "portrait" if u < LARGE_FRACTION + PORTRAIT_FRACTION else "base"
            data = _jpeg(rng, texture, *shapes[kind])
            record["image"] = f"{i:06d}.jpg"
            (root / "images" / record["image"]).write_bytes(data)
            image_bytes += len(data)
        record["conversations"] = _conversation(rng, words, has_image)
        records.append(record)
    annotations = root / "annotations.json"
    annotations.write_text(json.dumps(records))
    n_images = sum(1 for r in records if "image" in r)
    return {"annotations": str(annotations), "image_root": str(root / "images"), "images": n_images,
            "mean_image_kb": round(image_bytes / max(n_images, 1) / 1024, 1)}


# ---------------------------------------------------------------- the reference's per-sample path


def _expand2square(img: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    w, h = img.size
    if w == h:
        return img
    side = max(w, h)
    out = Image.new(img.mode, (side, side), background)
    out.paste(img, ((side - w) // 2, (side - h) // 2))
    return out


class SlowTokenizer:
    """transformers' slow (Python, SentencePiece) tokenizer as LLaVA's LlamaTokenizer(use_fast=False) uses
    it: special tokens split out by the added-token trie, SentencePiece on the text between, BOS in front."""

    def __init__(self, model_file: str) -> None:
        from transformers.tokenization_utils_sentencepiece import SentencePieceBackend

        self.tok = SentencePieceBackend(vocab_file=model_file, bos_token="<s>", eos_token="</s>",
                                        unk_token="<unk>")
        self.bos = self.tok.bos_token_id

    def __call__(self, text: str) -> list[int]:
        return [self.bos, *self.tok.encode(text, add_special_tokens=False)]

    def image_token(self, prompt: str) -> list[int]:
        """tokenizer_image_token: each `<image>`-separated chunk tokenized with BOS, later BOSes dropped."""
        chunks = [self(c) for c in prompt.split(IMAGE_TOKEN)]
        ids = list(chunks[0])
        for c in chunks[1:]:
            ids += [IMAGE_TOKEN_INDEX, *c[1:]]
        return ids


def _reference_prompt(conversations: list[dict[str, str]], has_image: bool) -> str:
    parts = [VICUNA_SYSTEM + " "]
    for t in conversations:
        value = t["value"]
        if has_image and IMAGE_TOKEN in value:  # preprocess_multimodal moves <image> to the turn's start
            value = (IMAGE_TOKEN + "\n" + value.replace(IMAGE_TOKEN, "").strip()).strip()
        parts.append(f"USER: {value} " if t["from"] == "human" else f"ASSISTANT: {value}</s>")
    return "".join(parts)


def reference_tokenize(tok: SlowTokenizer, conversations: list[dict[str, str]],
                       has_image: bool) -> tuple[list[int], list[int]]:
    """preprocess_v1: tokenize the prompt, then each round and instruction part again to mask labels.
    Returns (input_ids, labels); the image is one IMAGE_TOKEN_INDEX id, as in the reference."""
    prompt = _reference_prompt(conversations, has_image)
    encode = tok.image_token if has_image else tok
    input_ids = encode(prompt)
    labels = list(input_ids)
    cur = 1
    labels[0] = IGNORE_INDEX
    sep = " ASSISTANT: "
    for rou in prompt.split("</s>"):
        if not rou:
            break
        parts = rou.split(sep)
        if len(parts) != 2:
            break
        round_len = len(encode(rou))
        instruction_len = len(encode(parts[0] + sep)) - 2
        labels[cur : cur + instruction_len] = [IGNORE_INDEX] * instruction_len
        cur += round_len
    labels[cur:] = [IGNORE_INDEX] * (len(labels) - cur)
    if cur != len(input_ids):  # the reference masks the whole sample on a mismatch
        labels = [IGNORE_INDEX] * len(input_ids)
    return input_ids, labels


def run_reference(annotations: str, image_root: str, tokenizer_model: str, size: int) -> int:
    """The reference's per-sample loop over every record; returns the number of samples produced."""
    from transformers import CLIPImageProcessorPil

    # Built explicitly: without torchvision transformers 5 swaps CLIPImageProcessor for this class anyway.
    processor = CLIPImageProcessorPil(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    background = tuple(int(x * 255) for x in processor.image_mean)
    tok = SlowTokenizer(tokenizer_model)
    records = json.loads(Path(annotations).read_text())
    for record in records:
        has_image = "image" in record
        if has_image:
            img = Image.open(os.path.join(image_root, record["image"])).convert("RGB")
            img = _expand2square(img, background)
            pixels = processor.preprocess(img, return_tensors="np")["pixel_values"][0]
        else:
            pixels = np.zeros((3, size, size), np.float32)
        assert pixels.shape == (3, size, size)
        reference_tokenize(tok, record["conversations"], has_image)
    return len(records)


# ---------------------------------------------------------------- ours


def run_ours(source: DataSource, out: str, tokenizer_dir: str, size: int, cpus: int) -> tuple[int, float, float]:
    """prepare (Ray Data) + the streaming pixel map over its shards, consumed.

    Returns (samples that came out, prepare seconds, pixel-map seconds).
    """
    import pyarrow.parquet as pq
    import ray

    from components.prepare.dataset import prepare_dataset
    from components.prepare.process import PrepareSettings
    from components.train.pixels import PixelLoader

    t0 = time.perf_counter()
    settings = PrepareSettings(template="vicuna_v1", num_image_tokens=(size // 14) ** 2, max_length=4096)
    stats = prepare_dataset([source], out, settings, tokenizer_dir, cpus_per_task=1.0, batch_size=PREPARE_BATCH)
    if stats["rejected"]:
        raise RuntimeError(f"benchmark data had {stats['rejected']} rejected records: {stats['rejected_by_reason']}")
    t1 = time.perf_counter()
    # As the training stages do (components/train/data.py): the driver reads the token columns of the
    # shards, Ray Data tasks load the pixels, one block per batch so every CPU decodes images. (Reading
    # through ray.data.read_parquet instead costs a file-listing and a re-blocking task up front.)
    table = pq.read_table(os.path.join(out, "shards"), columns=["id", "image", "input_ids", "labels"])
    blocks = [table.slice(i, PIXEL_BATCH) for i in range(0, table.num_rows, PIXEL_BATCH)]
    pixels = ray.data.from_arrow(blocks).map_batches(PixelLoader("pad", size), batch_format="pyarrow",
                                                     batch_size=None)
    count = 0
    for batch in pixels.iter_batches(batch_size=PIXEL_BATCH, batch_format="pyarrow"):
        count += batch.num_rows
    return count, t1 - t0, time.perf_counter() - t1


def run_ours_inline(source: DataSource, tokenizer_dir: str, size: int) -> int:
    """Our per-sample work without Ray, in this process: process_records (validate, tokenize in batches,
    check the image) then load_pixels for every kept row. Its CPU time is the floor that Ray's
    scheduling, serialisation and process start-up add to; returns the samples produced."""
    from components.prepare.dataset import source_infos
    from components.prepare.json_tokenizer import load_json_tokenizer
    from components.prepare.process import PrepareSettings, process_records
    from components.prepare.records import split_records
    from components.train.pixels import load_pixels

    settings = PrepareSettings(template="vicuna_v1", num_image_tokens=(size // 14) ** 2, max_length=4096)
    tok = load_json_tokenizer(tokenizer_dir)
    if tok is None:
        raise RuntimeError(f"{tokenizer_dir}: the benchmark's tokenizer should load from tokenizer.json")
    raws = list(split_records(Path(source.annotations).read_bytes(), source.annotations))
    infos = source_infos([source])
    count = 0
    for i in range(0, len(raws), PREPARE_BATCH):
        kept, _ = process_records(raws[i : i + PREPARE_BATCH], infos, tok, settings)
        for row in kept:
            load_pixels(row["image"], "pad", size)
        count += len(kept)
    return count


# ---------------------------------------------------------------- the benchmark


def _tree_cpu_seconds() -> float | None:
    """CPU seconds used so far by this process and every process below it, finished ones included (a
    parent's children_* times hold the children it reaped, e.g. Ray's exited workers). None when no raylet
    runs below this process: Ray was started elsewhere and its workers cannot be counted."""
    import psutil

    me = psutil.Process()
    procs = [me, *me.children(recursive=True)]
    if not any(_name(p) == "raylet" for p in procs):
        return None
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
        except psutil.Error:  # exited between listing and reading
            continue
        total += t.user + t.system + t.children_user + t.children_system
    return total


def _name(proc: Any) -> str:
    try:
        return str(proc.name())
    except Exception:  # psutil.Error subclasses; the process may be gone
        return ""


def _sig(x: float) -> float:
    """Three significant digits: tiny runs give tiny rates and ratios that must not round to zero."""
    return float(f"{x:.3g}")


def _rate(n: int, seconds: float | None) -> float | None:
    return _sig(n / seconds) if seconds else None


def bench_preprocess(
    n: int | None = DEFAULT_N,
    *,
    work_dir: str | None = None,
    size: int = 336,
    image_size: tuple[int, int] = (640, 480),
) -> dict[str, Any]:
    """Samples/s per CPU core of our preprocessing and of the reference's, on the same data; prints a table.

    Per core: ours is samples / wall / CPUs Ray used, the reference samples / wall (one process). Also
    reported: samples per CPU-second actually burnt by each (every Ray process counted, when Ray runs below
    this process), which other load on the machine skews far less than wall time. `n` None means
    DEFAULT_N. Data, tokenizer and shards go under `work_dir` (kept), else a temporary folder (removed).
    Ray is used as the caller initialised it, else started with every CPU (start-up not timed).
    """
    import ray

    from components.models.tokenizer import SPM_FILE, train_tokenizer
    from components.prepare.stage import corpus_texts

    n = DEFAULT_N if n is None else n
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    with tempfile.TemporaryDirectory(prefix="bench-preprocess-") as tmp:
        root = Path(work_dir) if work_dir else Path(tmp)
        data = write_bench_data(root / "data", n, image_size)
        source = DataSource(annotations=data["annotations"], image_root=data["image_root"], name="bench")
        tok_dir = root / "tokenizer"
        train_tokenizer(corpus_texts([source]), VOCAB_SIZE, tok_dir)

        load_before = os.getloadavg()[0]
        started_ray = not ray.is_initialized()
        if started_ray:
            ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        try:
            cpus = max(1, min(int(ray.cluster_resources().get("CPU", 1)), os.cpu_count() or 1))
            cpu0 = _tree_cpu_seconds()
            ours_count, prepare_wall, pixels_wall = run_ours(source, str(root / "prepared"), str(tok_dir),
                                                             size, cpus)
            cpu1 = _tree_cpu_seconds()
        finally:
            if started_ray:
                ray.shutdown()
        ours_cpu = cpu1 - cpu0 if cpu0 is not None and cpu1 is not None else None

        t0, c0 = time.perf_counter(), time.process_time()
        ref_count = run_reference(data["annotations"], data["image_root"], str(tok_dir / SPM_FILE), size)
        ref_wall, ref_cpu = time.perf_counter() - t0, time.process_time() - c0
        c0 = time.process_time()
        inline_count = run_ours_inline(source, str(tok_dir), size)
        inline_cpu = time.process_time() - c0
        load_after = os.getloadavg()[0]

    if ours_count != n or ref_count != n or inline_count != n:
        raise RuntimeError(f"expected {n} samples from every path, got ours={ours_count} "
                           f"reference={ref_count} ours without Ray={inline_count}")
    ours_wall = prepare_wall + pixels_wall
    ours, reference = n / ours_wall / cpus, n / ref_wall
    ours_per_cpu_s, ref_per_cpu_s = _rate(n, ours_cpu), _rate(n, ref_cpu)
    result = {
        "n": n, "cpus": cpus, "size": size, "image_size": list(image_size), "images": data["images"],
        "mean_image_kb": data["mean_image_kb"],
        "ours_wall_s": round(ours_wall, 3), "ours_prepare_s": round(prepare_wall, 3),
        "ours_pixels_s": round(pixels_wall, 3), "reference_wall_s": round(ref_wall, 3),
        "ours_per_core": _sig(ours), "reference_per_core": _sig(reference), "ratio": _sig(ours / reference),
        "ours_cpu_s": None if ours_cpu is None else round(ours_cpu, 3), "reference_cpu_s": round(ref_cpu, 3),
        "ours_per_cpu_s": ours_per_cpu_s, "reference_per_cpu_s": ref_per_cpu_s,
        "ratio_cpu": _sig(ours_per_cpu_s / ref_per_cpu_s) if ours_per_cpu_s and ref_per_cpu_s else None,
        # The same work in one process without Ray: the best per-core rate our code allows on this machine.
        "inline_cpu_s": round(inline_cpu, 3), "inline_per_cpu_s": _rate(n, inline_cpu),
        "ratio_ceiling": _sig(ref_cpu / inline_cpu) if inline_cpu > 0 else None,
        # 1-minute load average before and after: other work on the machine inflates wall times.
        "load_avg": [round(load_before, 2), round(load_after, 2)],
    }
    print(format_table(result))
    return result


def format_table(r: dict[str, Any]) -> str:
    """The result as a small text table."""
    def num(x: float | None, fmt: str) -> str:
        return "n/a" if x is None else format(x, fmt)

    w, h = r["image_size"]
    head = f"{'path':<36}{'cores':>6}{'wall s':>9}{'/s/core':>9}{'CPU s':>9}{'/CPU s':>9}"
    rows = [
        ("ours: prepare + pixel map (Ray)", r["cpus"], r["ours_wall_s"], r["ours_per_core"], r["ours_cpu_s"],
         r["ours_per_cpu_s"]),
        ("reference: per sample, 1 process", 1, r["reference_wall_s"], r["reference_per_core"],
         r["reference_cpu_s"], r["reference_per_cpu_s"]),
    ]
    floor = ("ours without Ray, 1 process", 1, None, None, r["inline_cpu_s"], r["inline_per_cpu_s"])
    lines = [f"preprocess benchmark: n={r['n']}, {r['images']} JPEGs ~{w}x{h} (mean {r['mean_image_kb']} KB) "
             f"-> {r['size']}x{r['size']} pad", head]
    for name, cores, wall, per_core, cpu, per_cpu in [*rows, floor]:
        lines.append(f"{name:<36}{cores:>6}{num(wall, '.2f'):>9}{num(per_core, '.3g'):>9}{num(cpu, '.2f'):>9}"
                     f"{num(per_cpu, '.3g'):>9}")
    lines.append(f"ratio ours/reference: {r['ratio']:.3g}x per core, {num(r['ratio_cpu'], '.3g')}x per CPU-second"
                 f"  (ours: prepare {r['ours_prepare_s']:.1f} s + pixel map {r['ours_pixels_s']:.1f} s;"
                 f" load average {r['load_avg'][0]} -> {r['load_avg'][1]})")
    lines.append(f"ceiling without Ray overhead: {num(r['ratio_ceiling'], '.3g')}x per CPU-second")
    return "\n".join(lines)
