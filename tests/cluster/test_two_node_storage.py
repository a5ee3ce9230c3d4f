"""Checkpoints and models on a two-node cluster whose nodes share no disk (tests/cluster/two_node.py), one
cluster for both checks (node_checks.py runs as a job on its head and places actors on both nodes):
- a resumed run downloads on each node only its ranks' shards (and the shared files once), and leaves no
  local copy behind, neither of the save nor of the resume;
- five actors localizing one s3:// model folder, four on the worker node and one on the head, cause one
  download per node.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

SCRIPT = Path(__file__).with_name("node_checks.py")


@pytest.fixture(scope="module")
def checks(s3_server) -> dict:
    """The job's RESULT: a checkpoint bucket and a model folder in S3, then the script on the cluster."""
    import boto3

    from pipelines.engine.job_client import connect
    from pipelines.engine.jobs import wait_for
    from tests.cluster.two_node import two_node_cluster

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="two-node-ckpt")
    s3.create_bucket(Bucket="two-node-model")
    model = {f"shard-{i}.bin": os.urandom(2_000_000) for i in range(4)} | {"config.json": b"{}"}
    for name, body in model.items():
        s3.put_object(Bucket="two-node-model", Key=f"m/{name}", Body=body)
    with two_node_cluster(worker_cpus=2) as cluster:
        client = connect(cluster.url)
        job = client.submit_job(entrypoint=f"{sys.executable} {SCRIPT} s3://two-node-ckpt/run s3://two-node-model/m")
        code = wait_for(client, job, poll_s=0.5, timeout_s=300)
        logs = client.get_job_logs(job)
    assert code == 0, logs[-4000:]
    found = re.search(r"^RESULT (.*)$", logs, re.M)
    assert found, logs[-4000:]
    return {**json.loads(found.group(1)), "model": model}


def test_a_resume_fetches_on_each_node_only_its_ranks_shards(checks):
    import s3fs

    head, worker, saved, resumed = checks["head"], checks["worker"], checks["saved"], checks["resumed"]
    assert [r["node"] for r in resumed] == [head, head, worker, worker] == [s["node"] for s in saved]
    files = {path: info["size"] for path, info in
             s3fs.S3FileSystem().find("two-node-ckpt/run/checkpoint_000001", detail=True).items()}
    own = [sum(size for path, size in files.items() if re.search(rf"zero_pp_rank_{r}_", path)) for r in range(4)]
    shared = sum(files.values()) - sum(own)
    fetched = [r["fetched"] for r in resumed]
    print(f"\ncheckpoint {sum(files.values())} B: per-rank shards {own} B, shared {shared} B; "
          f"fetched per rank {fetched} B (head {sum(fetched[:2])}, worker {sum(fetched[2:])})")
    assert all(size > 0 for size in own) and shared > 0
    assert all(own[r] <= fetched[r] <= own[r] + shared for r in range(4))  # never another rank's shard
    assert sum(fetched[:2]) == own[0] + own[1] + shared  # each node: its ranks' shards, shared files once
    assert sum(fetched[2:]) == own[2] + own[3] + shared
    # DeepSpeed loaded the checkpoint (the resumed ranks started from other random weights)
    assert all(r["step"] == 1 and r["weights"] == s["weights"] for r, s in zip(resumed, saved, strict=True))
    assert all(s["scratch_left"] == [] for s in saved)  # the save's local copy is gone once uploaded
    assert all(r["restore_left"] == [] for r in resumed)  # and the resume's once loaded


def test_actors_on_a_node_download_the_model_once(checks):
    head, worker, reads = checks["head"], checks["worker"], checks["reads"]
    per_node = {node: sum(r["downloads"] for r in reads if r["node"] == node) for node in (head, worker)}
    print(f"\nmodel downloads per node: head {per_node[head]}, worker {per_node[worker]} "
          f"({sum(len(b) for b in checks['model'].values())} B each)")
    assert [r["node"] for r in reads] == [worker] * 4 + [head]
    assert per_node == {head: 1, worker: 1}
    assert len({r["folder"] for r in reads[:4]}) == 1
    assert all(r["files"] == sorted(checks["model"]) for r in reads)
