"""Where answers are generated: Ray actors kept warm for a whole run, or this process.

Ray sits here, at the edge. `GeneratorActor` wraps the pure `Generator` (one model per actor; one GPU each on
a GPU cluster). A `GenerationPool` is a set of such actors, each fed one batch of question rows at a time as
it finishes the last; results come back in whatever order actors finish, and callers re-sort them.
`warm_pool` keeps one pool per model for the whole run, so every benchmark job of the run reuses the loaded
replicas: on a small model, starting an actor and loading the model took 10-20 s per benchmark against
~1 s of generation. A replica that dies mid-pass (its process killed, its node lost) is restarted by Ray
(`max_restarts`) and Ray calls it again with the batch it held (`max_task_retries`): one lost process costs a
model reload, not the run's remaining benchmarks.
`generate_in_process` is the same rows answered by one GeneratorActor in this process (no Ray), for callers
that already hold the CPUs and have torch loaded (a sweep trial).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from components.core.templates import TemplateName
from components.evaluate.generate import GenerationError, Generator, GenItem, QuestionRejected

# (bench, question_id) -> {text, single, gen_s[, rejected: {reason, message}]}
Results = dict[tuple[str, str], dict[str, Any]]

# Restarts per replica over a pool's life (a run). A stray loss (a preempted or failed node, a killed process)
# is survived; a replica that dies again and again is a crash a restart will not fix (the model or a batch
# does not fit in memory), and every restart reloads the model: past this bound the pass fails, named.
MAX_ACTOR_RESTARTS = 3


class GeneratorActor:
    """A batch of question rows -> {bench, question_id, text, single, gen_s, rejected, error}.

    Rows may come from several benchmarks: they carry their own max_new_tokens and image location (a name
    and the benchmark folder it must stay under), and a `blank` flag (feed the blank image instead: the
    image-dependence check). Rows flagged `parity` are also answered alone (batch 1, as the reference) into
    `single`. A question whose own data is unusable (image outside its folder, not a file, too large, corrupt;
    special-token text) comes back `rejected` ("reason<TAB>message") and costs only itself; a batch that
    fails otherwise comes back with `error` set.
    """

    def __init__(
        self, model_dir: str, *, template: TemplateName, batch_size: int, use_gpu: bool, dtype: str = "auto",
        cpus: float = 1.0, delay_first_batch_s: float = 0.0,
    ) -> None:
        if not use_gpu:
            # Match torch's intra-op threads to the CPUs Ray reserved: more threads than cores spin
            # against each other and slow tiny matmuls down many times over.
            torch.set_num_threads(max(1, round(cpus)))
        self.generator = Generator.from_dir(
            model_dir, device="cuda" if use_gpu else "cpu", dtype=dtype, template=template, image_mode="pad")
        self.batch_size = batch_size
        self.delay_first_batch_s = delay_first_batch_s
        self._incarnation = uuid.uuid4().hex  # new in every process Ray restarts this replica in

    def incarnation(self) -> str:
        """Which process of this replica answers (each batch's output says so too): a change is a restart."""
        return self._incarnation

    def pid(self) -> int:
        """This replica's process id (where it runs; a fault test kills it by this)."""
        return os.getpid()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        keys = [str(k) for k in batch["question_id"]]
        items: list[GenItem | None] = [None] * len(keys)
        rejected = [""] * len(keys)
        for i, (k, p, path, data, root) in enumerate(zip(keys, batch["prompt"], batch["image_path"],
                                                         batch["image_bytes"], batch["image_root"], strict=True)):
            try:  # a question whose own data is unusable costs only itself
                items[i] = self.generator.prepare_item(GenItem(k, str(p), _image_ref(path, data)),
                                                       root if isinstance(root, str) and root else None)
            except QuestionRejected as e:
                rejected[i] = f"{e.reason}\t{e}"
        self.generator.blank_images = bool(batch["blank"][0]) if "blank" in batch else False
        limits = [int(x) for x in batch["max_new_tokens"]]
        texts: list[str] = [""] * len(items)
        single: list[str | None] = [None] * len(items)
        error = ""
        start = time.perf_counter()
        try:
            for limit in sorted(set(limits)):
                idx = [i for i, m in enumerate(limits) if m == limit and items[i] is not None]
                answers = self.generator.answer([items[i] for i in idx], batch_size=self.batch_size,
                                                max_new_tokens=limit)
                for i, text in zip(idx, answers, strict=True):
                    texts[i] = text
            elapsed = time.perf_counter() - start
            single = [self.generator.generate_batch([it], limit)[0] if flag and it is not None else None
                      for it, limit, flag in zip(items, limits, batch["parity"], strict=True)]
        except GenerationError as e:
            # Returned, not raised: a Ray error would wrap this message in a traceback from the actor.
            error, elapsed = str(e), time.perf_counter() - start
        if self.delay_first_batch_s and int(np.min(batch["feed"])) == 0:
            time.sleep(self.delay_first_batch_s)  # test knob: the first batch finishes last
        return {
            "bench": batch["bench"],
            "question_id": np.array(keys, dtype=object),
            "text": np.array(texts, dtype=object),
            "single": np.array(single, dtype=object),
            "gen_s": np.full(len(keys), elapsed / max(1, len(keys))),
            "rejected": np.array(rejected, dtype=object),
            "error": np.array([error] * len(keys), dtype=object),
            "incarnation": self._incarnation,
        }


def _image_ref(path: Any, data: Any) -> str | bytes | None:
    if isinstance(data, bytes | bytearray | memoryview) and len(data):
        return bytes(data)
    if isinstance(path, str) and path:
        return path
    return None


def _batches(rows: list[dict[str, Any]], size: int, blank: bool) -> Iterator[dict[str, np.ndarray]]:
    for i in range(0, len(rows), size):
        chunk = rows[i : i + size]
        batch = {k: np.array([r[k] for r in chunk], dtype=object) for k in chunk[0]}
        batch["feed"] = np.array([r["feed"] for r in chunk], dtype=np.int64)
        batch["blank"] = np.full(len(chunk), blank)
        yield batch


def _collect(outputs: Iterator[dict[str, np.ndarray]], results: Results, arrival: list[tuple[str, str]]) -> None:
    errors: dict[str, None] = {}
    for out in outputs:
        for bench, qid, text, single, gen_s, rejected, error in zip(
                out["bench"], out["question_id"], out["text"], out["single"], out["gen_s"], out["rejected"],
                out["error"], strict=True):
            if error:
                errors[f"{bench}: {error}"] = None
                continue
            key = (str(bench), str(qid))
            if key in results:
                raise RuntimeError(f"{key[0]} question {key[1]} was answered twice")
            results[key] = {"text": str(text), "single": single, "gen_s": float(gen_s)}
            if rejected:
                reason, message = str(rejected).split("\t", 1)
                results[key]["rejected"] = {"reason": reason, "message": message}
            arrival.append(key)
    if errors:
        listed = list(errors)
        raise GenerationError(f"{len(listed)} batch(es) could not be generated: " + "; ".join(listed[:5]))


def _stats(rows: list[dict[str, Any]], results: Results, arrival: list[tuple[str, str]], wall: float
           ) -> dict[str, Any]:
    feed_pos = {(r["bench"], str(r["question_id"])): r["feed"] for r in rows}
    positions = [feed_pos[k] for k in arrival]
    return {
        "pass_wall_s": wall,  # includes actor start-up and model loading for the first pass of a pool
        "pass_samples_per_s": len(results) / wall if wall > 0 else None,
        "pass_questions": len(results),
        "out_of_order_arrivals": sum(1 for a, b in zip(positions, positions[1:], strict=False) if b < a),
    }


@dataclass(frozen=True)
class PoolSpec:
    """Everything that shapes a replica: pools with equal specs are interchangeable."""

    model_dir: str
    template: TemplateName
    batch_size: int
    num_actors: int
    use_gpu: bool
    cpus_per_actor: float = 1.0
    dtype: str = "auto"
    delay_first_batch_s: float = 0.0
    max_restarts: int = MAX_ACTOR_RESTARTS  # per replica, over the pool's life


class GenerationPool:
    """`spec.num_actors` GeneratorActors on Ray (one GPU each with use_gpu), fed batches of rows. One pass at a
    time (benchmark jobs running concurrently take turns; each pass already uses every replica).

    A replica that dies is restarted by Ray, up to `spec.max_restarts` times over the pool's life (its handle
    stays the same), and Ray calls the restarted process again with the batch the dead one held: the lost call
    never returned, so nothing is counted twice. Each output names the process that answered it, so a pass
    counts the restarts it saw (`actor_restarts`); a replica with no restart left fails the pass, named."""

    def __init__(self, spec: PoolSpec) -> None:
        import ray

        if spec.batch_size < 1 or spec.num_actors < 1:
            raise ValueError(f"batch_size and num_actors must be >= 1, got {spec.batch_size} and {spec.num_actors}")
        if spec.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0, got {spec.max_restarts}")
        self.spec = spec
        # max_task_retries -1: a lost call is retried whenever its replica comes back, which max_restarts bounds
        # (a replica with no restart left fails its calls); a finite count could give up on a call while the
        # replica is still restarting.
        remote = ray.remote(GeneratorActor).options(
            num_cpus=spec.cpus_per_actor, num_gpus=1 if spec.use_gpu else 0, max_restarts=spec.max_restarts,
            max_task_retries=-1)
        self.actors = [remote.remote(spec.model_dir, template=spec.template, batch_size=spec.batch_size,
                                     use_gpu=spec.use_gpu, dtype=spec.dtype, cpus=spec.cpus_per_actor,
                                     delay_first_batch_s=spec.delay_first_batch_s)
                       for _ in range(spec.num_actors)]
        # Each replica's first process, asked before any batch (calls to an actor run in order): a replica
        # that dies during its first batch is then seen as restarted too.
        self._first = [actor.incarnation.remote() for actor in self.actors]
        self._incarnations: list[str | None] = [None] * spec.num_actors  # the process last seen answering
        self._turn = threading.Lock()

    def generate(self, rows: list[dict[str, Any]], *, blank_images: bool = False) -> tuple[Results, dict[str, Any]]:
        """(bench, question_id) -> {text, single, gen_s} for `rows`, plus timing of the pass and the replica
        restarts it saw (`actor_restarts`: a replica answering from a new process, which reloaded the model;
        two deaths before one answer count once)."""
        results: Results = {}
        arrival: list[tuple[str, str]] = []
        restarts = [0]
        with self._turn:
            start = time.perf_counter()
            _collect(self._answer(_batches(rows, self.spec.batch_size, blank_images), restarts), results, arrival)
            wall = time.perf_counter() - start
        return results, {**_stats(rows, results, arrival, wall), "actor_restarts": restarts[0]}

    def _answer(self, batches: Iterator[dict[str, np.ndarray]], restarts: list[int]
                ) -> Iterator[dict[str, np.ndarray]]:
        """Each batch's output as replicas finish them, one batch per free replica at a time (Ray's ActorPool,
        plus knowing which replica answered); counts into `restarts[0]` each new process seen answering."""
        import ray
        from ray.exceptions import RayActorError

        free = list(range(len(self.actors)))
        running: dict[Any, tuple[int, dict[str, np.ndarray]]] = {}
        while True:
            while free and (batch := next(batches, None)) is not None:
                i = free.pop(0)
                running[self.actors[i].__call__.remote(batch)] = (i, batch)
            if not running:
                return
            [ref], _ = ray.wait(list(running), num_returns=1)
            i, batch = running.pop(ref)
            free.append(i)
            try:
                out = ray.get(ref)
            except RayActorError as e:
                raise self._dead(i, batch, e) from None
            if self._incarnations[i] is None:
                self._incarnations[i] = ray.get(self._first[i])
            if out["incarnation"] != self._incarnations[i]:
                self._incarnations[i] = out["incarnation"]
                restarts[0] += 1
            yield out

    def _dead(self, i: int, batch: dict[str, np.ndarray], error: Exception) -> GenerationError:
        """Replica `i` is gone for good: its model did not load, or it died with no restart left."""
        from ray.exceptions import ActorDiedError

        if getattr(error, "actor_init_failed", False):
            return GenerationError(f"a generation replica for {self.spec.model_dir} failed: {error}")
        benches = ", ".join(sorted({str(b) for b in batch["bench"]}))
        replica = f"{benches}: generation replica {i + 1} of {len(self.actors)} for {self.spec.model_dir}"
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, ActorDiedError):  # with calls retried, only a replica past max_restarts gets here
            return GenerationError(f"{replica} died with all {self.spec.max_restarts} of its restart(s) used; "
                                   f"its last death: {reason}")
        return GenerationError(f"{replica} failed: {reason}")

    def close(self) -> None:
        import ray

        for actor in self.actors:
            ray.kill(actor)
        self.actors = []


_WARM: dict[PoolSpec, GenerationPool] = {}
_WARM_LOCK = threading.Lock()


def warm_pool(spec: PoolSpec) -> GenerationPool:
    """The run's pool for `spec`, started on first use; kept until `close_warm_pools`."""
    with _WARM_LOCK:
        if spec not in _WARM:
            _WARM[spec] = GenerationPool(spec)
        return _WARM[spec]


def close_warm_pools() -> None:
    """Stop every warm pool (the end of a run): their actors hold CPUs or GPUs."""
    with _WARM_LOCK:
        pools = list(_WARM.values())
        _WARM.clear()
    for pool in pools:
        pool.close()


def generate_in_process(
    rows: list[dict[str, Any]], *, model_dir: str, template: TemplateName, batch_size: int, dtype: str = "auto",
    cpus: float = 1.0, blank_images: bool = False, use_gpu: bool = False,
) -> tuple[Results, dict[str, Any]]:
    """What a GenerationPool answers, from one GeneratorActor in this process (no Ray): on CPU, or on the
    GPU this process already holds (`use_gpu`; e.g. a Ray Train worker's)."""
    start = time.perf_counter()
    actor = GeneratorActor(model_dir, template=template, batch_size=batch_size, use_gpu=use_gpu, dtype=dtype,
                           cpus=cpus)
    results: Results = {}
    arrival: list[tuple[str, str]] = []
    _collect((actor(b) for b in _batches(rows, batch_size, blank_images)), results, arrival)
    return results, _stats(rows, results, arrival, time.perf_counter() - start)
