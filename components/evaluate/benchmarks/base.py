"""What every benchmark entry is made of: `Benchmark` (a frozen declaration), `Question`, file readers.

A benchmark module declares one `Benchmark(...)` with its files, prompt, generation settings and paper
numbers, and supplies two plain functions: a loader (question file -> `Question`s, file order) and a
scorer (questions + predictions + ground truth -> metrics). Everything shared (ordering, missing
predictions, the result envelope) happens here once.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from components.core.jsonl import DEFAULT_MAX_LINE_BYTES, LineProblem, split_jsonl
from components.core.provenance import SYNTHETIC_MARKER
from components.evaluate.judge import Judge, JudgeConfig, JudgeNotConfigured, make_judge

# More malformed question records than this (a fraction of the file's records) is a wrong file or a loader
# bug, not a few bad records: the benchmark fails, naming the first ones, instead of scoring the remainder.
MAX_REJECTED_FRACTION = 0.5


class BenchmarkDataError(ValueError):
    """A benchmark file is missing or does not have the expected shape (message names file and record)."""


Rejected = list[dict[str, Any]]  # {question_id, where (file:line), reason, message}


class Questions(list["Question"]):
    """A benchmark's questions in file order, and the records rejected while reading them (`rejected`:
    each names its file:line and field; the evaluate stage writes them to rejected.jsonl)."""

    def __init__(self, items: Sequence[Question] = (), rejected: Rejected | None = None) -> None:
        super().__init__(items)
        self.rejected: Rejected = rejected or []


@contextmanager
def one_record(rejected: Rejected, where: str, question_id: Any = None) -> Iterator[None]:
    """Read one question record: a malformed record is rejected (with its reason), not the benchmark."""
    try:
        yield
    except BenchmarkDataError as e:
        reject(rejected, where, question_id, e)


def reject(rejected: Rejected, where: str, question_id: Any, error: Exception) -> None:
    qid = None if question_id is None or isinstance(question_id, dict | list) else str(question_id)
    rejected.append({"question_id": qid, "where": where, "reason": "malformed_question", "message": str(error)})


@dataclass(frozen=True)
class Question:
    """One prompt to generate for. Predictions are keyed by `question_id`."""

    question_id: str  # unique within the benchmark (the file's id, made unique if the file repeats it)
    prompt: str  # text after the "<image>\n" prefix, format suffix included
    image: str | bytes | None = field(
        repr=False
    )  # path under the benchmark folder, bytes, or None (text only)
    index: int  # position in the question file; scoring walks questions in this order
    category: str | None = None
    source_id: int | str | None = None  # the id exactly as the question file wrote it
    meta: Mapping[str, Any] = field(
        default_factory=dict, hash=False, repr=False
    )  # what scoring needs besides the text


@dataclass(frozen=True)
class BenchFiles:
    root: Path  # the benchmark folder
    questions: Path
    annotations: Path | None  # the primary ground-truth file or folder (others sit next to it)

    def beside_annotations(self, name: str) -> Path:
        if self.annotations is None:
            raise BenchmarkDataError(f"{self.root}: this benchmark has no annotation path to look beside")
        base = self.annotations if self.annotations.is_dir() else self.annotations.parent
        return base / name


@dataclass(frozen=True)
class ScoreInput:
    bench: Benchmark
    questions: list[Question]  # question-file order
    predictions: Mapping[str, str]  # question_id -> generated text; absent ids are missing predictions
    files: BenchFiles
    judge: Judge | JudgeNotConfigured | None = None


Loader = Callable[[BenchFiles, "Benchmark", Rejected], list[Question]]  # malformed records go to the list
Scorer = Callable[[ScoreInput], dict[str, Any]]
Uploader = Callable[[Sequence[Question], Mapping[str, str], Path], int]


@dataclass(frozen=True)
class Benchmark:
    name: str  # registry name
    folder: str  # folder under the eval root, named as in LLaVA's eval.zip
    metric: str  # the headline metric, as the paper reports it
    split: str
    questions_file: str  # relative to the benchmark folder
    annotations: str | None  # primary ground truth, relative to the benchmark folder
    images: str | None  # image folder relative to the benchmark folder; None when images are embedded
    prompt_suffix: str  # format instruction ending every prompt ("" for natural QA)
    suffix_in_file: bool  # True: the question file already carries it; False: added by the loader
    max_new_tokens: int
    load: Loader
    scorer: Scorer
    paper: Mapping[str, float]  # model-zoo numbers: 7b, 13b, 7b_lora, 13b_lora
    unit: str = "%"  # unit of the headline value: "%" or "points" (MME)
    temperature: float = 0.0  # greedy decoding, as every v1.5 eval script
    upload: Uploader | None = None  # writes the evaluation server's submission format
    upload_questions_file: str | None = None  # question list the server expects, if larger than ours
    needs_judge: bool = False
    version: int = 1  # bump when prompts or scoring change; feeds the evaluate-stage fingerprint
    notes: str = ""

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def spec(self) -> dict[str, Any]:
        """The declarative part, JSON-ready: what the evaluate fingerprint and results files record."""
        return {
            "name": self.name,
            "version": self.version,
            "metric": self.metric,
            "split": self.split,
            "questions_file": self.questions_file,
            "annotations": self.annotations,
            "images": self.images,
            "prompt_suffix": self.prompt_suffix,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "needs_judge": self.needs_judge,
        }

    def files(
        self, root: str | Path, questions: str | Path | None = None, annotations: str | Path | None = None
    ) -> BenchFiles:
        root = Path(root)
        q = Path(questions) if questions is not None else root / self.questions_file
        if annotations is not None:
            a: Path | None = Path(annotations)
        else:
            a = root / self.annotations if self.annotations else None
        return BenchFiles(root=root, questions=q, annotations=a)

    def load_questions(self, root: str | Path, questions: str | Path | None = None) -> Questions:
        """The benchmark's questions in file order, malformed records in `.rejected` (more than
        MAX_REJECTED_FRACTION of them fails the benchmark). `root` is the benchmark folder."""
        files = self.files(root, questions)
        if not files.questions.is_file():
            raise BenchmarkDataError(f"{self.name}: question file not found: {files.questions}")
        rejected: Rejected = []
        loaded = self.load(files, self, rejected)
        total = len(loaded) + len(rejected)
        if rejected and len(rejected) > MAX_REJECTED_FRACTION * total:
            first = "; ".join(r["message"] for r in rejected[:3])
            raise BenchmarkDataError(f"{self.name}: {len(rejected)} of {total} question records in "
                                     f"{files.questions} are malformed (more than {MAX_REJECTED_FRACTION:.0%}); "
                                     f"first: {first}")
        return Questions(loaded, rejected)

    def score(
        self,
        questions: Sequence[Question],
        predictions: Mapping[Any, str],
        root: str | Path,
        *,
        annotations: str | Path | None = None,
        judge: Judge | JudgeConfig | JudgeNotConfigured | None = None,
        keep_samples: bool = True,
    ) -> dict[str, Any]:
        """Score predictions (question_id -> text, any order) against the ground truth under `root`.

        Questions are walked in question-file order whatever order predictions arrive in; a question
        without a prediction is scored as wrong and counted in `n_missing`.
        """
        ordered = sorted(questions, key=lambda q: q.index)
        if not ordered:
            raise BenchmarkDataError(f"{self.name}: no questions to score")
        dupes = [k for k, n in Counter(q.question_id for q in ordered).items() if n > 1]
        if dupes:
            raise BenchmarkDataError(f"{self.name}: duplicate question ids {dupes[:5]}")
        preds: dict[str, str] = {}
        for key, text in predictions.items():
            if not isinstance(text, str):
                raise BenchmarkDataError(
                    f"{self.name}: prediction for question {key!r} is {type(text).__name__}, not text"
                )
            preds[canon_id(key)] = text
        known = {q.question_id for q in ordered}
        missing = [q.question_id for q in ordered if q.question_id not in preds]
        unknown = sorted(k for k in preds if k not in known)
        if self.needs_judge:
            judge = make_judge(judge)
        body = self.scorer(ScoreInput(self, ordered, preds, self.files(root, annotations=annotations), judge))
        synthetic = (Path(root) / SYNTHETIC_MARKER).is_file()
        result: dict[str, Any] = {
            "benchmark": self.name,
            "metric": self.metric,
            "unit": self.unit,
            "value": body.pop("value"),
            "status": body.pop("status", "ok"),
            "n_questions": len(ordered),
            "n_missing": len(missing),
            "missing_examples": missing[:10],
            "n_unknown_predictions": len(unknown),
            "unknown_examples": unknown[:10],
            # The paper's numbers only beside scores on the real benchmark's data.
            "paper": {} if synthetic else dict(self.paper),
            "data": "synthetic" if synthetic else "benchmark",
            "version": self.version,
        }
        result.update(body)
        if not keep_samples:
            result.pop("samples", None)
        return result

    def write_upload(
        self, questions: Sequence[Question], predictions: Mapping[Any, str], path: str | Path
    ) -> dict[str, Any]:
        """Write the evaluation server's submission file; missing predictions are written as ""."""
        if self.upload is None:
            raise ValueError(f"{self.name} is scored locally; it has no server upload format")
        preds = {canon_id(k): v for k, v in predictions.items()}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        ordered = sorted(questions, key=lambda q: q.index)
        n = self.upload(ordered, preds, path)
        missing = sum(q.question_id not in preds for q in ordered)
        return {"benchmark": self.name, "path": str(path), "n_written": n, "n_missing": missing}

    def upload_questions(self, root: str | Path) -> list[Question]:
        """The question list the server wants answers for (VQAv2: all of test2015 when present)."""
        root = Path(root)
        if self.upload_questions_file and (root / self.upload_questions_file).is_file():
            return self.load_questions(root, root / self.upload_questions_file)
        return self.load_questions(root)


# ---------------------------------------------------------------- readers and shared helpers


def canon_id(value: Any) -> str:
    """Question ids compare as strings (JSON files mix 123 and "123")."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BenchmarkDataError(f"question id {value!r} must be an integer or a string")
    return str(value)


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise BenchmarkDataError(f"file not found: {path}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise BenchmarkDataError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(
    path: Path, rejected: Rejected | None = None, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> list[tuple[int, dict[str, Any]]]:
    """(line number, object) for each non-blank line, read by the shared JSONL splitter
    (components.core.jsonl: split on \\n only, \\r\\n and a UTF-8 BOM tolerated, a line over
    `max_line_bytes` not read). A line that is not a JSON object is an error, or, given `rejected`,
    that line's rejection."""
    if not path.is_file():
        raise BenchmarkDataError(f"file not found: {path}")
    rows = []
    with path.open("rb") as f:
        for lineno, obj in split_jsonl(f, max_line_bytes):
            if isinstance(obj, LineProblem):
                problem = obj.message
            elif not isinstance(obj, dict):
                problem = "expected a JSON object"
            else:
                rows.append((lineno, obj))
                continue
            error = BenchmarkDataError(f"{path}:{lineno}: {problem}")
            if rejected is None:
                raise error
            reject(rejected, f"{path}:{lineno}", None, error)
    return rows


def need(obj: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """obj[key], checked: a clear error naming the record and field otherwise."""
    if not isinstance(obj, Mapping):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    if key not in obj:
        raise BenchmarkDataError(f"{where}: missing field {key!r}")
    value = obj[key]
    if not isinstance(value, kind) or isinstance(value, bool):
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise BenchmarkDataError(f"{where}: field {key!r} should be {names}, got {value!r}")
    return value


def unique_ids(raw_ids: Sequence[int | str]) -> list[str]:
    """Question ids made unique: a repeated id (TextVQA uses the image id) becomes "id#k" for its k-th use."""
    ids = [canon_id(x) for x in raw_ids]
    counts = Counter(ids)
    seen: Counter[str] = Counter()
    out = []
    for i in ids:
        if counts[i] > 1:
            out.append(f"{i}#{seen[i]}")
            seen[i] += 1
        else:
            out.append(i)
    return out


def load_question_jsonl(files: BenchFiles, bench: Benchmark, rejected: Rejected) -> list[Question]:
    """LLaVA question JSONL ({question_id, image, text, category}); the suffix is already in `text`.
    A malformed record is rejected with its file:line and field; the others are read."""
    suffix = bench.prompt_suffix.strip()
    parsed = []
    for lineno, obj in read_jsonl(files.questions, rejected):
        where = f"{files.questions}:{lineno}"
        with one_record(rejected, where, obj.get("question_id")):
            raw_id = need(obj, "question_id", where, (int, str))
            text = need(obj, "text", where)
            if bench.suffix_in_file and suffix and not text.rstrip().endswith(suffix):
                raise BenchmarkDataError(f"{where}: text does not end with the {bench.name} prompt suffix {suffix!r}")
            image = obj.get("image")
            if image is not None and not isinstance(image, str):
                raise BenchmarkDataError(f"{where}: field 'image' should be a file name, got {image!r}")
            category = obj.get("category")
            parsed.append((raw_id, text, image, category))
    ids = unique_ids([raw_id for raw_id, *_ in parsed])
    return [
        Question(
            question_id=qid,
            prompt=text,
            index=i,
            image=f"{bench.images}/{image}" if image and bench.images else image,
            category=str(category) if category is not None else None,
            source_id=raw_id,
            meta={"image_file": image},
        )
        for i, (qid, (raw_id, text, image, category)) in enumerate(zip(ids, parsed, strict=True))
    ]


def skipped(reason: str) -> dict[str, Any]:
    """A scorer's answer when the score cannot be computed here (server-only split, no judge)."""
    return {"value": None, "status": "skipped", "reason": reason}


def pct(x: float) -> float:
    return 100.0 * x


def not_asked_note(n: int, what: str) -> dict[str, Any]:
    """Ground-truth items with no question in the question list: reported, since the official script
    would count them as wrong."""
    if not n:
        return {}
    return {
        "n_not_asked": n,
        "warning": f"{n} {what} have no question in the question list; the official script counts "
        "them wrong, this score covers only the questions asked",
    }
