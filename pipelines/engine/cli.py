"""`llava-pipeline`: the command line. Each subcommand is a thin wrapper over a library function."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from typing import Any

from components.core.config import ConfigError
from components.core.redact import redact
from pipelines.config import PipelineConfig, load_config
from pipelines.engine.executor import PipelineError
from pipelines.engine.job_client import JobError


def _config(args: argparse.Namespace) -> PipelineConfig:
    return load_config(args.config, args.set)


def cmd_synth(args: argparse.Namespace) -> int:
    from components.synth.world import generate_world

    manifest = generate_world(args.out, seed=args.seed, size=args.size)
    counts: dict[str, int] = {}
    for f in manifest["files"]:
        counts[f["role"]] = counts.get(f["role"], 0) + 1
    print(f"synthetic world ({args.size}, seed {args.seed}) written to {args.out}")
    for role, n in sorted(counts.items()):
        print(f"  {role:24s} {n} files")
    return 0


def tokenizer_for(cfg: PipelineConfig, tokenizer_dir: str | None) -> Any:
    """The run's tokenizer: given folder, the checkpoint's, or the locally trained one (built if needed)."""
    from components.models.tokenizer import load_tokenizer
    from pipelines.engine.artifacts import local_tokenizer

    if tokenizer_dir:
        return load_tokenizer(tokenizer_dir)
    if cfg.model.tokenizer.name_or_path:
        return load_tokenizer(cfg.model.tokenizer.name_or_path)
    return load_tokenizer(local_tokenizer(cfg))


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipelines.engine.inspect_sample import format_inspection, inspect_sample, load_sample

    cfg = _config(args)
    record, source = load_sample(args.sample, args.index)
    info = inspect_sample(record, source, cfg, args.stage, tokenizer_for(cfg, args.tokenizer))
    print(json.dumps(info) if args.json else format_inspection(info))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from pipelines.engine.run_cmd import run_pipeline

    return run_pipeline(_config(args), only=args.only, from_=args.from_, force=args.force,
                        dry_run=args.dry_run, as_json=args.json, command=" ".join(sys.argv[1:]) or "run",
                        verbose=args.verbose)


def cmd_plan(args: argparse.Namespace) -> int:
    if args.resources:
        return cmd_resources(args)
    if args.cluster or args.gpu:
        raise ValueError("--cluster and --gpu go with --resources")
    from pipelines.engine.run_cmd import run_pipeline

    return run_pipeline(_config(args), only=[], from_=[], force=args.force, dry_run=True, as_json=args.json)


def cmd_resources(args: argparse.Namespace) -> int:
    """The resource plan: printed whole (data inputs may be missing); exit 1 when a stage does not fit."""
    from pipelines.engine.resources_cmd import format_resources, plan_resources, resources_json

    placement = plan_resources(_config(args), args.cluster, args.gpu)
    print(json.dumps(resources_json(placement), indent=1) if args.json else format_resources(placement))
    if placement.errors:
        print("llava-pipeline plan: error: the run does not fit its cluster:\n  " + "\n  ".join(placement.errors),
              file=sys.stderr)
        return 1
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from components.evaluate.scoring import format_metrics, score_file, to_json

    result = score_file(args.benchmark, args.predictions, args.questions, args.annotations)
    print(to_json(result) if args.json else format_metrics(result))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    if args.what == "preprocess":
        from bench.preprocess import bench_preprocess

        result = bench_preprocess(args.n)
    else:
        from bench.generate import bench_generate_cli

        result = bench_generate_cli(n=args.n, device=args.device, model_dir=args.model)
    if args.json:
        print(json.dumps(result))
    return 0


def cmd_submit(args: argparse.Namespace) -> int:
    from pipelines.engine.jobs import submit

    if args.cluster:  # the cluster is remote: checked against its manifest when given, else not at all
        from pipelines.engine.resources_cmd import check_fits

        check_fits(_config(args), args.cluster)

    return submit(args.config, args.set, address=args.address, wait=args.wait, only=args.only, from_=args.from_,
                  force=args.force, poll_s=args.poll, timeout_s=args.timeout, allow_plain_http=args.allow_plain_http)


def cmd_job(args: argparse.Namespace) -> int:
    from pipelines.engine import jobs

    if args.command == "status":
        return jobs.show_status(args.job, address=args.address, as_json=args.json,
                                allow_plain_http=args.allow_plain_http)
    if args.command == "logs":
        return jobs.show_logs(args.job, address=args.address, follow_logs=args.follow,
                              allow_plain_http=args.allow_plain_http)
    return jobs.stop(args.job, address=args.address, allow_plain_http=args.allow_plain_http)


def _add_stage_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--only", action="append", default=[], metavar="STAGE",
                   help="run only this stage (or group, e.g. evaluate), reusing cached upstream outputs")
    p.add_argument("--from", dest="from_", action="append", default=[], metavar="STAGE",
                   help="run this stage and everything downstream, reusing cached upstream outputs")
    p.add_argument("--force", action="append", default=[], metavar="STAGE",
                   help="ignore the cache for this stage and everything downstream")


def _add_address_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=None, metavar="URL",
                   help="Ray dashboard URL (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS, else http://127.0.0.1:8265)")
    p.add_argument("--allow-plain-http", action="store_true",
                   help="allow an http:// address of another machine (the cluster token then crosses the network "
                        "readable); default: https://, or http:// to this machine (a port-forward or tunnel)")


def _add_cluster_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cluster", default=None, metavar="MANIFEST",
                   help="a KubeRay RayJob/RayCluster manifest, a Ray cluster launcher YAML or a machine of "
                        "pipelines/engine/machines.yaml (default: this machine; submit: no check without it)")


def _add_config_args(p: argparse.ArgumentParser, positional: bool = False) -> None:
    if positional:
        p.add_argument("config", nargs="?", default="tiny", help="config name in configs/ or a YAML path")
    else:
        p.add_argument("--config", default="tiny", help="config name in configs/ or a YAML path")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set finetune.optim.lr=1e-5 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llava-pipeline", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="run the pipeline (default config: the embedded tiny world)")
    _add_config_args(p, positional=True)
    _add_stage_args(p)
    p.add_argument("--dry-run", action="store_true", help="print the plan (same as `plan`) and exit")
    p.add_argument("--json", action="store_true",
                   help="stdout: exactly one JSON object at the end (stage lines go to stderr)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also show what Ray, DeepSpeed and transformers print (always in {storage}/logs/)")
    p.set_defaults(fn=cmd_run)

    p = sub.add_parser("plan", help="show every stage as cached or run, and why (no Ray started)")
    _add_config_args(p, positional=True)
    p.add_argument("--force", action="append", default=[], metavar="STAGE")
    p.add_argument("--json", action="store_true")
    p.add_argument("--resources", action="store_true",
                   help="per stage: where it runs, GPUs, host/GPU memory, local disk, storage written, wall time "
                        "and GPU-hours; exits 1 when a stage does not fit its node")
    _add_cluster_arg(p)
    p.add_argument("--gpu", default=None, metavar="TYPE",
                   help="--resources: the GPU type of GPU nodes whose manifest names none (e.g. A100-80G)")
    p.set_defaults(fn=cmd_plan)

    p = sub.add_parser("synth", help="generate the synthetic world (training data + eval sets)")
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", choices=["micro", "tiny", "small", "medium"], default="tiny")
    p.set_defaults(fn=cmd_synth)

    p = sub.add_parser("inspect", help="show a sample's rendered prompt with its supervised spans")
    p.add_argument("sample", help="JSON object, JSON list or JSONL file")
    p.add_argument("--index", type=int, default=0, help="record index in a list or JSONL file")
    p.add_argument("--stage", choices=["pretrain", "finetune"], default="finetune")
    p.add_argument("--tokenizer", help="tokenizer folder (default: the config's)")
    p.add_argument("--json", action="store_true")
    _add_config_args(p)
    p.set_defaults(fn=cmd_inspect)

    from components.evaluate.benchmarks import BENCHMARKS

    p = sub.add_parser(
        "score", help="score an answers file (the reference's answer format)",
        description="Score a predictions file the way the benchmark's reference evaluator does.",
        epilog="benchmarks: " + ", ".join(BENCHMARKS) + " (eval.zip folder names work too, e.g. MME, mm-vet)")
    p.add_argument("benchmark", metavar="BENCHMARK", help="registry name (listed below)")
    p.add_argument("--predictions", required=True, metavar="FILE",
                   help="answers JSONL in the reference format ({question_id, text} per line)")
    p.add_argument("--questions", metavar="FILE",
                   help="the benchmark's question file; its folder is read as the benchmark folder")
    p.add_argument("--annotations", metavar="FILE", help="ground-truth file, when not in the benchmark folder")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(fn=cmd_score)

    p = sub.add_parser("bench", help="benchmarks: our pipeline vs a baseline, side by side")
    p.add_argument("what", choices=["preprocess", "generate"])
    p.add_argument("--n", type=int, default=None, help="number of samples")
    p.add_argument("--device", default="auto", help="generate: cpu, cuda or auto")
    p.add_argument("--model", default=None, help="generate: a model folder (default: a tiny random model)")
    p.add_argument("--json", action="store_true")
    _add_config_args(p)
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("submit", help="run the pipeline as a Ray Job on a cluster (uploads this project folder)")
    _add_config_args(p, positional=True)
    _add_stage_args(p)
    _add_address_arg(p)
    _add_cluster_arg(p)
    p.add_argument("--wait", action="store_true", help="stream the job's logs; exit non-zero unless it succeeds")
    p.add_argument("--poll", type=float, default=5.0, metavar="SECONDS", help="--wait: status poll interval")
    p.add_argument("--timeout", type=float, default=48 * 3600, metavar="SECONDS",
                   help="--wait: give up waiting (the job keeps running) after this long")
    p.set_defaults(fn=cmd_submit)

    for name, text in (("status", "a submitted job's status"), ("logs", "a submitted job's logs"),
                       ("stop", "stop a submitted job")):
        p = sub.add_parser(name, help=text)
        p.add_argument("job", help="submission id (printed by submit)")
        _add_address_arg(p)
        if name == "status":
            p.add_argument("--json", action="store_true")
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="keep streaming until the job ends")
        p.set_defaults(fn=cmd_job)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    fn: Callable[[argparse.Namespace], int] = args.fn
    try:
        return fn(args)
    except (ConfigError, PipelineError, JobError, ValueError, FileNotFoundError) as e:
        # Known, user-facing problems: one clear line, no traceback.
        print(f"llava-pipeline {args.command}: error: {redact(str(e))}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
