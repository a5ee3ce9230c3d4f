"""A job's entrypoint for tests/cluster/test_two_node_storage.py: run on the head of the two-node cluster, it
places Ray actors on both nodes (nothing else shares their disks) and prints one `RESULT {json}` line.

- checkpoints: four ranks of a real DeepSpeed ZeRO-2 engine (gloo, one process group over both nodes), ranks
  0-1 on the head and 2-3 on the worker, save a checkpoint to S3 through the recipe's own `checkpoint.save`
  and `LocalRuntime` (each rank uploads from its node); four fresh ranks then resume it through
  `checkpoint.restore`. Reported per rank: bytes fetched, whether its weights came back, and what is left
  on its node's disk afterwards.
- model: four actors on the worker node and one on the head `localize` the same s3:// model folder at once.
  Reported per actor: its node and whether it downloaded (the fetch's log line).

    python tests/cluster/node_checks.py RUN_DIR MODEL_URL
"""

from __future__ import annotations

import json
import os
import sys

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

WORLD = 4
MASTER = "127.0.0.2"  # the head's loopback address (tests/cluster/two_node.py): both nodes reach it


@ray.remote(num_cpus=0)
class Rank:
    """One data-parallel rank: a tiny model under DeepSpeed ZeRO-2 on CPU."""

    def __init__(self, rank: int, local_rank: int, port: int, run_dir: str, scratch: str) -> None:
        import tempfile

        os.makedirs(scratch, exist_ok=True)  # this run's temp folder on the node (its ranks share it)
        tempfile.tempdir = scratch
        os.environ.update(RANK=str(rank), LOCAL_RANK=str(local_rank), WORLD_SIZE=str(WORLD), MASTER_ADDR=MASTER,
                          MASTER_PORT=str(port), DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
        self.rank, self.run_dir = rank, run_dir

    def start(self, seed: int) -> None:
        """Collective (the process group forms when all four call it): build the engine."""
        import deepspeed
        import torch

        from components.train.runtime import LocalRuntime

        torch.set_num_threads(1)
        self.rt = LocalRuntime("", "pretrain", self.run_dir)
        torch.manual_seed(seed)  # a different seed on resume: restored weights are the checkpoint's, not these
        model = torch.nn.Sequential(torch.nn.Linear(256, 256), torch.nn.Linear(256, 256))
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        config = {"train_micro_batch_size_per_gpu": 1, "gradient_accumulation_steps": 1,
                  "zero_optimization": {"stage": 2}}
        self.engine, *_ = deepspeed.initialize(model=model, optimizer=optimizer, config=config)

    def train_and_save(self) -> dict:
        """Collective: one optimizer step, then the recipe's checkpoint save at step 1."""
        import glob
        import tempfile

        import torch

        from components.train.checkpoint import save

        loss = self.engine(torch.ones(1, 256) * (self.rank + 1)).pow(2).mean()
        self.engine.backward(loss)
        self.engine.step()
        save(self.engine, {"stage": "pretrain", "step": 1, "world_size": WORLD}, {"step": 1}, self.rt)
        torch.distributed.barrier()  # every rank of this node has left save: its scratch folder must be gone
        return {"weights": self._weights(), "node": ray.get_runtime_context().get_node_id(),
                "scratch_left": glob.glob(os.path.join(tempfile.gettempdir(), "llava-ckpt-*"))}

    def resume(self) -> dict:
        """Collective: the recipe's restore (each rank fetches its files), then what is left on this node."""
        import glob
        import tempfile

        import torch.distributed as dist

        from components.train.checkpoint import restore

        meta = restore(self.engine, self.rt, "pretrain")
        dist.barrier()  # every rank has left restore, so each node's local rank 0 has removed its copy
        return {"step": meta["step"] if meta else None, "fetched": self.rt.fetched_bytes,
                "weights": self._weights(), "node": ray.get_runtime_context().get_node_id(),
                "restore_left": glob.glob(os.path.join(tempfile.gettempdir(), "llava-restore", "*"))}

    def _weights(self) -> list[float]:
        return [float(p.detach().double().sum()) for p in self.engine.module.parameters()]


@ray.remote(num_cpus=0)
class Reader:
    """Stands for an evaluation actor: it only localizes the model folder, as the evaluation's loader does."""

    def ready(self) -> bool:
        return True

    def localize(self, url: str) -> dict:
        import logging

        from components.models.remote import localize

        lines: list[str] = []
        handler = logging.Handler()
        handler.emit = lambda record: lines.append(record.getMessage())
        logger = logging.getLogger("components.models.remote")
        logger.setLevel(logging.INFO)
        logger.addHandler(handler)
        folder = localize(url)
        files = sorted(os.listdir(folder))
        return {"node": ray.get_runtime_context().get_node_id(), "folder": folder, "files": files,
                "downloads": sum(line.startswith(f"fetching {url}:") for line in lines)}


def on(node: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node, soft=False)


def main(run_dir: str, model_url: str) -> dict:
    import uuid

    from components.train.runtime import free_port

    ray.init()
    head = ray.get_runtime_context().get_node_id()
    worker = next(n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] != head)
    nodes = [head, head, worker, worker]  # rank → node
    scratch = f"/tmp/node-checks-{uuid.uuid4().hex[:8]}"

    def ranks(port: int) -> list:
        return [Rank.options(scheduling_strategy=on(nodes[r])).remote(r, r % 2, port, run_dir, scratch) for r in range(WORLD)]

    first = ranks(free_port())
    ray.get([r.start.remote(seed=0) for r in first])
    saved = ray.get([r.train_and_save.remote() for r in first])
    for r in first:
        ray.kill(r)
    again = ranks(free_port())
    ray.get([r.start.remote(seed=1) for r in again])
    resumed = ray.get([r.resume.remote() for r in again])
    for r in again:
        ray.kill(r)

    readers = [Reader.options(scheduling_strategy=on(n)).remote() for n in [worker] * 4 + [head]]
    ray.get([r.ready.remote() for r in readers])  # all up before any starts: the fetches overlap
    reads = ray.get([r.localize.remote(model_url) for r in readers])
    return {"head": head, "worker": worker, "saved": saved, "resumed": resumed, "reads": reads}


if __name__ == "__main__":
    print("RESULT " + json.dumps(main(*sys.argv[1:3])), flush=True)
