"""Which prompts the export parity check asks: benchmark questions when the evaluation left them, else a
fixed list with generated images.

Sources, best first:
1. the evaluated benchmarks' own questions, images included, when their folder can be read (local or
   s3://, fetched on the node that runs the export);
2. the prompts in the evaluation outputs' answers.jsonl (the images are not there: generated ones stand in);
3. FIXED_PROMPTS with generated images.
At least one prompt is text-only when two or more are asked for, so both input paths are exercised.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from itertools import chain, zip_longest

from PIL import Image, ImageDraw

from components.core import datafiles, storage
from components.core.images import ImageError, decode_image
from components.evaluate.benchmarks import BenchmarkDataError, get_benchmark
from components.evaluate.harness import local_folder

log = logging.getLogger(__name__)

SHORT = "\nAnswer the question using a single word or phrase."
FIXED_PROMPTS: tuple[str, ...] = (
    "What colour is the shape?" + SHORT,
    "Describe the image briefly.",
    "Is there a circle in the image?" + SHORT,
    "How many shapes are there?" + SHORT,
    "Where is the shape?\nA. top left\nB. bottom right\nAnswer with the option's letter from the given "
    "choices directly.",
)
TEXT_ONLY_PROMPTS: tuple[str, ...] = (
    "What colour do you get by mixing blue and yellow?" + SHORT,
    "Name a shape with three sides.",
)
# Non-square sizes, so the pad-to-square step is part of what is compared.
_SIZES = ((96, 64), (64, 112), (80, 80), (150, 90))
_FILLS = ((220, 40, 40), (40, 80, 225), (40, 170, 60), (240, 215, 40))


@dataclass(frozen=True)
class ParityItem:
    key: str
    prompt: str  # the question text, without "<image>" (the template places the image)
    image: Image.Image | None = None
    source: str = "fixed"  # benchmark name, "<bench>:answers", or "fixed"


def generated_image(i: int) -> Image.Image:
    """A small deterministic picture: one coloured ellipse or rectangle on a grey, non-square canvas."""
    w, h = _SIZES[i % len(_SIZES)]
    img = Image.new("RGB", (w, h), (200 - 9 * i % 60, 200, 190))
    draw = ImageDraw.Draw(img)
    box = (w // 5, h // 5, w // 5 + min(w, h) // 2, h // 5 + min(w, h) // 2)
    fill = _FILLS[i % len(_FILLS)]
    (draw.ellipse if i % 2 else draw.rectangle)(box, fill=fill)
    return img


def _spread(n_items: int, k: int) -> list[int]:
    if k >= n_items:
        return list(range(n_items))
    if k <= 1:
        return [0] if k == 1 else []
    step = (n_items - 1) / (k - 1)
    return sorted({round(i * step) for i in range(k)})


def _from_benchmark(name: str, source: str, k: int) -> list[ParityItem]:
    """k questions spread over the benchmark's question file (its folder: `source`), with their images."""
    bench = get_benchmark(name)
    root = local_folder(source, bench)  # questions fetched to this node; images read from source
    questions = bench.load_questions(root)
    picked = [questions[i] for i in _spread(len(questions), k)]
    items = []
    for q in picked:
        image = None
        if isinstance(q.image, bytes):
            image = decode_image(q.image, source=f"{bench.name} question {q.question_id}")
        elif isinstance(q.image, str):
            path, data = datafiles.read(datafiles.DataRoot(source), q.image)
            image = decode_image(data, source=path)
        items.append(ParityItem(f"{bench.name}:{q.question_id}", q.prompt, image, bench.name))
    return items


def _from_answers(name: str, folder: str, k: int) -> list[ParityItem]:
    """k prompts from the evaluation's answers.jsonl, each with a generated image."""
    path = storage.join(folder, name, "answers.jsonl")
    if not storage.exists(path):
        return []
    records = []
    for n, line in enumerate(storage.read_bytes(path).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            records.append((str(rec["question_id"]), str(rec["prompt"])))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}: line {n}: not an answer record with question_id and prompt ({e})") from None
    items = []
    for j, i in enumerate(_spread(len(records), k)):
        qid, prompt = records[i]
        prompt = prompt.removeprefix("<image>\n")  # SQA keeps the image tag in its saved prompt
        items.append(ParityItem(f"{name}:{qid}", prompt, generated_image(j), f"{name}:answers"))
    return items


def _fixed(k: int) -> list[ParityItem]:
    return [ParityItem(f"fixed:{i}", FIXED_PROMPTS[i % len(FIXED_PROMPTS)], generated_image(i)) for i in range(k)]


def parity_items(evaluations: dict[str, str], n: int, *,
                 benchmark_folders: dict[str, str] | None = None) -> list[ParityItem]:
    """`n` prompts for the parity check (see the module docstring for where they come from): `evaluations`
    maps each benchmark to its evaluation output, `benchmark_folders` to its folder of questions."""
    if n <= 0:
        return []
    per_bench: list[list[ParityItem]] = []
    for name, folder in sorted(evaluations.items()):
        items: list[ParityItem] = []
        source = (benchmark_folders or {}).get(name)
        if source is not None:
            try:
                items = _from_benchmark(name, source, n)
            except (BenchmarkDataError, ImageError, OSError, ValueError) as e:
                # Unreadable here (e.g. another machine's path): the answers file still has the prompts.
                log.warning("export parity: %s questions not readable under %s (%s); using answers.jsonl",
                            name, source, e)
        per_bench.append(items or _from_answers(name, folder, n))
    # Round-robin over benchmarks, so a small sample still covers several of them.
    chosen = [it for it in chain.from_iterable(zip_longest(*per_bench)) if it is not None][:n]
    chosen += _fixed(n - len(chosen))
    if n >= 2 and all(it.image is not None for it in chosen):
        chosen[-1] = ParityItem("text_only:0", TEXT_ONLY_PROMPTS[0])
    return chosen
