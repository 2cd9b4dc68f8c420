"""The `llm-pipeline` command.

    llm-pipeline run [--select ASSET[,ASSET]] [--partition DOMAIN]   materialize through Dagster, in-process
    llm-pipeline backfill --domains a,b [--url URL --wait]             re-run chosen domains and what is downstream
    llm-pipeline stage ASSET [--domain DOMAIN]                        run one stage directly (what dvc.yaml calls)
    llm-pipeline dvc-yaml [--check]                                   (re)generate dvc.yaml from the config
    llm-pipeline launch lora_adapter --num-processes 8 --deepspeed zero2  multi-GPU launch of a training stage
    llm-pipeline lineage data/dpo_model                               what made an output
    llm-pipeline check-config                                         validate a config and print its domains
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from llm_pipeline.config import ConfigError, load_config

DEFAULT_CONFIG = "configs/default.yaml"


def _load(args: argparse.Namespace):
    overrides = {"data_dir": args.data_dir} if getattr(args, "data_dir", None) else None
    return load_config(args.config, overrides=overrides)


def _cmd_run(args: argparse.Namespace) -> int:
    cfg = _load(args)
    from llm_pipeline.defs.local_run import plan

    select = [s for s in (args.select or "").split(",") if s] or None
    steps = plan(cfg, select, args.partition)
    return _materialize(args, cfg, steps)


def _materialize(args: argparse.Namespace, cfg, steps) -> int:
    """Run the steps through Dagster in the instance of the run's data dir (llm_pipeline/defs/instance.py)."""
    from llm_pipeline.preflight import model_problems

    if any(s.asset in MODEL_STAGES for s in steps):
        # A base model that cannot be found would stop the run at base_checkpoint, after the whole curation.
        problems = model_problems(cfg)
        if problems:
            for problem in problems:
                print(f"error: {problem}", file=sys.stderr)
            return 2
        _quiet_training_imports()
    from llm_pipeline.defs.instance import InstanceError, open_instance
    from llm_pipeline.defs.local_run import materialize_steps
    from llm_pipeline.defs.resources import PipelineConfigResource

    resource = PipelineConfigResource(config_path=str(args.config), data_dir=args.data_dir)
    try:
        instance, note = open_instance(cfg)
    except InstanceError as exc:  # the instance is the operator's to fix: a traceback would not help them
        print(f"error: {exc}", file=sys.stderr)
        return 2
    with instance:
        ok = materialize_steps(cfg, resource, steps, instance, instance_note=note)
    return 0 if ok else 1


MODEL_STAGES = {"tokenizer", "base_checkpoint", "lora_adapter", "dpo_model", "eval_report"}


def _quiet_training_imports() -> None:
    """transformers prints "[INFO] Running in WANDB offline mode" with a bare print when its integrations module is
    first imported; import it here with stdout held, so the line never lands between the run's progress lines."""
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):
        try:
            import transformers.integrations.integration_utils  # noqa: F401
        except ImportError:
            pass


def _cmd_backfill(args: argparse.Namespace) -> int:
    cfg = _load(args)
    domains = [d for d in args.domains.split(",") if d]
    unknown = [d for d in domains if d not in cfg.domains]
    if not domains or unknown:
        print(f"error: unknown or no domains {unknown or domains}; the config declares: {', '.join(cfg.domain_names)}", file=sys.stderr)
        return 2
    select = [s for s in (args.select or "").split(",") if s] or None
    if args.url:
        from llm_pipeline.defs.webserver import WebserverError, launch_backfill, wait_backfill

        try:
            backfill_id = launch_backfill(args.url, domains, select)
            print(f"launched backfill {backfill_id} for {', '.join(domains)} on {args.url}")
            if args.wait:
                status = wait_backfill(args.url, backfill_id)
                print(f"backfill {backfill_id}: {status}")
                return 0 if status in ("COMPLETED", "COMPLETED_SUCCESS") else 1
        except WebserverError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    # No webserver: run the same backfill in-process, domain partitions stage by stage, then what is downstream.
    from llm_pipeline.defs.local_run import Step
    from llm_pipeline.stages import ORDER, STAGES

    steps = []
    for name in ORDER:
        if select and name not in select:
            continue
        steps += [Step(name, d) for d in domains] if STAGES[name].partitioned else [Step(name, None)]
    return _materialize(args, cfg, steps)


def _cmd_launch(args: argparse.Namespace) -> int:
    from llm_pipeline.training.launch import LaunchError, launch_plan

    try:
        plan = launch_plan(args.asset, args.config, args.num_processes, launcher=args.launcher, deepspeed=args.deepspeed,
                           num_machines=args.num_machines, machine_rank=args.machine_rank,
                           main_process_ip=args.main_process_ip, main_process_port=args.main_process_port,
                           hostfile=args.hostfile)
    except LaunchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    written = plan.write(Path(args.out))
    for path in written.values():
        print(f"wrote {path}")
    print(plan.shell())
    return 0


def _cmd_stage(args: argparse.Namespace) -> int:
    from llm_pipeline import progress
    from llm_pipeline.io import NotAnOutput, OutputWriteError
    from llm_pipeline.runner import StageInputError, run_stage

    cfg = _load(args)
    if args.asset in MODEL_STAGES:
        _quiet_training_imports()
    try:
        # stdout is the JSON summary (dvc.yaml's stages read it); progress lines go to stderr.
        with progress.sink(lambda update: print(update.line(), file=sys.stderr, flush=True)):
            result = run_stage(cfg, args.asset, args.domain)
    except (StageInputError, ValueError, KeyError, NotAnOutput) as exc:
        # InputChanged (an input swapped during the run) is a StageInputError; a refused output path says what to fix.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OutputWriteError as exc:
        # A full disk (an output, a checkpoint) is one line too: what could not be written, where, and the room left.
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = {"stage": result.name, "domain": result.domain, "output": str(result.output_dir),
               "dvc_hash": result.dvc_hash, "seconds": round(result.seconds, 2), "stats": result.stats}
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _cmd_dvc_yaml(args: argparse.Namespace) -> int:
    from llm_pipeline.dvcgen import render

    cfg = _load(args)
    text = render(cfg, str(args.config))
    target = Path(args.output)
    if args.check:
        if not target.exists() or target.read_text() != text:
            print(f"{target} is out of date with {args.config}: run `llm-pipeline dvc-yaml`", file=sys.stderr)
            return 1
        print(f"{target} is up to date")
        return 0
    from llm_pipeline.dvcgen import write

    write(cfg, str(args.config), target)  # also adds the run's timings file to .dvcignore
    print(f"wrote {target}")
    return 0


def _cmd_lineage(args: argparse.Namespace) -> int:
    from llm_pipeline.io import MANIFEST
    from llm_pipeline.lineage import lineage, render

    if not (Path(args.output) / MANIFEST).exists():
        print(f"error: {args.output} is not a finished stage output (no {MANIFEST})", file=sys.stderr)
        return 2
    nodes = lineage(Path(args.output))
    print(json.dumps(nodes, indent=2) if args.json else render(nodes))
    return 0


def _cmd_check_config(args: argparse.Namespace) -> int:
    from llm_pipeline.preflight import preflight

    cfg = _load(args)
    problems = preflight(cfg)
    for problem in problems:
        print(f"error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"{args.config}: ok; domains: {', '.join(cfg.domain_names)}; data_dir: {cfg.data_path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="llm-pipeline", description="Raw domain documents to an aligned, evaluated model.")
    sub = p.add_subparsers(dest="command", required=True)

    def common(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--config", default=DEFAULT_CONFIG, help="pipeline config (default: %(default)s)")
        sp.add_argument("--data-dir", default=None, help="override the config's data_dir")

    sp = sub.add_parser("run", help="materialize the asset graph through Dagster, in-process")
    common(sp)
    sp.add_argument("--select", help="comma-separated assets to materialize (default: all)")
    sp.add_argument("--partition", help="only this domain's partition of partitioned assets")
    sp.set_defaults(fn=_cmd_run)

    sp = sub.add_parser("backfill", help="re-materialize chosen domains and everything downstream")
    common(sp)
    sp.add_argument("--domains", required=True, help="comma-separated domains (partition keys)")
    sp.add_argument("--select", help="comma-separated assets (default: all)")
    sp.add_argument("--url", default=os.environ.get("LLM_PIPELINE_DAGSTER_URL"),
                    help="a running Dagster webserver (e.g. http://127.0.0.1:3000): launch it there as a backfill")
    sp.add_argument("--wait", action="store_true", help="with --url: wait until the backfill finishes")
    sp.set_defaults(fn=_cmd_backfill)

    sp = sub.add_parser("launch", help="write the accelerate/deepspeed launch of a training stage on many GPUs")
    sp.add_argument("--config", default=DEFAULT_CONFIG)
    sp.add_argument("asset")
    sp.add_argument("--num-processes", type=int, required=True, help="processes (GPUs) on all machines together")
    sp.add_argument("--launcher", choices=["accelerate", "deepspeed"], default="accelerate")
    sp.add_argument("--deepspeed", help="zero2, zero3 or a DeepSpeed JSON path")
    sp.add_argument("--num-machines", type=int, default=1)
    sp.add_argument("--machine-rank", type=int, default=0)
    sp.add_argument("--main-process-ip")
    sp.add_argument("--main-process-port", type=int, default=29500)
    sp.add_argument("--hostfile")
    sp.add_argument("--out", default="launch", help="folder for the generated launcher config")
    sp.set_defaults(fn=_cmd_launch)

    sp = sub.add_parser("stage", help="run one stage directly, outside Dagster (dvc.yaml calls this)")
    common(sp)
    sp.add_argument("asset")
    sp.add_argument("--domain")
    sp.set_defaults(fn=_cmd_stage)

    sp = sub.add_parser("dvc-yaml", help="write dvc.yaml for the config")
    common(sp)
    sp.add_argument("--output", default="dvc.yaml")
    sp.add_argument("--check", action="store_true", help="only check that dvc.yaml is up to date")
    sp.set_defaults(fn=_cmd_dvc_yaml)

    sp = sub.add_parser("lineage", help="print what made an output: upstream hashes, shards, configs, code, seeds")
    sp.add_argument("output", help="an output folder, e.g. data/dpo_model")
    sp.add_argument("--json", action="store_true")
    sp.set_defaults(fn=_cmd_lineage)

    sp = sub.add_parser("check-config", help="validate a config")
    common(sp)
    sp.set_defaults(fn=_cmd_check_config)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.fn(args)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2



if __name__ == "__main__":
    sys.exit(main())
